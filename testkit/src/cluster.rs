//! Runs `hashmap` example processes on loopback: start, wait for READY, query `/status`,
//! kill -9, restart on the same data dir and ports, and kill everything on drop.
//!
//! Used by `examples/demo.rs`, `examples/chaos.rs`, `tests/multiprocess.rs` and
//! `tests/bootstrap.rs`; talks to the nodes through [`crate::http`].

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::http;

/// Timeout of one `/status` or `GET` request.
pub const QUICK: Duration = Duration::from_secs(3);

/// How long a node may take from spawn to its READY line (a debug build on a loaded
/// machine opens sled and binds in well under this).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where `cargo build --example <name>` puts the binary for the profile that built the
/// running executable, which lives in `target/<profile>/examples/` (an example) or
/// `target/<profile>/deps/` (a test).
pub fn example_path(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("unexpected executable location {}", exe.display()))?;
    Ok(profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX)))
}

/// The hashmap example's binary (see [`example_path`]).
pub fn hashmap_path() -> Result<PathBuf, String> {
    example_path("hashmap")
}

/// The copycat package's directory (its `Cargo.toml`, `examples/`, `tests/`): the parent
/// of this crate's, which is copycat's `testkit/`. `cargo build --example` runs there.
///
/// This crate's own `CARGO_MANIFEST_DIR` is `testkit/`, where cargo would find only this
/// crate, which has no examples.
pub fn copycat_dir() -> &'static Path {
    let testkit = Path::new(env!("CARGO_MANIFEST_DIR"));
    testkit
        .parent()
        .expect("copycat-testkit lives in a directory of the copycat package")
}

/// The hashmap example, built once per process with the running executable's profile
/// (tests get no `CARGO_BIN_EXE_*` for examples, and a stale binary would test old code).
///
/// Builds with the cargo that built this crate, in [`copycat_dir`].
pub fn built_hashmap() -> Result<PathBuf, String> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        cargo_build_example(Path::new(env!("CARGO")), copycat_dir(), "hashmap")?;
        let bin = hashmap_path()?;
        if !bin.exists() {
            return Err(format!("{} missing after the build", bin.display()));
        }
        Ok(bin)
    })
    .clone()
}

/// Runs `cargo build --example <name>` in `manifest_dir` (normally [`copycat_dir`]) with
/// the running executable's profile.
pub fn cargo_build_example(cargo: &Path, manifest_dir: &Path, name: &str) -> Result<(), String> {
    let mut cmd = Command::new(cargo);
    cmd.current_dir(manifest_dir)
        .args(["build", "--example", name]);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {}: {e}", cargo.display()))?;
    if !status.success() {
        return Err(format!("cargo build --example {name} failed: {status}"));
    }
    Ok(())
}

/// Polls `cond` every 50 ms until it holds; an error naming `what` after `timeout`.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        if cond() {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return Err(format!("timed out after {timeout:?} waiting until {what}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What a node reported in its READY line; kept across kills so a restart reuses the
/// ports (its peers know it by them).
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// HTTP API address.
    pub http: SocketAddr,
    /// copycat's raft (TCP) address.
    pub raft: SocketAddr,
    /// copycat's gossip (UDP) address: what other nodes take as `--peers`.
    pub gossip: SocketAddr,
    /// The node id as `/status` prints it (decimal).
    pub node_id: String,
}

/// The running processes, by node index; shared with [`ProcessCluster::cleanup_handle`]
/// so a signal handler can kill them too.
type Children = Arc<Mutex<Vec<Option<Child>>>>;

/// A set of hashmap processes with data dirs and logs under one temp dir.
///
/// Dropping it kills every process (also while unwinding from a panic, so no node outlives
/// a failed test or demo), prints the tail of each node's log if panicking, and then
/// removes the temp dir, unless `COPYCAT_KEEP_DIR` is set (to read the node logs).
pub struct ProcessCluster {
    bin: PathBuf,
    /// Flags given to every node besides the ones this type sets.
    extra_args: Vec<String>,
    /// What each node reported in its last READY line; kept across kills.
    infos: Vec<NodeInfo>,
    /// Largest file nodes started from now on may write (`ulimit -f`), if any.
    file_size_limit: Option<u64>,
    /// Each node's own flags (its credentials), kept for restarts.
    node_args: Vec<Vec<String>>,
    /// Most file descriptors nodes started from now on may open (`ulimit -n`), if any.
    fd_limit: Option<u64>,
    children: Children,
    // Declared last so it is removed after the processes are dead.
    root: tempfile::TempDir,
}

