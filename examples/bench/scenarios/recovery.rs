//! `recovery`: one node holding `--groups` groups and `--entries` log entries (no
//! snapshots, so the log keeps them all) shuts down and reopens; the time until
//! `CopyCat::start` returns, and until every group has a leader and has applied its log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use copycat::CopyCat;

use crate::args::{Args, BoxResult};
use crate::cluster::{node_config, wait_for};
use crate::load::{create_groups, Drainer, Load};
use crate::measure::{print_result, WriteFigures};

pub fn run(args: &Args) -> BoxResult<()> {
    let root = tempfile::tempdir()?;
    let dir = root.path().join("node0");
    let node = CopyCat::start(node_config(&dir, Vec::new(), args)?)?;
    let subs = Arc::new(create_groups(&node, args.groups, 1)?);
    let ids: Vec<_> = subs.iter().map(|ds| ds.id()).collect();
    let drainer = Drainer::start(subs.clone());
    let load = Load::start(subs.clone(), args.proposers.max(1024), args.payload);
    let writing = Instant::now();
    while load.acked() < args.entries as u64 {
        std::thread::sleep(Duration::from_millis(100));
    }
    let outcome = load.finish()?;
    drop(drainer);
    let figures = WriteFigures::of(&outcome.acks, writing.elapsed(), 0);
    let written = outcome.acks.len() + ids.len();
    println!(
        "{written} entries in {} groups written in {:.1} s",
        ids.len(),
        writing.elapsed().as_secs_f64()
    );
    drop(subs);
    node.shutdown();
    drop(node);

    let reopening = Instant::now();
    let node = CopyCat::start(node_config(&dir, Vec::new(), args)?)?;
    let opened = reopening.elapsed();
    wait_for(
        "every group led and applied",
        Duration::from_secs(600),
        || {
            ids.iter().all(|id| {
                node.group_status_blocking(*id)
                    .ok()
                    .flatten()
                    .is_some_and(|s| s.leader.is_some() && s.applied_index >= s.commit_index)
            })
        },
    )?;
    let ready = reopening.elapsed();
    node.shutdown();
    print_result(
        args,
        &figures,
        &[
            ("entries", written.to_string()),
            ("reopen_s", format!("{:.2}", opened.as_secs_f64())),
            ("ready_s", format!("{:.2}", ready.as_secs_f64())),
        ],
    );
    Ok(())
}
