//! The gateway (Copper's :5380, on `--gateway`): `/{name}/{rest…}` is passed to a
//! publication of `http:{name}` with the `/{name}` prefix stripped (with a header
//! `X-Copper-Service: {name}` the path is passed whole), resolved as the API's bare name
//! (`X-Copper-Min-Distance` / `X-Copper-Max-Distance` give one option instead).
//!
//! Where the request goes depends on who published the chosen publication:
//! - this node (through its API): straight to the endpoint, after taking a slot of the
//!   publication's [`capacity::Capacity`];
//! - another copycat-node: to that node's forwarding entry ([`forward`]), whose address the
//!   publication carries in its metadata ([`forward::FORWARD_METADATA_KEY`]), naming the
//!   publication; the owner takes the slot and calls its local endpoint, so an endpoint
//!   may listen on its own node's loopback only, and capacity holds cluster-wide;
//! - anyone else (a library user's publication, without the metadata): straight to the
//!   endpoint, without a capacity check.
//!
//! Request and response bodies stream through (nothing is buffered); connections to
//! upstreams and to other nodes are kept alive in a pool; hop-by-hop headers are removed;
//! `X-Forwarded-For` and `Forwarded` name the client (the owner node passes them on
//! unchanged and adds `Via`). Errors are JSON `{"error", "service", "message"}` with the
//! header `X-Copper-Error`: `no_route` 404, `bad_request` 400, `overcapacity` 503 (with
//! `Retry-After`; an owner's 503 is passed through as it is), `upstream_unreachable` 502,
//! `upstream_timeout` 504.

pub mod capacity;
pub mod error;
pub mod forward;
pub mod proxy;
pub mod target;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Uri, Version};
use axum::response::Response;
use axum::Router;
use copycat::registry::{Publication, Registry, RegistryError};
use copycat::NodeId;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::publications::{api_id, Publications, Route};
use capacity::CapacityError;
use error::GatewayError;
use proxy::{forward_headers, strip_hop_by_hop, HeldBody};
use target::{target, upstream_uri};

/// Longest wait in a publication's queue for a free slot; then `503 overcapacity`.
pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest time to connect to an upstream or to another node's forwarding entry; then
/// `502`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest time from sending the request (its body streamed whole) to the upstream's
/// response head; then `504`. The response body then streams without a deadline.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest time for a forwarded request's response head: the owner's own queue wait and
/// response deadline and a margin, so that the owner's `503` or `504` arrives first.
pub const FORWARD_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30 + 60 + 5);
/// How long an idle pooled connection is kept.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What the gateway's handler (and the forwarding entry's) share.
pub struct Gateway {
    registry: Registry,
    /// This node: publications it owns are served here.
    node_id: NodeId,
    /// The publications made through this node's API, with their capacity.
    publications: Publications,
    /// `Via` value the forwarding entry adds (`1.1 copycat-node-{node_id}`).
    via: HeaderValue,
    client: Client<HttpConnector, Body>,
    /// `copycat_gateway_requests_total{status="200",error="none"}`, registered once: the
    /// common case skips the recorder's lookup by labels.
    ok: metrics::Counter,
    /// `copycat_gateway_response_seconds`.
    response_seconds: metrics::Histogram,
}

impl Gateway {
    /// A gateway of node `node_id` resolving through `registry`, serving the publications
    /// of `publications` itself.
    pub fn new(registry: Registry, node_id: NodeId, publications: Publications) -> Gateway {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        let via = HeaderValue::from_str(&format!("1.1 copycat-node-{node_id}"))
            .unwrap_or_else(|_| HeaderValue::from_static("1.1 copycat-node"));
        Gateway {
            registry,
            node_id,
            publications,
            via,
            client,
            ok: metrics::counter!("copycat_gateway_requests_total",
                "status" => "200", "error" => "none"),
            response_seconds: metrics::histogram!("copycat_gateway_response_seconds"),
        }
    }
}

/// The gateway's routes: every request is proxied.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new().fallback(handle).with_state(gateway)
}

/// Proxies one request and counts it: `copycat_gateway_requests_total{status, error}`
/// (`error` is the gateway error's kind, `none` for an upstream's answer)
/// and `copycat_gateway_response_seconds` (to the response head).
async fn handle(State(gateway): State<Arc<Gateway>>, request: Request) -> Response {
    let started = Instant::now();
    let target = target(request.uri(), request.headers());
    let service = target.as_ref().ok().map(|t| t.service.clone());
    let result = match target {
        Ok(target) => proxy(&gateway, target, request).await,
        Err(e) => Err(e),
    };
    let response = finish(&gateway, result, service.as_deref());
    gateway.response_seconds.record(started.elapsed());
    response
}

