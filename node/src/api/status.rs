//! `GET /v1/members`, `GET /v1/status` and `GET /metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use copycat::MemberState;
use serde_json::{json, Value};

use super::error::ApiError;
use super::json::member;
use super::App;

/// The members as this node's gossip sees them.
async fn members_json(app: &App) -> Result<Vec<Value>, ApiError> {
    let members = app
        .node
        .members()
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(members.iter().map(member).collect())
}

/// `GET /v1/members`: `[{"node_id", "addr", "datacenter", "state", "down_for_ms"}]`.
pub async fn members(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    Ok(Json(Value::Array(members_json(&app).await?)).into_response())
}

/// `GET /v1/status`: this node, its addresses, the members, the registry's revision and
/// publication counts.
pub async fn status(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let members = members_json(&app).await?;
    let joined = app.node.has_joined().await.unwrap_or(false);
    let body = json!({
        "node_id": app.node.node_id().to_string(),
        "datacenter": app.vantage.datacenter,
        "addresses": {
            "api": app.addresses.api.to_string(),
            "gateway": app.addresses.gateway.to_string(),
            "forward": app.addresses.forward.to_string(),
            "forward_advertised": app.addresses.forward_advertised,
            "raft": app.node.raft_addr().to_string(),
            "gossip": app.node.gossip_addr().to_string(),
        },
        "joined": joined,
        "members": members,
        "registry": {
            "revision": app.registry.revision(),
            "publications": app.follower.publication_count(),
            "api_publications": app.publications.len(),
        },
    });
    Ok(Json(body).into_response())
}

/// Gives the node's metrics their help text; call once, after the recorder is installed.
pub fn describe_metrics() {
    metrics::describe_gauge!(
        "copycat_registry_revision",
        "Revision of the latest registry change applied on this node."
    );
    metrics::describe_gauge!(
        "copycat_registry_publications",
        "Publications in the registry (every node's, owners reported down included)."
    );
    metrics::describe_gauge!(
        "copycat_node_api_publications",
        "Publications made through this node's API and kept alive here."
    );
    metrics::describe_gauge!(
        "copycat_registry_leases_in_use",
        "Requests in flight to the publications made through this node's API, from any node's gateway (capacity is enforced here, cluster-wide)."
    );
    metrics::describe_gauge!(
        "copycat_registry_waiters",
        "Requests waiting for a slot of a publication made through this node's API, from any node's gateway."
    );
    metrics::describe_gauge!("copycat_members", "Cluster members by gossip state.");
    metrics::describe_counter!(
        "copycat_gateway_requests_total",
        "Requests answered by the gateway, by status and gateway error kind (none: the upstream answered)."
    );
    metrics::describe_counter!(
        "copycat_gateway_forwarded_requests_total",
        "Requests answered by the forwarding entry for this node's publications, by status and gateway error kind."
    );
    metrics::describe_histogram!(
        "copycat_gateway_response_seconds",
        metrics::Unit::Seconds,
        "Time from a gateway request to its response head."
    );
    metrics::describe_counter!(
        "copycat_api_requests_total",
        "Requests answered by the local API, by route and status."
    );
}

/// `GET /metrics`: Prometheus text. The registry gauges are set from its state at each
/// scrape; request counters are kept as requests are answered.
pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    let registry = &app.registry;
    metrics::gauge!("copycat_registry_revision").set(registry.revision() as f64);
    metrics::gauge!("copycat_registry_publications").set(app.follower.publication_count() as f64);
    metrics::gauge!("copycat_node_api_publications").set(app.publications.len() as f64);
    let (in_flight, waiters) = app.publications.load();
    metrics::gauge!("copycat_registry_leases_in_use").set(in_flight as f64);
    metrics::gauge!("copycat_registry_waiters").set(waiters as f64);
    if let Ok(members) = app.node.members().await {
        let alive = members
            .iter()
            .filter(|m| m.state == MemberState::Alive)
            .count();
        metrics::gauge!("copycat_members", "state" => "alive").set(alive as f64);
        metrics::gauge!("copycat_members", "state" => "down").set((members.len() - alive) as f64);
    }
    app.metrics.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}
