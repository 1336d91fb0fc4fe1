//! The original CopyCat's distributed hashmap, as a process serving HTTP.
//!
//! Every node holds the whole map, a [`copycat::ReplicatedMap`] of `String` to bytes; a
//! write is acknowledged once it is committed *and* applied to this process's map, so a
//! client that got a 200 can read its own write back from the same node. Everything here
//! but the map is HTTP.
//!
//! ```text
//! cargo run --example hashmap -- --http-port 8080            # first node: a new cluster
//! cargo run --example hashmap -- --data-dir ./db2 --port 7468 --gossip-port 7469 \
//!     --http-port 8081 --peers 127.0.0.1:7459                # joins through the first
//! curl -X PUT --data-binary hello localhost:8080/kv/greeting
//! curl localhost:8081/kv/greeting
//! curl localhost:8080/status
//! ```
//!
//! Endpoints: `GET|PUT|DELETE /kv/{key}` and `GET /status` (JSON: the node, its members,
//! and the map's group: leader, voters, learners, the replication factor and how many
//! node failures the group survives now, `tolerated_failures` and `fault_tolerant`).
//! On startup the process prints one `READY http=… raft=… gossip=… node_id=…` line to
//! stdout with the addresses it actually bound (ports may be 0), for scripts and tests to
//! wait on. Three nodes started together should all get `--bootstrap-expect 3` (see the
//! README). With `--tls-ca/--tls-cert/--tls-key` (all three) raft traffic is TLS with
//! mutual authentication and the node id is the certificate's; with `--cluster-key`
//! gossip is sealed. The `keys` example writes a development set of these files; the
//! README's "secure three-terminal recipe" uses them. Logs go to stderr at info level;
//! `COPYCAT_LOG=off|error|warn|info|debug|trace` changes that.
//!
//! The HTTP layer is axum on hyper 1 in a small tokio runtime of its own, with a bound on
//! everything a client can make it spend: open connections, time to send a request head
//! (also the keep-alive idle time), connection lifetime, requests in flight, body size and
//! request time (`server.rs` names each bound and what happens when it is reached). An
//! accept error such as EMFILE (out of file descriptors) is logged and retried after a
//! pause; it never ends the server. SIGTERM or ctrl-c stops accepting, lets open requests
//! finish briefly, shuts the node down (handing its leaderships over) and exits 0.

mod api;
mod server;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use copycat::{Config, CopyCat, GossipKey, Keyring, Security, TlsIdentity};
use slog::{info, Drain, Logger};

use api::{App, Map};

/// The data structure id of the original CopyCat's hashmap example.
const DEFAULT_ID: &str = "01CFR5R4JJE9KNRAJFFEAQ2SAJ";

/// How long a write (or a consistent read) may take before the client gets a 503.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Worker threads of the HTTP runtime. Handlers await copycat (they block no thread), so
/// two serve every connection; the thread count does not grow with connections.
const HTTP_WORKER_THREADS: usize = 2;

/// Threads tokio may start for blocking work in the HTTP runtime (handlers do none; this
/// caps what a future change could add).
const HTTP_BLOCKING_THREADS: usize = 2;

/// `--help` text, also printed after a usage error.
const USAGE: &str = "\
usage: hashmap [flags]

  --data-dir DIR        where the node keeps its data (default ./copy-cat-db/)
  --port PORT           copycat (raft) TCP port; 0 picks a free one (default 7458)
  --gossip-port PORT    gossip UDP port; 0 picks a free one (default 7459)
  --http-port PORT      HTTP port; 0 picks a free one (default 8080)
  --peers ADDRS         comma-separated gossip addresses of running nodes;
                        empty starts a new cluster (default empty)
  --bootstrap-expect N  a node starting a new cluster waits until N nodes (itself
                        included) are up before it creates any group, so the map's
                        group starts with all its voters (default 1: start alone)
  --datacenter NAME     this node's datacenter (default \"default\")
  --id ULID             the hashmap's data structure id (default 01CFR5R4JJE9KNRAJFFEAQ2SAJ)
  --hostname HOST       address to bind and advertise (default 127.0.0.1)
  --snapshot-interval N entries applied between snapshots (default 10000)
  --http-max-connections N
                        open HTTP connections at once; more wait in the listen
                        backlog until one closes (default 1024)
  --http-header-timeout-ms MS
                        time a client has to send a request head, also the
                        keep-alive idle time; then the connection is closed
                        (default 10000)
  --cluster-key FILE    seal gossip under this key (64 hex digits; see the keys example)
  --tls-ca FILE         TLS: the cluster's CA certificate (PEM)
  --tls-cert FILE       TLS: this node's certificate (PEM); its node id becomes the node's
  --tls-key FILE        TLS: this node's private key (PEM)
                        (the three TLS flags go together; without them, and without
                        --cluster-key, the cluster is open to anyone reaching its ports)
  -h, --help            print this help

Environment: COPYCAT_LOG=off|error|warn|info|debug|trace (default info), to stderr.";

