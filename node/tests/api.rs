//! copycat-node as real processes on loopback: the local API across three nodes in two
//! datacenters (publish on one, resolve, watch and wait for readiness on the others,
//! resume a watch on another node, TTL expiry), and on one node its refusals, metrics,
//! gateway placeholder and clean exit on SIGTERM.

mod support;

use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{eventually, Node, QUICK};

/// Deadline of each phase; a healthy run needs well under a second for most.
const PHASE: Duration = Duration::from_secs(20);

/// The changes of a watch answer as (kind, reason, name, id).
fn changes(watch: &Value) -> Vec<(String, Option<String>, String, String)> {
    watch["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| {
            (
                c["kind"].as_str().expect("kind").to_string(),
                c["reason"].as_str().map(str::to_string),
                c["publication"]["name"].as_str().expect("name").to_string(),
                c["publication"]["id"].as_str().expect("id").to_string(),
            )
        })
        .collect()
}

/// Waits until `node`'s gossip sees `n` alive members.
fn wait_members(node: &Node, n: usize) {
    eventually(
        &format!("{} sees {n} alive members", node.name),
        PHASE,
        || {
            let reply = node.get("/v1/members");
            let alive = reply
                .json()
                .as_array()?
                .iter()
                .filter(|m| m["state"] == "alive")
                .count();
            (alive == n).then_some(())
        },
    );
}

/// Waits until `node` resolves `query` to a publication and returns it.
fn resolved(node: &Node, query: &str) -> Value {
    eventually(&format!("{} resolves {query}", node.name), PHASE, || {
        let reply = node.get(&format!("/v1/resolve?{query}"));
        (reply.status == 200).then(|| reply.json())
    })
}

