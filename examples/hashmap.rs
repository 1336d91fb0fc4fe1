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
//! README's "secure three-terminal recipe" uses them. Logs go to stderr at info level; `COPYCAT_LOG=off|error|warn|info|debug|trace` changes that.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use copycat::{Config, CopyCat, GossipKey, Keyring, ReplicatedMap, Security, TlsIdentity};
use slog::{info, Drain, Logger};
use tiny_http::{Header, Method, Request, Response, Server};

/// The data structure id of the original CopyCat's hashmap example.
const DEFAULT_ID: &str = "01CFR5R4JJE9KNRAJFFEAQ2SAJ";

/// How long a write (or a consistent read) may take before the client gets a 503.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Largest accepted value: stays well under copycat's default 1 MiB proposal limit, so a
/// too-large value is a clear 413 here rather than a proposal error.
const MAX_VALUE_BYTES: usize = 512 * 1024;

/// Requests handled at once. Writes block their worker until committed, so several
/// workers keep `GET`s and `/status` responsive while writes wait out a failover.
const HTTP_WORKERS: usize = 8;

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
        const FLAGS: [&str; 14] = [
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

/// The replicated map: keys to bytes.
type Map = ReplicatedMap<String, Vec<u8>>;

/// What the HTTP workers share.
struct App {
    node: CopyCat,
    map: Map,
    /// The voters the map's group is meant to have (`/status` compares).
    replication_factor: usize,
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

/// Starts the node and the HTTP workers; prints READY; runs until
/// SIGINT/SIGTERM, then shuts the node down.
fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let log = logger()?;
    // Installed before anything starts, so an early SIGTERM still shuts down cleanly
    // instead of killing the process mid-startup.
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
    ctrlc::set_handler(move || {
        let _ = stop_tx.try_send(());
    })?;

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
    let replication_factor = config.replication_factor;
    let node = CopyCat::start(config)?;
    let id = args.id.parse()?;
    let map = Map::open(&node, id)?.with_timeout(TIMEOUT);

    let server = Arc::new(
        Server::http((args.hostname.as_str(), args.http_port)).map_err(|e| {
            format!(
                "cannot bind HTTP on {}:{}: {e}",
                args.hostname, args.http_port
            )
        })?,
    );
    let http_addr = server
        .server_addr()
        .to_ip()
        .ok_or("HTTP server has no IP address")?;
    let app = Arc::new(App {
        node: node.clone(),
        map,
        replication_factor,
    });
    for i in 0..HTTP_WORKERS {
        let (server, app, log) = (server.clone(), app.clone(), log.clone());
        spawn_named(&format!("http-{i}"), move || {
            while let Ok(request) = server.recv() {
                let method = request.method().clone();
                let url = request.url().to_string();
                let status = handle(request, &app);
                slog::debug!(log, "http"; "method" => %method, "url" => url, "status" => status);
            }
        })?;
    }

    info!(log, "hashmap ready"; "http" => %http_addr, "raft" => %node.raft_addr(),
        "gossip" => %node.gossip_addr(), "node_id" => node.node_id(), "id" => %id);
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

    let _ = stop_rx.recv();
    info!(log, "signal received; shutting down");
    node.shutdown();
    // The workers hold handles but do nothing useful after the node is down; returning
    // from main ends them with the process.
    Ok(())
}

/// Spawns a named thread (names show up in panics and debuggers).
fn spawn_named(name: &str, f: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map(drop)
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

/// Answers one request; returns the status code sent (for the debug log).
fn handle(mut request: Request, app: &App) -> u16 {
    let url = request.url().to_string();
    let path = url.split(['?', '#']).next().unwrap_or_default();
    let method = request.method().clone();
    let response = if path == "/status" {
        match method {
            Method::Get => status(app),
            _ => text(405, "use GET /status"),
        }
    } else if let Some(raw_key) = path.strip_prefix("/kv/") {
        match parse_key(raw_key) {
            Err(msg) => text(400, &msg),
            Ok(key) => match method {
                Method::Get if wants_consistent(&url) => consistent_read(app, &key),
                Method::Get => read(app, &key),
                Method::Put => match read_body(&mut request) {
                    Ok(value) => write(app, app.map.insert_blocking(key, value)),
                    Err(response) => response,
                },
                Method::Delete => write(app, app.map.remove_blocking(key)),
                _ => text(405, "use GET, PUT or DELETE on /kv/{key}"),
            },
        }
    } else {
        text(404, "not found: try /kv/{key} or /status")
    };
    let code = response.status_code().0;
    // The client may have hung up (e.g. timed out waiting for a slow write); nothing to do.
    let _ = request.respond(response);
    code
}

/// Every response is built in memory.
type HttpResponse = Response<std::io::Cursor<Vec<u8>>>;

/// A response with a body of `content_type`.
fn reply(code: u16, body: Vec<u8>, content_type: &str) -> HttpResponse {
    let header = Header::from_bytes("Content-Type", content_type).expect("valid header");
    Response::from_data(body)
        .with_status_code(code)
        .with_header(header)
        // Always a Content-Length, never chunked: simpler for minimal clients.
        .with_chunked_threshold(usize::MAX)
}

/// A plain-text response (errors, acknowledgements).
fn text(code: u16, msg: &str) -> HttpResponse {
    reply(
        code,
        format!("{msg}\n").into_bytes(),
        "text/plain; charset=utf-8",
    )
}

/// A key is exactly one non-empty, percent-decoded, UTF-8 path segment.
fn parse_key(raw: &str) -> Result<String, String> {
    if raw.is_empty() {
        return Err("empty key".to_string());
    }
    if raw.contains('/') {
        return Err("a key is a single path segment (encode '/' as %2F)".to_string());
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = raw
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-escape in key {raw:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("key {raw:?} is not UTF-8"))
}

/// Reads a PUT body, refusing values over [`MAX_VALUE_BYTES`].
fn read_body(request: &mut Request) -> Result<Vec<u8>, HttpResponse> {
    let too_large = || {
        text(
            413,
            &format!("values are limited to {MAX_VALUE_BYTES} bytes"),
        )
    };
    if request.body_length().is_some_and(|n| n > MAX_VALUE_BYTES) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    request
        .as_reader()
        .take(MAX_VALUE_BYTES as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| text(400, &format!("cannot read body: {e}")))?;
    if body.len() > MAX_VALUE_BYTES {
        return Err(too_large());
    }
    Ok(body)
}

/// Answers a write: 200 once it is committed and applied to the local map.
fn write(app: &App, outcome: copycat::Result<Option<Vec<u8>>>) -> HttpResponse {
    match outcome {
        Ok(_) => text(200, "ok"),
        Err(e) => unavailable(app, &e),
    }
}

/// A 503 for a failed write or read barrier; says so when the cluster has not formed yet
/// (a founder waiting for its `--bootstrap-expect` nodes), the usual cause at startup.
fn unavailable(app: &App, error: &copycat::Error) -> HttpResponse {
    if app.node.has_joined_blocking().unwrap_or(true) {
        return text(503, &error.to_string());
    }
    text(
        503,
        &format!(
            "{error}: this node has not joined a formed cluster yet (the founding node waits \
             for --bootstrap-expect nodes)"
        ),
    )
}

/// `GET /kv/{key}`: the value in the local map (may trail the leader by a few entries).
fn read(app: &App, key: &str) -> HttpResponse {
    value(app, app.map.get(&key.to_string()))
}

/// A looked-up value as a response.
fn value(app: &App, found: copycat::Result<Option<Vec<u8>>>) -> HttpResponse {
    match found {
        Ok(Some(value)) => reply(200, value, "application/octet-stream"),
        Ok(None) => text(404, "no such key"),
        Err(e) => unavailable(app, &e),
    }
}

/// Whether the query string asks for `consistent=true`.
fn wants_consistent(url: &str) -> bool {
    url.split_once('?')
        .is_some_and(|(_, query)| query.split('&').any(|kv| kv == "consistent=true"))
}

/// `GET /kv/{key}?consistent=true`: a linearizable read, as fresh as the leader's.
fn consistent_read(app: &App, key: &str) -> HttpResponse {
    value(app, app.map.get_linearizable_blocking(&key.to_string()))
}

/// `GET /status`: this node, its view of the members, and its replica of the map's group.
fn status(app: &App) -> HttpResponse {
    let id = app.map.replicated().id();
    let (members, group) = match (
        app.node.members_blocking(),
        app.node.group_status_blocking(id),
    ) {
        (Ok(members), Ok(group)) => (members, group),
        (Err(e), _) | (_, Err(e)) => return text(503, &e.to_string()),
    };
    let ids = |ids: &[u64]| ids.iter().map(u64::to_string).collect::<Vec<_>>();
    let members: Vec<_> = members
        .iter()
        .map(|m| {
            serde_json::json!({
                "node_id": m.node_id.to_string(),
                "addr": m.addr,
                "datacenter": m.datacenter,
                "state": m.state.to_string(),
            })
        })
        .collect();
    // A node without a replica yet (still joining) reports an empty configuration.
    let (leader, voters, learners, hibernating) = match &group {
        Some(g) => (
            g.leader.map(|l| l.to_string()),
            ids(&g.voters),
            ids(&g.learners),
            g.hibernating,
        ),
        None => (None, Vec::new(), Vec::new(), false),
    };
    // A group of n voters keeps its quorum through (n - 1) / 2 failures.
    let tolerated_failures = voters.len().saturating_sub(1) / 2;
    let body = serde_json::json!({
        "node_id": app.node.node_id().to_string(),
        "joined": app.node.has_joined_blocking().unwrap_or(false),
        "members": members,
        "group": {
            "id": id.to_string(),
            "leader": leader,
            "voters": voters,
            "learners": learners,
            "replication_factor": app.replication_factor,
            "tolerated_failures": tolerated_failures,
            "fault_tolerant": tolerated_failures > 0,
            "hibernating": hibernating,
            "applied_index": app.map.replicated().applied_index().unwrap_or(0),
        },
    });
    reply(200, format!("{body}\n").into_bytes(), "application/json")
}
