//! Node-to-node forwarding: how a request reaches a publication through its owner node.
//!
//! Each node serves a *forwarding entry* on its own listener (`--forward`, by default the
//! node's `--hostname` with a free port), reachable by the other nodes, unlike the gateway
//! and the API, which stay on loopback. Every publication made through a node's API
//! carries that address in its metadata under [`FORWARD_METADATA_KEY`]. A gateway that
//! resolves a publication owned by another node sends the request there, naming the
//! publication in [`PUBLICATION_HEADER`]; the owner checks the id against the
//! publications made through its own API, takes a slot of the publication's capacity and
//! calls the endpoint *it* holds for that id. So the endpoint may listen on the owner's
//! loopback only, and the capacity is enforced in one place, cluster-wide.
//!
//! Trust model: the entry proxies only to the endpoints of its own node's API publications
//! (the request names an id, never an address), so it cannot be used to reach anything
//! else on the node. It does not authenticate its callers: whoever can connect to it can
//! call the node's published `http:` services (as they could through a gateway), can skip
//! `max_distance` (which resolution applies) and can write its own `X-Forwarded-For`.
//! Bind it to the cluster's network and keep others out with a firewall. It is plain
//! HTTP: the cluster's TLS certificates (`--tls-*`) protect raft traffic only, not
//! forwarded requests (not done yet).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderName, HeaderValue, Uri};
use axum::response::Response;
use axum::Router;
use copycat::registry::Publication;

use super::error::GatewayError;
use super::proxy::strip_hop_by_hop;
use super::target::Target;
use super::{send, serve_local, Gateway, FORWARD_RESPONSE_TIMEOUT};
use crate::publications::api_id;

/// The metadata key under which a publication made through a node's API carries that
/// node's forwarding address (`host:port`). Reserved: the API refuses it from clients.
pub const FORWARD_METADATA_KEY: &str = "copycat.forward";

/// The header naming the publication (its API id) a forwarded request is for; removed
/// before the request goes upstream.
pub const PUBLICATION_HEADER: HeaderName = HeaderName::from_static("x-copycat-publication");

/// Sends a request (headers already prepared by the gateway) for `publication` to its
/// owner's forwarding entry at `owner`, and returns the owner's response as it is: an
/// owner's `503 overcapacity` reaches the client unchanged.
pub(super) async fn send_to_owner(
    gateway: &Gateway,
    owner: &str,
    publication: &Publication,
    target: &Target,
    mut parts: Parts,
    body: Body,
) -> Result<Response, GatewayError> {
    let uri: Uri = format!("http://{owner}{}", target.path_and_query)
        .parse()
        .map_err(|e| {
            GatewayError::Unreachable(format!(
                "publication {}: forwarding address {owner:?}: {e}",
                api_id(&publication.id)
            ))
        })?;
    let id = HeaderValue::from_str(&api_id(&publication.id))
        .map_err(|e| GatewayError::Unreachable(format!("publication id: {e}")))?;
    parts.headers.insert(PUBLICATION_HEADER, id);
    let response = send(gateway, uri, parts, body, FORWARD_RESPONSE_TIMEOUT)
        .await
        .map_err(|e| match e {
            GatewayError::Unreachable(m) => GatewayError::Unreachable(format!(
                "owner node {} of the publication: {m}",
                publication.id.node
            )),
            other => other,
        })?;
    Ok(response.map(Body::new))
}

/// The forwarding entry's routes: every request is for one of this node's publications.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new().fallback(entry).with_state(gateway)
}

/// Serves one forwarded request, counted in
/// `copycat_gateway_forwarded_requests_total{status, error}`.
async fn entry(State(gateway): State<Arc<Gateway>>, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    let id = parts
        .headers
        .remove(PUBLICATION_HEADER)
        .and_then(|v| v.to_str().ok().map(str::to_string));
    let Some(id) = id else {
        let e = GatewayError::BadRequest(format!(
            "a forwarded request names its publication in {PUBLICATION_HEADER}"
        ));
        return count(e.response(None));
    };
    let Some(route) = gateway.publications.route(&id) else {
        let e = GatewayError::NoRoute(format!("publication {id} is not served by this node"));
        return count(e.response(None));
    };
    let service = route.name.strip_prefix("http:").unwrap_or(&route.name);
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
    // The forwarding gateway named the client already (X-Forwarded-For, Forwarded); this
    // hop adds only Via.
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::HOST);
    parts.headers.append(header::VIA, gateway.via.clone());
    let result = serve_local(&gateway, &route, &path_and_query, parts, body).await;
    let response = match result {
        Ok(response) => response,
        Err(e) => e.response(Some(service)),
    };
    count(response)
}

/// Counts a response of the forwarding entry.
fn count(response: Response) -> Response {
    let error = response
        .headers()
        .get(super::error::ERROR_HEADER)
        .map_or("none", |kind| super::error::known_kind(kind.as_bytes()));
    metrics::counter!("copycat_gateway_forwarded_requests_total",
        "status" => response.status().as_u16().to_string(), "error" => error)
    .increment(1);
    response
}