/// Locks `children`, tolerating poison (a panic elsewhere must not stop the cleanup).
fn lock(children: &Children) -> MutexGuard<'_, Vec<Option<Child>>> {
    children.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kills and reaps every process in `children`.
fn kill_all(children: &Children) {
    let taken: Vec<Child> = lock(children).iter_mut().filter_map(Option::take).collect();
    for mut child in taken {
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl ProcessCluster {
    /// An empty cluster running `bin` (the hashmap example).
    pub fn new(bin: PathBuf) -> Result<ProcessCluster, String> {
        let mut root = tempfile::Builder::new()
            .prefix("copycat-hashmap-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        if std::env::var_os("COPYCAT_KEEP_DIR").is_some() {
            root.disable_cleanup(true);
            eprintln!("COPYCAT_KEEP_DIR: keeping {}", root.path().display());
        }
        Ok(ProcessCluster {
            bin,
            extra_args: Vec::new(),
            infos: Vec::new(),
            file_size_limit: None,
            node_args: Vec::new(),
            fd_limit: None,
            children: Arc::default(),
            root,
        })
    }

    /// Gives every node started from now on the flags `args` too.
    pub fn with_args(mut self, args: &[&str]) -> Self {
        self.extra_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Starts a new cluster of `n` nodes as the README does it: all of them with
    /// `--bootstrap-expect n`, the first founding the cluster and the others joining through
    /// its gossip port, so the map's group starts with all its voters. Returns once every
    /// node printed READY (not once the cluster formed: see [`ProcessCluster::converged`]).
    pub fn form(&mut self, n: usize) -> Result<(), String> {
        self.form_with_last(n, |_| {}).map(|_| ())
    }

    /// [`ProcessCluster::form`], calling `prepare_last` just before the last node starts
    /// (to start it under a limit, say); returns the last node's index.
    pub fn form_with_last(
        &mut self,
        n: usize,
        prepare_last: impl FnOnce(&mut Self),
    ) -> Result<usize, String> {
        assert!(n >= 2, "a cluster with a last node besides its founder");
        let expect = n.to_string();
        self.extra_args
            .extend(["--bootstrap-expect".to_string(), expect]);
        let first = self.start(&[])?;
        let seed = self.info(first).gossip;
        for _ in 2..n {
            self.start(&[seed])?;
        }
        prepare_last(self);
        self.start(&[seed])
    }

    /// For a signal handler, which ends the process without running destructors: kills
    /// every node and removes the temp dir (unless kept).
    pub fn cleanup_handle(&self) -> impl Fn() + Send + 'static {
        let children = self.children.clone();
        let root = self.root.path().to_path_buf();
        let keep = std::env::var_os("COPYCAT_KEEP_DIR").is_some();
        move || {
            kill_all(&children);
            if !keep {
                let _ = std::fs::remove_dir_all(&root);
            }
        }
    }

    /// Limits the size of every file that nodes started from now on write to `bytes`
    /// (rounded up to 512-byte blocks; `None`: no limit): a write that would grow a file
    /// beyond it fails with EFBIG, as a full disk fails with ENOSPC. Runs the node through
    /// `sh` with `ulimit -f` and SIGXFSZ ignored (which exec keeps).
    pub fn set_file_size_limit(&mut self, bytes: Option<u64>) {
        self.file_size_limit = bytes;
    }

    /// Limits the file descriptors that nodes started from now on may have open to `fds`
    /// (`None`: no limit of ours): past it, opening a file or accepting a connection fails
    /// with EMFILE. Runs the node through `sh` with `ulimit -n`.
    pub fn set_fd_limit(&mut self, fds: Option<u64>) {
        self.fd_limit = fds;
    }

    /// Node `i`'s process id while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        lock(&self.children).get(i)?.as_ref().map(Child::id)
    }

    /// Sends node `i` SIGTERM (through `kill`), the signal to shut down cleanly; see
    /// [`ProcessCluster::exit_code`] for how it ended.
    pub fn terminate(&self, i: usize) -> Result<(), String> {
        let pid = self
            .pid(i)
            .ok_or_else(|| format!("node {i} is not running"))?;
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .map_err(|e| format!("kill: {e}"))?;
        if !status.success() {
            return Err(format!("kill -TERM {pid}: {status}"));
        }
        Ok(())
    }

    /// Node `i`'s exit status if its process ended by itself (`None` while it runs, or if
    /// it was killed by [`ProcessCluster::kill`] or a signal).
    pub fn exit_code(&mut self, i: usize) -> Option<i32> {
        let mut children = lock(&self.children);
        let child = children.get_mut(i)?.as_mut()?;
        let status = child.try_wait().ok()??;
        children[i] = None;
        status.code()
    }

    /// Nodes started so far (running or killed).
    pub fn len(&self) -> usize {
        self.infos.len()
    }

    /// Whether no node was started yet.
    pub fn is_empty(&self) -> bool {
        self.infos.is_empty()
    }

    /// Node `i`'s addresses and id, as of its last READY line.
    pub fn info(&self, i: usize) -> &NodeInfo {
        &self.infos[i]
    }

    /// Node `i`'s HTTP address (the same across restarts).
    pub fn http(&self, i: usize) -> SocketAddr {
        self.infos[i].http
    }

    /// Whether node `i` has a live process (not killed).
    pub fn is_running(&self, i: usize) -> bool {
        lock(&self.children).get(i).is_some_and(Option::is_some)
    }

    /// The node index whose node id is `node_id`.
    pub fn index_of(&self, node_id: &str) -> Option<usize> {
        self.infos.iter().position(|n| n.node_id == node_id)
    }

    /// Node `i`'s data dir (kept across restarts).
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.root.path().join(format!("node{i}"))
    }

    /// Node `i`'s stderr (copycat's log), appended to across restarts.
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.root.path().join(format!("node{i}.log"))
    }

    /// Starts a new node on free ports, joining through `peers` (none: a new cluster);
    /// returns its index.
    pub fn start(&mut self, peers: &[SocketAddr]) -> Result<usize, String> {
        self.start_with_args(peers, &[])
    }

    /// [`ProcessCluster::start`] with flags of this node only (kept for its restarts).
    pub fn start_with_args(
        &mut self,
        peers: &[SocketAddr],
        args: &[String],
    ) -> Result<usize, String> {
        let i = self.infos.len();
        self.node_args.push(args.to_vec());
        lock(&self.children).push(None);
        let info = self.spawn(i, [0, 0, 0], peers)?;
        self.infos.push(info);
        Ok(i)
    }

    /// Kills node `i` with SIGKILL: no shutdown, no final sync.
    pub fn kill(&mut self, i: usize) {
        let child = lock(&self.children)[i].take();
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Restarts killed node `i` on its data dir with the ports it had, joining through
    /// `peers`.
    pub fn restart(&mut self, i: usize, peers: &[SocketAddr]) -> Result<(), String> {
        assert!(!self.is_running(i), "node {i} is still running");
        let old = self.infos[i].clone();
        let ports = [old.raft.port(), old.gossip.port(), old.http.port()];
        let info = self.spawn(i, ports, peers)?;
        if info.node_id != old.node_id {
            return Err(format!(
                "node {i} came back as {} instead of {}",
                info.node_id, old.node_id
            ));
        }
        self.infos[i] = info;
        Ok(())
    }

    /// Spawns the process for node `i` and waits for its READY line. The process is
    /// registered before the wait, so every exit path kills it.
    fn spawn(
        &self,
        i: usize,
        [raft, gossip, http]: [u16; 3],
        peers: &[SocketAddr],
    ) -> Result<NodeInfo, String> {
        let log_path = self.log_path(i);
        // Appends, so a restarted node's log follows the killed one's.
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let peers: Vec<String> = peers.iter().map(SocketAddr::to_string).collect();
        let mut child = self
            .command()
            .arg("--data-dir")
            .arg(self.data_dir(i))
            .args(["--hostname", "127.0.0.1"])
            .args(["--port", &raft.to_string()])
            .args(["--gossip-port", &gossip.to_string()])
            .args(["--http-port", &http.to_string()])
            .args(["--peers", &peers.join(",")])
            .args(&self.extra_args)
            .args(&self.node_args[i])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        let stdout = child.stdout.take().ok_or("stdout not piped")?;
        lock(&self.children)[i] = Some(child);
        read_ready(stdout).map_err(|e| {
            let child = lock(&self.children)[i].take();
            let status = child.map(|mut c| {
                let _ = c.kill();
                c.wait()
            });
            format!(
                "node {i}: {e} (exit: {status:?})\n--- {} ---\n{}",
                log_path.display(),
                tail(&log_path, 30)
            )
        })
    }

    /// The command that runs a node, through `sh` when files or descriptors are limited.
    fn command(&self) -> Command {
        if self.file_size_limit.is_none() && self.fd_limit.is_none() {
            return Command::new(&self.bin);
        }
        // "unlimited" stands for no limit of ours: that `ulimit` is not run at all.
        let blocks = self
            .file_size_limit
            .map_or("unlimited".to_string(), |bytes| {
                bytes.div_ceil(512).to_string()
            });
        let fds = self
            .fd_limit
            .map_or("unlimited".to_string(), |fds| fds.to_string());
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "trap '' XFSZ; [ \"$1\" = unlimited ] || ulimit -S -f \"$1\"; \
             [ \"$2\" = unlimited ] || ulimit -n \"$2\"; shift 2; exec \"$@\"",
            "sh",
        ])
        .arg(blocks)
        .arg(fds)
        .arg(&self.bin);
        cmd
    }

    /// Lifts the file size limit of running node `i` (the soft limit `sh` set, up to the
    /// hard limit): as if space returned to a full disk. Uses prlimit(2) on its process.
    pub fn lift_file_size_limit(&self, i: usize) -> Result<(), String> {
        let pid = self.pid(i).ok_or(format!("node {i} is not running"))?;
        let pid = libc::pid_t::try_from(pid).map_err(|e| e.to_string())?;
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: prlimit reads and writes only the rlimit structs passed, which outlive the calls.
        let read = unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, std::ptr::null(), &mut limit) };
        if read != 0 {
            return Err(format!(
                "prlimit (read): {}",
                std::io::Error::last_os_error()
            ));
        }
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: as above.
        let set = unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, &limit, std::ptr::null_mut()) };
        if set != 0 {
            return Err(format!(
                "prlimit (set): {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    /// Node `i`'s `/status` as JSON.
    pub fn status(&self, i: usize) -> Result<serde_json::Value, String> {
        let resp = http::get(self.http(i), "/status", QUICK).map_err(|e| e.to_string())?;
        if resp.status != 200 {
            return Err(format!("/status: {} {}", resp.status, resp.text()));
        }
        serde_json::from_slice(&resp.body).map_err(|e| format!("/status JSON: {e}"))
    }

    /// Whether every running node sees `n` alive members and a group of `min(n, 3)` voters
    /// (the default replication factor) with the same leader, itself a running node.
    pub fn converged(&self, n: usize) -> bool {
        let mut leaders = Vec::new();
        for i in (0..self.len()).filter(|i| self.is_running(*i)) {
            let Ok(s) = self.status(i) else {
                return false;
            };
            let alive = s["members"]
                .as_array()
                .map_or(0, |m| m.iter().filter(|m| m["state"] == "alive").count());
            let voters = s["group"]["voters"].as_array().map_or(0, Vec::len);
            let Some(leader) = s["group"]["leader"].as_str() else {
                return false;
            };
            if alive < n || voters != n.min(3) {
                return false;
            }
            leaders.push(leader.to_string());
        }
        leaders.windows(2).all(|w| w[0] == w[1])
            && leaders
                .first()
                .and_then(|l| self.index_of(l))
                .is_some_and(|i| self.is_running(i))
    }

    /// The index of the group's leader as node `i` sees it.
    pub fn leader_seen_by(&self, i: usize) -> Option<usize> {
        let s = self.status(i).ok()?;
        self.index_of(s["group"]["leader"].as_str()?)
    }

    /// Prints the last `lines` lines of every node's log to stderr.
    pub fn dump_logs(&self, lines: usize) {
        for i in 0..self.len() {
            let path = self.log_path(i);
            eprintln!("--- {} (last {lines} lines) ---", path.display());
            eprintln!("{}", tail(&path, lines));
        }
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        kill_all(&self.children);
        if std::thread::panicking() {
            self.dump_logs(40);
        }
    }
}

/// Reads a node's stdout until its READY line, on a helper thread so the wait has a
/// deadline. The thread then keeps draining stdout, so the node never blocks on a full
/// pipe.
fn read_ready(stdout: ChildStdout) -> Result<NodeInfo, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !sent && line.starts_with("READY ") {
                let _ = tx.send(line);
                sent = true;
            }
        }
    });
    let line = rx.recv_timeout(READY_TIMEOUT).map_err(|e| match e {
        std::sync::mpsc::RecvTimeoutError::Timeout => {
            format!("no READY line within {READY_TIMEOUT:?}")
        }
        std::sync::mpsc::RecvTimeoutError::Disconnected => "exited before READY".to_string(),
    })?;
    parse_ready(&line)
}

/// Parses `READY http=A raft=A gossip=A node_id=N`.
fn parse_ready(line: &str) -> Result<NodeInfo, String> {
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .ok_or_else(|| format!("READY line lacks {name}: {line:?}"))
    };
    let addr = |name: &str| -> Result<SocketAddr, String> {
        field(name)?
            .parse()
            .map_err(|e| format!("READY {name}: {e}"))
    };
    Ok(NodeInfo {
        http: addr("http")?,
        raft: addr("raft")?,
        gossip: addr("gossip")?,
        node_id: field("node_id")?.to_string(),
    })
}

/// The last `lines` lines of a file (for failure reports).
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
