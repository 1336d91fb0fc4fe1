//! The service registry across two processes in two datacenters.
//!
//! ```text
//! cargo run --example registry
//! ```
//!
//! Starts two copies of this program: `serve` runs a small HTTP service in datacenter
//! `west` and publishes it as `http:hello`; `call` runs in datacenter `east`, resolves
//! `http:hello` by its bare name (its own datacenter first, then any other: here it falls
//! back to `west`), takes a lease on it, and calls it. Each mode also runs on its own:
//!
//! ```text
//! cargo run --example registry -- serve --dc west --dir /tmp/west
//! cargo run --example registry -- call --dc east --dir /tmp/east --peer <serve's gossip address>
//! ```
//!
//! The service is axum on hyper 1 under the same bounded server as the `hashmap` example
//! (`hashmap/server.rs`: connection cap, header timeout, request and body limits).

#[path = "hashmap/server.rs"]
mod server;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use copycat::registry::{PublishSettings, Registry, RegistryConfig, SubscribeOptions};
use copycat::{Config, CopyCat};
use copycat_testkit::http;
use slog::Drain;

const SERVICE: &str = "http:hello";
const DEADLINE: Duration = Duration::from_secs(30);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        None => orchestrate(),
        Some("serve") => Options::parse(&args[1..]).and_then(serve),
        Some("call") => Options::parse(&args[1..]).and_then(call),
        Some(other) => Err(format!("unknown mode {other}; use serve, call or nothing")),
    };
    if let Err(e) = result {
        eprintln!("registry example failed: {e}");
        std::process::exit(1);
    }
}

/// The flags of `serve` and `call`.
struct Options {
    datacenter: String,
    dir: PathBuf,
    peers: Vec<String>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let mut options = Options {
            datacenter: "default".to_string(),
            dir: PathBuf::from("./copy-cat-db/"),
            peers: Vec::new(),
        };
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            let value = args
                .next()
                .ok_or_else(|| format!("{flag} needs a value"))?
                .clone();
            match flag.as_str() {
                "--dc" => options.datacenter = value,
                "--dir" => options.dir = PathBuf::from(value),
                "--peer" => options.peers.push(value),
                other => return Err(format!("unknown flag {other}")),
            }
        }
        Ok(options)
    }

    fn start_node(&self) -> Result<CopyCat, String> {
        CopyCat::start(Config {
            data_dir: self.dir.clone(),
            port: 0,
            gossip_port: 0,
            datacenter: self.datacenter.clone(),
            peers: self.peers.clone(),
            ..Config::default()
        })
        .map_err(|e| format!("node: {e}"))
    }
}

/// Runs the HTTP service, publishes it, and serves until standard input closes.
fn serve(options: Options) -> Result<(), String> {
    let node = options.start_node()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("http")
        .enable_all()
        .build()
        .map_err(|e| format!("http runtime: {e}"))?;
    let listener = runtime
        .block_on(server::bind("127.0.0.1", 0))
        .map_err(|e| format!("http: {e}"))?;
    let addr = listener.local_addr().map_err(|e| format!("http: {e}"))?;
    let greeting = format!(
        "hello from node {} in {}",
        node.node_id(),
        options.datacenter
    );
    let router = axum::Router::new().fallback(move || {
        let greeting = greeting.clone();
        async move { greeting }
    });
    // No request has a body: the smallest limit that still takes an empty one.
    let router = server::limit_requests(router, 1024);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stopped = async {
        // An error means the sender is gone, which also means stop.
        let _ = stop_rx.await;
    };
    let served = runtime.spawn(server::serve(
        listener,
        router,
        server::Limits::default(),
        stopped,
        warn_logger(),
    ));
    let registry = Registry::start(&node, RegistryConfig::default()).map_err(|e| e.to_string())?;
    let settings = PublishSettings {
        concurrency: 4,
        ..PublishSettings::default()
    };
    let publication = registry
        .publish(SERVICE, &format!("http://{addr}"), settings)
        .map_err(|e| e.to_string())?;
    println!("READY gossip={} endpoint=http://{addr}", node.gossip_addr());
    // Serve until the parent closes our standard input (or kills us). The caller may be
    // gone by then, and with it the quorum of this two-node cluster: withdraw the
    // publication without waiting for the commit.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(publication);
    drop(registry);
    node.shutdown();
    let _ = stop_tx.send(());
    let _ = runtime.block_on(served);
    runtime.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}

/// Warnings (the HTTP server's accept errors, say) to stderr.
fn warn_logger() -> slog::Logger {
    let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
    let drain = slog_term::FullFormat::new(decorator).build().fuse();
    let drain = slog::LevelFilter::new(drain, slog::Level::Warning).fuse();
    slog::Logger::root(drain, slog::o!())
}

/// Resolves the service by name, takes a lease and calls it.
fn call(options: Options) -> Result<(), String> {
    let node = options.start_node()?;
    let registry = Registry::start(&node, RegistryConfig::default()).map_err(|e| e.to_string())?;
    registry
        .await_ready(&[SERVICE], DEADLINE)
        .map_err(|e| format!("waiting for {SERVICE}: {e}"))?;
    let subscription = registry
        .subscribe(SubscribeOptions::name(SERVICE))
        .map_err(|e| e.to_string())?;
    let lease = subscription.acquire(DEADLINE).map_err(|e| e.to_string())?;
    let publication = lease.publication();
    println!(
        "resolved {SERVICE} to {} in datacenter {} (this node is in {})",
        publication.endpoint, publication.datacenter, options.datacenter
    );
    let addr: SocketAddr = publication
        .endpoint
        .trim_start_matches("http://")
        .parse()
        .map_err(|e| format!("endpoint {}: {e}", publication.endpoint))?;
    let response = http::get(addr, "/", Duration::from_secs(5)).map_err(|e| e.to_string())?;
    println!("RESPONSE {} {}", response.status, response.text());
    drop(lease);
    drop(subscription);
    drop(registry);
    node.shutdown();
    Ok(())
}

/// Kills a child process when dropped, whatever happened.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `serve` in `west`, then `call` in `east`, and prints what they report.
fn orchestrate() -> Result<(), String> {
    let started = Instant::now();
    let root = tempfile::tempdir().map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = |name: &str| root.path().join(name).display().to_string();

    let mut server = ChildGuard(
        Command::new(&exe)
            .args(["serve", "--dc", "west", "--dir", &dir("west")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn serve: {e}"))?,
    );
    let stdout = server.0.stdout.take().ok_or("serve has no stdout")?;
    let ready = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find(|line| line.starts_with("READY"))
        .ok_or("serve exited before it was ready")?;
    println!(
        "[{:>4.1}s] serve (west): {ready}",
        started.elapsed().as_secs_f64()
    );
    let gossip = ready
        .split_whitespace()
        .find_map(|field| field.strip_prefix("gossip="))
        .ok_or("READY line without gossip address")?;

    let output = Command::new(&exe)
        .args([
            "call",
            "--dc",
            "east",
            "--dir",
            &dir("east"),
            "--peer",
            gossip,
        ])
        .output()
        .map_err(|e| format!("spawn call: {e}"))?;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        println!(
            "[{:>4.1}s] call (east): {line}",
            started.elapsed().as_secs_f64()
        );
    }
    if !output.status.success() {
        return Err(format!(
            "call failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    drop(server);
    println!("[{:>4.1}s] done", started.elapsed().as_secs_f64());
    Ok(())
}
