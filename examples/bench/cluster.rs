//! The cluster under test: the first node in this process, the others in child processes
//! (copies of this executable with `--role replica`) that can be killed -9.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use copycat::{Config, CopyCat, NodeStats, Security};
use copycat_testkit::credentials::DevCredentials;

use crate::args::{Args, BoxResult};
use crate::wan_proxy::{Front, WanProxy};

/// How long a proposal may take before it counts as failed.
pub const PROPOSAL_TIMEOUT: Duration = Duration::from_secs(10);

/// The config of every node: fsync on (the default), free ports; with `--keys`, TLS and
/// sealed gossip under node `--node-index`'s credentials.
pub fn node_config(dir: &Path, peers: Vec<String>, args: &Args) -> BoxResult<Config> {
    let security = match &args.keys {
        None => Security::default(),
        Some(keys) => {
            let keys = Path::new(keys);
            let i = args.node_index;
            Security::from_files(
                keys.join("ca.pem"),
                keys.join(format!("node{i}.pem")),
                keys.join(format!("node{i}.key")),
                keys.join("cluster.key"),
            )?
        }
    };
    let advertised = |addr: Option<&String>| -> BoxResult<Option<std::net::SocketAddr>> {
        Ok(addr.map(|a| a.parse()).transpose()?)
    };
    let advertise = args.advertise.as_ref();
    Ok(Config {
        data_dir: dir.to_path_buf(),
        port: 0,
        gossip_port: 0,
        advertised_raft_addr: advertised(advertise.map(|a| &a.0))?,
        advertised_gossip_addr: advertised(advertise.map(|a| &a.1))?,
        datacenter: args
            .datacenter
            .clone()
            .unwrap_or_else(|| "default".to_string()),
        peers,
        proposal_timeout: PROPOSAL_TIMEOUT,
        dead_node_grace: args.grace,
        logger: logger(),
        security,
        ..Config::default()
    })
}

/// Info-level logs to stderr when `COPYCAT_BENCH_LOG` is set (child processes inherit it);
/// none otherwise.
fn logger() -> slog::Logger {
    use slog::Drain;
    if std::env::var_os("COPYCAT_BENCH_LOG").is_none() {
        return slog::Logger::root(slog::Discard, slog::o!());
    }
    let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
    let drain = slog_term::FullFormat::new(decorator).build().fuse();
    let drain = slog::LevelFilter::new(drain, slog::Level::Info).fuse();
    slog::Logger::root(drain, slog::o!("pid" => std::process::id()))
}

/// A replica process: runs a node, answers `stats` on stdin with a `STATS` line, and
/// stops when stdin closes (the driver exited).
pub fn run_replica(args: &Args) -> BoxResult<()> {
    let dir = args.data_dir.clone().ok_or("--data-dir is required")?;
    let node = CopyCat::start(node_config(dir.as_ref(), args.peers.clone(), args)?)?;
    println!(
        "READY {} {} {}",
        node.node_id(),
        node.raft_addr(),
        node.gossip_addr()
    );
    let mut line = String::new();
    while std::io::stdin().read_line(&mut line)? > 0 {
        if line.trim() == "stats" {
            let s = node.stats_blocking()?;
            println!("STATS {} {} {}", s.synced_writes, s.replicas, s.hibernating);
        }
        line.clear();
    }
    node.shutdown();
    Ok(())
}

/// A replica process started by the driver.
pub struct Replica {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub node_id: u64,
}

impl Replica {
    fn spawn(
        dir: &Path,
        seed: &str,
        index: usize,
        front: Option<&Front>,
        args: &Args,
    ) -> BoxResult<Replica> {
        let mut command = Command::new(std::env::current_exe()?);
        if let Some(keys) = &args.keys {
            command.args(["--keys", keys, "--node-index", &index.to_string()]);
        }
        if let Some(front) = front {
            command
                .args(["--advertise-raft", &front.raft.to_string()])
                .args(["--advertise-gossip", &front.gossip.to_string()])
                .args(["--datacenter", &format!("dc{index}")]);
        }
        let mut child = command
            .args(["--role", "replica", "--peers", seed])
            .args(["--grace-secs", &args.grace.as_secs().to_string()])
            .arg("--data-dir")
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let ready: Vec<&str> = line
            .strip_prefix("READY ")
            .map(|rest| rest.split_whitespace().collect())
            .unwrap_or_default();
        let [node_id, raft, gossip] = ready[..] else {
            return Err(format!("replica did not start: {line:?}").into());
        };
        let node_id = node_id.parse()?;
        if let Some(front) = front {
            front.connect_to(raft.parse()?, gossip.parse()?);
        }
        Ok(Replica {
            child,
            stdin,
            stdout,
            node_id,
        })
    }

