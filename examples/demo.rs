//! A guided tour of a three-node copycat hashmap, as real processes on loopback.
//!
//! ```text
//! cargo run --release --example demo
//! ```
//!
//! It starts three `hashmap` example processes (building that example first if it is not
//! next to this one), writes through one node and reads from the others, kills the group's
//! leader with SIGKILL, keeps writing through the survivors, restarts the killed node on
//! its data dir and watches it catch up, then prints a short report. Everything runs in a
//! temp dir that is removed at the end; the nodes are killed on every exit path.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use copycat_testkit::cluster::{self, wait_until, ProcessCluster, QUICK};
use copycat_testkit::http;

/// Keys written before the kill, and again while the leader is down.
const KEYS_PER_PHASE: usize = 20;

/// How long a single write may keep being retried (503s during a failover).
const WRITE_DEADLINE: Duration = Duration::from_secs(20);

/// Client timeout of one PUT: the node's own commit wait (5 s) plus its apply wait.
const PUT_TIMEOUT: Duration = Duration::from_secs(12);

/// Deadline for cluster formation, replication to readers, and catch-up.
const CONVERGE_DEADLINE: Duration = Duration::from_secs(30);

fn main() {
    let start = Instant::now();
    if let Err(e) = run(start) {
        eprintln!("demo failed: {e}");
        std::process::exit(1);
    }
}

/// Prints a progress line stamped with the time since the demo started.
macro_rules! say {
    ($start:expr, $($arg:tt)*) => {
        println!("[{:>5.1}s] {}", $start.elapsed().as_secs_f64(), format!($($arg)*))
    };
}

fn run(start: Instant) -> Result<(), String> {
    let bin = locate_hashmap()?;
    say!(start, "using {}", bin.display());
    let mut nodes = ProcessCluster::new(bin)?;
    // Ctrl-C or SIGTERM end the process without running destructors: kill the nodes here.
    let cleanup = nodes.cleanup_handle();
    ctrlc::set_handler(move || {
        cleanup();
        eprintln!("demo interrupted; nodes killed");
        std::process::exit(130);
    })
    .map_err(|e| format!("signal handler: {e}"))?;
    let result = tour(&mut nodes, start);
    if result.is_err() {
        nodes.dump_logs(30);
    }
    result
    // `nodes` drops here: every process is killed and the temp dir removed.
}

/// The hashmap binary next to this executable, built first when it is missing or older
/// than this executable (`cargo run --example demo` builds only the demo, so a stale
/// hashmap would otherwise be run against a changed library).
fn locate_hashmap() -> Result<std::path::PathBuf, String> {
    let bin = cluster::hashmap_path()?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let stale = match (modified(&bin), modified(&me)) {
        (Some(bin_time), Some(my_time)) => bin_time < my_time,
        (None, _) => true,
        (Some(_), None) => false,
    };
    if stale {
        // `cargo run` tells the program which cargo ran it.
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let profile = if cfg!(debug_assertions) {
            ""
        } else {
            " --release"
        };
        println!("hashmap example missing or older than the demo: cargo build{profile} --example hashmap");
        cluster::cargo_build_example(
            Path::new(&cargo),
            Path::new(env!("CARGO_MANIFEST_DIR")),
            "hashmap",
        )?;
    }
    if !bin.exists() {
        return Err(format!("{} is missing after the build", bin.display()));
    }
    Ok(bin)
}

/// PUTs `key`, retrying on 503s and connection errors, trying each of `targets` in
/// turn, until one node acknowledges or `deadline` passes; returns the node index used.
fn put_retrying(
    nodes: &ProcessCluster,
    targets: &[usize],
    key: &str,
    value: &str,
    deadline: Duration,
) -> Result<usize, String> {
    let begin = Instant::now();
    let mut last_error = String::new();
    for attempt in 0.. {
        let i = targets[attempt % targets.len()];
        match http::put(
            nodes.http(i),
            &format!("/kv/{key}"),
            value.as_bytes(),
            PUT_TIMEOUT,
        ) {
            Ok(r) if r.status == 200 => return Ok(i),
            Ok(r) => last_error = format!("node {i}: {} {}", r.status, r.text().trim()),
            Err(e) => last_error = format!("node {i}: {e}"),
        }
        if begin.elapsed() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "PUT {key} not acknowledged within {deadline:?}: {last_error}"
    ))
}

/// Waits until node `i` serves every `(key, value)` in `kv`.
fn wait_readable(
    nodes: &ProcessCluster,
    i: usize,
    kv: &[(String, String)],
) -> Result<Duration, String> {
    let mut missing = kv.to_vec();
    wait_until(
        &format!("node {i} serves all {} keys", kv.len()),
        CONVERGE_DEADLINE,
        || {
            missing.retain(|(k, v)| {
                !matches!(http::get(nodes.http(i), &format!("/kv/{k}"), QUICK),
                    Ok(r) if r.status == 200 && r.body == v.as_bytes())
            });
            missing.is_empty()
        },
    )
}

