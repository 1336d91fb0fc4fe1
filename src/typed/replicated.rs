//! [`Replicated`]: a handle on one replicated state machine.

use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use super::applier::{envelope, Applier, Tag};
use super::{Bincode, Codec, StateMachine};
use crate::error::{Error, Result};
use crate::id::DataStructureId;
use crate::CopyCat;

/// How long a call waits by default (see [`Replicated::with_timeout`]).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A replicated state machine `S`, its commands encoded with `C`. Cheap to clone,
/// `Send + Sync`; the subscription ends when the last clone is dropped.
///
/// ```
/// use copycat::{Config, CopyCat, Replicated, StateMachine};
///
/// #[derive(Default)]
/// struct Stock(u64);
///
/// impl StateMachine for Stock {
///     type Command = i64;
///     type Response = Result<u64, String>;
///     fn apply(&mut self, delta: i64) -> Self::Response {
///         let next = self.0 as i64 + delta;
///         if next < 0 {
///             return Err(format!("insufficient stock: {} left", self.0));
///         }
///         self.0 = next as u64;
///         Ok(self.0)
///     }
///     fn snapshot(&self) -> Vec<u8> {
///         self.0.to_be_bytes().to_vec()
///     }
///     fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
///         self.0 = u64::from_be_bytes(bytes.try_into().map_err(|_| "8 bytes expected")?);
///         Ok(())
///     }
/// }
///
/// # fn main() -> copycat::Result<()> {
/// # let dir = tempfile::tempdir()?;
/// let node = CopyCat::start(Config {
///     data_dir: dir.path().to_path_buf(),
///     port: 0,
///     gossip_port: 0,
///     ..Config::default()
/// })?;
/// let stock: Replicated<Stock> = Replicated::open(&node, node.new_data_structure_id(), Stock::default())?;
/// assert_eq!(stock.propose_blocking(5)?, Ok(5));
/// // The response of this command's apply, as the proposer's own result:
/// assert_eq!(stock.propose_blocking(-7)?, Err("insufficient stock: 5 left".to_string()));
/// assert_eq!(stock.read_linearizable_blocking(|s| s.0)?, 5);
/// # node.shutdown();
/// # Ok(())
/// # }
/// ```
pub struct Replicated<S: StateMachine, C: Codec = Bincode> {
    applier: Arc<Applier<S, C>>,
    timeout: Duration,
    /// This node's commit index of the group when the handle was opened.
    replay_target: u64,
}

impl<S: StateMachine, C: Codec> Clone for Replicated<S, C> {
    fn clone(&self) -> Self {
        Replicated {
            applier: self.applier.clone(),
            timeout: self.timeout,
            replay_target: self.replay_target,
        }
    }
}

impl<S: StateMachine, C: Codec> std::fmt::Debug for Replicated<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicated")
            .field("id", &self.id())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Removes a proposal's waiting entry however its call ends (answered, failed, dropped).
struct Forget<'a, S: StateMachine, C: Codec> {
    applier: &'a Applier<S, C>,
    tag: Tag,
}

impl<S: StateMachine, C: Codec> Drop for Forget<'_, S, C> {
    fn drop(&mut self) {
        self.applier.forget(self.tag);
    }
}

impl<S: StateMachine, C: Codec> Replicated<S, C> {
    /// Subscribes to the data structure `id` on `node` (creating it if it exists nowhere
    /// yet) with `initial` as the state before the first command. The history (the newest
    /// snapshot, then the entries after it) is applied on first use.
    pub fn open(node: &CopyCat, id: DataStructureId, initial: S) -> Result<Self> {
        let slot: Arc<OnceLock<Weak<Applier<S, C>>>> = Arc::new(OnceLock::new());
        let provider_slot = slot.clone();
        let provider = move || provider_slot.get()?.upgrade()?.snapshot();
        // What this node had committed before: `wait_replayed` waits for it.
        let replay_target = node
            .group_status_blocking(id)?
            .map_or(0, |g| g.commit_index);
        let ds = node.subscribe(id, provider)?;
        let applier = Arc::new(Applier::new(ds, node.node_id(), initial));
        let _ = slot.set(Arc::downgrade(&applier));
        Ok(Replicated {
            applier,
            timeout: DEFAULT_TIMEOUT,
            replay_target,
        })
    }

    /// The same handle with calls bounded by `timeout` (default 10 s) instead.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The data structure's id.
    pub fn id(&self) -> DataStructureId {
        self.applier.source.id()
    }

