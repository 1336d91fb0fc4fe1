//! The gateway of copycat-node as real processes: three nodes in two datacenters, an
//! upstream published through node A (west) and one through node B (east); calls through
//! node C's gateway reach A's (same datacenter first) *through A's forwarding entry* (the
//! upstream sees A's `Via` and the original client in `X-Forwarded-For`), with the prefix
//! stripped; the distance headers pick B's; request and response bodies stream; A's
//! forwarding entry serves only A's own publications; when A is killed, calls fail over
//! to B.
//! Capacity is the owner's, cluster-wide (concurrency 1, queue 0: while a call through A's
//! gateway holds C's publication, calls through B's and C's gateways get 503), an
//! unreachable upstream (502) and an unknown service (404) answer JSON with X-Copper-Error.

mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use support::upstream::{raw_request, RawResponse, Upstream};
use support::{eventually, Node};

/// Deadline of each phase.
const PHASE: Duration = Duration::from_secs(20);

/// `GET path` through `node`'s gateway with `headers`.
fn call(node: &Node, path: &str, headers: &[(&str, &str)]) -> RawResponse {
    raw_request(node.gateway, "GET", path, headers, b"")
        .unwrap_or_else(|e| panic!("{}: gateway {path}: {e}", node.name))
}

/// Waits until `node`'s gateway answers `path` with 200 from `upstream`.
fn reaches(node: &Node, path: &str, headers: &[(&str, &str)], upstream: &str) -> RawResponse {
    eventually(
        &format!("{} routes {path} to {upstream}", node.name),
        PHASE,
        || {
            let response = call(node, path, headers);
            (response.status == 200 && response.json()["upstream"] == upstream).then_some(response)
        },
    )
}

