//! The core thread: feeds the core its inputs, runs its rounds and performs their output,
//! and ends the process when the core cannot go on (crash-only: a supervisor restarts it,
//! rather than a node that answers every call with an error staying in the cluster).

use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::transport::Transport;
use super::{snapshot_thread, Ack, Event, MAX_INPUTS_PER_ROUND};
use crate::config::OnFatalError;
use crate::node::subscription::SubId;
use crate::node::{Input, NodeCore, Waiter};
use crate::snapshot_provider::SnapshotProvider;
use crate::storage::WriteBatch;

/// Exit status after a panic in the core (EX_SOFTWARE of sysexits.h).
pub const EXIT_CORE_PANIC: i32 = 70;
/// Exit status after a failed storage read or write (EX_IOERR of sysexits.h).
pub const EXIT_STORAGE_FAILED: i32 = 74;

/// Where the core thread sends its output.
pub(super) struct CoreOutputs {
    pub storage: Sender<(u64, WriteBatch)>,
    pub transport: Arc<Transport>,
    pub snapshots: Sender<snapshot_thread::SnapshotJob>,
    pub stream_io: Sender<crate::node::streams::SnapshotIo>,
    pub logger: slog::Logger,
}

/// Runs the core until it stops; a panic in it or a failed storage read or write is fatal
/// and handled as `on_fatal` says.
pub(super) fn run(
    core: NodeCore,
    input: Receiver<Event>,
    out: CoreOutputs,
    tick: Duration,
    on_fatal: OnFatalError,
) {
    let logger = core.logger().clone();
    let ran = panic::catch_unwind(AssertUnwindSafe(|| {
        run_core(core, input, out, tick, on_fatal)
    }));
    if ran.is_err() {
        fatal(on_fatal, EXIT_CORE_PANIC, "its core panicked", &logger);
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

/// The core thread's loop: inputs in, rounds out, ticks on time.
fn run_core(
    core: NodeCore,
    input: Receiver<Event>,
    out: CoreOutputs,
    tick: Duration,
    on_fatal: OnFatalError,
) {
    let start = Instant::now();
    let now_ms = || start.elapsed().as_millis() as u64;
    let mut shell = CoreShell {
        core,
        acks: HashMap::new(),
        next_waiter: 1,
        handed_over: None,
        providers: HashMap::new(),
    };
    let mut next_tick = Instant::now() + tick;
    let mut stopping = false;
    loop {
        let wait = next_tick.saturating_duration_since(Instant::now());
        match input.recv_timeout(wait) {
            Ok(first) => {
                stopping |= shell.handle(now_ms(), first);
                for next in input.try_iter().take(MAX_INPUTS_PER_ROUND) {
                    stopping |= shell.handle(now_ms(), next);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => stopping = true,
        }
        if Instant::now() >= next_tick {
            shell.core.handle_tick(now_ms());
            next_tick += tick;
            if next_tick < Instant::now() {
                next_tick = Instant::now() + tick;
            }
        }
        shell.round(now_ms(), &out);
        if shell.core.storage_failed() {
            // sled answers every operation after a failed one with that error: the node
            // would only linger. (The core logged the failure.)
            fatal(on_fatal, EXIT_STORAGE_FAILED, "storage failed", &out.logger);
            break;
        }
        if stopping {
            break;
        }
    }
}

/// The core and what the core thread keeps for it: the closures of the calls in flight
/// (the core knows them only by waiter id) and the handover's completion.
struct CoreShell {
    core: NodeCore,
    acks: HashMap<Waiter, Ack>,
    next_waiter: Waiter,
    handed_over: Option<Box<dyn FnOnce() + Send>>,
    /// Snapshot providers of the subscriptions, by subscription id.
    providers: HashMap<SubId, Arc<dyn SnapshotProvider>>,
}

impl CoreShell {
    /// Applies one event; true when it asks the core to stop.
    fn handle(&mut self, now_ms: u64, event: Event) -> bool {
        match event {
            Event::Core(input) => return self.core.handle(now_ms, input),
            Event::Unsubscribe(sub) => {
                self.providers.remove(&sub);
                self.core.handle(now_ms, Input::Unsubscribe(sub));
            }
            Event::Subscribe {
                sub,
                group,
                sink,
                provider,
            } => {
                self.providers.insert(sub, provider);
                let input = Input::Subscribe { sub, group, sink };
                return self.core.handle(now_ms, input);
            }
            Event::Call(ack, input) => {
                let waiter = self.next_waiter;
                self.next_waiter += 1;
                self.acks.insert(waiter, ack);
                return self.core.handle(now_ms, input(waiter));
            }
            Event::Query(query) => query(&self.core),
            Event::Handover(done) => {
                self.handed_over = Some(done);
                self.core.handle(now_ms, Input::Handover);
            }
        }
        false
    }

    /// Runs a round and performs its output.
    fn round(&mut self, now_ms: u64, out: &CoreOutputs) {
        if self.core.poll_handover() {
            if let Some(done) = self.handed_over.take() {
                done();
            }
        }
        let output = self.core.poll_output();
        for (waiter, result) in output.completions {
            let ack = self.acks.remove(&waiter);
            debug_assert!(ack.is_some(), "the core completes each waiter once");
            if let Some(ack) = ack {
                ack(result);
            }
        }
        for (node, addr, batch) in output.sends {
            out.transport.send(node, addr, batch);
        }
        if let Some(write) = output.write {
            let _ = out.storage.send(write);
        }
        for request in output.snapshots {
            match self.providers.get(&request.sub) {
                Some(provider) => {
                    let _ = out.snapshots.send((request, provider.clone()));
                }
                // Unsubscribed since: no snapshot this time (another subscriber, or the
                // next interval, will provide one).
                None => {
                    let group = request.group;
                    let declined = Input::SnapshotFailed {
                        group,
                        reason: None,
                    };
                    self.core.handle(now_ms, declined);
                }
            }
        }
        for io in output.snapshot_io {
            let _ = out.stream_io.send(io);
        }
    }
}
