//! Chaos with real processes: 3 to 5 `hashmap` nodes on loopback under a continuous
//! stream of acknowledged writes, killed with SIGKILL and restarted over and over (also
//! the leader right after a restart, while it may be streaming a snapshot); afterwards
//! every acknowledged write must be readable on every node.
//!
//! ```text
//! cargo run --release --example chaos -- --nodes 5 --seconds 300 --seed 7
//! ```
//!
//! Prints each fault as it happens and a `RESULT` line at the end; exits 1 on a lost
//! write. `tests/multiprocess.rs` runs a short version of the same driver.

use std::path::Path;
use std::time::{Duration, Instant};

use copycat_testkit::chaos::{self, ChaosConfig};
use copycat_testkit::cluster::{self, ProcessCluster};

const USAGE: &str = "usage: chaos [--nodes 3..5] [--seconds N] [--seed N] [--snapshot-interval N]";

fn main() {
    let config = match parse(std::env::args().skip(1)) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("chaos: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let started = Instant::now();
    let say = |what: &str| println!("[{:>6.1}s] {what}", started.elapsed().as_secs_f64());
    let result = cluster_for(&config).and_then(|nodes| chaos::run(nodes, &config, say));
    match result {
        Ok(report) => println!(
            "RESULT nodes={} seconds={} kills={} leader_kills_after_restart={} restarts={} acked={} failed_or_unknown={} lost=0",
            config.nodes,
            config.duration.as_secs(),
            report.kills,
            report.leader_kills_after_restart,
            report.restarts,
            report.acked,
            report.failed
        ),
        Err(e) => {
            eprintln!("chaos failed: {e}");
            std::process::exit(1);
        }
    }
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<ChaosConfig, String> {
    let mut config = ChaosConfig {
        nodes: 3,
        duration: Duration::from_secs(60),
        seed: 1,
        snapshot_interval: 200,
        writers: 4,
    };
    while let Some(flag) = args.next() {
        let value: u64 = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?
            .parse()
            .map_err(|_| format!("{flag} needs a number"))?;
        match flag.as_str() {
            "--nodes" if (3..=5).contains(&value) => config.nodes = value as usize,
            "--seconds" => config.duration = Duration::from_secs(value),
            "--seed" => config.seed = value,
            "--snapshot-interval" if value > 0 => config.snapshot_interval = value,
            _ => return Err(format!("bad flag or value: {flag} {value}")),
        }
    }
    Ok(config)
}

/// The hashmap processes, built first (with this executable's profile) if needed.
fn cluster_for(config: &ChaosConfig) -> Result<ProcessCluster, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    cluster::cargo_build_example(
        Path::new(&cargo),
        Path::new(env!("CARGO_MANIFEST_DIR")),
        "hashmap",
    )?;
    let interval = config.snapshot_interval.to_string();
    Ok(ProcessCluster::new(cluster::hashmap_path()?)?
        .with_args(&["--snapshot-interval", &interval]))
}
