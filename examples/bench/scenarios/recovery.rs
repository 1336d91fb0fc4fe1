//! `recovery`: one node holding `--groups` groups and `--entries` log entries (no
//! snapshots, so the log keeps them all) shuts down and reopens; the time until
//! `CopyCat::start` returns, until every group has a leader and has applied its log, and
//! until every group is subscribed again (its replay reads its whole log), has taken one
//! acknowledged write and has passed a read barrier (its replay is delivered).

use std::sync::atomic::{AtomicUsize, Ordering};
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
    served(&node, &ids)?;
    let served = reopening.elapsed();
    node.shutdown();
    print_result(
        args,
        &figures,
        &[
            ("entries", written.to_string()),
            ("reopen_s", format!("{:.2}", opened.as_secs_f64())),
            ("ready_s", format!("{:.2}", ready.as_secs_f64())),
            ("served_s", format!("{:.2}", served.as_secs_f64())),
        ],
    );
    Ok(())
}

/// Subscribes to every group again, then writes once to each and passes a read barrier
/// (32 threads, as `create_groups` writes its first entries).
fn served(node: &CopyCat, ids: &[copycat::DataStructureId]) -> BoxResult<()> {
    let subs = ids
        .iter()
        .map(|id| node.subscribe(*id, copycat::no_snapshots))
        .collect::<Result<Vec<_>, _>>()?;
    let subs = Arc::new(subs);
    let drainer = Drainer::start(subs.clone());
    let failed = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for chunk in subs.chunks(subs.len().div_ceil(32).max(1)) {
            let failed = &failed;
            s.spawn(move || {
                for ds in chunk {
                    let limit = Duration::from_secs(120);
                    let written = ds.propose_blocking(b"after reopening".to_vec(), limit);
                    if written
                        .and_then(|_| ds.read_barrier_blocking(limit))
                        .is_err()
                    {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    drop(drainer);
    match failed.into_inner() {
        0 => Ok(()),
        n => Err(format!("{n} of {} groups not served after reopening", ids.len()).into()),
    }
}
