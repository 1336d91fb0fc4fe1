//! copycat's benchmark: a 3-process cluster on loopback with fsync on, driven by
//! acknowledged proposers. Results and the commands that produced them are in
//! BENCHMARKS.md.
//!
//! ```text
//! cargo run --release --example bench -- --scenario write --groups 64 --payload 16
//! cargo run --release --example bench -- --scenario latency
//! cargo run --release --example bench -- --scenario failover
//! cargo run --release --example bench -- --scenario heal --groups 1000
//! cargo run --release --example bench -- --scenario recovery
//! cargo run --release --example bench -- --scenario idle --groups 10000
//! cargo run --release --example bench -- --scenario write --groups 64 --secure
//! cargo run --release --example bench -- --scenario wan --rtt-ms 30
//! ```
//!
//! This process runs the first node and the proposers; it starts the other nodes as copies
//! of itself (`--role replica`), which it can kill -9. Every scenario prints, as its last
//! line:
//!
//! `RESULT scenario=<name> groups=<n> payload=<bytes> writes_per_sec=<n> p50_ms=<x>
//! p99_ms=<y> p999_ms=<z> fsyncs_per_sec=<n>` followed by the scenario's own figures and
//! `allocator=system|mimalloc secure=true|false`.
//!
//! With `--secure`, the cluster scenarios run every node with TLS on raft traffic and
//! sealed gossip, under development credentials generated into the run's temp dir.
//!
//! Built with `--features bench-mimalloc`, every process of the cluster allocates with
//! mimalloc instead of the system's malloc (applications choose their allocator; TiKV ships
//! jemalloc for the same reason).

mod args;
mod cluster;
mod load;
mod measure;
mod scenarios;
mod wan_proxy;

use args::{Args, Scenario};

#[cfg(feature = "bench-mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The allocator this binary was built with, for the `RESULT` line.
pub const ALLOCATOR: &str = if cfg!(feature = "bench-mimalloc") {
    "mimalloc"
} else {
    "system"
};

fn main() {
    let result = Args::parse().and_then(|args| {
        if args.replica {
            return cluster::run_replica(&args);
        }
        match args.scenario {
            Scenario::Write => scenarios::write::run(&args),
            Scenario::Latency => scenarios::latency::run(&args),
            Scenario::Failover => scenarios::failover::run(&args),
            Scenario::Heal => scenarios::heal::run(&args),
            Scenario::Recovery => scenarios::recovery::run(&args),
            Scenario::Idle => scenarios::idle::run(&args),
            Scenario::Wan => scenarios::wan::run(&args),
        }
    });
    if let Err(e) = result {
        eprintln!("bench: {e}");
        std::process::exit(1);
    }
}
