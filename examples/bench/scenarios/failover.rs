//! `failover`: under load, kill -9 the replica process leading the most groups; for each
//! group it led, the time from the kill to the first acknowledged write sent after it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use copycat::DataStructure;

use crate::args::{Args, BoxResult};
use crate::cluster::Cluster;
use crate::load::{create_groups, Drainer, Load};
use crate::measure::{percentile_ms, print_result, WriteFigures};

const WARM_UP: Duration = Duration::from_secs(3);

pub fn run(args: &Args) -> BoxResult<()> {
    let mut cluster = Cluster::start(3, args)?;
    let subs = Arc::new(create_groups(&cluster.node, args.groups, 3)?);
    let failover = kill_the_busiest_leader(&mut cluster, subs, args)?;
    cluster.stop();
    print_result(
        args,
        &failover.figures,
        &[
            ("proposers", args.proposers.to_string()),
            ("victim_led", failover.victim_led.to_string()),
            ("failover_p50_ms", format!("{:.0}", failover.p50_ms)),
            ("failover_max_ms", format!("{:.0}", failover.max_ms)),
        ],
    );
    Ok(())
}

/// What a failover gave.
pub struct Failover {
    /// The writes acknowledged from the kill on.
    pub figures: WriteFigures,
    /// Groups the killed process led.
    pub victim_led: usize,
    /// From the kill to each of those groups' first acknowledged write: median, worst.
    pub p50_ms: f64,
    pub max_ms: f64,
}

/// Under load on `subs`, kills -9 the replica process leading the most groups and times
/// each of its groups until it writes again. The killed process stays dead.
pub fn kill_the_busiest_leader(
    cluster: &mut Cluster,
    subs: Arc<Vec<DataStructure>>,
    args: &Args,
) -> BoxResult<Failover> {
    let drainer = Drainer::start(subs.clone());
    let load = Load::start(subs.clone(), args.proposers, args.payload);
    std::thread::sleep(WARM_UP);

    // The killable process (this one runs the proposers) leading the most groups.
    let mut led: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, ds) in subs.iter().enumerate() {
        if let Some(leader) = cluster
            .node
            .group_status_blocking(ds.id())?
            .and_then(|s| s.leader)
        {
            led.entry(leader).or_default().push(i);
        }
    }
    let victim = (0..cluster.replicas.len())
        .max_by_key(|r| led.get(&cluster.replicas[*r].node_id).map_or(0, Vec::len))
        .ok_or("no replica process")?;
    let victim_id = cluster.replicas[victim].node_id;
    let victim_groups = led.remove(&victim_id).unwrap_or_default();
    let here = led.get(&cluster.node.node_id()).map_or(0, Vec::len);
    println!(
        "killing node {victim_id}, leader of {} of {} groups (this process leads {here})",
        victim_groups.len(),
        subs.len()
    );
    let killed_at = Instant::now();
    cluster.replicas[victim].kill();
    std::thread::sleep(args.duration.max(Duration::from_secs(10)));
    let ended = Instant::now();
    let outcome = load.finish()?;
    drop(drainer);

    let mut recovered = Vec::new();
    for group in &victim_groups {
        let first = outcome
            .acks
            .iter()
            .filter(|a| a.group == *group && a.sent >= killed_at)
            .map(|a| a.done - killed_at)
            .min();
        recovered.push(first.ok_or(format!("group {group} never wrote again"))?);
    }
    recovered.sort();
    let after: Vec<_> = outcome
        .acks
        .iter()
        .filter(|a| a.done >= killed_at)
        .copied()
        .collect();
    Ok(Failover {
        figures: WriteFigures::of(&after, ended - killed_at, 0),
        victim_led: victim_groups.len(),
        p50_ms: percentile_ms(&recovered, 0.5),
        max_ms: percentile_ms(&recovered, 1.0),
    })
}
