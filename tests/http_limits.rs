//! The hashmap example's HTTP server under abuse, as real processes on loopback: thousands
//! of incomplete requests, malformed and oversized requests, more requests than it handles
//! at once, a node out of file descriptors, and SIGTERM. The bounds under test are in
//! `examples/hashmap/server.rs`.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use copycat_testkit::cluster::{self, wait_until, ProcessCluster, QUICK};
use copycat_testkit::http;

/// Deadline of each phase; generous for a loaded two-core machine.
const PHASE: Duration = Duration::from_secs(60);

/// `examples/hashmap/server.rs`'s `MAX_IN_FLIGHT_REQUESTS`.
const MAX_IN_FLIGHT_REQUESTS: usize = 256;

/// `examples/hashmap/api.rs`'s `MAX_VALUE_BYTES`.
const MAX_VALUE_BYTES: usize = 512 * 1024;

fn expect<T>(result: Result<T, String>) -> T {
    result.unwrap_or_else(|e| panic!("{e}"))
}

/// One hashmap node, alone in its cluster, with `args`, its group formed.
fn single_node(args: &[&str]) -> ProcessCluster {
    let mut nodes = expect(ProcessCluster::new(expect(cluster::built_hashmap())));
    nodes = nodes.with_args(args);
    expect(nodes.start(&[]));
    expect(wait_until("the node's group forms", PHASE, || {
        nodes.converged(1)
    }));
    nodes
}

/// The `Threads:` line of `/proc/<pid>/status`.
fn threads(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("a Threads: line")
}

/// Opens up to `n` connections to `addr`, each sending the start of a request head that
/// it never finishes; the sockets are non-blocking, for [`still_open`].
fn open_incomplete(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(n);
    for i in 0..n {
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, QUICK) else {
            continue;
        };
        let partial = format!("GET /kv/slow{i} HTTP/1.1\r\nHost: {addr}\r\nX-Slow: ");
        if stream.write_all(partial.as_bytes()).is_ok() && stream.set_nonblocking(true).is_ok() {
            streams.push(stream);
        }
    }
    streams
}

/// Keeps the connections the server has not closed yet (a read that would block); a
/// connection that reads end of file or an error was closed by the server.
fn still_open(streams: Vec<TcpStream>) -> Vec<TcpStream> {
    streams
        .into_iter()
        .filter_map(|mut stream| {
            let mut buf = [0u8; 1024];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => return None,
                    // A response to the unfinished head (there is none today): read on.
                    Ok(_) => continue,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Some(stream),
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => return None,
                }
            }
        })
        .collect()
}

/// Sends `raw` as is and returns the response's status code (reads to end of file).
fn raw_status(addr: SocketAddr, raw: &[u8]) -> Result<u16, String> {
    let mut stream = TcpStream::connect_timeout(&addr, QUICK).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(QUICK))
        .map_err(|e| e.to_string())?;
    stream.write_all(raw).map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| format!("{e} after {} bytes", response.len()))?;
    let text = String::from_utf8_lossy(&response);
    text.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status line in {text:?}"))
}

#[test]
fn two_thousand_incomplete_requests_hold_no_threads_and_are_closed_after_the_header_timeout() {
    // A 2 s header timeout instead of 10 s keeps the test short.
    let nodes = single_node(&["--http-header-timeout-ms", "2000"]);
    let addr = nodes.http(0);
    let pid = nodes.pid(0).unwrap();
    let baseline = threads(pid);

    let started = Instant::now();
    let mut incomplete = open_incomplete(addr, 2000);
    eprintln!(
        "{} incomplete requests open after {:?}",
        incomplete.len(),
        started.elapsed()
    );
    // Past the 1024-connection cap, the rest wait in the listen backlog.
    assert!(
        incomplete.len() > 1024,
        "only {} connected",
        incomplete.len()
    );
    let during = threads(pid);

    // A normal client meanwhile: served once the header timeout frees slots.
    let put = http::put(addr, "/kv/during", b"served", PHASE).unwrap();
    assert_eq!(put.status, 200, "{}", put.text());
    let get = http::get(addr, "/kv/during", PHASE).unwrap();
    assert_eq!((get.status, get.body.as_slice()), (200, &b"served"[..]));
    eprintln!(
        "a PUT and a GET succeeded {:?} after the attack began",
        started.elapsed()
    );
    let after_requests = threads(pid);

    expect(wait_until(
        "the server closes every incomplete request",
        PHASE,
        || {
            incomplete = still_open(std::mem::take(&mut incomplete));
            incomplete.is_empty()
        },
    ));
    eprintln!(
        "threads: {baseline} before, {during} with the connections open, {after_requests} \
         after the normal requests; all closed {:?} after the attack began",
        started.elapsed()
    );
    // A thread per connection would be 2,000 more.
    let most = during.max(after_requests);
    assert!(
        most <= baseline + 16,
        "{most} threads ({baseline} before the attack)"
    );
    assert_eq!(nodes.status(0).map(|s| s["joined"] == true), Ok(true));

    // The header timeout is also the keep-alive idle bound: a connection left idle after
    // a response is closed.
    let mut kept = TcpStream::connect_timeout(&addr, QUICK).unwrap();
    kept.set_read_timeout(Some(PHASE)).unwrap();
    let request = format!("GET /kv/during HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    kept.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    while !response.ends_with(b"served") {
        let n = kept.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the response: {response:?}");
        response.extend_from_slice(&buf[..n]);
    }
    let idle_since = Instant::now();
    assert_eq!(kept.read(&mut buf).unwrap(), 0, "a second response?");
    eprintln!(
        "an idle kept-alive connection closed after {:?}",
        idle_since.elapsed()
    );
}

