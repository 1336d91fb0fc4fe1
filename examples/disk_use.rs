//! Disk use against live data, with large values: how much each node keeps on disk (log,
//! snapshots, sled's own overhead) for the state it holds.
//!
//! ```text
//! cargo run --release --example disk_use -- --keys 500 --rounds 4 --max-log-mib 4
//! cargo run --release --example disk_use -- --keys 500 --rounds 4 --max-log-mib 4 --percent 0
//! ```
//!
//! Three nodes in this process (loopback, temp dirs, fsync on) share one
//! `ReplicatedMap<u32, Vec<u8>>`. `--rounds` times over, every one of `--keys` keys is
//! overwritten with a fresh 64 KiB value, so the live data stays `keys × 64 KiB` while
//! `rounds` times as much is written. Every quarter round each node's data dir is measured;
//! the peak over the run and the size at the end are reported against the live data.
//! `--percent` sets `Config::snapshot_log_percent` (0: snapshots every
//! `snapshot_max_log_bytes` whatever the state's size, the former pacing), and
//! `--max-log-mib` `Config::snapshot_max_log_bytes` (default 4 here: the run is a scaled
//! copy of a 700 MB state under the default 64 MiB). The last line is
//! `RESULT scenario=disk_use percent=.. max_log_mib=.. live_mib=.. written_mib=.. peak_mib=..
//! peak_ratio=.. end_mib=.. end_ratio=.. end_snapshots_mib=.. disk_written_mib=..`, sizes of the largest node
//! (`end_snapshots_mib`: its snapshot files), and `disk_written_mib`, what the three nodes
//! wrote to storage during the writes (`/proc/self/io`).

use std::path::Path;
use std::time::Duration;

use copycat::{Config, CopyCat, ReplicatedMap};

const VALUE_BYTES: usize = 64 << 10;

struct Options {
    keys: u32,
    rounds: u32,
    percent: u64,
    max_log_mib: u64,
}

fn parse() -> Result<Options, String> {
    let mut options = Options {
        keys: 500,
        rounds: 4,
        percent: Config::default().snapshot_log_percent,
        max_log_mib: 4,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let number = |v: &str| v.parse::<u64>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--keys" => options.keys = u32::try_from(number(&value)?).map_err(|e| e.to_string())?,
            "--rounds" => {
                options.rounds = u32::try_from(number(&value)?).map_err(|e| e.to_string())?
            }
            "--percent" => options.percent = number(&value)?,
            "--max-log-mib" => options.max_log_mib = number(&value)?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(options)
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Bytes this process has written to storage so far (`write_bytes` of `/proc/self/io`;
/// 0 where there is no such file).
fn bytes_written() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = parse()?;
    let root = tempfile::tempdir()?;
    let dirs: Vec<_> = (0..3)
        .map(|i| root.path().join(format!("node{i}")))
        .collect();
    let mut nodes: Vec<CopyCat> = Vec::new();
    for dir in &dirs {
        let peers = nodes.first().map(|n| vec![n.gossip_addr().to_string()]);
        nodes.push(CopyCat::start(Config {
            data_dir: dir.clone(),
            port: 0,
            gossip_port: 0,
            peers: peers.unwrap_or_default(),
            bootstrap_expect: 3,
            snapshot_log_percent: options.percent,
            snapshot_max_log_bytes: options.max_log_mib << 20,
            logger: slog::Logger::root(slog::Discard, slog::o!()),
            ..Config::default()
        })?);
    }
    let id = nodes[0].new_data_structure_id();
    let maps: Vec<ReplicatedMap<u32, Vec<u8>>> = nodes
        .iter()
        .map(|n| ReplicatedMap::open(n, id).map(|m| m.with_timeout(Duration::from_secs(60))))
        .collect::<Result<_, _>>()?;

    let written_before = bytes_written();
    let largest = || dirs.iter().map(|d| dir_bytes(d)).max().unwrap_or(0);
    let mut peak = 0;
    let quarter = (options.keys / 4).max(1);
    for round in 0..options.rounds {
        for key in 0..options.keys {
            let mut value = vec![0u8; VALUE_BYTES];
            value[..8].copy_from_slice(&(u64::from(round) << 32 | u64::from(key)).to_be_bytes());
            maps[key as usize % 3].insert_blocking(key, value)?;
            if key % quarter == 0 {
                peak = peak.max(largest());
            }
        }
    }
    for map in &maps {
        // A linearizable read makes the replica apply everything acknowledged first.
        map.get_linearizable_blocking(&0)?;
        assert_eq!(
            map.len()?,
            options.keys as usize,
            "every replica holds every key"
        );
    }
    let disk_written = bytes_written().saturating_sub(written_before);
    let end = largest();
    peak = peak.max(end);
    let snapshots = dirs
        .iter()
        .map(|d| dir_bytes(&d.join("snapshots")))
        .max()
        .unwrap_or(0);
    for node in &nodes {
        node.shutdown();
    }
    let live = u64::from(options.keys) * VALUE_BYTES as u64;
    let written = live * u64::from(options.rounds);
    println!(
        "RESULT scenario=disk_use percent={} max_log_mib={} live_mib={:.0} written_mib={:.0} peak_mib={:.0} \
         peak_ratio={:.2} end_mib={:.0} end_ratio={:.2} end_snapshots_mib={:.0} disk_written_mib={:.0}",
        options.percent,
        options.max_log_mib,
        mib(live),
        mib(written),
        mib(peak),
        peak as f64 / live as f64,
        mib(end),
        end as f64 / live as f64,
        mib(snapshots),
        mib(disk_written)
    );
    Ok(())
}
