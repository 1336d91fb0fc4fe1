//! The hashmap's HTTP API as an axum [`Router`]: `GET|PUT|DELETE /kv/{key}` and
//! `GET /status`, answered through copycat's async API (no handler blocks a thread on a
//! commit). The bounds every request passes through are in `server.rs`.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use copycat::{CopyCat, ReplicatedMap};

/// Largest accepted value: stays well under copycat's default 1 MiB proposal limit
/// (`Config::max_proposal_bytes`), with room for the key and the command's encoding, so a
/// too-large value is a clear 413 here rather than a proposal error. The HTTP body limit.
pub const MAX_VALUE_BYTES: usize = 512 * 1024;

/// The replicated map: keys to bytes.
pub type Map = ReplicatedMap<String, Vec<u8>>;

/// What the handlers share.
pub struct App {
    /// This node.
    pub node: CopyCat,
    /// The hashmap.
    pub map: Map,
    /// The voters the map's group is meant to have (`/status` compares).
    pub replication_factor: usize,
}

/// The API's routes, with `app` as their state. Methods and paths are matched by the
/// handlers themselves so that every answer (405s and 400s included) stays as it was.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/status", any(status_route))
        .route("/kv/", any(kv_route))
        .route("/kv/{*key}", any(kv_route))
        .fallback(|| async { text(StatusCode::NOT_FOUND, "not found: try /kv/{key} or /status") })
        .with_state(app)
}

/// A response with a body of `content_type`.
fn reply(code: StatusCode, body: Vec<u8>, content_type: &'static str) -> Response {
    (code, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// A plain-text response (errors, acknowledgements).
fn text(code: StatusCode, msg: &str) -> Response {
    reply(
        code,
        format!("{msg}\n").into_bytes(),
        "text/plain; charset=utf-8",
    )
}

/// `/status`: only `GET`.
async fn status_route(State(app): State<Arc<App>>, method: Method) -> Response {
    match method {
        Method::GET => status(&app).await,
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "use GET /status"),
    }
}

/// `/kv/{key}`: `GET` (`?consistent=true` for a linearizable read), `PUT`, `DELETE`.
async fn kv_route(State(app): State<Arc<App>>, request: Request<Body>) -> Response {
    let raw_key = request
        .uri()
        .path()
        .strip_prefix("/kv/")
        .unwrap_or_default();
    let key = match parse_key(raw_key) {
        Ok(key) => key,
        Err(msg) => return text(StatusCode::BAD_REQUEST, &msg),
    };
    let consistent = request.uri().query().is_some_and(wants_consistent);
    match request.method().clone() {
        Method::GET if consistent => {
            let found = app.map.get_linearizable(&key).await;
            value(&app, found).await
        }
        Method::GET => value(&app, app.map.get(&key)).await,
        Method::PUT => match Bytes::from_request(request, &()).await {
            Ok(body) => {
                let outcome = app.map.insert(key, body.to_vec()).await;
                write(&app, outcome).await
            }
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => text(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("values are limited to {MAX_VALUE_BYTES} bytes"),
            ),
            Err(rejection) => text(
                StatusCode::BAD_REQUEST,
                &format!("cannot read body: {}", rejection.body_text()),
            ),
        },
        Method::DELETE => {
            let outcome = app.map.remove(key).await;
            write(&app, outcome).await
        }
        _ => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET, PUT or DELETE on /kv/{key}",
        ),
    }
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

/// Whether the query string asks for `consistent=true`.
fn wants_consistent(query: &str) -> bool {
    query.split('&').any(|kv| kv == "consistent=true")
}

/// Answers a write: 200 once it is committed and applied to the local map.
async fn write(app: &App, outcome: copycat::Result<Option<Vec<u8>>>) -> Response {
    match outcome {
        Ok(_) => text(StatusCode::OK, "ok"),
        Err(e) => unavailable(app, &e).await,
    }
}

/// A looked-up value as a response (a plain `GET` reads the local map, which may trail
/// the leader by a few entries; `?consistent=true` went through a read barrier first).
async fn value(app: &App, found: copycat::Result<Option<Vec<u8>>>) -> Response {
    match found {
        Ok(Some(value)) => reply(StatusCode::OK, value, "application/octet-stream"),
        Ok(None) => text(StatusCode::NOT_FOUND, "no such key"),
        Err(e) => unavailable(app, &e).await,
    }
}

/// A 503 for a failed write or read barrier; says so when the cluster has not formed yet
/// (a founder waiting for its `--bootstrap-expect` nodes), the usual cause at startup.
async fn unavailable(app: &App, error: &copycat::Error) -> Response {
    if app.node.has_joined().await.unwrap_or(true) {
        return text(StatusCode::SERVICE_UNAVAILABLE, &error.to_string());
    }
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!(
            "{error}: this node has not joined a formed cluster yet (the founding node waits \
             for --bootstrap-expect nodes)"
        ),
    )
}

/// `GET /status`: this node, its view of the members, and its replica of the map's group.
async fn status(app: &App) -> Response {
    let id = app.map.replicated().id();
    let (members, group) = match (app.node.members().await, app.node.group_status(id).await) {
        (Ok(members), Ok(group)) => (members, group),
        (Err(e), _) | (_, Err(e)) => return text(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
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
        "joined": app.node.has_joined().await.unwrap_or(false),
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
    reply(
        StatusCode::OK,
        format!("{body}\n").into_bytes(),
        "application/json",
    )
}