#[test]
fn a_negative_content_length_gets_400_and_a_body_over_the_limit_413() {
    let nodes = single_node(&[]);
    let addr = nodes.http(0);

    let negative = b"PUT /kv/neg HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n";
    assert_eq!(raw_status(addr, negative), Ok(400));
    // Not taken as an empty value.
    assert_eq!(http::get(addr, "/kv/neg", QUICK).unwrap().status, 404);

    // Refused on its Content-Length alone: the body is never sent.
    let declared = format!(
        "PUT /kv/big HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        MAX_VALUE_BYTES + 1
    );
    assert_eq!(raw_status(addr, declared.as_bytes()), Ok(413));
    assert_eq!(http::get(addr, "/kv/big", QUICK).unwrap().status, 404);

    // The limit itself is accepted.
    let largest = vec![b'v'; MAX_VALUE_BYTES];
    let put = http::put(addr, "/kv/largest", &largest, PHASE).unwrap();
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(http::get(addr, "/kv/largest", QUICK).unwrap().body, largest);
}

#[test]
fn requests_beyond_the_in_flight_limit_get_a_quick_503() {
    // Alone with --bootstrap-expect 3, the node never forms its cluster: every write
    // waits out the map's 5 s timeout, holding its request slot.
    let mut nodes = expect(ProcessCluster::new(expect(cluster::built_hashmap())));
    nodes = nodes.with_args(&["--bootstrap-expect", "3"]);
    expect(nodes.start(&[]));
    let addr = nodes.http(0);

    let requests = MAX_IN_FLIGHT_REQUESTS + 64;
    let clients: Vec<_> = (0..requests)
        .map(|i| {
            std::thread::spawn(move || {
                let sent = Instant::now();
                let response = http::put(addr, &format!("/kv/k{i}"), b"v", PHASE);
                (response, sent.elapsed())
            })
        })
        .collect();
    let mut overloaded = 0;
    for client in clients {
        let (response, took) = client.join().unwrap();
        let response = response.unwrap();
        assert_eq!(response.status, 503, "{}", response.text());
        if response.text().starts_with("overloaded") {
            overloaded += 1;
            assert!(
                took < Duration::from_secs(3),
                "an overloaded 503 took {took:?}"
            );
        }
    }
    assert!(
        overloaded >= requests - MAX_IN_FLIGHT_REQUESTS,
        "{overloaded} of {requests} refused as overloaded"
    );
}

#[test]
fn a_node_out_of_file_descriptors_keeps_serving_and_stays_a_member() {
    let mut nodes = expect(ProcessCluster::new(expect(cluster::built_hashmap())));
    // Far fewer descriptors than the server's 1024-connection cap.
    nodes = nodes.with_args(&["--snapshot-interval", "20"]);
    let limited = expect(nodes.form_with_last(3, |nodes| nodes.set_fd_limit(Some(256))));
    expect(wait_until("the cluster forms", PHASE, || {
        nodes.converged(3)
    }));
    let addr = nodes.http(limited);
    let log = nodes.log_path(limited);
    let accept_failed =
        || std::fs::read_to_string(&log).is_ok_and(|text| text.contains("HTTP accept failed"));
    assert!(!accept_failed());

    let mut open = open_incomplete(addr, 400);
    eprintln!("{} connections open to the limited node", open.len());
    expect(wait_until(
        "the limited node runs out of descriptors",
        PHASE,
        accept_failed,
    ));
    // Writes go on through the others meanwhile. With snapshots every 20 entries the
    // limited node's storage soon needs a new file too (a snapshot's proposal ids), cannot
    // open it, and pauses until descriptors return instead of exiting.
    for n in 0..100 {
        let put = http::put(nodes.http(0), &format!("/kv/during{n}"), b"x", PHASE).unwrap();
        assert_eq!(put.status, 200, "write {n}: {}", put.text());
    }
    assert_eq!(nodes.exit_code(limited), None, "the limited node exited");
    open.clear();

    expect(wait_until(
        "the limited node serves writes again",
        PHASE,
        || http::put(addr, "/kv/after", b"fds", QUICK).is_ok_and(|r| r.status == 200),
    ));
    let get = http::get(nodes.http(0), "/kv/after?consistent=true", QUICK).unwrap();
    assert_eq!((get.status, get.body.as_slice()), (200, &b"fds"[..]));
    let get = http::get(addr, "/kv/during99?consistent=true", QUICK).unwrap();
    assert_eq!((get.status, get.body.as_slice()), (200, &b"x"[..]));
    assert_eq!(nodes.exit_code(limited), None, "the limited node exited");
    expect(wait_until("the cluster is whole", PHASE, || {
        nodes.converged(3)
    }));
}

#[test]
fn sigterm_shuts_the_node_down_and_exits_0() {
    let mut nodes = single_node(&[]);
    let put = http::put(nodes.http(0), "/kv/k", b"v", QUICK).unwrap();
    assert_eq!(put.status, 200, "{}", put.text());
    // An open connection does not hold the shutdown up.
    let idle = open_incomplete(nodes.http(0), 1);
    expect(nodes.terminate(0));
    let mut code = None;
    expect(wait_until("the node exits", PHASE, || {
        code = nodes.exit_code(0);
        code.is_some()
    }));
    assert_eq!(code, Some(0));
    let log = std::fs::read_to_string(nodes.log_path(0)).unwrap();
    assert!(log.contains("signal received"), "{log}");
    drop(idle);
}
