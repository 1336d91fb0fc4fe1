//! The gateway (Copper's :5380, on `--gateway`): `/{name}/{rest…}` is passed to a
//! publication of `http:{name}` with the `/{name}` prefix stripped (with a header
//! `X-Copper-Service: {name}` the path is passed whole), resolved as the API's bare name
//! (`X-Copper-Min-Distance` / `X-Copper-Max-Distance` give one option instead).
//!
//! Each request takes a lease on the chosen publication ([`copycat::registry::Lease`]):
//! at most `concurrency` requests in flight to a publication *from this node*, callers
//! waiting FIFO up to the summed `queue_size`, then `503` with `Retry-After`. Request and
//! response bodies stream through (nothing is buffered); upstream connections are kept
//! alive in a pool; hop-by-hop headers are removed; `X-Forwarded-For` and `Forwarded`
//! name the client. Errors are JSON `{"error", "service", "message"}` with the header
//! `X-Copper-Error`: `no_route` 404, `bad_request` 400, `overcapacity` 503,
//! `upstream_unreachable` 502, `upstream_timeout` 504.
//!
//! Not yet: requests go straight to the publication's endpoint, so an endpoint local to
//! another node (`http://127.0.0.1:…` there) is not reached through its node; capacity is
//! counted per gateway node, not cluster-wide.

pub mod error;
pub mod proxy;
pub mod target;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::Version;
use axum::response::Response;
use axum::Router;
use copycat::registry::{Registry, RegistryError};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use error::GatewayError;
use proxy::{forward_headers, strip_hop_by_hop, LeasedBody};
use target::{target, upstream_uri};

/// Longest wait in a publication's queue for a free slot; then `503 overcapacity`.
pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest time to connect to an upstream; then `502`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest time from sending the request (its body streamed whole) to the upstream's
/// response head; then `504`. The response body then streams without a deadline.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an idle pooled upstream connection is kept.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What the gateway's handler shares.
pub struct Gateway {
    registry: Registry,
    client: Client<HttpConnector, Body>,
}

impl Gateway {
    /// A gateway resolving through `registry`.
    pub fn new(registry: Registry) -> Gateway {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        Gateway { registry, client }
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
    let (response, error) = match result {
        Ok(response) => (response, "none"),
        Err(e) => (e.response(service.as_deref()), e.kind()),
    };
    metrics::counter!("copycat_gateway_requests_total",
        "status" => response.status().as_u16().to_string(), "error" => error)
    .increment(1);
    metrics::histogram!("copycat_gateway_response_seconds").record(started.elapsed());
    response
}

/// Takes a lease, sends the request upstream, returns its response with the body streaming.
async fn proxy(
    gateway: &Gateway,
    target: target::Target,
    request: Request,
) -> Result<Response, GatewayError> {
    let subscription = gateway
        .registry
        .subscribe(target.options.clone())
        .map_err(|e| GatewayError::BadRequest(e.to_string()))?;
    let lease = match tokio::time::timeout(QUEUE_TIMEOUT, subscription.acquire_async()).await {
        Err(_) => {
            return Err(GatewayError::Overcapacity(format!(
                "no free slot of {} within {} s",
                target.service,
                QUEUE_TIMEOUT.as_secs()
            )))
        }
        Ok(Err(RegistryError::NoPublication(_))) => {
            return Err(GatewayError::NoRoute(format!(
                "no visible publication of http:{}",
                target.service
            )))
        }
        Ok(Err(e @ RegistryError::Overcapacity { .. })) => {
            return Err(GatewayError::Overcapacity(e.to_string()))
        }
        Ok(Err(e)) => return Err(GatewayError::Unavailable(e.to_string())),
        Ok(Ok(lease)) => lease,
    };
    let uri = upstream_uri(lease.endpoint(), &target.path_and_query)?;
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let (mut parts, body) = request.into_parts();
    forward_headers(&mut parts.headers, client);
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    let upstream = Request::from_parts(parts, body);
    let endpoint = lease.endpoint().to_string();
    let response =
        match tokio::time::timeout(RESPONSE_TIMEOUT, gateway.client.request(upstream)).await {
            Err(_) => {
                return Err(GatewayError::Timeout(format!(
                    "{endpoint} did not answer within {} s",
                    RESPONSE_TIMEOUT.as_secs()
                )))
            }
            Ok(Err(e)) if e.is_connect() => {
                return Err(GatewayError::Unreachable(format!(
                    "cannot connect to {endpoint}: {e}"
                )))
            }
            Ok(Err(e)) => {
                let cause = std::error::Error::source(&e)
                    .map(|s| format!(": {s}"))
                    .unwrap_or_default();
                return Err(GatewayError::Unreachable(format!("{endpoint}: {e}{cause}")));
            }
            Ok(Ok(response)) => response,
        };
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // The client's connection is HTTP/1.1 whatever the upstream spoke.
    parts.version = Version::HTTP_11;
    Ok(Response::from_parts(
        parts,
        Body::new(LeasedBody::new(body, lease)),
    ))
}
