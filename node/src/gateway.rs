//! The gateway (Copper's :5380, on `--gateway`). Not built yet: the listener is bound (so
//! the address is taken and reported) and every request gets a JSON 404 with the
//! `X-Copper-Error` header the gateway's errors will carry.

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::json;

/// The header naming a gateway error's kind.
pub const ERROR_HEADER: HeaderName = HeaderName::from_static("x-copper-error");

/// The gateway's routes: for now, a 404 for every request.
pub fn router() -> Router {
    Router::new().fallback(|| async { no_route() })
}

/// `404 {"error": "no_route", …}`.
fn no_route() -> Response {
    let body = json!({
        "error": "no_route",
        "message": "the gateway does not route requests yet",
    });
    let mut response = (StatusCode::NOT_FOUND, Json(body)).into_response();
    response
        .headers_mut()
        .insert(ERROR_HEADER, HeaderValue::from_static("no_route"));
    response
}
