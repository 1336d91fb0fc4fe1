//! Gateway throughput and latency against the same load sent directly, in one run.
//!
//! ```text
//! cargo build --release -p copycat-node --bin copycat-node --example gateway_bench
//! target/release/examples/gateway_bench [--conns 8] [--secs 5]
//! ```
//!
//! Starts two `copycat-node` processes (the binary beside this example's directory),
//! a trivial upstream in this process (`200 ok`, keep-alive), publishes it as `http:bench`
//! through node A's API, and then, with `--conns` keep-alive connections for `--secs`
//! seconds each: calls the upstream directly, calls it through node B's gateway (another
//! node than the publisher: B forwards to A's forwarding entry, which calls the upstream),
//! calls it through node A's own gateway (`local_`: straight to the upstream), and
//! resolves it on node B's API. Prints one line:
//!
//! ```text
//! RESULT scenario=gateway conns=8 direct_rps=… direct_p50_ms=… direct_p99_ms=… gateway_rps=…
//!   gateway_p50_ms=… gateway_p99_ms=… gateway_share=… added_p50_ms=… local_rps=…
//!   local_p50_ms=… local_p99_ms=… local_share=… local_added_p50_ms=… resolve_rps=…
//!   resolve_p50_ms=… resolve_p99_ms=… direct_cpu_us=… relay_rps=… relay_p50_ms=…
//!   relay_share=… relay_cpu_us=… gateway_cpu_us=…
//!   gateway_node_cpu_us=… local_cpu_us=… local_node_cpu_us=…
//! ```
//!
//! Everything shares the machine's cores (nodes, upstream and load), so the figures are a
//! lower bound of what a gateway does with cores of its own. So the line also gives what
//! each request cost in CPU time (user + system, from `/proc`, Linux only): `*_cpu_us` is
//! every process's (this one, with the load and the upstream, and the nodes'), and
//! `*_node_cpu_us` the nodes' alone: the proxying's own cost. When the cores are the limit,
//! the gateway's share of direct throughput is about `direct_cpu_us / gateway_cpu_us`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The bench's settings.
struct Settings {
    conns: usize,
    secs: u64,
}

fn main() {
    let settings = match parse_args() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("gateway_bench: {e}\nusage: gateway_bench [--conns N] [--secs S]");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&settings) {
        eprintln!("gateway_bench: {e}");
        std::process::exit(1);
    }
}

