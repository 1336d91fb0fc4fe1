//! Acknowledged-write throughput of a 3-process cluster on loopback, fsync on.
//!
//! ```text
//! cargo run --release --example throughput -- --groups 64 --proposers 256 --seconds 10
//! ```
//!
//! This process founds the cluster and drives the load; it starts two copies of itself
//! (`--role replica`) as the other replicas. Every group is created with 3 voters, so each
//! acknowledged write is durable (fdatasync) on at least 2 of the 3 processes. Proposers are
//! threads calling `propose_and_wait` in a loop; proposer `i` writes to group `i % groups`.
//! The last line is machine-readable:
//! `RESULT groups=.. payload=.. proposers=.. writes_per_sec=.. p50_ms=.. p99_ms=..`

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use copycat::{Config, CopyCat, DataStructure};

const TIMEOUT: Duration = Duration::from_secs(10);

struct Args {
    role_replica: bool,
    data_dir: Option<String>,
    peers: Vec<String>,
    groups: usize,
    proposers: usize,
    seconds: u64,
    payload: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        role_replica: false,
        data_dir: None,
        peers: Vec::new(),
        groups: 1,
        proposers: 64,
        seconds: 10,
        payload: 16,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--role" => args.role_replica = value()? == "replica",
            "--data-dir" => args.data_dir = Some(value()?),
            "--peers" => args.peers = value()?.split(',').map(str::to_string).collect(),
            "--groups" => args.groups = number(value()?)?.max(1),
            "--proposers" => args.proposers = number(value()?)?.max(1),
            "--seconds" => args.seconds = number(value()?)? as u64,
            "--payload" => args.payload = number(value()?)?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

fn node_config(dir: &std::path::Path, peers: Vec<String>) -> Config {
    Config {
        data_dir: dir.to_path_buf(),
        port: 0,
        gossip_port: 0,
        peers,
        proposal_timeout: TIMEOUT,
        ..Config::default()
    }
}

/// A replica process: runs a node until its stdin closes (the driver exited).
fn run_replica(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let dir = args.data_dir.clone().ok_or("--data-dir is required")?;
    let node = CopyCat::start(node_config(dir.as_ref(), args.peers.clone()))?;
    println!("READY {}", node.gossip_addr());
    let mut line = String::new();
    while std::io::stdin().read_line(&mut line)? > 0 {
        line.clear();
    }
    node.shutdown();
    Ok(())
}

/// Child processes, killed when dropped (also on panic).
struct Replicas(Vec<Child>);

impl Drop for Replicas {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn_replica(dir: &std::path::Path, seed: &str) -> Result<Child, Box<dyn std::error::Error>> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(["--role", "replica", "--peers", seed])
        .arg("--data-dir")
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    if !line.starts_with("READY") {
        return Err(format!("replica did not start: {line:?}").into());
    }
    Ok(child)
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if cond() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("timed out waiting for {what}"))
}

/// Empties every commit channel so delivery never pauses.
fn drain(subs: Arc<Vec<DataStructure>>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let mut idle = true;
        for ds in subs.iter() {
            while ds.commits().try_recv().is_ok() {
                idle = false;
            }
        }
        if idle {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn run_driver(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let root = tempfile::tempdir()?;
    let node = CopyCat::start(node_config(&root.path().join("node0"), Vec::new()))?;
    let seed = node.gossip_addr().to_string();
    let _replicas = Replicas(vec![
        spawn_replica(&root.path().join("node1"), &seed)?,
        spawn_replica(&root.path().join("node2"), &seed)?,
    ]);
    wait_for("3 members", || {
        node.members()
            .map(|m| m.iter().filter(|m| m.state == "alive").count() == 3)
            .unwrap_or(false)
    })?;
    let subs: Vec<DataStructure> = (0..args.groups)
        .map(|_| node.subscribe(node.new_data_structure_id(), copycat::no_snapshots))
        .collect::<Result<_, _>>()?;
    for ds in &subs {
        ds.propose_and_wait(b"warm-up".to_vec(), Duration::from_secs(30))?;
    }
    for ds in &subs {
        wait_for("3 voters", || {
            node.group_status(ds.id())
                .ok()
                .flatten()
                .is_some_and(|s| s.voters.len() == 3)
        })?;
    }
    let subs = Arc::new(subs);
    let stop = Arc::new(AtomicBool::new(false));
    let drainer = std::thread::spawn({
        let (subs, stop) = (subs.clone(), stop.clone());
        move || drain(subs, stop)
    });
    let payload = vec![7u8; args.payload];
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let workers: Vec<_> = (0..args.proposers)
        .map(|i| {
            let (subs, payload) = (subs.clone(), payload.clone());
            std::thread::spawn(move || {
                let ds = &subs[i % subs.len()];
                let (mut latencies, mut errors) = (Vec::new(), 0u64);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match ds.propose_and_wait(payload.clone(), TIMEOUT) {
                        Ok(_) => latencies.push(t.elapsed()),
                        Err(_) => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for w in workers {
        let (l, e) = w.join().map_err(|_| "proposer panicked")?;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = drainer.join();
    latencies.sort();
    let rate = latencies.len() as f64 / elapsed;
    println!(
        "{} acknowledged writes in {elapsed:.1} s, {errors} errors",
        latencies.len()
    );
    println!(
        "RESULT groups={} payload={} proposers={} writes_per_sec={:.0} p50_ms={:.2} p99_ms={:.2}",
        args.groups,
        args.payload,
        args.proposers,
        rate,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99)
    );
    node.shutdown();
    Ok(())
}

fn main() {
    let result = parse_args().map_err(Into::into).and_then(|args| {
        if args.role_replica {
            run_replica(&args)
        } else {
            run_driver(&args)
        }
    });
    if let Err(e) = result {
        eprintln!("throughput: {e}");
        std::process::exit(1);
    }
}
