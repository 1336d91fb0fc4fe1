//! Node configuration, with the original CopyCat's defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::security::Security;

/// Configuration of one copycat node. `Config::default()` gives the seed's defaults; set
/// what differs with struct update syntax, which stays source-compatible as fields are
/// added (they come with defaults):
///
/// ```
/// let config = copycat::Config {
///     port: 0,
///     gossip_port: 0,
///     peers: vec!["10.0.0.1:7459".into()],
///     ..copycat::Config::default()
/// };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone)]
pub struct Config {
    /// Address this node binds and advertises to others (default `127.0.0.1`).
    pub hostname: String,
    /// TCP port for raft traffic (default 7458; 0 picks a free port, see `CopyCat::raft_addr`).
    pub port: u16,
    /// UDP port for SWIM gossip (default 7459; 0 picks a free port).
    pub gossip_port: u16,
    /// The raft (TCP) address other nodes are told to reach this node at, when it differs
    /// from the bound `hostname:port` (NAT, containers, a proxy in between); `None` (the
    /// default): the bound address.
    pub advertised_raft_addr: Option<SocketAddr>,
    /// The gossip (UDP) address other nodes are told to reach this node at, when it
    /// differs from the bound `hostname:gossip_port`; `None` (the default): the bound
    /// address.
    pub advertised_gossip_addr: Option<SocketAddr>,
    /// Where the node keeps its sled database and node id (default `./copy-cat-db/`).
    pub data_dir: PathBuf,
    /// Gossip addresses (`host:port`) of existing nodes to contact; empty starts a new cluster.
    pub peers: Vec<String>,
    /// Voters per data structure (default 3). In a cluster of fewer nodes a group gets
    /// the largest odd number of voters those nodes can hold, and grows straight to the
    /// replication factor once enough nodes have joined (never through an even count).
    pub replication_factor: usize,
    /// How many nodes a node founding a cluster (no `peers`) waits for, itself included,
    /// before it creates the cluster's system group and any data group, so that each group
    /// starts with its full voter set (Consul's `bootstrap_expect`). Default 1: the founder
    /// starts alone and groups grow as nodes join. Set it to the number of nodes started
    /// together (3 for three processes): a group created with one voter that is still
    /// growing cannot survive the loss of a node. Ignored by nodes that join through
    /// `peers` and by a founder that restarts on its data dir.
    pub bootstrap_expect: usize,
    /// This node's datacenter label; replicas are spread over datacenters.
    pub datacenter: String,
    /// Nodes only talk to nodes with the same cluster name (default `copycat`).
    pub cluster_name: String,
    /// Logger for copycat and raft (default: [`crate::tracing_logger`], which forwards to
    /// `tracing`; without a `tracing` subscriber nothing is formatted or written).
    pub logger: slog::Logger,
    /// Length of one raft tick (default 100 ms).
    pub tick_interval: Duration,
    /// Ticks without a leader before a follower campaigns (default 10; randomized up to 2×).
    pub election_ticks: usize,
    /// Ticks between leader heartbeats (default 2).
    pub heartbeat_ticks: usize,
    /// Largest accepted proposal (default 1 MiB); larger ones fail with `ProposalTooLarge`.
    pub max_proposal_bytes: usize,
    /// How long a proposal may take to commit before it is reported as timed out
    /// (default 10 s; `propose_blocking` uses its own timeout).
    pub proposal_timeout: Duration,
    /// Largest TCP frame accepted from a peer (default 64 MiB); larger frames close the connection.
    pub max_frame_bytes: usize,
    /// How long gossip must consider a node dead before every group in which it was a voter
    /// gets a replacement elsewhere, and its learners are removed (default 30 s).
    pub dead_node_grace: Duration,
    /// Applied entries after which a replica with a subscriber snapshots and compacts its
    /// log (default 10,000).
    pub snapshot_interval: u64,
    /// Bytes of applied entries after which a replica with a subscriber snapshots, whatever
    /// their number (default 64 MiB).
    pub snapshot_max_log_bytes: u64,
    /// A replica snapshots only once the bytes it applied since its last snapshot reach
    /// this percentage of that snapshot's size (default 50), whatever `snapshot_interval`
    /// and `snapshot_max_log_bytes` say, so a large state is not rewritten for every few
    /// megabytes of log. At 50, writing snapshots costs about twice the bytes written,
    /// and a node's disk holds about 2.5 times its state (the two newest snapshots and
    /// half a state of log) plus sled's overhead. 0 turns this gate off.
    pub snapshot_log_percent: u64,
    /// Seed for the node's randomness (election timeouts, gossip); `None` draws one at random.
    pub rng_seed: Option<u64>,
    /// What happens when the node cannot go on: a panic in its core, or a storage read or
    /// write that failed (default [`OnFatalError::ExitProcess`]).
    pub on_fatal_error: OnFatalError,
    /// TLS on the TCP transport and the gossip keyring (default: none, plaintext on both,
    /// and every start logs a warning that the cluster is open to anyone who can reach its
    /// ports). See [`Security`]. With TLS, the node's id is the one its certificate names.
    pub security: Security,
}