#[test]
fn three_nodes_publish_resolve_watch_ready_and_expire() {
    let a = Node::start("A", "west", &[]);
    let b = Node::start("B", "east", &[&a]);
    let c = Node::start("C", "west", &[&a]);
    for node in [&a, &b, &c] {
        wait_members(node, 3);
    }

    // A watch started on C before anything is published: no publications yet.
    let start = c.get("/v1/watch?name=svc").json();
    assert_eq!(changes(&start), vec![], "{start}");
    let from = start["revision"].as_u64().expect("revision");

    // Published through A, resolved on C (same datacenter, other node) and on B (other
    // datacenter), each from its own replica.
    let id = a.publish(r#"{"name":"svc","endpoint":"http://127.0.0.1:9000","concurrency":2}"#);
    let on_c = resolved(&c, "name=svc");
    assert_eq!(on_c["endpoint"], "http://127.0.0.1:9000");
    assert_eq!(on_c["node_id"], a.node_id.as_str());
    assert_eq!(on_c["datacenter"], "west");
    assert_eq!(on_c["distance"], 1);
    assert_eq!(on_c["priority"], 0);
    assert_eq!(on_c["publication_id"], id.as_str());
    assert_eq!(resolved(&b, "name=svc")["distance"], 2);
    assert_eq!(resolved(&a, "name=svc")["distance"], 0);
    // Ordered options: B's own datacenter only finds nothing; the fallback finds A's.
    let reply = b.get("/v1/resolve?option=svc,0,1");
    assert_eq!(reply.status, 404, "{}", reply.text);
    assert_eq!(reply.json()["error"], "no_publication");
    assert_eq!(
        resolved(&b, "option=svc,0,1&option=svc,2,2")["node_id"],
        a.node_id.as_str()
    );

    // C's watch resumed from before the publication: exactly the one addition.
    let path = format!("/v1/watch?name=svc&from={from}&wait_ms=10000");
    let added = c.call("GET", &path, "", PHASE).json();
    assert_eq!(
        changes(&added),
        vec![("added".to_string(), None, "svc".to_string(), id.clone())],
        "{added}"
    );
    let after_add = added["revision"].as_u64().expect("revision");

    // Unpublished on A; the watch resumed on B (another node) from C's revision sees
    // exactly the removal.
    let reply = a.call("DELETE", &format!("/v1/publications/{id}"), "", QUICK);
    assert_eq!(reply.status, 204, "{}", reply.text);
    let path = format!("/v1/watch?name=svc&from={after_add}&wait_ms=10000");
    let removed = b.call("GET", &path, "", PHASE).json();
    assert_eq!(
        changes(&removed),
        vec![(
            "removed".to_string(),
            Some("unpublished".to_string()),
            "svc".to_string(),
            id.clone()
        )],
        "{removed}"
    );
    // Nothing after that: a short wait ends in 204.
    let path = format!(
        "/v1/watch?name=svc&from={}&wait_ms=200",
        removed["revision"].as_u64().expect("revision")
    );
    assert_eq!(c.call("GET", &path, "", QUICK).status, 204);

    // Ready on C returns once the last of two services appears, not before.
    let (tx, rx) = mpsc::channel();
    let c_api = c.api;
    let waiter = std::thread::spawn(move || {
        let reply = copycat_testkit::http::get(
            c_api,
            "/v1/ready?name=db&name=cache&wait_ms=20000",
            Duration::from_secs(30),
        );
        let _ = tx.send((Instant::now(), reply));
    });
    a.publish(r#"{"name":"db","endpoint":"tcp://127.0.0.1:5432"}"#);
    resolved(&c, "name=db");
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "ready answered before cache was published"
    );
    let published_cache = Instant::now();
    b.publish(r#"{"name":"cache","endpoint":"http://127.0.0.1:6379/x","priority":1}"#);
    let (answered, reply) = rx.recv_timeout(PHASE).expect("ready answers");
    waiter.join().expect("ready thread");
    let reply = reply.expect("ready request");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(answered >= published_cache);
    let ready: Value = serde_json::from_slice(&reply.body).expect("JSON");
    let ready = ready.as_array().expect("an array");
    assert_eq!(ready.len(), 2);
    assert_eq!(ready[0]["name"], "db");
    assert_eq!(ready[0]["host"], "127.0.0.1");
    assert_eq!(ready[0]["port"], 5432);
    assert_eq!(ready[1]["name"], "cache");
    assert_eq!(ready[1]["endpoint"], "http://127.0.0.1:6379/x");
    assert_eq!(ready[1]["port"], 6379);
    assert_eq!(ready[1]["node_id"], b.node_id.as_str());

    // Listing: every node's replica holds both; only A made db through its API.
    let listed = b.get("/v1/publications?name=db&name=cache").json();
    let names: Vec<&str> = listed
        .as_array()
        .expect("an array")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, vec!["cache", "db"], "{listed}");
    let local = a.get("/v1/publications?local=true").json();
    assert_eq!(local.as_array().map(Vec::len), Some(1), "{local}");
    assert_eq!(local[0]["name"], "db");
    assert_eq!(local[0]["distance"], 0);

    // A publication whose client stops sending keepalives expires after its TTL; kept
    // alive, it outlives it.
    let revision = c.get("/v1/watch?name=ttl").json()["revision"]
        .as_u64()
        .expect("rev");
    let published = Instant::now();
    let short = a.publish(r#"{"name":"ttl","endpoint":"e:1","ttl_ms":800}"#);
    let kept = a.publish(r#"{"name":"kept","endpoint":"e:2","ttl_ms":800}"#);
    resolved(&c, "name=ttl");
    eventually("the ttl publication expires on C", PHASE, || {
        let reply = a.call(
            "PUT",
            &format!("/v1/publications/{kept}/keepalive"),
            "",
            QUICK,
        );
        assert_eq!(reply.status, 200, "{}", reply.text);
        (c.get("/v1/resolve?name=ttl").status == 404).then_some(())
    });
    assert!(published.elapsed() >= Duration::from_millis(800));
    let path = format!("/v1/watch?name=ttl&from={revision}&wait_ms=5000");
    let expired = c.call("GET", &path, "", PHASE).json();
    assert_eq!(
        changes(&expired),
        vec![
            ("added".to_string(), None, "ttl".to_string(), short.clone()),
            (
                "removed".to_string(),
                Some("unpublished".to_string()),
                "ttl".to_string(),
                short.clone()
            ),
        ],
        "{expired}"
    );
    let reply = a.call(
        "PUT",
        &format!("/v1/publications/{short}/keepalive"),
        "",
        QUICK,
    );
    assert_eq!(reply.status, 404, "{}", reply.text);
    assert_eq!(reply.json()["error"], "not_found");
    assert_eq!(resolved(&b, "name=kept")["publication_id"], kept.as_str());
}

#[test]
fn one_node_refuses_bad_input_serves_metrics_and_exits_cleanly() {
    let mut node = Node::start("solo", "default", &[]);

    // Invalid input: 400 naming the field, JSON error body.
    for (body, field) in [
        (r#"{"endpoint":"e"}"#, "name"),
        (
            r#"{"name":"n","endpoint":"e","concurrency":0}"#,
            "concurrency",
        ),
        (
            r#"{"name":"n","endpoint":"e","max_distance":7}"#,
            "max_distance",
        ),
        (r#"{"name":"n","endpoint":"e","ttl_ms":"soon"}"#, "ttl_ms"),
        (r#"{"name":"n","endpoint":"e","prio":1}"#, "prio"),
        ("not json", "body"),
    ] {
        let reply = node.call("POST", "/v1/publications", body, QUICK);
        assert_eq!(reply.status, 400, "{body}: {}", reply.text);
        let error = reply.json();
        assert_eq!(error["error"], "invalid_input", "{error}");
        assert_eq!(error["field"], field, "{error}");
        assert!(
            error["message"].as_str().expect("message").contains(field),
            "{error}"
        );
    }
    for (path, field) in [
        ("/v1/resolve", "name"),
        ("/v1/resolve?option=a,2,0", "option"),
        ("/v1/watch?from=x", "from"),
        ("/v1/watch?wait_ms=999999", "wait_ms"),
        ("/v1/watch?nam=a", "nam"),
        ("/v1/ready", "name"),
    ] {
        let reply = node.get(path);
        assert_eq!(reply.status, 400, "{path}: {}", reply.text);
        assert_eq!(reply.json()["field"], field, "{path}: {}", reply.text);
    }
    let reply = node.call("DELETE", "/v1/publications/1-2-3", "", QUICK);
    assert_eq!(reply.status, 404, "{}", reply.text);
    let reply = node.get("/v1/nothing");
    assert_eq!(
        (reply.status, reply.json()["error"].clone()),
        (404, "not_found".into())
    );

    // The gateway's placeholder: a JSON 404 for every request.
    let reply = copycat_testkit::http::get(node.gateway, "/svc/path", QUICK).expect("gateway");
    assert_eq!(reply.status, 404);
    let body: Value = serde_json::from_slice(&reply.body).expect("JSON");
    assert_eq!(body["error"], "no_route");

    // /metrics is Prometheus text: comments, or `name{labels} value` with a number.
    node.publish(r#"{"name":"m","endpoint":"e:1"}"#);
    let status = node.get("/v1/status").json();
    assert_eq!(status["node_id"], node.node_id.as_str());
    assert_eq!(status["registry"]["api_publications"], 1);
    let metrics = node.get("/metrics");
    assert_eq!(metrics.status, 200);
    let mut samples = std::collections::BTreeMap::new();
    for line in metrics.text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(comment) = line.strip_prefix("# ") {
            assert!(
                comment.starts_with("TYPE ") || comment.starts_with("HELP "),
                "{line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("`series value`");
        let value: f64 = value.parse().unwrap_or_else(|e| panic!("{line}: {e}"));
        let name = series.split('{').next().expect("a name");
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        samples.insert(series.to_string(), value);
    }
    assert_eq!(
        samples.get("copycat_registry_publications"),
        Some(&1.0),
        "{}",
        metrics.text
    );
    assert_eq!(samples.get("copycat_node_api_publications"), Some(&1.0));
    assert!(samples.contains_key("copycat_registry_leases_in_use"));
    assert!(samples.contains_key("copycat_registry_waiters"));
    assert_eq!(samples.get("copycat_members{state=\"alive\"}"), Some(&1.0));
    // The library's own figures come through the node's recorder too (its replica gauges
    // are published by the node's periodic maintenance).
    assert!(samples.contains_key("copycat_proposals_committed_total"));
    eventually("the library's replica gauges are exported", PHASE, || {
        let text = node.get("/metrics").text;
        text.lines()
            .any(|l| l.starts_with("copycat_groups_hosted ") && !l.ends_with(" 0"))
            .then_some(())
    });
    assert!(
        samples
            .keys()
            .any(|k| k.starts_with("copycat_api_requests_total{") && k.contains("status=\"400\"")),
        "{}",
        metrics.text
    );

    // The watch as server-sent events: the current publication, then a new one, each
    // with its revision as the event id.
    let mut events = std::net::TcpStream::connect(node.api).expect("connect");
    events.set_read_timeout(Some(PHASE)).expect("timeout");
    events
        .write_all(b"GET /v1/watch?name=m HTTP/1.1\r\nHost: n\r\nAccept: text/event-stream\r\n\r\n")
        .expect("send");
    let second = node.publish(r#"{"name":"m","endpoint":"e:2"}"#);
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains(&second) {
        let n = events.read(&mut buf).expect("events");
        assert!(n > 0, "event stream closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(seen.contains("text/event-stream"), "{seen}");
    assert_eq!(seen.matches("event: added").count(), 2, "{seen}");

    // SIGTERM: exit 0, soon, even with the event stream open (it ends at once).
    let stopping = Instant::now();
    let status = node.terminate(PHASE);
    assert_eq!(status.code(), Some(0), "{}", node.log());
    assert!(
        stopping.elapsed() < Duration::from_secs(4),
        "{:?}",
        stopping.elapsed()
    );
    drop(events);
}