fn tour(nodes: &mut ProcessCluster, start: Instant) -> Result<(), String> {
    // 1. Three nodes: the first founds the cluster, the others join through its gossip
    // port; with --bootstrap-expect 3 the map's group starts with all three as voters.
    nodes.form(3)?;
    for i in 0..3 {
        let n = nodes.info(i);
        say!(
            start,
            "node {i}: id {} http {} raft {} gossip {}",
            n.node_id,
            n.http,
            n.raft,
            n.gossip
        );
    }
    wait_until(
        "3 alive members and a 3-voter group with a leader",
        CONVERGE_DEADLINE,
        || nodes.converged(3),
    )?;
    let group = nodes.status(0)?["group"].clone();
    say!(
        start,
        "cluster formed: 3 members, group of {} voters (replication factor {}) with a leader; \
         it survives {} node failure(s)",
        group["voters"].as_array().map_or(0, Vec::len),
        group["replication_factor"],
        group["tolerated_failures"]
    );

    // 2. Write through node 0, read from nodes 1 and 2.
    let mut written: Vec<(String, String)> = Vec::new();
    let t = Instant::now();
    for k in 0..KEYS_PER_PHASE {
        let (key, value) = (
            format!("before-{k}"),
            format!("value {k} written before the kill"),
        );
        put_retrying(nodes, &[0], &key, &value, WRITE_DEADLINE)?;
        written.push((key, value));
    }
    let write_time = t.elapsed();
    say!(
        start,
        "wrote {KEYS_PER_PHASE} keys through node 0 in {write_time:.2?}"
    );
    for i in 1..3 {
        let took = wait_readable(nodes, i, &written)?;
        say!(
            start,
            "node {i} serves all of them (visible after {took:.2?} more)"
        );
    }

    // 3. Kill the group's leader.
    let victim = nodes
        .leader_seen_by(0)
        .ok_or("node 0 knows no leader among the nodes")?;
    let survivors: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    say!(start, "killing the leader, node {victim} (SIGKILL)");
    nodes.kill(victim);
    let killed_at = Instant::now();

    // 4. Keep writing through the survivors; the first success measures the failover.
    let mut recovered_after = None;
    for k in 0..KEYS_PER_PHASE {
        let (key, value) = (
            format!("after-{k}"),
            format!("value {k} written after the kill"),
        );
        let via = put_retrying(nodes, &survivors, &key, &value, WRITE_DEADLINE)?;
        if recovered_after.is_none() {
            let took = killed_at.elapsed();
            recovered_after = Some(took);
            say!(
                start,
                "first write after the kill acknowledged by node {via} after {took:.2?}"
            );
        }
        written.push((key, value));
    }
    let recovered_after = recovered_after.unwrap_or_default();
    let new_leader = nodes.leader_seen_by(survivors[0]);
    say!(
        start,
        "wrote {KEYS_PER_PHASE} more keys through the survivors; leader is now node {}",
        new_leader.map_or("?".to_string(), |l| l.to_string())
    );

    // 5. Restart the killed node on its data dir and ports; it catches up from the others.
    let peers: Vec<SocketAddr> = survivors.iter().map(|i| nodes.info(*i).gossip).collect();
    let restarted_at = Instant::now();
    nodes.restart(victim, &peers)?;
    say!(start, "restarted node {victim} on its data dir and ports");
    wait_readable(nodes, victim, &written)?;
    let catch_up = restarted_at.elapsed();
    say!(
        start,
        "node {victim} serves all {} keys, {catch_up:.2?} after its restart",
        written.len()
    );
    wait_until("the cluster to converge again", CONVERGE_DEADLINE, || {
        nodes.converged(3)
    })?;
    say!(
        start,
        "cluster converged again: 3 alive members, 3 voters, one leader"
    );

    // 6. Every node agrees on every key.
    for i in 0..3 {
        wait_readable(nodes, i, &written)?;
    }
    let applied: Vec<String> = (0..3)
        .map(|i| {
            nodes
                .status(i)
                .map(|s| s["group"]["applied_index"].to_string())
                .unwrap_or_else(|e| e)
        })
        .collect();

    println!();
    println!("report");
    let line = |label: &str, value: String| println!("  {label:<30}{value}");
    line("writes acknowledged:", written.len().to_string());
    line(
        &format!("first {KEYS_PER_PHASE} writes (3 nodes):"),
        format!("{write_time:.2?}"),
    );
    line(
        "first write after the kill:",
        format!("{recovered_after:.2?} after SIGKILL of the leader"),
    );
    line(
        "restarted node caught up in:",
        format!("{catch_up:.2?} (restart to all keys readable)"),
    );
    line("applied index per node:", applied.join(", "));
    line("total demo time:", format!("{:.1?}", start.elapsed()));
    Ok(())
}