/// Command-line settings.
#[derive(Debug)]
struct Args {
    data_dir: PathBuf,
    port: u16,
    gossip_port: u16,
    http_port: u16,
    peers: Vec<String>,
    bootstrap_expect: usize,
    datacenter: String,
    id: String,
    hostname: String,
    snapshot_interval: u64,
    cluster_key: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    http_limits: server::Limits,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            data_dir: PathBuf::from("./copy-cat-db/"),
            port: 7458,
            gossip_port: 7459,
            http_port: 8080,
            peers: Vec::new(),
            bootstrap_expect: Config::default().bootstrap_expect,
            datacenter: "default".to_string(),
            id: DEFAULT_ID.to_string(),
            hostname: "127.0.0.1".to_string(),
            snapshot_interval: Config::default().snapshot_interval,
            cluster_key: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            http_limits: server::Limits::default(),
        }
    }
}

/// Parses `--flag value` and `--flag=value`; `Ok(None)` means help was asked for.
fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut args = Args::default();
    while let Some(arg) = argv.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(None);
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if arg.starts_with("--") => {
                (flag.to_string(), Some(value.to_string()))
            }
            _ => (arg.clone(), None),
        };
        const FLAGS: [&str; 16] = [
            "--http-max-connections",
            "--http-header-timeout-ms",
            "--cluster-key",
            "--tls-ca",
            "--tls-cert",
            "--tls-key",
            "--data-dir",
            "--port",
            "--gossip-port",
            "--http-port",
            "--peers",
            "--bootstrap-expect",
            "--datacenter",
            "--id",
            "--hostname",
            "--snapshot-interval",
        ];
        if !flag.starts_with("--") {
            return Err(format!("unexpected argument {arg:?}"));
        }
        if !FLAGS.contains(&flag.as_str()) {
            return Err(format!("unknown flag {flag}"));
        }
        let value = match inline {
            Some(value) => value,
            None => argv
                .next()
                .ok_or_else(|| format!("flag {flag} needs a value"))?,
        };
        let port = |v: &str| {
            v.parse::<u16>()
                .map_err(|_| format!("{flag}: {v:?} is not a port number (0-65535)"))
        };
        match flag.as_str() {
            "--data-dir" => args.data_dir = PathBuf::from(value),
            "--port" => args.port = port(&value)?,
            "--gossip-port" => args.gossip_port = port(&value)?,
            "--http-port" => args.http_port = port(&value)?,
            "--peers" => {
                args.peers = value
                    .split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(String::from)
                    .collect()
            }
            "--bootstrap-expect" => {
                args.bootstrap_expect = value.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    format!("--bootstrap-expect: {value:?} is not a positive number")
                })?
            }
            "--datacenter" => args.datacenter = value,
            "--id" => {
                // Checked here so a typo is a usage error, not a failure after startup.
                value
                    .parse::<copycat::DataStructureId>()
                    .map_err(|e| format!("--id: {e}"))?;
                args.id = value;
            }
            "--hostname" => args.hostname = value,
            "--snapshot-interval" => {
                args.snapshot_interval = value.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    format!("--snapshot-interval: {value:?} is not a positive number")
                })?
            }
            "--http-max-connections" => {
                args.http_limits.max_connections = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=1 << 20).contains(n))
                    .ok_or_else(|| {
                        format!("--http-max-connections: {value:?} is not in 1..=1048576")
                    })?
            }
            "--http-header-timeout-ms" => {
                let ms: u64 = value.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    format!("--http-header-timeout-ms: {value:?} is not a positive number")
                })?;
                args.http_limits.header_read_timeout = Duration::from_millis(ms);
            }
            "--cluster-key" => args.cluster_key = Some(PathBuf::from(value)),
            "--tls-ca" => args.tls_ca = Some(PathBuf::from(value)),
            "--tls-cert" => args.tls_cert = Some(PathBuf::from(value)),
            "--tls-key" => args.tls_key = Some(PathBuf::from(value)),
            _ => unreachable!("checked against FLAGS above"),
        }
    }
    check_tls_flags(&args)?;
    Ok(Some(args))
}

/// The three TLS flags come together or not at all.
fn check_tls_flags(args: &Args) -> Result<(), String> {
    let flags = [
        ("--tls-ca", &args.tls_ca),
        ("--tls-cert", &args.tls_cert),
        ("--tls-key", &args.tls_key),
    ];
    let missing: Vec<&str> = flags
        .iter()
        .filter(|(_, v)| v.is_none())
        .map(|(f, _)| *f)
        .collect();
    if missing.is_empty() || missing.len() == flags.len() {
        return Ok(());
    }
    Err(format!(
        "--tls-ca, --tls-cert and --tls-key go together; missing {}",
        missing.join(", ")
    ))
}