    /// The process id (for CPU and memory figures).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The replica's counters.
    pub fn stats(&mut self) -> BoxResult<NodeStats> {
        writeln!(self.stdin, "stats")?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        let fields: Vec<u64> = line
            .strip_prefix("STATS ")
            .ok_or_else(|| format!("unexpected reply {line:?}"))?
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        match fields[..] {
            [synced_writes, replicas, hibernating] => Ok(NodeStats {
                synced_writes,
                replicas: replicas as usize,
                hibernating: hibernating as usize,
            }),
            _ => Err(format!("unexpected reply {line:?}").into()),
        }
    }

    /// kill -9.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// This process's node and the replica processes, on one temp dir; with `--rtt-ms`, the
/// delaying proxy between them.
pub struct Cluster {
    pub node: CopyCat,
    pub replicas: Vec<Replica>,
    pub root: tempfile::TempDir,
    /// Declared after the nodes: dropped (stopped) once they are.
    _proxy: Option<WanProxy>,
}

impl Cluster {
    /// Starts `size` nodes (this one, founding the cluster once all are up, and
    /// `size - 1` replica processes) and waits until every node sees every other alive.
    /// With `--secure`, first writes development credentials for `size` nodes under the
    /// temp dir.
    pub fn start(size: usize, args: &Args) -> BoxResult<Cluster> {
        let root = tempfile::tempdir()?;
        let mut args = args.clone();
        if args.secure {
            let keys = root.path().join("keys");
            DevCredentials::generate(size)?.write_to(&keys)?;
            args.keys = Some(keys.to_string_lossy().into_owned());
        }
        let proxy = args.rtt.map(|rtt| WanProxy::start(rtt / 2)).transpose()?;
        let fronts = match &proxy {
            Some(proxy) => (0..size).map(|_| proxy.front().map(Some)).collect(),
            None => (0..size).map(|_| Ok(None)).collect::<BoxResult<Vec<_>>>(),
        }?;
        if let Some(front) = &fronts[0] {
            args.advertise = Some((front.raft.to_string(), front.gossip.to_string()));
            args.datacenter = Some("dc0".to_string());
        }
        let args = &args;
        let founder = Config {
            bootstrap_expect: size,
            ..node_config(&root.path().join("node0"), Vec::new(), args)?
        };
        let node = CopyCat::start(founder)?;
        let seed = match &fronts[0] {
            Some(front) => {
                front.connect_to(node.raft_addr(), node.gossip_addr());
                front.gossip.to_string()
            }
            None => node.gossip_addr().to_string(),
        };
        let replica_args = Args {
            advertise: None,
            datacenter: None,
            ..args.clone()
        };
        let replicas = (1..size)
            .map(|i| {
                let dir = root.path().join(format!("node{i}"));
                Replica::spawn(&dir, &seed, i, fronts[i].as_ref(), &replica_args)
            })
            .collect::<BoxResult<Vec<_>>>()?;
        let cluster = Cluster {
            node,
            replicas,
            root,
            _proxy: proxy,
        };
        wait_for(
            "every node to see every other",
            Duration::from_secs(60),
            || {
                cluster.node.members_blocking().is_ok_and(|m| {
                    m.iter()
                        .filter(|m| m.state == copycat::MemberState::Alive)
                        .count()
                        == size
                })
            },
        )?;
        Ok(cluster)
    }

    /// Fsync'ed storage writes of every running node, summed.
    pub fn synced_writes(&mut self) -> BoxResult<u64> {
        let mut total = self.node.stats_blocking()?.synced_writes;
        for replica in &mut self.replicas {
            if replica.child.try_wait()?.is_none() {
                total += replica.stats()?.synced_writes;
            }
        }
        Ok(total)
    }

    /// Stops everything: replicas first (killed), then this node.
    pub fn stop(self) {
        drop(self.replicas);
        self.node.shutdown();
    }
}

/// Polls `cond` every 50 ms until it holds, or fails after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> BoxResult<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("timed out after {limit:?} waiting for {what}").into())
}
