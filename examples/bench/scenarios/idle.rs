//! `idle`: `--groups` idle groups with a replica on each of 3 nodes; once they hibernate,
//! the CPU share and resident memory of each process over `--seconds` (at least 20).

use std::time::{Duration, Instant};

use crate::args::{Args, BoxResult};
use crate::cluster::{wait_for, Cluster};
use crate::load::create_groups;
use crate::measure::{cpu_time, print_result, rss_mib, WriteFigures};

pub fn run(args: &Args) -> BoxResult<()> {
    let mut cluster = Cluster::start(3, args)?;
    let created = Instant::now();
    let subs = create_groups(&cluster.node, args.groups, 3)?;
    let create_s = created.elapsed().as_secs_f64();
    println!(
        "{} groups created and replicated in {create_s:.1} s",
        subs.len()
    );
    // Idle means no subscriber polling either: the groups stay, the subscriptions go.
    drop(subs);
    let settling = Instant::now();
    let mut all_asleep = || -> BoxResult<bool> {
        let mut stats = vec![cluster.node.stats_blocking()?];
        for replica in &mut cluster.replicas {
            stats.push(replica.stats()?);
        }
        Ok(stats.iter().all(|s| s.hibernating == s.replicas))
    };
    wait_for(
        "every replica to hibernate",
        Duration::from_secs(300),
        || all_asleep().unwrap_or(false),
    )?;
    println!(
        "every replica hibernates {:.1} s after the last write",
        settling.elapsed().as_secs_f64()
    );
    let pids: Vec<u32> = std::iter::once(std::process::id())
        .chain(cluster.replicas.iter().map(|r| r.pid()))
        .collect();
    let before = pids
        .iter()
        .map(|p| cpu_time(*p))
        .collect::<BoxResult<Vec<_>>>()?;
    let started = Instant::now();
    std::thread::sleep(args.duration.max(Duration::from_secs(20)));
    let elapsed = started.elapsed();
    let mut cpu = Vec::new();
    let mut rss = Vec::new();
    for (pid, before) in pids.iter().zip(before) {
        cpu.push((cpu_time(*pid)? - before).as_secs_f64() / elapsed.as_secs_f64() * 100.0);
        rss.push(rss_mib(*pid)?);
    }
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.1}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    println!(
        "CPU % of one core per process: {}; RSS MiB: {}",
        list(&cpu),
        list(&rss)
    );
    cluster.stop();
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    print_result(
        args,
        &WriteFigures::default(),
        &[
            ("create_s", format!("{create_s:.1}")),
            ("cpu_pct_max", format!("{:.2}", max(&cpu))),
            ("rss_mib_max", format!("{:.0}", max(&rss))),
            ("cpu_pct", list(&cpu)),
            ("rss_mib", list(&rss)),
        ],
    );
    Ok(())
}