    /// Proposes `command` and returns the response of this replica's apply of exactly that
    /// command, once it is committed (durable on a quorum) and applied here.
    ///
    /// [`Error::ResponseUnknown`]: it was committed, but this replica restored a snapshot
    /// past it before applying it, so its response was never computed here.
    /// [`Error::Timeout`]: the outcome is unknown (it may still commit).
    /// [`Error::ApplyTimeout`]: committed, but this replica did not apply it in time.
    pub async fn propose(&self, command: S::Command) -> Result<S::Response> {
        let (tag, data) = self.prepare(&command)?;
        let _forget = Forget {
            applier: &self.applier,
            tag,
        };
        let deadline = Instant::now() + self.timeout;
        let index = self.applier.source.propose(data, self.timeout).await?;
        loop {
            let seen = self.signal().count();
            if let Some(outcome) = self.applier.outcome(tag, index) {
                return outcome;
            }
            if !self.signal().changed(seen, deadline).await {
                return Err(Error::ApplyTimeout { index });
            }
        }
    }

    /// The blocking form of [`Replicated::propose`], for threads outside async code.
    pub fn propose_blocking(&self, command: S::Command) -> Result<S::Response> {
        let (tag, data) = self.prepare(&command)?;
        let _forget = Forget {
            applier: &self.applier,
            tag,
        };
        let deadline = Instant::now() + self.timeout;
        let index = self.applier.source.propose_blocking(data, self.timeout)?;
        loop {
            let seen = self.signal().count();
            if let Some(outcome) = self.applier.outcome(tag, index) {
                return outcome;
            }
            if !self.signal().changed_blocking(seen, deadline) {
                return Err(Error::ApplyTimeout { index });
            }
        }
    }

    /// Bumped for each commit delivered to this handle's subscription.
    fn signal(&self) -> &crate::signal::Signal {
        &self.applier.source.progress.signal
    }

    fn prepare(&self, command: &S::Command) -> Result<(Tag, Vec<u8>)> {
        let bytes = C::encode(command).map_err(Error::Codec)?;
        let tag = self.applier.register();
        Ok((tag, envelope(tag, &bytes)))
    }

    /// Reads the local state, with every commit this replica has received applied. It may
    /// lag behind the leader; see [`Replicated::read_linearizable`].
    pub fn read<T>(&self, f: impl FnOnce(&S) -> T) -> Result<T> {
        let state = self.applier.current()?;
        Ok(f(&state.machine))
    }

    /// Reads the state as of now, cluster-wide: sees every command acknowledged anywhere
    /// before the call (a Raft read barrier, then the local apply catches up to it).
    pub async fn read_linearizable<T>(&self, f: impl FnOnce(&S) -> T) -> Result<T> {
        let deadline = Instant::now() + self.timeout;
        let index = self.applier.source.read_barrier(self.timeout).await?;
        self.wait_applied_until(index, deadline).await?;
        self.read(f)
    }

    /// The blocking form of [`Replicated::read_linearizable`].
    pub fn read_linearizable_blocking<T>(&self, f: impl FnOnce(&S) -> T) -> Result<T> {
        let deadline = Instant::now() + self.timeout;
        let index = self.applier.source.read_barrier_blocking(self.timeout)?;
        self.wait_applied_blocking_until(index, deadline)?;
        self.read(f)
    }

    /// Waits until the local state holds everything this node had committed when the
    /// handle was opened (after a restart: the replayed history), without asking the
    /// leader: readiness for serving local reads. See [`Replicated::read_linearizable`]
    /// for reads that must also see what others committed since.
    pub async fn wait_replayed(&self) -> Result<()> {
        self.wait_applied(self.replay_target).await
    }

    /// The blocking form of [`Replicated::wait_replayed`].
    pub fn wait_replayed_blocking(&self) -> Result<()> {
        self.wait_applied_blocking(self.replay_target)
    }

    /// The index of the last commit applied to the local state (0: none yet).
    pub fn applied_index(&self) -> Result<u64> {
        Ok(self.applier.current()?.applied)
    }

    /// Waits until the local state has applied everything up to log index `index` (or a
    /// snapshot past it). Raft's own entries (leader no-ops, membership changes) take log
    /// indexes too; they are never applied to the state machine but count as passed.
    pub async fn wait_applied(&self, index: u64) -> Result<()> {
        self.wait_applied_until(index, Instant::now() + self.timeout)
            .await
    }

    /// The blocking form of [`Replicated::wait_applied`].
    pub fn wait_applied_blocking(&self, index: u64) -> Result<()> {
        self.wait_applied_blocking_until(index, Instant::now() + self.timeout)
    }

    async fn wait_applied_until(&self, index: u64, deadline: Instant) -> Result<()> {
        loop {
            let seen = self.signal().count();
            if self.applied_index()? >= index {
                return Ok(());
            }
            if !self.signal().changed(seen, deadline).await {
                return Err(Error::ApplyTimeout { index });
            }
        }
    }

    fn wait_applied_blocking_until(&self, index: u64, deadline: Instant) -> Result<()> {
        loop {
            let seen = self.signal().count();
            if self.applied_index()? >= index {
                return Ok(());
            }
            if !self.signal().changed_blocking(seen, deadline) {
                return Err(Error::ApplyTimeout { index });
            }
        }
    }
}
