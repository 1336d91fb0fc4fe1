//! Helpers for integration tests: in-process clusters on loopback with temp dirs.
//!
//! Used by `tests/cluster.rs`, `tests/formation.rs`, `tests/healing.rs`,
//! `tests/registry.rs` and `tests/snapshots.rs`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use copycat::{Commit, Config, CopyCat, DataStructure, Security};

use crate::credentials::DevCredentials;

/// Polls `cond` until it holds or `timeout` passes; panics with `what` on timeout.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out after {timeout:?} waiting for: {what}");
}

/// A test config: free ports, fast ticks, logs to stderr when `COPYCAT_TEST_LOG` is set.
pub fn config(dir: &Path, peers: Vec<String>) -> Config {
    Config {
        port: 0,
        gossip_port: 0,
        data_dir: dir.to_path_buf(),
        peers,
        tick_interval: Duration::from_millis(50),
        logger: logger(),
        ..Config::default()
    }
}

/// Discards everything, or logs to stderr when `COPYCAT_TEST_LOG` is set.
fn logger() -> slog::Logger {
    use slog::Drain;
    if std::env::var_os("COPYCAT_TEST_LOG").is_none() {
        return slog::Logger::root(slog::Discard, slog::o!());
    }
    let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
    let drain = slog_term::FullFormat::new(decorator).build().fuse();
    slog::Logger::root(drain, slog::o!())
}

/// An in-process cluster; every node has its own data dir under one temp dir.
pub struct Cluster {
    /// The temp dir holding every node's data dir (see [`Cluster::dir`]).
    pub root: tempfile::TempDir,
    /// The nodes by index; `None` while stopped (see [`Cluster::stop`]).
    pub nodes: Vec<Option<CopyCat>>,
    /// `Config::dead_node_grace` of every node.
    pub dead_node_grace: Duration,
    /// Applied to every node's config.
    pub tweak: fn(Config) -> Config,
    /// Datacenter of node `i` (nodes past the end: the default datacenter).
    pub datacenters: Vec<String>,
    /// `Config::bootstrap_expect` of every node: the nodes started together, so the
    /// founder creates the directory with all of them (joiners ignore it).
    pub bootstrap_expect: usize,
    /// `Config::security` of node `i` (nodes past the end: plaintext).
    pub security: Vec<Security>,
}

impl Cluster {
    /// Starts `n` nodes: the first founds the cluster once all `n` are up
    /// (`bootstrap_expect`), the others join through it; waits until every node sees every
    /// other and replicates the directory.
    pub fn start(n: usize) -> Cluster {
        Self::start_with_grace(n, Config::default().dead_node_grace)
    }

    /// [`Cluster::start`] with `tweak` applied to every node's config.
    pub fn start_tweaked(n: usize, tweak: fn(Config) -> Config) -> Cluster {
        Self::launch(n, Config::default().dead_node_grace, tweak, &[])
    }

    /// [`Cluster::start`] with a dead-node grace period (replacement of dead replicas).
    pub fn start_with_grace(n: usize, dead_node_grace: Duration) -> Cluster {
        Self::launch(n, dead_node_grace, |c| c, &[])
    }

    /// One node per entry of `datacenters`, in that datacenter, with `tweak` applied.
    pub fn start_in_datacenters(datacenters: &[&str], tweak: fn(Config) -> Config) -> Cluster {
        let grace = Config::default().dead_node_grace;
        Self::launch(datacenters.len(), grace, tweak, datacenters)
    }

    /// One node per node of `credentials`, each with its TLS identity and the gossip key.
    pub fn start_secure(credentials: &DevCredentials) -> Cluster {
        let n = credentials.nodes.len();
        let security = (0..n).map(|i| credentials.security(i)).collect();
        Self::launch_with(n, Config::default().dead_node_grace, |c| c, &[], security)
    }

    /// Starts `n` nodes with these settings and waits until they all see each other.
    fn launch(
        n: usize,
        dead_node_grace: Duration,
        tweak: fn(Config) -> Config,
        datacenters: &[&str],
    ) -> Cluster {
        Self::launch_with(n, dead_node_grace, tweak, datacenters, Vec::new())
    }

