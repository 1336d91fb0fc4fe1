//! Runs `copycat-node` processes on loopback for the integration tests: spawn with ports
//! 0, parse the READY line, talk JSON over HTTP, stop with SIGTERM, kill whatever is left
//! on drop (also when a test panics, after printing the node's log).

#![allow(dead_code)] // Each test file uses a part.

pub mod upstream;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use copycat_testkit::http;
use serde_json::Value;

/// How long a node may take from spawn to READY (a debug build on a loaded machine).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Timeout of a quick request.
pub const QUICK: Duration = Duration::from_secs(5);

/// One running `copycat-node` process.
pub struct Node {
    /// The node's name in failure messages.
    pub name: String,
    /// Local API address.
    pub api: SocketAddr,
    /// Gateway address.
    pub gateway: SocketAddr,
    /// Forwarding entry address (as advertised to other nodes).
    pub forward: SocketAddr,
    /// Raft address.
    pub raft: SocketAddr,
    /// Gossip address (what others take as `--peers`).
    pub gossip: SocketAddr,
    /// Node id as printed (decimal).
    pub node_id: String,
    child: Option<Child>,
    log: PathBuf,
    // Removed after the process is dead (fields drop in order, after Drop::drop).
    _dir: tempfile::TempDir,
}

impl Node {
    /// Starts a node in `datacenter`, joining through `peers` (none: a new cluster).
    pub fn start(name: &str, datacenter: &str, peers: &[&Node]) -> Node {
        Self::start_with(name, datacenter, peers, &[])
    }

    /// [`Node::start`] with extra flags.
    pub fn start_with(name: &str, datacenter: &str, peers: &[&Node], extra: &[&str]) -> Node {
        let dir = tempfile::Builder::new()
            .prefix("copycat-node-test-")
            .tempdir()
            .expect("temp dir");
        let log = dir.path().join("node.log");
        let peers: Vec<String> = peers.iter().map(|p| p.gossip.to_string()).collect();
        let mut child = Command::new(env!("CARGO_BIN_EXE_copycat-node"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args([
                "--hostname",
                "127.0.0.1",
                "--port",
                "0",
                "--gossip-port",
                "0",
            ])
            .args(["--api", "127.0.0.1:0", "--gateway", "127.0.0.1:0"])
            .args(["--datacenter", datacenter])
            .args(["--peers", &peers.join(",")])
            .args(extra)
            .env_remove("COPYCAT_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(File::create(&log).expect("log file")))
            .spawn()
            .expect("spawn copycat-node");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the READY line, then keeps draining stdout so the node never blocks on it.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("READY ") {
                    let _ = tx.send(line);
                }
            }
        });
        let ready = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) => line,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{name}: no READY line ({e:?})\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        let field = |key: &str| -> String {
            ready
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("READY line lacks {key}: {ready}"))
                .to_string()
        };
        let addr = |key: &str| -> SocketAddr {
            let value = field(key);
            value
                .parse()
                .unwrap_or_else(|e| panic!("READY {key}={value}: {e}"))
        };
        let node = Node {
            name: name.to_string(),
            api: addr("api"),
            gateway: addr("gateway"),
            forward: addr("forward"),
            raft: addr("raft"),
            gossip: addr("gossip"),
            node_id: field("node_id"),
            child: Some(child),
            log,
            _dir: dir,
        };
        for (key, a) in [
            ("api", node.api),
            ("gateway", node.gateway),
            ("forward", node.forward),
            ("raft", node.raft),
        ] {
            assert_ne!(a.port(), 0, "{name}: READY {key} shows the bound port");
        }
        node
    }

    /// Sends `method path` with `body` to the API; panics on a connection failure.
    pub fn call(&self, method: &str, path: &str, body: &str, timeout: Duration) -> Reply {
        let response = http::request(self.api, method, path, body.as_bytes(), timeout)
            .unwrap_or_else(|e| panic!("{}: {method} {path}: {e}", self.name));
        Reply {
            status: response.status,
            text: response.text(),
        }
    }

    /// `GET path` on the API.
    pub fn get(&self, path: &str) -> Reply {
        self.call("GET", path, "", QUICK)
    }

    /// Publishes `body` (JSON) and returns the publication's id; panics unless 201.
    pub fn publish(&self, body: &str) -> String {
        let reply = self.call("POST", "/v1/publications", body, QUICK);
        assert_eq!(
            reply.status, 201,
            "{}: publish {body}: {}",
            self.name, reply.text
        );
        reply.json()["id"].as_str().expect("an id").to_string()
    }

    /// Kills the process with SIGKILL: no shutdown at all.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits (up to `timeout`) for the process to exit.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -TERM");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{}: still running {timeout:?} after SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The node's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("--- {} log (last 40 lines) ---", self.name);
            eprintln!("{}", lines[lines.len().saturating_sub(40)..].join("\n"));
        }
    }
}

/// An API answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Body.
    pub text: String,
}

impl Reply {
    /// The body as JSON; panics if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }
}

/// Polls `cond` every 50 ms until it gives `Some`, or panics naming `what` after
/// `timeout`.
pub fn eventually<T>(what: &str, timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(out) = cond() {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