/// The node's security settings from the flags; a file that cannot be used is an error
/// naming it.
fn security(args: &Args) -> copycat::Result<Security> {
    let tls = match (&args.tls_ca, &args.tls_cert, &args.tls_key) {
        (Some(ca), Some(cert), Some(key)) => Some(TlsIdentity::from_files(ca, cert, key)?),
        _ => None,
    };
    let gossip_keys = match &args.cluster_key {
        Some(file) => Some(Keyring::new(GossipKey::from_file(file)?)),
        None => None,
    };
    Ok(Security { tls, gossip_keys })
}

/// Parses the flags (exit 2 on a usage error) and runs the node (exit 1 if it fails).
fn main() {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("hashmap: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args) {
        eprintln!("hashmap: {e}");
        std::process::exit(1);
    }
}

/// Starts the node and the HTTP server; prints READY; serves until SIGINT/SIGTERM, then
/// stops the server and shuts the node down.
fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let log = logger()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(HTTP_WORKER_THREADS)
        .max_blocking_threads(HTTP_BLOCKING_THREADS)
        .thread_name("http")
        .enable_all()
        .build()?;
    // Installed before anything starts, so an early SIGTERM still shuts down cleanly
    // instead of killing the process mid-startup.
    let stop = {
        let _context = runtime.enter();
        stop_signal()?
    };

    let config = Config {
        hostname: args.hostname.clone(),
        port: args.port,
        gossip_port: args.gossip_port,
        data_dir: args.data_dir.clone(),
        peers: args.peers.clone(),
        bootstrap_expect: args.bootstrap_expect,
        datacenter: args.datacenter.clone(),
        logger: log.clone(),
        snapshot_interval: args.snapshot_interval,
        security: security(&args)?,
        ..Config::default()
    };
    if api::MAX_VALUE_BYTES >= config.max_proposal_bytes {
        return Err("values may not be as large as copycat's proposal limit".into());
    }
    let replication_factor = config.replication_factor;
    let node = CopyCat::start(config)?;
    let id = args.id.parse()?;
    let map = Map::open(&node, id)?.with_timeout(TIMEOUT);
    let app = Arc::new(App {
        node: node.clone(),
        map,
        replication_factor,
    });
    let router = server::limit_requests(api::router(app), api::MAX_VALUE_BYTES);

    let served = runtime.block_on(async {
        let listener = server::bind(&args.hostname, args.http_port)
            .await
            .map_err(|e| {
                format!(
                    "cannot bind HTTP on {}:{}: {e}",
                    args.hostname, args.http_port
                )
            })?;
        let http_addr = listener.local_addr()?;
        info!(log, "hashmap ready"; "http" => %http_addr, "raft" => %node.raft_addr(),
            "gossip" => %node.gossip_addr(), "node_id" => node.node_id(), "id" => %id,
            "http_max_connections" => args.http_limits.max_connections,
            "http_header_timeout" => ?args.http_limits.header_read_timeout);
        let mut stdout = std::io::stdout().lock();
        writeln!(
            stdout,
            "READY http={http_addr} raft={} gossip={} node_id={}",
            node.raft_addr(),
            node.gossip_addr(),
            node.node_id()
        )?;
        stdout.flush()?;
        drop(stdout);
        let stopped = {
            let log = log.clone();
            async move {
                stop.await;
                info!(log, "signal received; shutting down");
            }
        };
        server::serve(listener, router, args.http_limits, stopped, log.clone()).await;
        Ok::<(), Box<dyn std::error::Error>>(())
    });
    // The node goes down even if serving failed (the listener could not bind, say).
    node.shutdown();
    // Connections still open after the grace period are dropped with the runtime.
    runtime.shutdown_timeout(Duration::from_millis(100));
    served
}

/// Resolves at the first SIGINT (ctrl-c) or SIGTERM; the handlers are installed by this
/// call (inside a tokio runtime), so a signal that arrives before the future is awaited
/// is not lost.
#[cfg(unix)]
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

/// Resolves at the first ctrl-c.
#[cfg(not(unix))]
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

/// A stderr logger at the level `COPYCAT_LOG` asks for (default info).
fn logger() -> Result<Logger, String> {
    let level = match std::env::var("COPYCAT_LOG")
        .unwrap_or_default()
        .to_ascii_lowercase()
        .as_str()
    {
        "off" | "none" => return Ok(Logger::root(slog::Discard, slog::o!())),
        "" | "info" => slog::Level::Info,
        "error" => slog::Level::Error,
        "warn" | "warning" => slog::Level::Warning,
        "debug" => slog::Level::Debug,
        "trace" => slog::Level::Trace,
        other => {
            return Err(format!(
                "COPYCAT_LOG={other:?}: use off|error|warn|info|debug|trace"
            ))
        }
    };
    // A synchronous decorator: simple, and a log line is never lost on SIGKILL or exit.
    let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
    let drain = slog_term::FullFormat::new(decorator).build().fuse();
    let drain = slog::LevelFilter::new(drain, level).fuse();
    Ok(Logger::root(drain, slog::o!()))
}
