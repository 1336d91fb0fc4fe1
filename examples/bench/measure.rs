//! Figures: percentiles, the machine's fdatasync latency, CPU and memory of processes, and
//! the `RESULT` line.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use copycat::internals::{GroupWrite, LogStore, SledStore, WriteBatch};
use copycat::DataStructureId;
use raft::eraftpb::Entry;

use crate::args::{Args, BoxResult};
use crate::load::Ack;

/// The `p` quantile (0..=1) of `sorted`, in milliseconds.
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// The median of `times`, in milliseconds.
fn median_ms(mut times: Vec<Duration>) -> f64 {
    times.sort();
    percentile_ms(&times, 0.5)
}

/// Median latency of `rounds` 4 KiB overwrites each followed by `fdatasync`, in a file
/// under `dir`: the floor under any durable acknowledgement on this disk.
pub fn fdatasync_ms(dir: &Path, rounds: usize) -> BoxResult<f64> {
    let path = dir.join("fdatasync-probe");
    let mut file = std::fs::File::create(&path)?;
    let block = vec![1u8; 4096];
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        times.push(t.elapsed());
    }
    std::fs::remove_file(path)?;
    Ok(median_ms(times))
}

/// Median latency of `rounds` durable storage writes as a node's storage thread makes them
/// (copycat's own `SledStore::write` of a round with one 16-byte entry of one group: one
/// sled batch, `flush` and `fdatasync`), in a fresh store under `dir`: the floor under one
/// storage round of a node.
pub fn storage_write_ms(dir: &Path, rounds: usize) -> BoxResult<f64> {
    let path = dir.join("storage-probe");
    let store = SledStore::open(&path, slog::Logger::root(slog::Discard, slog::o!()))?;
    let group = DataStructureId::new();
    let mut times = Vec::with_capacity(rounds);
    for index in 1..=rounds as u64 {
        let mut write = GroupWrite::new(group);
        write.entries.push(Entry {
            index,
            term: 1,
            data: vec![7u8; 16].into(),
            ..Default::default()
        });
        let batch = WriteBatch {
            groups: vec![write],
            meta: Vec::new(),
        };
        let t = Instant::now();
        store.write(&batch)?;
        times.push(t.elapsed());
    }
    drop(store);
    std::fs::remove_dir_all(path)?;
    Ok(median_ms(times))
}

/// Median round trip of `rounds` 64-byte messages over a loopback TCP connection between
/// two threads (Nagle off): the floor under every hop between nodes on this machine.
pub fn loopback_rtt_ms(rounds: usize) -> BoxResult<f64> {
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut conn, _) = listener.accept()?;
        conn.set_nodelay(true)?;
        let mut buf = [0u8; 64];
        for _ in 0..rounds {
            conn.read_exact(&mut buf)?;
            conn.write_all(&buf)?;
        }
        Ok(())
    });
    let mut conn = TcpStream::connect(addr)?;
    conn.set_nodelay(true)?;
    let mut buf = [7u8; 64];
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        conn.write_all(&buf)?;
        conn.read_exact(&mut buf)?;
        times.push(t.elapsed());
    }
    echo.join().map_err(|_| "echo thread panicked")??;
    Ok(median_ms(times))
}

/// CPU time (user + system) a process has used so far, from `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> BoxResult<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').ok_or("malformed /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> BoxResult<u64> {
        Ok(fields.get(i).ok_or("short /proc stat")?.parse::<u64>()?)
    };
    // Linux reports in USER_HZ, 100 per second on every mainstream architecture.
    Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
}

/// Resident memory of a process in MiB, from `/proc/<pid>/status`.
pub fn rss_mib(pid: u32) -> BoxResult<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .ok_or("no VmRSS")?
        .parse()?;
    Ok(kib as f64 / 1024.0)
}

/// Throughput and latency of acknowledged writes.
#[derive(Debug, Default)]
pub struct WriteFigures {
    pub writes_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub fsyncs_per_sec: f64,
}

impl WriteFigures {
    /// Figures of `acks` over `elapsed`, with `synced_writes` storage syncs meanwhile.
    pub fn of(acks: &[Ack], elapsed: Duration, synced_writes: u64) -> WriteFigures {
        let mut latencies: Vec<Duration> = acks.iter().map(Ack::latency).collect();
        latencies.sort();
        let secs = elapsed.as_secs_f64().max(1e-9);
        WriteFigures {
            writes_per_sec: acks.len() as f64 / secs,
            p50_ms: percentile_ms(&latencies, 0.5),
            p99_ms: percentile_ms(&latencies, 0.99),
            p999_ms: percentile_ms(&latencies, 0.999),
            fsyncs_per_sec: synced_writes as f64 / secs,
        }
    }
}

/// Prints the `RESULT` line: the common figures, then `extra` `key=value` pairs.
pub fn print_result(args: &Args, figures: &WriteFigures, extra: &[(&str, String)]) {
    let mut line = format!(
        "RESULT scenario={} groups={} payload={} writes_per_sec={:.0} p50_ms={:.2} \
         p99_ms={:.2} p999_ms={:.2} fsyncs_per_sec={:.0}",
        args.scenario.name(),
        args.groups,
        args.payload,
        figures.writes_per_sec,
        figures.p50_ms,
        figures.p99_ms,
        figures.p999_ms,
        figures.fsyncs_per_sec
    );
    for (key, value) in extra {
        line.push_str(&format!(" {key}={value}"));
    }
    line.push_str(&format!(
        " allocator={} secure={}",
        crate::ALLOCATOR,
        args.secure
    ));
    println!("{line}");
}
