//! `write`: throughput and latency under `--proposers` concurrent acknowledged writers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use copycat::DataStructure;

use crate::args::{Args, BoxResult};
use crate::cluster::Cluster;
use crate::load::{create_groups, Drainer, Load};
use crate::measure::{fdatasync_ms, print_result, WriteFigures};

/// Load before the measured window, so it starts at a steady state.
const WARM_UP: Duration = Duration::from_secs(2);

pub fn run(args: &Args) -> BoxResult<()> {
    let mut cluster = Cluster::start(3, args)?;
    let floor_ms = fdatasync_ms(cluster.root.path(), 200)?;
    let subs = Arc::new(create_groups(&cluster.node, args.groups, 3)?);
    let measured = measure(&mut cluster, subs, args.proposers, args)?;
    cluster.stop();
    let figures = &measured.figures;
    print_result(
        args,
        figures,
        &[
            ("proposers", args.proposers.to_string()),
            ("errors", measured.errors.to_string()),
            ("fdatasync_ms", format!("{floor_ms:.2}")),
            (
                "p50_over_fdatasync",
                format!("{:.2}", figures.p50_ms / floor_ms),
            ),
        ],
    );
    Ok(())
}

/// What one measured window of load gave.
pub struct Measured {
    pub figures: WriteFigures,
    /// Failed proposals over the whole run (warm-up included).
    pub errors: u64,
}

/// Runs `proposers` writers on `subs` for a warm-up and then `args.duration`, and returns
/// the figures of the writes acknowledged in that window.
pub fn measure(
    cluster: &mut Cluster,
    subs: Arc<Vec<DataStructure>>,
    proposers: usize,
    args: &Args,
) -> BoxResult<Measured> {
    let drainer = Drainer::start(subs.clone());
    let load = Load::start(subs, proposers, args.payload);
    std::thread::sleep(WARM_UP);
    let (synced_before, started) = (cluster.synced_writes()?, Instant::now());
    std::thread::sleep(args.duration);
    let (synced_after, ended) = (cluster.synced_writes()?, Instant::now());
    let outcome = load.finish()?;
    drop(drainer);
    let window: Vec<_> = outcome
        .acks
        .iter()
        .filter(|a| a.done >= started && a.done < ended)
        .copied()
        .collect();
    println!(
        "{} acknowledged writes in {:.1} s ({} errors over the whole run)",
        window.len(),
        (ended - started).as_secs_f64(),
        outcome.errors
    );
    Ok(Measured {
        figures: WriteFigures::of(&window, ended - started, synced_after - synced_before),
        errors: outcome.errors,
    })
}