#[test]
fn gateway_routes_strips_fails_over_and_refuses_over_capacity() {
    let mut a = Node::start("A", "west", &[]);
    let b = Node::start("B", "east", &[&a]);
    let c = Node::start("C", "west", &[&a]);
    let up_a = Upstream::start("a");
    let up_b = Upstream::start("b");
    let up_slow = Upstream::start("slow");
    a.publish(&format!(
        r#"{{"name":"http:echo","endpoint":"{}","ttl_ms":60000}}"#,
        up_a.endpoint()
    ));
    b.publish(&format!(
        r#"{{"name":"http:echo","endpoint":"{}","ttl_ms":60000}}"#,
        up_b.endpoint()
    ));

    // Same datacenter first: A's upstream, with /echo stripped and the client named.
    let response = reaches(&c, "/echo/some/path?q=1", &[], "a");
    let echo = response.json();
    assert_eq!(echo["path"], "/some/path?q=1");
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["x_forwarded_for"], "127.0.0.1");
    // It went through A's forwarding entry, which names itself in Via, and the header
    // naming the publication did not reach the upstream.
    assert_eq!(echo["via"], format!("1.1 copycat-node-{}", a.node_id));
    assert!(echo["x_copycat_publication"].is_null(), "{echo}");
    let forwarded = echo["forwarded"].as_str().expect("Forwarded");
    assert!(
        forwarded.starts_with("for=127.0.0.1;proto=http"),
        "{forwarded}"
    );
    assert_eq!(echo["host"], up_a.addr.to_string());
    assert_eq!(
        response.headers.get("x-upstream").map(String::as_str),
        Some("a")
    );

    // A's own gateway calls its upstream directly (no Via).
    let echo = reaches(&a, "/echo/local", &[], "a").json();
    assert!(echo["via"].is_null(), "{echo}");

    // A's forwarding entry serves A's publications only: no id, an unknown id, or C's
    // publication are refused without reaching any upstream.
    let response = raw_request(a.forward, "GET", "/x", &[], b"").expect("forward entry");
    assert_eq!(response.status, 400);
    let response = raw_request(
        a.forward,
        "GET",
        "/x",
        &[("X-Copycat-Publication", "1-2-3")],
        b"",
    )
    .expect("forward entry");
    assert_eq!(response.status, 404);
    assert_eq!(
        response.headers.get("x-copper-error").map(String::as_str),
        Some("no_route")
    );
    let up_c = Upstream::start("c");
    let c_id = c.publish(&format!(
        r#"{{"name":"http:cee","endpoint":"{}","ttl_ms":60000}}"#,
        up_c.endpoint()
    ));
    let response = raw_request(
        a.forward,
        "GET",
        "/x",
        &[("X-Copycat-Publication", c_id.as_str())],
        b"",
    )
    .expect("forward entry");
    assert_eq!(response.status, 404);
    // ... while C's own entry serves it (as A's gateway would ask).
    let response = raw_request(
        c.forward,
        "GET",
        "/direct",
        &[("X-Copycat-Publication", c_id.as_str())],
        b"",
    )
    .expect("forward entry");
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["upstream"], "c");
    assert_eq!(response.json()["path"], "/direct");

    // X-Copper-Service: the path is passed whole.
    let echo = call(&c, "/any/path", &[("X-Copper-Service", "echo")]).json();
    assert_eq!(
        (echo["upstream"].as_str(), echo["path"].as_str()),
        (Some("a"), Some("/any/path"))
    );
    assert_eq!(echo["x_copper_service"], "echo");
    // The distance headers: only other datacenters.
    let echo = reaches(&c, "/echo/x", &[("X-Copper-Min-Distance", "2")], "b").json();
    assert_eq!(echo["path"], "/x");

    // A request body streams through (1 MiB here), POST included.
    let body = vec![b'x'; 1 << 20];
    let response = raw_request(c.gateway, "POST", "/echo/upload", &[], &body).expect("upload");
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["body_len"], 1 << 20);
    assert_eq!(response.json()["method"], "POST");

    // A response body streams: the first chunk arrives while the upstream holds the rest.
    let up_stream = Upstream::start("stream");
    c.publish(&format!(
        r#"{{"name":"http:stream","endpoint":"{}","ttl_ms":60000}}"#,
        up_stream.endpoint()
    ));
    reaches(&c, "/stream/ping", &[], "stream");
    let mut client = std::net::TcpStream::connect(c.gateway).expect("connect");
    client.set_read_timeout(Some(PHASE)).expect("read timeout");
    client
        .write_all(b"GET /stream/stream HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("first;") {
        let n = client.read(&mut buf).expect("first chunk");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(!String::from_utf8_lossy(&seen).contains("last"));
    assert_eq!(up_stream.held(), 1);
    up_stream.release();
    client.read_to_end(&mut seen).expect("the rest");
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("last"), "{text}");

    // No publication: 404; an endpoint nobody listens on: 502; a bad header: 400.
    let response = call(&c, "/nothing/x", &[]);
    assert_eq!(response.status, 404);
    assert_eq!(
        response.headers.get("x-copper-error").map(String::as_str),
        Some("no_route")
    );
    assert_eq!(response.json()["service"], "nothing");
    c.publish(r#"{"name":"http:dead","endpoint":"http://127.0.0.1:1","ttl_ms":60000}"#);
    let response = eventually("dead is published", PHASE, || {
        let r = call(&c, "/dead/", &[]);
        (r.status != 404).then_some(r)
    });
    assert_eq!(
        response.status,
        502,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(
        response.headers.get("x-copper-error").map(String::as_str),
        Some("upstream_unreachable")
    );
    let response = call(&c, "/echo/", &[("X-Copper-Max-Distance", "9")]);
    assert_eq!(response.status, 400);

    // Concurrency 1, queue 0, published through C: while a call through A's gateway holds
    // the slot (forwarded to C), a second call gets 503 through B's gateway (forwarded to
    // C, whose 503 passes through) and through C's own.
    c.publish(&format!(
        r#"{{"name":"http:slow","endpoint":"{}","concurrency":1,"queue_size":0,"ttl_ms":60000}}"#,
        up_slow.endpoint()
    ));
    for node in [&a, &b, &c] {
        reaches(node, "/slow/fast", &[], "slow");
    }
    let gateway = a.gateway;
    let held = std::thread::spawn(move || raw_request(gateway, "GET", "/slow/slow", &[], b""));
    eventually("the held call reaches the upstream", PHASE, || {
        (up_slow.held() == 1).then_some(())
    });
    for node in [&b, &c] {
        let refused = call(node, "/slow/fast", &[]);
        assert_eq!(
            refused.status,
            503,
            "through {}: {}",
            node.name,
            String::from_utf8_lossy(&refused.body)
        );
        assert_eq!(
            refused.headers.get("x-copper-error").map(String::as_str),
            Some("overcapacity")
        );
        assert_eq!(
            refused.headers.get("retry-after").map(String::as_str),
            Some("1")
        );
        assert_eq!(refused.json()["service"], "slow");
    }
    up_slow.release();
    let first = held.join().expect("held call").expect("held response");
    assert_eq!(first.status, 200);
    assert_eq!(call(&b, "/slow/fast", &[]).status, 200);

    // A dies: C's calls fail over to B's upstream once gossip reports A down.
    a.kill();
    let killed = Instant::now();
    reaches(&c, "/echo/after", &[], "b");
    eprintln!("calls reached B {:?} after A was killed", killed.elapsed());

    // The gateway's metrics count by status; C's forwarding entry counted B's refusal.
    let metrics = c.get("/metrics").text;
    assert!(
        metrics.contains("copycat_gateway_requests_total{status=\"503\",error=\"overcapacity\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "copycat_gateway_forwarded_requests_total{status=\"503\",error=\"overcapacity\"}"
        ),
        "{metrics}"
    );
    let metrics = b.get("/metrics").text;
    assert!(
        metrics.contains("copycat_gateway_requests_total{status=\"503\",error=\"overcapacity\"}"),
        "{metrics}"
    );
}
