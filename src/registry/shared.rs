//! What the registry's handles and its worker thread share: the replicated state as applied
//! here, the member view, the leases, and this instance's own publications.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use super::capacity::LeaseTable;
use super::error::{RegistryError, RegistryResult};
use super::liveness::MemberView;
use super::publication::{Publication, PublicationId};
use super::resolve::{ResolveOption, Vantage};
use super::state::{Op, RegistryState};
use super::RegistryConfig;
use crate::NodeId;
use crate::{CopyCat, DataStructure};

/// This instance's publications: what the application holds, and when each was last
/// proposed (so the worker does not re-propose what is still in flight).
#[derive(Default)]
pub(crate) struct Wanted {
    pub publications: BTreeMap<PublicationId, Publication>,
    pub proposed_at: HashMap<PublicationId, Instant>,
    /// When this instance's hello was last proposed by the upkeep.
    pub hello_at: Option<Instant>,
}

/// State shared by the registry's handles and its worker.
pub(crate) struct Shared {
    pub node: CopyCat,
    pub ds: DataStructure,
    pub me: NodeId,
    pub datacenter: String,
    pub config: RegistryConfig,
    /// This instance's epoch (set once the instance registered).
    pub epoch: AtomicU64,
    pub next_seq: AtomicU64,
    pub state: Arc<RwLock<RegistryState>>,
    pub view: RwLock<MemberView>,
    pub leases: Mutex<LeaseTable>,
    pub wanted: Mutex<Wanted>,
    /// Set when the worker stopped (the node shut down or the registry was dropped).
    pub closed: AtomicBool,
    /// Bumped (and waiters woken) whenever the state or the member view changes.
    generation: Mutex<u64>,
    changed: Condvar,
}

/// Takes a lock even if a panicking thread poisoned it: every critical section here leaves
/// the data consistent between statements.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(crate) fn new(
        node: CopyCat,
        ds: DataStructure,
        datacenter: String,
        config: RegistryConfig,
        state: Arc<RwLock<RegistryState>>,
        leases: LeaseTable,
    ) -> Shared {
        Shared {
            me: node.node_id(),
            node,
            ds,
            datacenter,
            config,
            epoch: AtomicU64::new(0),
            next_seq: AtomicU64::new(1),
            state,
            view: RwLock::new(MemberView::default()),
            leases: Mutex::new(leases),
            wanted: Mutex::new(Wanted::default()),
            closed: AtomicBool::new(false),
            generation: Mutex::new(0),
            changed: Condvar::new(),
        }
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Whether a newer instance on this node took over.
    pub(crate) fn is_superseded(&self, state: &RegistryState) -> bool {
        state.epochs.get(&self.me).copied().unwrap_or(0) > self.epoch()
    }

    /// Wakes everyone waiting for a change and hands freed capacity to waiting callers.
    pub(crate) fn notify_changed(&self) {
        *lock(&self.generation) += 1;
        self.changed.notify_all();
        self.dispatch_leases();
    }

    /// Waits until `done` holds on the state (checked after every change) or `deadline`.
    pub(crate) fn wait_for<T>(
        &self,
        deadline: Instant,
        mut done: impl FnMut(&RegistryState, &MemberView) -> Option<T>,
    ) -> RegistryResult<T> {
        loop {
            let seen = *lock(&self.generation);
            if let Some(out) = done(&read(&self.state), &read(&self.view)) {
                return Ok(out);
            }
            if self.closed.load(Ordering::Acquire) {
                return Err(RegistryError::CopyCat(crate::Error::Shutdown));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RegistryError::Timeout);
            }
            let generation = lock(&self.generation);
            if *generation == seen {
                // Wakes on a change or after the deadline; spurious wake-ups just re-check.
                let _ = self.changed.wait_timeout(generation, left);
            }
        }
    }

    /// Waits until the state here has applied `index`.
    pub(crate) fn wait_applied(&self, index: u64, deadline: Instant) -> RegistryResult<()> {
        self.wait_for(deadline, |state, _| (state.applied >= index).then_some(()))
    }

    /// Proposes `op`, waits until it is committed and applied to the state here.
    pub(crate) fn propose_and_apply(&self, op: &Op, timeout: Duration) -> RegistryResult<()> {
        let deadline = Instant::now() + timeout;
        let index = self.ds.propose_blocking(op.encode(), timeout)?;
        self.wait_applied(index, deadline)
    }

    /// Proposes `op` without waiting; the worker's reconciliation repairs a lost one.
    pub(crate) fn propose_detached(&self, op: &Op) {
        let _ = self.ds.proposals().send(op.encode());
    }

    /// The winning tier of `option` from this node.
    pub(crate) fn tier_of<'s>(
        &self,
        state: &'s RegistryState,
        view: &MemberView,
        option: &ResolveOption,
    ) -> Vec<&'s Publication> {
        self.vantage(view)
            .best_tier(option, state.publications.values())
    }

    pub(crate) fn vantage<'v>(&'v self, view: &'v MemberView) -> Vantage<'v> {
        Vantage {
            node: self.me,
            datacenter: &self.datacenter,
            alive: &view.alive,
        }
    }

    /// Hands free slots to waiting callers.
    pub(crate) fn dispatch_leases(&self) {
        let state = read(&self.state);
        let view = read(&self.view);
        lock(&self.leases).dispatch(|option| self.tier_of(&state, &view, option));
    }

    /// Frees a lease's slot and passes it on.
    pub(crate) fn release_lease(&self, id: &PublicationId) {
        let state = read(&self.state);
        let view = read(&self.view);
        let mut leases = lock(&self.leases);
        leases.release(id);
        leases.dispatch(|option| self.tier_of(&state, &view, option));
    }
}
