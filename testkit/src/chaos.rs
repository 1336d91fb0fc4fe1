//! Chaos against real `hashmap` processes: writers keep PUTting fresh keys while nodes are
//! killed with SIGKILL and restarted over and over (sometimes the leader right after a
//! restart, while it may be streaming a snapshot to the restarted node); afterwards every
//! acknowledged write must be readable, with its value, on every node.
//!
//! Used by `examples/chaos.rs` (the long run) and `tests/multiprocess.rs` (a short one).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::cluster::{wait_until, ProcessCluster, QUICK};
use crate::http;

/// Client timeout of one PUT: the node's commit wait (5 s) plus its apply wait, and slack.
pub const PUT_TIMEOUT: Duration = Duration::from_secs(12);

/// Deadline of each convergence phase; a healthy cluster needs a few seconds.
pub const PHASE: Duration = Duration::from_secs(60);

/// One write the cluster acknowledged with a 200.
#[derive(Debug, Clone)]
pub struct Acked {
    /// The key written (`w<thread>-<n>`, each written once).
    pub key: String,
    /// The value written under it.
    pub value: String,
    /// The node it was sent to.
    pub via: usize,
    /// When the PUT was sent.
    pub sent: Instant,
    /// When its 200 arrived.
    pub at: Instant,
}

/// Locks `m`, tolerating poison (a panicked writer must not hide the others' writes).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Threads that PUT fresh keys round-robin through all nodes until stopped, recording the
/// acknowledged ones. Writes to a dead node fail at connect and are skipped; a 503 or a
/// timeout leaves the outcome unknown, so it is not checked.
pub struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Acked>>>,
    handles: Vec<std::thread::JoinHandle<usize>>,
}

impl Writer {
    /// Starts `threads` writers over the nodes at `addrs`.
    pub fn start(addrs: Vec<SocketAddr>, threads: usize) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let handles = (0..threads)
            .map(|t| {
                let (stop, acked, addrs) = (stop.clone(), acked.clone(), addrs.clone());
                std::thread::spawn(move || write_until_stopped(t, &addrs, &stop, &acked))
            })
            .collect();
        Writer {
            stop,
            acked,
            handles,
        }
    }

    /// The writes acknowledged so far.
    pub fn acked(&self) -> Vec<Acked> {
        lock(&self.acked).clone()
    }

    /// How many writes were acknowledged so far.
    pub fn count(&self) -> usize {
        lock(&self.acked).len()
    }

    /// Stops the writers; returns the acknowledged writes and how many failed.
    pub fn finish(mut self) -> (Vec<Acked>, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let failed = self.handles.drain(..).filter_map(|h| h.join().ok()).sum();
        (self.acked(), failed)
    }
}

