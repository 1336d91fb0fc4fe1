//! Command-line flags.

use std::time::Duration;

/// A boxed error: the benchmark reports and exits.
pub type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Write,
    Latency,
    Failover,
    Heal,
    Recovery,
    Idle,
    Wan,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Write => "write",
            Scenario::Latency => "latency",
            Scenario::Failover => "failover",
            Scenario::Heal => "heal",
            Scenario::Recovery => "recovery",
            Scenario::Idle => "idle",
            Scenario::Wan => "wan",
        }
    }

    fn parse(name: &str) -> Result<Scenario, String> {
        [
            Scenario::Write,
            Scenario::Latency,
            Scenario::Failover,
            Scenario::Heal,
            Scenario::Recovery,
            Scenario::Idle,
            Scenario::Wan,
        ]
        .into_iter()
        .find(|s| s.name() == name)
        .ok_or_else(|| format!("unknown scenario {name:?}"))
    }

    /// Default group count.
    fn default_groups(self) -> usize {
        match self {
            Scenario::Write | Scenario::Failover | Scenario::Wan => 64,
            Scenario::Latency => 1,
            Scenario::Heal | Scenario::Recovery => 1_000,
            Scenario::Idle => 10_000,
        }
    }

    /// Default concurrent proposers.
    fn default_proposers(self, groups: usize) -> usize {
        match self {
            Scenario::Latency => 1,
            Scenario::Write => (groups * 16).clamp(512, 4096),
            // Writes in flight = throughput × latency: a round trip of tens of ms needs
            // more writers to keep the pipelines full.
            Scenario::Wan => (groups * 64).clamp(1024, 8192),
            _ => groups.clamp(1, 256),
        }
    }
}

/// The flags of a driver or replica process.
#[derive(Debug, Clone)]
pub struct Args {
    pub scenario: Scenario,
    pub groups: usize,
    pub payload: usize,
    pub proposers: usize,
    pub duration: Duration,
    /// `Config::dead_node_grace` of every node.
    pub grace: Duration,
    /// Log entries written before the recovery scenario reopens its node.
    pub entries: usize,
    /// Runs as a replica started by the driver.
    pub replica: bool,
    pub data_dir: Option<String>,
    pub peers: Vec<String>,
    /// `--secure`: the cluster runs with TLS and sealed gossip, under development
    /// credentials the driver generates (cluster scenarios only; recovery runs one node).
    pub secure: bool,
    /// Where the credentials are (`ca.pem`, `node{i}.pem`, `node{i}.key`, `cluster.key`);
    /// set by the driver for itself and passed to replicas.
    pub keys: Option<String>,
    /// Which node's certificate this process uses.
    pub node_index: usize,
    /// `--rtt-ms`: every node in a datacenter of its own, all traffic between them through
    /// a proxy adding half this to each direction (see `wan_proxy.rs`); the `wan` scenario
    /// defaults to 30 ms, the others to none (loopback).
    pub rtt: Option<Duration>,
    /// Set by the driver for a replica behind the proxy: the addresses to advertise.
    pub advertise: Option<(String, String)>,
    /// The replica's datacenter label.
    pub datacenter: Option<String>,
}

impl Args {
    pub fn parse() -> BoxResult<Args> {
        let raw: Vec<String> = std::env::args().skip(1).collect();
        let value = |name: &str| -> Option<String> {
            let i = raw.iter().position(|a| a == name)?;
            raw.get(i + 1).cloned()
        };
        let number = |name: &str| -> BoxResult<Option<u64>> {
            match value(name) {
                Some(v) => Ok(Some(v.parse().map_err(|e| format!("{name}: {e}"))?)),
                None => Ok(None),
            }
        };
        if raw.iter().any(|a| a == "--help") {
            println!("{USAGE}");
            std::process::exit(0);
        }
        for flag in raw.iter().filter(|a| a.starts_with("--")) {
            if !KNOWN_FLAGS.contains(&flag.as_str()) {
                return Err(
                    format!("unknown flag {flag}; known: {}", KNOWN_FLAGS.join(" ")).into(),
                );
            }
        }
        let scenario = Scenario::parse(&value("--scenario").unwrap_or_else(|| "write".into()))?;
        let groups = number("--groups")?.map_or(scenario.default_groups(), |g| g.max(1) as usize);
        Ok(Args {
            scenario,
            groups,
            payload: number("--payload")?.unwrap_or(16) as usize,
            proposers: number("--proposers")?
                .map_or(scenario.default_proposers(groups), |p| p.max(1) as usize),
            duration: Duration::from_secs(number("--seconds")?.unwrap_or(10)),
            grace: Duration::from_secs(number("--grace-secs")?.unwrap_or(5)),
            entries: number("--entries")?.unwrap_or(1_000_000) as usize,
            replica: value("--role").as_deref() == Some("replica"),
            data_dir: value("--data-dir"),
            peers: value("--peers")
                .map(|p| p.split(',').map(str::to_string).collect())
                .unwrap_or_default(),
            secure: raw.iter().any(|a| a == "--secure"),
            keys: value("--keys"),
            node_index: number("--node-index")?.unwrap_or(0) as usize,
            rtt: number("--rtt-ms")?
                .or((scenario == Scenario::Wan).then_some(30))
                .map(Duration::from_millis),
            advertise: value("--advertise-raft").zip(value("--advertise-gossip")),
            datacenter: value("--datacenter"),
        })
    }
}

const USAGE: &str =
    "cargo run --release --example bench -- [--scenario write|latency|failover|heal|recovery|idle|wan]
    [--groups N] [--payload BYTES] [--proposers N] [--seconds S] [--grace-secs S] [--entries N]
    [--secure]    (TLS on raft traffic and sealed gossip, with generated development keys)
    [--rtt-ms MS] (each node in its own datacenter, traffic through a delaying proxy; wan: 30)";

const KNOWN_FLAGS: [&str; 18] = [
    "--rtt-ms",
    "--advertise-raft",
    "--advertise-gossip",
    "--datacenter",
    "--secure",
    "--keys",
    "--node-index",
    "--scenario",
    "--groups",
    "--payload",
    "--proposers",
    "--seconds",
    "--grace-secs",
    "--entries",
    "--role",
    "--data-dir",
    "--peers",
    "--help",
];