fn parse_args() -> Result<Settings, String> {
    let mut settings = Settings { conns: 8, secs: 5 };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let number = value
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or(format!("{flag}: {value:?} is not a positive number"))?;
        match flag.as_str() {
            "--conns" => settings.conns = number as usize,
            "--secs" => settings.secs = number,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(settings)
}

/// A `copycat-node` process, killed on drop.
struct Node {
    child: Child,
    api: SocketAddr,
    gateway: SocketAddr,
    gossip: SocketAddr,
    _dir: tempdir::Dir,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary directory removed on drop (std only).
mod tempdir {
    use std::path::PathBuf;

    pub struct Dir(pub PathBuf);

    impl Dir {
        pub fn new(tag: &str) -> std::io::Result<Dir> {
            let path = std::env::temp_dir().join(format!(
                "copycat-gateway-bench-{}-{tag}",
                std::process::id()
            ));
            std::fs::create_dir_all(&path)?;
            Ok(Dir(path))
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The `copycat-node` binary of the profile that built this example.
fn node_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let profile = exe
        .parent()
        .and_then(|examples| examples.parent())
        .ok_or("unexpected example location")?;
    let bin = profile.join(format!("copycat-node{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        return Err(format!(
            "{} is missing: build it with the example (see the example's docs)",
            bin.display()
        ));
    }
    Ok(bin)
}

/// Starts a node joining through `peers` and waits for its READY line.
fn start_node(bin: &PathBuf, tag: &str, peers: Option<SocketAddr>) -> Result<Node, String> {
    let dir = tempdir::Dir::new(tag).map_err(|e| e.to_string())?;
    let mut child = Command::new(bin)
        .arg("--data-dir")
        .arg(dir.0.join("data"))
        .args(["--port", "0", "--gossip-port", "0"])
        .args(["--api", "127.0.0.1:0", "--gateway", "127.0.0.1:0"])
        .args(["--peers", &peers.map(|p| p.to_string()).unwrap_or_default()])
        .args(["--log-level", "warn"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let field = |key: &str| -> Result<SocketAddr, String> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .ok_or(format!("READY line lacks {key}: {line:?}"))
    };
    Ok(Node {
        api: field("api")?,
        gateway: field("gateway")?,
        gossip: field("gossip")?,
        child,
        _dir: dir,
    })
}

/// A trivial keep-alive upstream: `200 ok` to every request, a thread per connection.
fn start_upstream() -> Result<SocketAddr, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let _ = stream.set_nodelay(true);
                let mut reader = BufReader::new(match stream.try_clone() {
                    Ok(s) => s,
                    Err(_) => return,
                });
                let mut stream = stream;
                let mut line = String::new();
                loop {
                    // Request head up to the empty line (GETs: no body).
                    loop {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    if stream
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// A byte relay to `upstream`: each connection gets its own upstream connection and two
/// threads copying bytes across, no HTTP. What one more hop costs at the least, whatever
/// the proxy: the floor the gateway is measured against.
fn start_relay(upstream: SocketAddr) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        for client in listener.incoming().map_while(Result::ok) {
            let Ok(server) = TcpStream::connect(upstream) else {
                continue;
            };
            let _ = (client.set_nodelay(true), server.set_nodelay(true));
            let (Ok(mut client_in), Ok(mut server_in)) = (client.try_clone(), server.try_clone())
            else {
                continue;
            };
            let (mut client_out, mut server_out) = (client, server);
            std::thread::spawn(move || std::io::copy(&mut client_in, &mut server_out));
            std::thread::spawn(move || std::io::copy(&mut server_in, &mut client_out));
        }
    });
    Ok(addr)
}

/// One keep-alive HTTP/1.1 request; returns the status.
fn request(
    stream: &mut TcpStream,
    reader: &mut BufReader<TcpStream>,
    head: &[u8],
) -> Result<u16, String> {
    stream.write_all(head).map_err(|e| e.to_string())?;
    let mut line = String::new();
    reader.read_line(&mut line).map_err(|e| e.to_string())?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(format!("bad status line {line:?}"))?;
    let mut length = 0usize;
    loop {
        line.clear();
        reader.read_line(&mut line).map_err(|e| e.to_string())?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).map_err(|e| e.to_string())?;
    Ok(status)
}

/// Requests/s, latencies and CPU cost of one load.
struct Figures {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// CPU microseconds per request: every process's, and the nodes' alone.
    cpu_us: f64,
    node_cpu_us: f64,
}

/// CPU time (user + system) a process has used so far, from `/proc/{pid}/stat`, in
/// seconds (clock ticks of 1/100 s, Linux's `USER_HZ`); 0 where there is no `/proc`.
fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces), closed by the last ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// `load`, with the CPU time this process and `nodes` used during it.
fn measured_load(
    nodes: &[&Node],
    addr: SocketAddr,
    path: &str,
    conns: usize,
    secs: u64,
) -> Result<Figures, String> {
    let node_cpu = || -> f64 {
        nodes
            .iter()
            .map(|n| cpu_seconds(&n.child.id().to_string()))
            .sum()
    };
    let (own_before, nodes_before) = (cpu_seconds("self"), node_cpu());
    let mut figures = load(addr, path, conns, secs)?;
    let (own, nodes_used) = (cpu_seconds("self") - own_before, node_cpu() - nodes_before);
    let requests = figures.rps * secs as f64;
    figures.cpu_us = (own + nodes_used) / requests * 1e6;
    figures.node_cpu_us = nodes_used / requests * 1e6;
    Ok(figures)
}

/// Requests/s and latencies of `conns` connections sending `GET path` to `addr` for `secs`.
fn load(addr: SocketAddr, path: &str, conns: usize, secs: u64) -> Result<Figures, String> {
    let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").into_bytes();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let workers: Vec<_> = (0..conns)
        .map(|_| {
            let head = head.clone();
            std::thread::spawn(move || -> Result<Vec<Duration>, String> {
                let mut stream = TcpStream::connect(addr).map_err(|e| e.to_string())?;
                stream.set_nodelay(true).map_err(|e| e.to_string())?;
                let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    let status = request(&mut stream, &mut reader, &head)?;
                    if status != 200 {
                        return Err(format!("status {status}"));
                    }
                    latencies.push(sent.elapsed());
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut all = Vec::new();
    for worker in workers {
        all.extend(worker.join().map_err(|_| "worker panicked")??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    if all.is_empty() {
        return Err("no request completed".to_string());
    }
    Ok(Figures {
        rps: all.len() as f64 / elapsed,
        p50_ms: at(0.50).as_secs_f64() * 1e3,
        p99_ms: at(0.99).as_secs_f64() * 1e3,
        cpu_us: 0.0,
        node_cpu_us: 0.0,
    })
}

fn run(settings: &Settings) -> Result<(), String> {
    let bin = node_binary()?;
    let a = start_node(&bin, "a", None)?;
    let b = start_node(&bin, "b", Some(a.gossip))?;
    let upstream = start_upstream()?;
    let publish = format!(
        r#"{{"name":"http:bench","endpoint":"http://{upstream}","concurrency":{},"ttl_ms":3600000}}"#,
        settings.conns * 4
    );
    let mut api = TcpStream::connect(a.api).map_err(|e| e.to_string())?;
    let head = format!(
        "POST /v1/publications HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{publish}",
        publish.len()
    );
    let mut reader = BufReader::new(api.try_clone().map_err(|e| e.to_string())?);
    let status = request(&mut api, &mut reader, head.as_bytes())?;
    if status != 201 {
        return Err(format!("publish: status {status}"));
    }
    // Until node B sees the publication (it joined moments ago).
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let mut stream = TcpStream::connect(b.api).map_err(|e| e.to_string())?;
        let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
        let probe = b"GET /v1/resolve?name=http:bench HTTP/1.1\r\nHost: b\r\n\r\n";
        if request(&mut stream, &mut reader, probe)? == 200 {
            break;
        }
        if Instant::now() > until {
            return Err("node B never resolved http:bench".to_string());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (conns, secs) = (settings.conns, settings.secs);
    let nodes = [&a, &b];
    let direct = measured_load(&nodes, upstream, "/x", conns, secs)?;
    let relay = measured_load(&nodes, start_relay(upstream)?, "/x", conns, secs)?;
    let gateway = measured_load(&nodes, b.gateway, "/bench/x", conns, secs)?;
    let local = measured_load(&nodes, a.gateway, "/bench/x", conns, secs)?;
    let resolve = measured_load(&nodes, b.api, "/v1/resolve?name=http:bench", conns, secs)?;
    println!(
        "RESULT scenario=gateway conns={conns} direct_rps={:.0} direct_p50_ms={:.3} \
         direct_p99_ms={:.3} gateway_rps={:.0} gateway_p50_ms={:.3} gateway_p99_ms={:.3} \
         gateway_share={:.2} added_p50_ms={:.3} local_rps={:.0} local_p50_ms={:.3} \
         local_p99_ms={:.3} local_share={:.2} local_added_p50_ms={:.3} resolve_rps={:.0} \
         resolve_p50_ms={:.3} resolve_p99_ms={:.3} direct_cpu_us={:.1} relay_rps={:.0} \
         relay_p50_ms={:.3} relay_share={:.2} relay_cpu_us={:.1} gateway_cpu_us={:.1} \
         gateway_node_cpu_us={:.1} local_cpu_us={:.1} local_node_cpu_us={:.1}",
        direct.rps,
        direct.p50_ms,
        direct.p99_ms,
        gateway.rps,
        gateway.p50_ms,
        gateway.p99_ms,
        gateway.rps / direct.rps,
        gateway.p50_ms - direct.p50_ms,
        local.rps,
        local.p50_ms,
        local.p99_ms,
        local.rps / direct.rps,
        local.p50_ms - direct.p50_ms,
        resolve.rps,
        resolve.p50_ms,
        resolve.p99_ms,
        direct.cpu_us,
        relay.rps,
        relay.p50_ms,
        relay.rps / direct.rps,
        relay.cpu_us,
        gateway.cpu_us,
        gateway.node_cpu_us,
        local.cpu_us,
        local.node_cpu_us,
    );
    Ok(())
}
