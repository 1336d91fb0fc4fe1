//! What a node emits through the `metrics` facade (src/telemetry.rs), seen by a recorder
//! installed as an application would install its exporter's: a three-node in-process
//! cluster takes writes, and every family of figures moves.

use std::collections::HashMap;
use std::time::Duration;

use copycat::telemetry;
use copycat::ReplicatedMap;
use copycat_testkit::in_process::{wait_until, Cluster};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// What was seen of each metric name so far: counters summed, histogram samples counted,
/// gauges at their highest. (The debugging recorder hands out deltas: every snapshot resets
/// what it reads.)
#[derive(Default)]
struct Seen {
    counters: HashMap<String, u64>,
    samples: HashMap<String, usize>,
    gauges: HashMap<String, f64>,
}

impl Seen {
    fn take(&mut self, snapshotter: &Snapshotter) {
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let name = key.key().name().to_string();
            match value {
                DebugValue::Counter(n) => *self.counters.entry(name).or_default() += n,
                DebugValue::Histogram(h) => *self.samples.entry(name).or_default() += h.len(),
                DebugValue::Gauge(g) => {
                    let highest = self.gauges.entry(name).or_default();
                    *highest = highest.max(g.into_inner());
                }
            }
        }
    }

    fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    fn samples(&self, name: &str) -> usize {
        self.samples.get(name).copied().unwrap_or(0)
    }

    fn gauge(&self, name: &str) -> f64 {
        self.gauges.get(name).copied().unwrap_or(0.0)
    }
}

#[test]
fn a_cluster_under_writes_emits_every_family_of_metrics() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test process");

    let cluster = Cluster::start(3);
    cluster.wait_members(3);
    let map: ReplicatedMap<String, u64> =
        ReplicatedMap::open(cluster.node(0), copycat::new_data_structure_id()).expect("open");
    for k in 0..50 {
        map.insert_blocking(format!("k{k}"), k).expect("insert");
    }
    let too_large = "x".repeat(64 << 20);
    assert!(
        map.insert_blocking(too_large, 0).is_err(),
        "over max_proposal_bytes"
    );

    let mut seen = Seen::default();
    wait_until(
        "every family of metrics moved",
        // Gauges are published on full maintenance passes: at least every 10 s.
        Duration::from_secs(60),
        || {
            seen.take(&snapshotter);
            seen.counter(telemetry::PROPOSALS_COMMITTED) >= 50
                && seen.counter(telemetry::PROPOSALS_FAILED) >= 1
                && seen.samples(telemetry::PROPOSAL_COMMIT_SECONDS) >= 50
                && seen.counter(telemetry::LEADER_CHANGES) >= 1
                && seen.counter(telemetry::FSYNCS) >= 1
                && seen.samples(telemetry::STORAGE_WRITE_SECONDS) >= 1
                && seen.samples(telemetry::STORAGE_ENTRIES_PER_WRITE) >= 1
                && seen.counter(telemetry::TRANSPORT_SENT_BYTES) > 0
                && seen.counter(telemetry::TRANSPORT_RECEIVED_BYTES) > 0
                && seen.counter(telemetry::TRANSPORT_CONNECTS) >= 2
                && seen.gauge(telemetry::GROUPS_HOSTED) >= 2.0
                // Published, whatever its value: the three in-process nodes share one
                // recorder and one gauge, so a node leading nothing may write last.
                && seen.gauges.contains_key(telemetry::GROUPS_LED)
        },
    );
}