/// What a node does when it cannot go on: its core panicked, or storage failed (sled then
/// fails every later operation too, so the node could only refuse work). A disk out of
/// space, or a process out of file descriptors, is not such a failure: the node pauses
/// until it can write again, then resumes by itself (calls meanwhile fail with
/// [`Error::StorageExhausted`](crate::Error::StorageExhausted)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnFatalError {
    /// Crash-only: log the cause and end the whole process with a non-zero status —
    /// [`EXIT_CORE_PANIC`](crate::EXIT_CORE_PANIC) (70) after a panic,
    /// [`EXIT_STORAGE_FAILED`](crate::EXIT_STORAGE_FAILED) (74) after a storage failure — so
    /// that a supervisor (systemd, Kubernetes, …) restarts it and the restarted node catches
    /// up from its peers. A process that only stopped the node would stay up and look
    /// healthy while failing every call.
    #[default]
    ExitProcess,
    /// Stop only this node: its handles fail with [`Error::Shutdown`](crate::Error) or the
    /// storage error, and the rest of the process carries on. For processes that host more
    /// than copycat and watch the node's errors themselves.
    StopNode,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hostname: "127.0.0.1".to_string(),
            port: 7458,
            gossip_port: 7459,
            advertised_raft_addr: None,
            advertised_gossip_addr: None,
            data_dir: PathBuf::from("./copy-cat-db/"),
            peers: Vec::new(),
            replication_factor: 3,
            bootstrap_expect: 1,
            datacenter: "default".to_string(),
            cluster_name: "copycat".to_string(),
            logger: crate::tracing_bridge::tracing_logger(),
            tick_interval: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 2,
            max_proposal_bytes: 1 << 20,
            proposal_timeout: Duration::from_secs(10),
            max_frame_bytes: 64 << 20,
            dead_node_grace: Duration::from_secs(30),
            snapshot_interval: 10_000,
            snapshot_max_log_bytes: 64 << 20,
            snapshot_log_percent: 50,
            rng_seed: None,
            on_fatal_error: OnFatalError::ExitProcess,
            security: Security::default(),
        }
    }
}

impl Config {
    /// Checks the values that would otherwise fail later in a less clear way.
    pub fn validate(&self) -> Result<()> {
        let fail = |msg: &str| Err(Error::Config(msg.to_string()));
        if self.replication_factor == 0 {
            return fail("replication_factor must be at least 1");
        }
        if self.bootstrap_expect == 0 {
            return fail("bootstrap_expect must be at least 1 (the founding node itself)");
        }
        if self.heartbeat_ticks == 0 || self.election_ticks <= self.heartbeat_ticks {
            return fail("need 0 < heartbeat_ticks < election_ticks");
        }
        if self.tick_interval.is_zero() {
            return fail("tick_interval must be positive");
        }
        if self.snapshot_interval == 0 || self.snapshot_max_log_bytes == 0 {
            return fail("snapshot_interval and snapshot_max_log_bytes must be positive");
        }
        if self.cluster_name.is_empty() {
            return fail("cluster_name must not be empty");
        }
        if self.max_frame_bytes < self.max_proposal_bytes + 4096 {
            return fail("max_frame_bytes must exceed max_proposal_bytes by at least 4 KiB");
        }
        let advertised = [
            ("advertised_raft_addr", self.advertised_raft_addr),
            ("advertised_gossip_addr", self.advertised_gossip_addr),
        ];
        for (name, addr) in advertised {
            if addr.is_some_and(|a| a.port() == 0 || a.ip().is_unspecified()) {
                return Err(Error::Config(format!(
                    "{name} must name a reachable address (a specific IP, a nonzero port)"
                )));
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("hostname", &self.hostname)
            .field("port", &self.port)
            .field("gossip_port", &self.gossip_port)
            .field("advertised_raft_addr", &self.advertised_raft_addr)
            .field("advertised_gossip_addr", &self.advertised_gossip_addr)
            .field("data_dir", &self.data_dir)
            .field("peers", &self.peers)
            .field("replication_factor", &self.replication_factor)
            .field("bootstrap_expect", &self.bootstrap_expect)
            .field("datacenter", &self.datacenter)
            .field("cluster_name", &self.cluster_name)
            .field("tick_interval", &self.tick_interval)
            .field("election_ticks", &self.election_ticks)
            .field("heartbeat_ticks", &self.heartbeat_ticks)
            .field("max_proposal_bytes", &self.max_proposal_bytes)
            .field("proposal_timeout", &self.proposal_timeout)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("dead_node_grace", &self.dead_node_grace)
            .field("snapshot_interval", &self.snapshot_interval)
            .field("snapshot_max_log_bytes", &self.snapshot_max_log_bytes)
            .field("snapshot_log_percent", &self.snapshot_log_percent)
            .field("on_fatal_error", &self.on_fatal_error)
            .field("security", &self.security)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_addresses_must_be_reachable() {
        let with = |raft: &str| Config {
            advertised_raft_addr: Some(raft.parse().expect("address")),
            ..Config::default()
        };
        assert!(with("10.0.0.7:7458").validate().is_ok());
        for unreachable in ["0.0.0.0:7458", "10.0.0.7:0"] {
            let error = with(unreachable).validate().expect_err(unreachable);
            assert!(
                error.to_string().contains("advertised_raft_addr"),
                "{error}"
            );
        }
    }
}
