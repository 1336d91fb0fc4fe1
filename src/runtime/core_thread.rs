//! The core thread: feeds the core its inputs, runs its rounds and performs their output.
//! When the core cannot go on it ends the process (crash-only: a supervisor restarts it,
//! rather than a node that answers every call with an error staying in the cluster), with
//! one exception: storage out of space or file descriptors puts the core to sleep until the
//! store can be written again, then reopens it and wakes the core (see `node::dormant`), without a restart.

use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::storage_side::{Closing, StorageSide, StoreOpener};
use super::transport::Transport;
use super::{Ack, Event, MAX_INPUTS_PER_ROUND};
use crate::config::OnFatalError;
use crate::error::Error;
use crate::node::subscription::SubId;
use crate::node::{Dormant, Input, NodeCore, Waiter};
use crate::snapshot_provider::SnapshotProvider;
use crate::storage::StorageError;

/// Exit status after a panic in the core (EX_SOFTWARE of sysexits.h).
pub const EXIT_CORE_PANIC: i32 = 70;
/// Exit status after a failed storage read or write (EX_IOERR of sysexits.h).
pub const EXIT_STORAGE_FAILED: i32 = 74;

/// The first wait of a dormant core before it tries its store again; each failed try, and
/// each wake that did not last [`STABLE_WAKE`], doubles it, up to [`MAX_SPACE_RETRY`].
const FIRST_SPACE_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between two tries of a dormant core: how late at most it notices
/// that space returned.
const MAX_SPACE_RETRY: Duration = Duration::from_secs(16);
/// A wake that lasts this long resets the wait: the disk had room after all. (A store
/// with a little room, enough to reopen but not to catch up, would otherwise have the
/// node wake and fall asleep every second or two.)
const STABLE_WAKE: Duration = Duration::from_secs(60);
/// How often a dormant core looks whether its former storage threads have ended.
const CLOSING_POLL: Duration = Duration::from_millis(20);

/// What the core thread runs with, besides the core and its storage side.
pub(super) struct CoreThread {
    /// The event queue the core reads.
    pub input: Receiver<Event>,
    /// Its sending end, for the storage threads started again after a reopen.
    pub events: Sender<Event>,
    pub transport: Arc<Transport>,
    /// Opens the store again after its disk ran out of space.
    pub opener: StoreOpener,
    pub tick: Duration,
    pub on_fatal: OnFatalError,
    pub logger: slog::Logger,
}

/// Runs the core until it stops; a panic in it or a storage failure other than a full
/// disk is fatal and handled as `on_fatal` says. Returns once the storage threads ended.
pub(super) fn run(core: NodeCore, side: StorageSide, thread: CoreThread) {
    let ran = panic::catch_unwind(AssertUnwindSafe(|| run_core(core, side, &thread)));
    let CoreThread {
        input,
        on_fatal,
        logger,
        ..
    } = thread;
    // The storage threads may wait for room in the event queue: closing it lets them end.
    drop(input);
    match ran {
        Ok(Some(closing)) => closing.join(),
        Ok(None) => {}
        Err(_) => fatal(on_fatal, EXIT_CORE_PANIC, "its core panicked", &logger),
    }
}

/// The node cannot go on (`why`): ends the process with `status` if `on_fatal` says so;
/// otherwise the node stays stopped and its handles fail.
fn fatal(on_fatal: OnFatalError, status: i32, why: &str, logger: &slog::Logger) {
    if on_fatal == OnFatalError::ExitProcess {
        slog::crit!(logger, "the node cannot go on: {}; exiting", why; "status" => status);
        std::process::exit(status);
    }
    slog::crit!(logger, "the node cannot go on: {}; it stays stopped", why);
}