    /// [`Cluster::launch`] with per-node security settings.
    fn launch_with(
        n: usize,
        dead_node_grace: Duration,
        tweak: fn(Config) -> Config,
        datacenters: &[&str],
        security: Vec<Security>,
    ) -> Cluster {
        let root = tempfile::tempdir().expect("temp dir");
        let mut cluster = Cluster {
            root,
            nodes: Vec::new(),
            dead_node_grace,
            tweak,
            datacenters: datacenters.iter().map(|d| d.to_string()).collect(),
            bootstrap_expect: n,
            security,
        };
        for _ in 0..n {
            cluster.add_node();
        }
        cluster.wait_members(n);
        cluster
    }

    /// Node `i`'s data dir (kept across restarts).
    pub fn dir(&self, i: usize) -> PathBuf {
        self.root.path().join(format!("node{i}"))
    }

    /// Whom a new node joins through: the first running node's gossip address, if any.
    fn peers(&self) -> Vec<String> {
        self.nodes
            .iter()
            .flatten()
            .map(|n| n.gossip_addr().to_string())
            .take(1)
            .collect()
    }

    /// Starts one more node joining the cluster; returns its index.
    pub fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        let node = CopyCat::start(self.node_config(i, self.peers())).expect("node starts");
        self.nodes.push(Some(node));
        i
    }

    /// Node `i`'s config: [`config`] with this cluster's settings and `tweak` applied.
    fn node_config(&self, i: usize, peers: Vec<String>) -> Config {
        let base = config(&self.dir(i), peers);
        (self.tweak)(Config {
            dead_node_grace: self.dead_node_grace,
            bootstrap_expect: self.bootstrap_expect,
            datacenter: self
                .datacenters
                .get(i)
                .cloned()
                .unwrap_or(base.datacenter.clone()),
            security: self.security.get(i).cloned().unwrap_or_default(),
            ..base
        })
    }

    /// Node `i`; panics if it is stopped.
    pub fn node(&self, i: usize) -> &CopyCat {
        self.nodes[i].as_ref().expect("node is running")
    }

    /// The running nodes.
    pub fn running(&self) -> impl Iterator<Item = &CopyCat> {
        self.nodes.iter().flatten()
    }

    /// Stops node `i` gracefully.
    pub fn stop(&mut self, i: usize) {
        if let Some(node) = self.nodes[i].take() {
            node.shutdown();
        }
    }

    /// Restarts node `i` from its data dir.
    pub fn restart(&mut self, i: usize) {
        let peers: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .filter_map(|(_, n)| n.as_ref())
            .map(|n| n.gossip_addr().to_string())
            .collect();
        let node = CopyCat::start(self.node_config(i, peers)).expect("node restarts");
        self.nodes[i] = Some(node);
    }

    /// Waits until every running node sees `n` alive members and has joined the directory.
    pub fn wait_members(&self, n: usize) {
        wait_until(
            "every node sees every other",
            Duration::from_secs(30),
            || {
                self.running().all(|node| {
                    node.members_blocking()
                        .map(|m| {
                            m.iter()
                                .filter(|m| m.state == copycat::MemberState::Alive)
                                .count()
                                >= n
                        })
                        .unwrap_or(false)
                        && node.has_joined_blocking().unwrap_or(false)
                })
            },
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.nodes.iter_mut().flatten() {
            node.shutdown();
        }
    }
}

/// Collects data entries from `ds` until `count` arrived or `timeout` passes.
pub fn collect(ds: &DataStructure, count: usize, timeout: Duration) -> Vec<(u64, Vec<u8>)> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        match ds.commits().recv_timeout(left) {
            Ok(Commit::Entry { index, data }) => out.push((index, data)),
            // Snapshot markers (and whatever later versions add) carry no entry.
            Ok(_) => {}
            Err(_) => panic!("got {} of {count} commits before the deadline", out.len()),
        }
    }
    out
}

/// A snapshot provider with nothing to snapshot, for `CopyCat::subscribe` in tests that do
/// not exercise snapshots.
pub fn no_snapshot() -> Option<(u64, Vec<u8>)> {
    None
}
