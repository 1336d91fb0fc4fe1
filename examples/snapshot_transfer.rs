//! Snapshot transfer rate on loopback: a new node catching up from a snapshot.
//!
//! ```text
//! cargo run --release --example snapshot_transfer -- --mib 48
//! ```
//!
//! Three nodes in this process (loopback, temp dirs, fsync on) hold one data structure
//! whose state is `--mib` MiB (1 MiB values under distinct keys); every replica has taken a
//! snapshot and compacted its log. A fourth node then subscribes: it can only catch up
//! from a snapshot. The clock runs from its subscription to the moment its application
//! holds the whole state. The last line is `RESULT snapshot_mib=.. seconds=.. mib_per_sec=..`.
//!
//! The snapshot file is streamed in 1 MiB chunks with at most 8 MiB in flight.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use copycat::{Commit, Config, CopyCat, DataStructure, DataStructureId};

const T: Duration = Duration::from_secs(120);
const VALUE_BYTES: usize = 1000 * 1024;

/// A map from key to value size: enough to know the state is complete without keeping
/// the bytes twice.
#[derive(Default)]
struct State {
    applied: u64,
    sizes: Vec<(u32, usize)>,
}

impl State {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (key, size) in &self.sizes {
            out.extend_from_slice(&key.to_be_bytes());
            out.resize(out.len() + size, 0xAB);
        }
        out
    }
}

fn subscribe(
    node: &CopyCat,
    id: DataStructureId,
) -> copycat::Result<(Arc<DataStructure>, Arc<Mutex<State>>)> {
    let state = Arc::new(Mutex::new(State::default()));
    let provider = {
        let state = state.clone();
        move || {
            let s = state.lock().ok()?;
            Some((s.applied, s.encode()))
        }
    };
    let ds = Arc::new(node.subscribe(id, provider)?);
    let (ds2, state2) = (ds.clone(), state.clone());
    std::thread::spawn(move || {
        while let Ok(commit) = ds2.commits().recv() {
            let Ok(mut s) = state2.lock() else { return };
            match commit {
                Commit::Entry { index, data } => {
                    let key = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                    s.sizes.push((key, data.len() - 4));
                    s.applied = index;
                }
                Commit::Snapshot { index } => {
                    let bytes = ds2.load_snapshot(index).unwrap_or_default();
                    s.sizes = bytes
                        .chunks(4 + VALUE_BYTES)
                        .map(|c| (u32::from_be_bytes([c[0], c[1], c[2], c[3]]), c.len() - 4))
                        .collect();
                    s.applied = index;
                }
                _ => {}
            }
        }
    });
    Ok((ds, state))
}

fn wait(what: &str, mut cond: impl FnMut() -> bool) -> Result<(), String> {
    let end = Instant::now() + T;
    while Instant::now() < end {
        if cond() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(format!("timed out waiting for {what}"))
}

/// Starts node `i`; replicas snapshot about twice while the state is written, so the
/// writes are not dominated by re-encoding a growing state.
fn start(
    root: &std::path::Path,
    i: usize,
    peers: Vec<String>,
    mib: usize,
) -> copycat::Result<CopyCat> {
    CopyCat::start(Config {
        data_dir: root.join(format!("node{i}")),
        port: 0,
        gossip_port: 0,
        peers,
        snapshot_interval: (mib as u64 / 2).max(8),
        ..Config::default()
    })
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let mib: usize = args
        .iter()
        .position(|a| a == "--mib")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(48);
    let root = tempfile::tempdir()?;
    let first = start(root.path(), 0, Vec::new(), mib)?;
    let seed = vec![first.gossip_addr().to_string()];
    let nodes = vec![
        first.clone(),
        start(root.path(), 1, seed.clone(), mib)?,
        start(root.path(), 2, seed.clone(), mib)?,
    ];
    wait("3 joined nodes", || {
        nodes
            .iter()
            .all(|n| n.has_joined_blocking().unwrap_or(false))
    })?;
    let id = DataStructureId::new();
    let subs: Vec<_> = nodes
        .iter()
        .map(|n| subscribe(n, id))
        .collect::<Result<_, _>>()?;
    let mut last = 0;
    for key in 0..mib as u32 {
        let mut data = key.to_be_bytes().to_vec();
        data.resize(4 + VALUE_BYTES, 0xAB);
        last = subs[0].0.propose_blocking(data, T)?;
    }
    // A few small writes so every replica snapshots past the big ones.
    for key in 0..16u32 {
        last = subs[0]
            .0
            .propose_blocking((1_000_000 + key).to_be_bytes().to_vec(), T)?;
    }
    wait("every replica applied the state", || {
        subs.iter()
            .all(|(_, s)| s.lock().map(|s| s.applied >= last).unwrap_or(false))
    })?;
    let fourth = start(root.path(), 3, seed, mib)?;
    wait("the fourth node joined", || {
        fourth.has_joined_blocking().unwrap_or(false)
    })?;
    let started = Instant::now();
    let (_late, state) = subscribe(&fourth, id)?;
    wait("the new node holds the whole state", || {
        state
            .lock()
            .map(|s| s.sizes.iter().filter(|(_, n)| *n == VALUE_BYTES).count() == mib)
            .unwrap_or(false)
    })?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "RESULT snapshot_mib={mib} seconds={seconds:.2} mib_per_sec={:.1}",
        mib as f64 * VALUE_BYTES as f64 / (1 << 20) as f64 / seconds
    );
    fourth.shutdown();
    for n in nodes {
        n.shutdown();
    }
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("snapshot_transfer: {e}");
        std::process::exit(1);
    }
}