/// The response for `result`, counted in `copycat_gateway_requests_total` (an owner's
/// error passed through counts with its `X-Copper-Error` kind).
fn finish(
    gateway: &Gateway,
    result: Result<Response, GatewayError>,
    service: Option<&str>,
) -> Response {
    let (response, error) = match result {
        Ok(response) => {
            let error = match response.headers().get(error::ERROR_HEADER) {
                Some(kind) => error::known_kind(kind.as_bytes()),
                None => "none",
            };
            (response, error)
        }
        Err(e) => (e.response(service), e.kind()),
    };
    if response.status() == axum::http::StatusCode::OK && error == "none" {
        gateway.ok.increment(1);
        return response;
    }
    metrics::counter!("copycat_gateway_requests_total",
        "status" => response.status().as_u16().to_string(), "error" => error)
    .increment(1);
    response
}

/// Resolves the target and sends the request where its publication is served.
async fn proxy(
    gateway: &Gateway,
    target: target::Target,
    request: Request,
) -> Result<Response, GatewayError> {
    let publication = resolve(gateway, &target)?;
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let (mut parts, body) = request.into_parts();
    forward_headers(&mut parts.headers, client);
    parts.headers.remove(forward::PUBLICATION_HEADER);
    if publication.id.node == gateway.node_id {
        let id = api_id(&publication.id);
        let route = gateway.publications.route(&id).ok_or_else(|| {
            GatewayError::NoRoute(format!("publication {id} was withdrawn from this node"))
        })?;
        return serve_local(gateway, &route, &target.path_and_query, parts, body).await;
    }
    match publication
        .settings
        .metadata
        .get(forward::FORWARD_METADATA_KEY)
    {
        Some(owner) => {
            forward::send_to_owner(gateway, owner, &publication, &target, parts, body).await
        }
        None => {
            let uri = upstream_uri(&publication.endpoint, &target.path_and_query)?;
            let response = send(gateway, uri, parts, body, RESPONSE_TIMEOUT).await?;
            Ok(response.map(Body::new))
        }
    }
}

/// The publication to use now, from this node's replica (no lease: capacity is taken
/// where the publication lives).
fn resolve(gateway: &Gateway, target: &target::Target) -> Result<Publication, GatewayError> {
    let subscription = gateway
        .registry
        .subscribe(target.options.clone())
        .map_err(|e| GatewayError::BadRequest(e.to_string()))?;
    match subscription.resolve() {
        Ok(publication) => Ok(publication),
        Err(RegistryError::NoPublication(_)) => Err(GatewayError::NoRoute(format!(
            "no visible publication of http:{}",
            target.service
        ))),
        Err(e) => Err(GatewayError::Unavailable(e.to_string())),
    }
}

/// Calls a publication of this node: takes a slot of its capacity (waiting FIFO up to
/// [`QUEUE_TIMEOUT`]), sends the request (headers already prepared) to its endpoint and
/// returns the response, whose body holds the slot until it ends.
async fn serve_local(
    gateway: &Gateway,
    route: &Route,
    path_and_query: &str,
    parts: Parts,
    body: Body,
) -> Result<Response, GatewayError> {
    let slot = route
        .capacity
        .acquire(QUEUE_TIMEOUT)
        .await
        .map_err(|e: CapacityError| GatewayError::Overcapacity(format!("{}: {e}", route.name)))?;
    let uri = upstream_uri(&route.endpoint, path_and_query)?;
    let response = send(gateway, uri, parts, body, RESPONSE_TIMEOUT).await?;
    Ok(response.map(|body| Body::new(HeldBody::new(body, slot))))
}

/// Sends a request to `uri` and waits up to `timeout` for the response head; hop-by-hop
/// headers are removed from the response.
async fn send(
    gateway: &Gateway,
    uri: Uri,
    mut parts: Parts,
    body: Body,
    timeout: Duration,
) -> Result<Response<Incoming>, GatewayError> {
    let target = uri.authority().map(|a| a.to_string()).unwrap_or_default();
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    let request = Request::from_parts(parts, body);
    let response = match tokio::time::timeout(timeout, gateway.client.request(request)).await {
        Err(_) => {
            return Err(GatewayError::Timeout(format!(
                "{target} did not answer within {} s",
                timeout.as_secs()
            )))
        }
        Ok(Err(e)) if e.is_connect() => {
            return Err(GatewayError::Unreachable(format!(
                "cannot connect to {target}: {e}"
            )))
        }
        Ok(Err(e)) => {
            let cause = std::error::Error::source(&e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            return Err(GatewayError::Unreachable(format!("{target}: {e}{cause}")));
        }
        Ok(Ok(response)) => response,
    };
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // The client's connection is HTTP/1.1 whatever the upstream spoke.
    parts.version = Version::HTTP_11;
    Ok(Response::from_parts(parts, body))
}