/// The core thread's loop: inputs in, rounds out, ticks on time. Returns the storage
/// threads, closing, to wait for; `None` after a fatal failure.
fn run_core(core: NodeCore, side: StorageSide, thread: &CoreThread) -> Option<Closing> {
    let start = Instant::now();
    let now_ms = || start.elapsed().as_millis() as u64;
    let mut shell = CoreShell {
        state: State::Awake(Box::new(core)),
        side: Some(side),
        acks: HashMap::new(),
        next_waiter: 1,
        handed_over: None,
        providers: HashMap::new(),
        space_retry: SpaceRetry::default(),
    };
    let mut next_tick = Instant::now() + thread.tick;
    let mut stopping = false;
    loop {
        let wait = shell
            .next_deadline(next_tick)
            .saturating_duration_since(Instant::now());
        match thread.input.recv_timeout(wait) {
            Ok(first) => {
                stopping |= shell.handle(now_ms(), first);
                for next in thread.input.try_iter().take(MAX_INPUTS_PER_ROUND) {
                    stopping |= shell.handle(now_ms(), next);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => stopping = true,
        }
        if let State::Awake(core) = &mut shell.state {
            if Instant::now() >= next_tick {
                core.handle_tick(now_ms());
                next_tick += thread.tick;
                if next_tick < Instant::now() {
                    next_tick = Instant::now() + thread.tick;
                }
            }
        }
        shell.round(now_ms(), &thread.transport);
        shell = match shell.follow_storage(thread) {
            Ok(shell) => shell,
            Err(why) => {
                fatal(thread.on_fatal, EXIT_STORAGE_FAILED, &why, &thread.logger);
                return None;
            }
        };
        if stopping {
            break;
        }
    }
    match shell.state {
        State::Awake(_) => shell.side.map(StorageSide::close),
        State::Dormant { closing, .. } => closing,
    }
}

/// The core, awake, or asleep while its disk has no room.
enum State {
    Awake(Box<NodeCore>),
    Dormant {
        dormant: Box<Dormant>,
        /// The former storage threads, until they have ended (and let go of the store).
        closing: Option<Closing>,
        /// When to try the store again.
        next_try: Instant,
    },
}

/// The core and what the core thread keeps for it: the closures of the calls in flight
/// (the core knows them only by waiter id), the handover's completion, the snapshot
/// providers, and the storage threads.
struct CoreShell {
    state: State,
    /// The storage threads; `None` while the core is dormant.
    side: Option<StorageSide>,
    acks: HashMap<Waiter, Ack>,
    next_waiter: Waiter,
    handed_over: Option<Box<dyn FnOnce() + Send>>,
    /// Snapshot providers of the subscriptions, by subscription id.
    providers: HashMap<SubId, Arc<dyn SnapshotProvider>>,
    /// When a dormant core tries its store again.
    space_retry: SpaceRetry,
}

impl CoreShell {
    /// Applies one event; true when it asks the core to stop.
    fn handle(&mut self, now_ms: u64, event: Event) -> bool {
        match event {
            Event::Core(input) => return self.input(now_ms, input),
            Event::Unsubscribe(sub) => {
                self.providers.remove(&sub);
                self.input(now_ms, Input::Unsubscribe(sub));
            }
            Event::Subscribe {
                sub,
                group,
                sink,
                provider,
            } => {
                self.providers.insert(sub, provider);
                return self.input(now_ms, Input::Subscribe { sub, group, sink });
            }
            Event::Call(ack, input) => match &mut self.state {
                State::Awake(core) => {
                    let waiter = self.next_waiter;
                    self.next_waiter += 1;
                    self.acks.insert(waiter, ack);
                    return core.handle(now_ms, input(waiter));
                }
                State::Dormant { .. } => ack(Err(Error::StorageExhausted)),
            },
            Event::Query(query) => match &self.state {
                State::Awake(core) => query(Ok(core)),
                State::Dormant { .. } => query(Err(Error::StorageExhausted)),
            },
            Event::Handover(done) => match &mut self.state {
                State::Awake(core) => {
                    self.handed_over = Some(done);
                    core.handle(now_ms, Input::Handover);
                }
                // A silent node leads nothing.
                State::Dormant { .. } => done(),
            },
        }
        false
    }

    /// Gives the core (awake or dormant) an input; true when it asks the core to stop.
    fn input(&mut self, now_ms: u64, input: Input) -> bool {
        match &mut self.state {
            State::Awake(core) => core.handle(now_ms, input),
            State::Dormant { dormant, .. } => dormant.handle(now_ms, input),
        }
    }

    /// When the loop must wake up next without an event: the next tick, or the next step
    /// of a dormant core.
    fn next_deadline(&self, next_tick: Instant) -> Instant {
        match &self.state {
            State::Awake(_) => next_tick,
            State::Dormant {
                closing: Some(_), ..
            } => Instant::now() + CLOSING_POLL,
            State::Dormant { next_try, .. } => *next_try,
        }
    }

    /// Runs a round of the awake core and performs its output.
    fn round(&mut self, now_ms: u64, transport: &Transport) {
        let (State::Awake(core), Some(side)) = (&mut self.state, &self.side) else {
            return;
        };
        if core.poll_handover() {
            if let Some(done) = self.handed_over.take() {
                done();
            }
        }
        let output = core.poll_output();
        for (waiter, result) in output.completions {
            complete(&mut self.acks, waiter, result);
        }
        for (node, addr, batch) in output.sends {
            transport.send(node, addr, batch);
        }
        if let Some(write) = output.write {
            let _ = side.storage.send(write);
        }
        for request in output.snapshots {
            match self.providers.get(&request.sub) {
                Some(provider) => {
                    let _ = side.snapshots.send((request, provider.clone()));
                }
                // Unsubscribed since: no snapshot this time (another subscriber, or the
                // next interval, will provide one).
                None => {
                    let group = request.group;
                    let declined = Input::SnapshotFailed {
                        group,
                        reason: None,
                    };
                    core.handle(now_ms, declined);
                }
            }
        }
        for io in output.snapshot_io {
            let _ = side.stream_io.send(io);
        }
    }

    /// Follows the store's health: an awake core whose disk is out of space goes to sleep,
    /// a dormant one tries to wake when due. Any other storage failure is fatal (why).
    fn follow_storage(mut self, thread: &CoreThread) -> Result<CoreShell, String> {
        match self.state {
            State::Awake(core) => match core.storage_failure() {
                None => self.state = State::Awake(core),
                Some(cause) if cause.is_exhausted() => {
                    let cause = cause.clone();
                    slog::warn!(thread.logger, "storage is out of room or file descriptors: this \
                        node stays silent and acknowledges nothing until it can write again, \
                        then resumes by itself";
                        "error" => %cause);
                    if let Some(done) = self.handed_over.take() {
                        done();
                    }
                    self.state = State::Dormant {
                        dormant: Box::new(core.into_dormant(cause)),
                        closing: self.side.take().map(StorageSide::close),
                        next_try: Instant::now() + self.space_retry.on_sleep(),
                    };
                }
                // sled answers every operation after a failed one with that error: the
                // node would only linger. (The core logged the failure.)
                Some(cause) => return Err(format!("storage failed: {cause}")),
            },
            State::Dormant {
                dormant,
                closing,
                next_try,
            } => {
                let closing = closing.filter(|c| !c.is_done());
                if closing.is_some() || Instant::now() < next_try {
                    self.state = State::Dormant {
                        dormant,
                        closing,
                        next_try,
                    };
                } else {
                    (self.state, self.side) = try_to_wake(dormant, &mut self.space_retry, thread)?;
                }
            }
        }
        self.complete_dormant_calls();
        Ok(self)
    }

    /// Hands the dormant core's failed calls to their callers.
    fn complete_dormant_calls(&mut self) {
        if let State::Dormant { dormant, .. } = &mut self.state {
            for (waiter, result) in dormant.take_completions() {
                complete(&mut self.acks, waiter, result);
            }
        }
    }
}

/// Hands a call's outcome to its caller.
fn complete(acks: &mut HashMap<Waiter, Ack>, waiter: Waiter, result: crate::Result<u64>) {
    let ack = acks.remove(&waiter);
    debug_assert!(ack.is_some(), "the core completes each waiter once");
    if let Some(ack) = ack {
        ack(result);
    }
}

/// Wakes `dormant` if its store has room again: the store is opened anew, the core opened
/// over it, and the storage threads started; otherwise it stays dormant and tries again
/// later. Fails (why) when the store cannot be opened for another reason.
fn try_to_wake(
    dormant: Box<Dormant>,
    retry: &mut SpaceRetry,
    thread: &CoreThread,
) -> Result<(State, Option<StorageSide>), String> {
    let store = match thread.opener.reopen_with_room() {
        Ok(store) => store,
        // Still full, or the former store not quite let go of yet.
        Err(e) if e.is_exhausted() || matches!(e, StorageError::Locked { .. }) => {
            let wait = retry.on_failed_try();
            slog::info!(thread.logger, "storage still cannot write; trying again later";
                "error" => %e, "retry_in_ms" => wait.as_millis() as u64);
            let dormant = State::Dormant {
                dormant,
                closing: None,
                next_try: Instant::now() + wait,
            };
            return Ok((dormant, None));
        }
        Err(e) => {
            return Err(format!(
                "reopening the store after it ran out of resources: {e}"
            ))
        }
    };
    let core = dormant
        .wake(store.clone())
        .map_err(|e| format!("reopening the core after storage ran out of resources: {e}"))?;
    let side = StorageSide::start(store, &thread.events, &thread.transport, &thread.logger)
        .map_err(|e| format!("restarting the storage threads: {e}"))?;
    retry.on_wake();
    slog::info!(thread.logger, "storage can write again: this node resumed");
    Ok((State::Awake(Box::new(core)), Some(side)))
}

/// The waits of a dormant core between tries of its store.
struct SpaceRetry {
    /// The next wait.
    wait: Duration,
    /// When the core last woke.
    woke_at: Option<Instant>,
}

impl Default for SpaceRetry {
    fn default() -> Self {
        SpaceRetry {
            wait: FIRST_SPACE_RETRY,
            woke_at: None,
        }
    }
}

impl SpaceRetry {
    /// The core falls asleep: the wait before its first try (longer if it had just woken).
    fn on_sleep(&mut self) -> Duration {
        if self.woke_at.is_none_or(|at| at.elapsed() >= STABLE_WAKE) {
            self.wait = FIRST_SPACE_RETRY;
        }
        self.wait
    }

    /// A try found no room: the wait before the next.
    fn on_failed_try(&mut self) -> Duration {
        self.wait = (self.wait * 2).min(MAX_SPACE_RETRY);
        self.wait
    }

    /// The core woke; should it fall asleep again soon, it waits longer first.
    fn on_wake(&mut self) {
        self.woke_at = Some(Instant::now());
        self.wait = (self.wait * 2).min(MAX_SPACE_RETRY);
    }
}
