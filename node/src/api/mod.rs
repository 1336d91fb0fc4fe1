//! The local API (HTTP/1.1 + JSON on `--api`): the registry for any language.
//!
//! | route | what it does |
//! |---|---|
//! | `POST /v1/publications` | publish; `201 {"id"}` once committed and visible here |
//! | `GET /v1/publications` | the registry's publications (of some names) |
//! | `DELETE /v1/publications/{id}` | unpublish; `204` |
//! | `PUT /v1/publications/{id}/keepalive` | restart the publication's time to live |
//! | `GET /v1/resolve` | the publication to use now (local read) |
//! | `GET /v1/watch` | long-poll of changes after a revision, or server-sent events |
//! | `GET /v1/ready` | long-poll until named services are visible |
//! | `GET /v1/members`, `GET /v1/status` | the cluster as this node sees it |
//! | `GET /metrics` | Prometheus text |
//!
//! Errors are JSON `{"error": kind, "message": …}` ([`error::ApiError`]); invalid input is
//! a 400 that names the field.

pub mod error;
pub mod json;
pub mod publications;
pub mod query;
pub mod resolve;
pub mod status;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post, put};
use axum::Router;
use copycat::registry::{Registry, Revision};
use copycat::CopyCat;
use metrics_exporter_prometheus::PrometheusHandle;
use slog::Logger;
use tokio::sync::Semaphore;

use crate::follower::FollowerView;
use crate::publications::Publications;
use error::ApiError;
use json::Vantage;

/// Long-polls (`/v1/watch`, `/v1/ready`) waiting at once; one more gets a 503. Below the
/// server's in-flight request limit, so publishes and resolves still get through.
pub const MAX_LONG_POLLS: usize = 192;

/// The bound addresses, for `/v1/status`.
#[derive(Debug, Clone)]
pub struct Addresses {
    /// The local API.
    pub api: SocketAddr,
    /// The gateway.
    pub gateway: SocketAddr,
    /// The forwarding entry (bound).
    pub forward: SocketAddr,
    /// The forwarding entry as other nodes reach it (`host:port`), carried in the metadata
    /// of the API's publications.
    pub forward_advertised: String,
}

/// What the handlers share.
pub struct App {
    /// This node.
    pub node: CopyCat,
    /// Its registry.
    pub registry: Registry,
    /// This node and its datacenter, for distances.
    pub vantage: Vantage,
    /// The publications made through this API, with their times to live.
    pub publications: Publications,
    /// The latest registry revision; changes after every registry change.
    pub revisions: tokio::sync::watch::Receiver<Revision>,
    /// Publication counts for the metrics.
    pub follower: FollowerView,
    /// Renders the metrics.
    pub metrics: PrometheusHandle,
    /// Slots of [`MAX_LONG_POLLS`].
    pub long_polls: Arc<Semaphore>,
    /// Bound addresses.
    pub addresses: Addresses,
    /// Turns true when the node begins to shut down: long-polls and event streams end.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// The node's logger.
    pub log: Logger,
}

/// The API's routes with `app` as their state (the bounds are added by the server).
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route(
            "/v1/publications",
            post(publications::create).get(publications::list),
        )
        .route("/v1/publications/{id}", delete(publications::delete))
        .route(
            "/v1/publications/{id}/keepalive",
            put(publications::keepalive),
        )
        .route("/v1/resolve", get(resolve::resolve))
        .route("/v1/watch", get(watch::watch))
        .route("/v1/ready", get(watch::ready))
        .route("/v1/members", get(status::members))
        .route("/v1/status", get(status::status))
        .route("/metrics", get(status::metrics))
        .fallback(|| async {
            ApiError::NotFound("no such route; see the README's copycat-node section".to_string())
        })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .route_layer(middleware::from_fn(count_requests))
        .with_state(app)
}

/// Counts every answered request of a known route by route (the matched pattern, so ids
/// do not become labels) and status: `copycat_api_requests_total{route, status}`.
async fn count_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("copycat_api_requests_total", "route" => route, "status" => status)
        .increment(1);
    response
}
