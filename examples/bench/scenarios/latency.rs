//! `latency`: one proposer, one group, twice: first on a group this node leads, then on one
//! a replica process leads (the proposal is forwarded to the leader, and the commit comes
//! back before this replica applies it). Next to them, the floors measured in the same
//! run: the disk's fdatasync latency and a loopback TCP round trip.

use std::sync::Arc;
use std::time::Duration;

use copycat::{CopyCat, DataStructure};

use crate::args::{Args, BoxResult};
use crate::cluster::{wait_for, Cluster};
use crate::load::create_groups;
use crate::measure::{fdatasync_ms, loopback_rtt_ms, print_result};
use crate::scenarios::write::measure;

/// Groups created per attempt to find one led here and one led elsewhere.
const CANDIDATES: usize = 6;

pub fn run(args: &Args) -> BoxResult<()> {
    let mut cluster = Cluster::start(3, args)?;
    let fdatasync = fdatasync_ms(cluster.root.path(), 200)?;
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
fn measure_on(
    cluster: &mut Cluster,
    ds: DataStructure,
    args: &Args,
) -> BoxResult<crate::scenarios::write::Measured> {
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

/// One group led by this node and one led by another, both fully replicated.
fn pick_groups(node: &CopyCat) -> BoxResult<(DataStructure, DataStructure)> {
    let me = node.node_id();
    let (mut here, mut elsewhere) = (None, None);
    for _ in 0..5 {
        let groups = create_groups(node, CANDIDATES, 3)?;
        wait_for("leaders of the new groups", Duration::from_secs(30), || {
            groups.iter().all(|ds| leader_of(node, ds.id()).is_some())
        })?;
        for ds in groups {
            match leader_of(node, ds.id()) {
                Some(leader) if leader == me && here.is_none() => here = Some(ds),
                Some(leader) if leader != me && elsewhere.is_none() => elsewhere = Some(ds),
                _ => {}
            }
        }
        if let (Some(h), Some(e)) = (here.take(), elsewhere.take()) {
            return Ok((h, e));
        }
    }
    Err("found no group led here and one led elsewhere".into())
}

fn leader_of(node: &CopyCat, id: copycat::DataStructureId) -> Option<copycat::NodeId> {
    node.group_status(id).ok().flatten().and_then(|s| s.leader)
}
