//! Groups to write to, the proposers that write to them, and the thread that empties the
//! commit channels.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use copycat::{CopyCat, DataStructure, DataStructureId};

use crate::args::BoxResult;
use crate::cluster::{wait_for, PROPOSAL_TIMEOUT};

/// Creates `count` data structures through `node`, writes one entry to each and waits
/// until each has `voters` voters.
pub fn create_groups(node: &CopyCat, count: usize, voters: usize) -> BoxResult<Vec<DataStructure>> {
    let subs: Vec<DataStructure> = (0..count)
        .map(|_| node.subscribe(DataStructureId::new(), copycat::no_snapshots))
        .collect::<Result<_, _>>()?;
    let failed = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for chunk in subs.chunks(count.div_ceil(32).max(1)) {
            let failed = &failed;
            s.spawn(move || {
                for ds in chunk {
                    if ds
                        .propose_blocking(b"create".to_vec(), Duration::from_secs(120))
                        .is_err()
                    {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    while ds.commits().try_recv().is_ok() {}
                }
            });
        }
    });
    if failed.load(Ordering::Relaxed) > 0 {
        return Err(format!("{} of {count} first writes failed", failed.into_inner()).into());
    }
    let limit = Duration::from_secs(60 + count as u64 / 50);
    wait_for("every group at full replication", limit, || {
        subs.iter().all(|ds| {
            node.group_status_blocking(ds.id())
                .ok()
                .flatten()
                .is_some_and(|s| s.voters.len() == voters)
        })
    })?;
    Ok(subs)
}

/// One acknowledged write.
#[derive(Debug, Clone, Copy)]
pub struct Ack {
    pub group: usize,
    pub sent: Instant,
    pub done: Instant,
}

impl Ack {
    pub fn latency(&self) -> Duration {
        self.done - self.sent
    }
}

/// What the proposers did.
pub struct Outcome {
    pub acks: Vec<Ack>,
    pub errors: u64,
}

/// Proposers running until stopped: `proposers` tasks on one tokio thread, task `i`
/// writing to group `i % groups` and awaiting each acknowledgement before the next write.
pub struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    thread: JoinHandle<BoxResult<Outcome>>,
}

impl Load {
    pub fn start(subs: Arc<Vec<DataStructure>>, proposers: usize, payload: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let thread = std::thread::spawn({
            let (stop, acked) = (stop.clone(), acked.clone());
            move || run_proposers(subs, proposers, vec![7u8; payload], stop, acked)
        });
        Load {
            stop,
            acked,
            thread,
        }
    }

    /// Writes acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Stops proposing, waits for the writes in flight, returns every outcome.
    pub fn finish(self) -> BoxResult<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().map_err(|_| "proposers panicked")?
    }
}

fn run_proposers(
    subs: Arc<Vec<DataStructure>>,
    proposers: usize,
    payload: Vec<u8>,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> BoxResult<Outcome> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let tasks: Vec<_> = (0..proposers)
            .map(|i| {
                let (subs, payload) = (subs.clone(), payload.clone());
                let (stop, acked) = (stop.clone(), acked.clone());
                tokio::spawn(async move {
                    let group = i % subs.len();
                    let (mut acks, mut errors) = (Vec::new(), 0u64);
                    while !stop.load(Ordering::Relaxed) {
                        let sent = Instant::now();
                        match subs[group].propose(payload.clone(), PROPOSAL_TIMEOUT).await {
                            Ok(_) => {
                                acked.fetch_add(1, Ordering::Relaxed);
                                acks.push(Ack {
                                    group,
                                    sent,
                                    done: Instant::now(),
                                });
                            }
                            Err(_) => errors += 1,
                        }
                    }
                    (acks, errors)
                })
            })
            .collect();
        let mut outcome = Outcome {
            acks: Vec::new(),
            errors: 0,
        };
        for task in tasks {
            let (acks, errors) = task.await?;
            outcome.acks.extend(acks);
            outcome.errors += errors;
        }
        Ok(outcome)
    })
}

/// Empties every commit channel so delivery never pauses, until dropped.
pub struct Drainer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drainer {
    pub fn start(subs: Arc<Vec<DataStructure>>) -> Drainer {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                while !stop.load(Ordering::Relaxed) {
                    let drained: usize =
                        subs.iter().map(|ds| ds.commits().try_iter().count()).sum();
                    if drained == 0 {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
            }
        });
        Drainer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Drainer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
