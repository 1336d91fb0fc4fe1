//! `heal`: 4 nodes, `--groups` groups with 3 voters each; kill -9 the replica process that
//! is a voter in the most groups and time until every group has 3 voters again, none on
//! the dead node. The time includes the grace period (`--grace-secs`) before a silent
//! node counts as dead for good; `after_grace_s` is what follows it.

use std::time::{Duration, Instant};

use crate::args::{Args, BoxResult};
use crate::cluster::{wait_for, Cluster};
use crate::load::create_groups;
use crate::measure::{print_result, WriteFigures};

pub fn run(args: &Args) -> BoxResult<()> {
    let cluster = Cluster::start(4, args)?;
    let created = Instant::now();
    let subs = create_groups(&cluster.node, args.groups, 3)?;
    println!(
        "{} groups created and replicated in {:.1} s",
        subs.len(),
        created.elapsed().as_secs_f64()
    );
    let ids: Vec<_> = subs.iter().map(|ds| ds.id()).collect();
    drop(subs);
    let voter_in = |node: u64| {
        ids.iter()
            .filter(|id| {
                cluster
                    .node
                    .group_status_blocking(**id)
                    .ok()
                    .flatten()
                    .is_some_and(|s| s.voters.contains(&node))
            })
            .count()
    };
    let victim = (0..cluster.replicas.len())
        .max_by_key(|r| voter_in(cluster.replicas[*r].node_id))
        .ok_or("no replica process")?;
    let dead = cluster.replicas[victim].node_id;
    println!("killing node {dead}, a voter in {} groups", voter_in(dead));
    let mut cluster = cluster;
    let killed_at = Instant::now();
    cluster.replicas[victim].kill();
    wait_for(
        "full replication without the dead node",
        args.grace + Duration::from_secs(600),
        || {
            ids.iter().all(|id| {
                cluster
                    .node
                    .group_status_blocking(*id)
                    .ok()
                    .flatten()
                    .is_some_and(|s| {
                        s.voters.len() == 3
                            && !s.voters.contains(&dead)
                            && !s.learners.contains(&dead)
                    })
            })
        },
    )?;
    let heal = killed_at.elapsed().as_secs_f64();
    cluster.stop();
    print_result(
        args,
        &WriteFigures::default(),
        &[
            ("grace_s", args.grace.as_secs().to_string()),
            ("heal_s", format!("{heal:.1}")),
            (
                "after_grace_s",
                format!("{:.1}", heal - args.grace.as_secs_f64()),
            ),
        ],
    );
    Ok(())
}
