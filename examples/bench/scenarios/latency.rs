//! `latency`: one proposer, one group, twice: first on a group this node leads, then on one
//! a replica process leads (the proposal is forwarded to the leader, and the commit comes
//! back before this replica applies it). Next to them, the floors measured in the same
//! run: the disk's fdatasync latency, one durable write of copycat's storage (a storage
//! round with one entry), and a loopback TCP round trip.

use std::sync::Arc;
use std::time::{Duration, Instant};

use copycat::{CopyCat, DataStructure, DataStructureId, NodeId};

use crate::args::{Args, BoxResult};
use crate::cluster::Cluster;
use crate::load::create_groups;
use crate::measure::{fdatasync_ms, loopback_rtt_ms, print_result, storage_write_ms};
use crate::scenarios::write::{measure, Measured};

/// Groups created per attempt to find one led here and one led elsewhere.
const CANDIDATES: usize = 6;
/// Longest wait for new groups' leaders to settle.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);

pub fn run(args: &Args) -> BoxResult<()> {
    let mut cluster = Cluster::start(3, args)?;
    let fdatasync = fdatasync_ms(cluster.root.path(), 200)?;
    let storage_write = storage_write_ms(cluster.root.path(), 200)?;
    let rtt = loopback_rtt_ms(200)?;
    let (here, elsewhere) = pick_groups(&cluster.node)?;
    let leader = measure_on(&mut cluster, here, args)?;
    let follower = measure_on(&mut cluster, elsewhere, args)?;
    cluster.stop();
    print_result(
        args,
        &leader.figures,
        &[
            ("proposers", "1".to_string()),
            ("errors", (leader.errors + follower.errors).to_string()),
            ("fdatasync_ms", format!("{fdatasync:.2}")),
            ("storage_write_ms", format!("{storage_write:.2}")),
            ("loopback_rtt_ms", format!("{rtt:.3}")),
            (
                "p50_over_fdatasync",
                format!("{:.2}", leader.figures.p50_ms / fdatasync),
            ),
            ("follower_p50_ms", format!("{:.2}", follower.figures.p50_ms)),
            ("follower_p99_ms", format!("{:.2}", follower.figures.p99_ms)),
        ],
    );
    Ok(())
}

/// Measures one proposer on `ds`, failing if its leader moved meanwhile (the figures
/// would mix both paths).
pub fn measure_on(cluster: &mut Cluster, ds: DataStructure, args: &Args) -> BoxResult<Measured> {
    let id = ds.id();
    let before = leader_of(&cluster.node, id);
    let measured = measure(cluster, Arc::new(vec![ds]), 1, args)?;
    let after = leader_of(&cluster.node, id);
    if before != after {
        return Err(
            format!("the leader of {id} moved during the run ({before:?} → {after:?})").into(),
        );
    }
    Ok(measured)
}

/// One group led by this node and one led by another, both fully replicated, picked once
/// their leaders settled (a new group's leadership may still move to its preferred node).
pub fn pick_groups(node: &CopyCat) -> BoxResult<(DataStructure, DataStructure)> {
    let me = node.node_id();
    let (mut here, mut elsewhere) = (None, None);
    for _ in 0..5 {
        let groups = create_groups(node, CANDIDATES, 3)?;
        let leaders = settled_leaders(node, &groups)?;
        for (ds, leader) in groups.into_iter().zip(leaders) {
            if leader == me && here.is_none() {
                here = Some(ds);
            } else if leader != me && elsewhere.is_none() {
                elsewhere = Some(ds);
            }
        }
        match (here, elsewhere) {
            (Some(h), Some(e)) => return Ok((h, e)),
            // Keep the one found (if any) and look for the other in a new set.
            (h, e) => (here, elsewhere) = (h, e),
        }
    }
    Err("found no group led here and one led elsewhere".into())
}

/// The leaders of `groups` once they stayed the same for a second.
pub fn settled_leaders(node: &CopyCat, groups: &[DataStructure]) -> BoxResult<Vec<NodeId>> {
    let leaders =
        || -> Option<Vec<NodeId>> { groups.iter().map(|ds| leader_of(node, ds.id())).collect() };
    let deadline = Instant::now() + SETTLE_LIMIT;
    let mut last = None;
    while Instant::now() < deadline {
        let now = leaders();
        if now.is_some() && now == last {
            return now.ok_or_else(|| "no leaders".into());
        }
        last = now;
        std::thread::sleep(Duration::from_secs(1));
    }
    Err(format!("leaders did not settle within {SETTLE_LIMIT:?}").into())
}

pub fn leader_of(node: &CopyCat, id: DataStructureId) -> Option<NodeId> {
    node.group_status_blocking(id)
        .ok()
        .flatten()
        .and_then(|s| s.leader)
}