/// Writer thread `t`'s loop; returns how many of its writes failed or had no known outcome.
fn write_until_stopped(
    t: usize,
    addrs: &[SocketAddr],
    stop: &AtomicBool,
    acked: &Mutex<Vec<Acked>>,
) -> usize {
    let mut failed = 0;
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let via = (n + t) % addrs.len();
        let (key, value) = (format!("w{t}-{n}"), format!("value-{t}-{n}"));
        n += 1;
        let sent = Instant::now();
        match http::put(
            addrs[via],
            &format!("/kv/{key}"),
            value.as_bytes(),
            PUT_TIMEOUT,
        ) {
            Ok(r) if r.status == 200 => lock(acked).push(Acked {
                key,
                value,
                via,
                sent,
                at: Instant::now(),
            }),
            _ => {
                failed += 1;
                // Not a spin on a dead node's refused connections.
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    failed
}

impl Drop for Writer {
    fn drop(&mut self) {
        // On a failed assertion, stop the threads rather than leave them writing.
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Waits until node `i` serves every write in `acked` with its value.
pub fn check_all_readable(nodes: &ProcessCluster, i: usize, acked: &[Acked]) -> Result<(), String> {
    let mut missing: Vec<&Acked> = acked.iter().collect();
    let what = format!("node {i} serves all {} acknowledged keys", acked.len());
    wait_until(&what, PHASE, || {
        missing.retain(|a| {
            !matches!(http::get(nodes.http(i), &format!("/kv/{}", a.key), QUICK),
                Ok(r) if r.status == 200 && r.body == a.value.as_bytes())
        });
        missing.is_empty()
    })
    .map(|_| ())
    .map_err(|e| {
        let sample: Vec<_> = missing.iter().take(10).map(|a| &a.key).collect();
        format!("{e}: {} missing, e.g. {sample:?}", missing.len())
    })
}

/// The shape of a chaos run.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// Nodes in the cluster (the faults keep a majority running).
    pub nodes: usize,
    /// How long faults are injected, before healing and checking.
    pub duration: Duration,
    /// Seed of the fault schedule (the same seed gives the same sequence of decisions).
    pub seed: u64,
    /// Given to every node, small so restarted nodes catch up from snapshots.
    pub snapshot_interval: u64,
    /// Concurrent writer threads (see [`Writer`]).
    pub writers: usize,
}

/// What a chaos run did.
#[derive(Debug, Clone, Default)]
pub struct ChaosReport {
    /// Nodes killed with SIGKILL, leaders after a restart included.
    pub kills: usize,
    /// Of those, leaders killed right after another node's restart.
    pub leader_kills_after_restart: usize,
    /// Killed nodes restarted on their data dirs.
    pub restarts: usize,
    /// Writes acknowledged (each one checked on every node).
    pub acked: usize,
    /// Writes that failed or whose outcome is unknown (not checked).
    pub failed: usize,
}

/// A small deterministic generator for the fault schedule (xorshift64*).
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

/// Runs the chaos: starts the cluster, kills and restarts nodes for `duration` under a
/// continuous stream of writes, heals, and checks every acknowledged write on every node.
pub fn run(
    mut nodes: ProcessCluster,
    config: &ChaosConfig,
    say: impl Fn(&str),
) -> Result<ChaosReport, String> {
    let n = config.nodes;
    nodes.form(n)?;
    wait_until("the cluster forms", PHASE, || nodes.converged(n))?;
    say(&format!("{n} nodes up; chaos for {:?}", config.duration));
    let writer = Writer::start((0..n).map(|i| nodes.http(i)).collect(), config.writers);
    let mut report = ChaosReport::default();
    let mut dice = Dice(config.seed | 1);
    let start = Instant::now();
    while start.elapsed() < config.duration {
        // The fault schedule itself: a pause of 0.3 to 2 s between faults.
        std::thread::sleep(Duration::from_millis(300 + dice.below(1700)));
        step(&mut nodes, &mut dice, &mut report, &say)?;
    }
    for i in 0..n {
        if !nodes.is_running(i) {
            restart(&mut nodes, i, &mut report)?;
        }
    }
    wait_until("the cluster converges after the chaos", PHASE, || {
        nodes.converged(n)
    })?;
    let settled = writer.count();
    wait_until("writes are acknowledged after the chaos", PHASE, || {
        writer.count() >= settled + 10
    })?;
    let (acked, failed) = writer.finish();
    (report.acked, report.failed) = (acked.len(), failed);
    say(&format!(
        "{} writes acknowledged ({failed} failed or unknown); checking every node",
        acked.len()
    ));
    for i in 0..n {
        check_all_readable(&nodes, i, &acked)?;
    }
    Ok(report)
}

/// One fault: kill a running node (never more than a minority), or restart a dead one and
/// sometimes kill the leader right after, while it may be streaming it a snapshot.
fn step(
    nodes: &mut ProcessCluster,
    dice: &mut Dice,
    report: &mut ChaosReport,
    say: &impl Fn(&str),
) -> Result<(), String> {
    let n = nodes.len();
    let running: Vec<usize> = (0..n).filter(|i| nodes.is_running(*i)).collect();
    let down: Vec<usize> = (0..n).filter(|i| !nodes.is_running(*i)).collect();
    let may_kill = down.len() < (n - 1) / 2;
    if may_kill && (down.is_empty() || dice.below(2) == 0) {
        let victim = running[dice.below(running.len() as u64) as usize];
        nodes.kill(victim);
        report.kills += 1;
        say(&format!("killed node {victim}"));
        return Ok(());
    }
    let Some(&back) = down.get(dice.below(down.len() as u64) as usize) else {
        return Ok(());
    };
    restart(nodes, back, report)?;
    say(&format!("restarted node {back}"));
    if dice.below(3) == 0 {
        // The restarted node does not know the leader yet: ask one that stayed up.
        let witness = (0..n).find(|i| *i != back && nodes.is_running(*i));
        let leader = witness.and_then(|w| nodes.leader_seen_by(w));
        if let Some(leader) = leader.filter(|l| *l != back) {
            std::thread::sleep(Duration::from_millis(dice.below(300)));
            nodes.kill(leader);
            report.kills += 1;
            report.leader_kills_after_restart += 1;
            say(&format!(
                "killed leader node {leader} right after the restart"
            ));
        }
    }
    Ok(())
}

/// Restarts killed node `i`, joining through the running nodes, and counts it.
fn restart(nodes: &mut ProcessCluster, i: usize, report: &mut ChaosReport) -> Result<(), String> {
    let peers: Vec<SocketAddr> = (0..nodes.len())
        .filter(|j| *j != i && nodes.is_running(*j))
        .map(|j| nodes.info(j).gossip)
        .collect();
    nodes.restart(i, &peers)?;
    report.restarts += 1;
    Ok(())
}
