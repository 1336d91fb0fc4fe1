//! `wan`: the cluster across datacenters. Each of the 3 nodes is in a datacenter of its
//! own and every packet between them goes through a proxy adding half of `--rtt-ms`
//! (default 30) to each direction, ±10 % (see `wan_proxy.rs`). On one cluster: `--groups`
//! groups under `--proposers` writers (throughput, and whether any group's leader changed
//! while the load ran: a spurious election), then one proposer on a group led here (its
//! floor is the round trip plus two fdatasyncs); then, on the same cluster, kill -9 of the
//! process leading the most groups (failover).

use std::sync::Arc;

use copycat::{CopyCat, DataStructure, NodeId};

use crate::args::{Args, BoxResult};
use crate::cluster::Cluster;
use crate::load::create_groups;
use crate::measure::{fdatasync_ms, print_result};
use crate::scenarios::failover::kill_the_busiest_leader;
use crate::scenarios::latency::{leader_of, measure_on, pick_groups, settled_leaders};
use crate::scenarios::write::measure;

pub fn run(args: &Args) -> BoxResult<()> {
    let rtt = args.rtt.ok_or("the wan scenario needs --rtt-ms")?;
    let mut cluster = Cluster::start(3, args)?;
    let fdatasync = fdatasync_ms(cluster.root.path(), 200)?;
    let subs = Arc::new(create_groups(&cluster.node, args.groups, 3)?);
    // New groups' leaderships may still move to their preferred nodes (transfers, not
    // elections): the count starts once they stayed put for a second.
    let before = settled_leaders(&cluster.node, &subs)?;
    let before: Vec<_> = before.into_iter().map(Some).collect();
    let load = measure(&mut cluster, subs.clone(), args.proposers, args)?;
    let after = leaders(&cluster.node, &subs);
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    let (here, _) = pick_groups(&cluster.node)?;
    let lone = measure_on(&mut cluster, here, args)?;
    let failover = kill_the_busiest_leader(&mut cluster, subs, args)?;
    cluster.stop();
    let rtt_ms = rtt.as_secs_f64() * 1_000.0;
    print_result(
        args,
        &load.figures,
        &[
            ("rtt_ms", format!("{rtt_ms:.0}")),
            ("proposers", args.proposers.to_string()),
            ("errors", load.errors.to_string()),
            ("leaders_moved", moved.to_string()),
            ("fdatasync_ms", format!("{fdatasync:.2}")),
            ("lone_p50_ms", format!("{:.2}", lone.figures.p50_ms)),
            ("lone_p99_ms", format!("{:.2}", lone.figures.p99_ms)),
            (
                "lone_p50_over_floor",
                format!("{:.2}", lone.figures.p50_ms / (rtt_ms + 2.0 * fdatasync)),
            ),
            ("failover_p50_ms", format!("{:.0}", failover.p50_ms)),
            ("failover_max_ms", format!("{:.0}", failover.max_ms)),
        ],
    );
    Ok(())
}

/// Each group's leader as this node sees it.
fn leaders(node: &CopyCat, subs: &[DataStructure]) -> Vec<Option<NodeId>> {
    subs.iter().map(|ds| leader_of(node, ds.id())).collect()
}
