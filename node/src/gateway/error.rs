//! The gateway's errors: a status, a JSON body naming the service and the reason, and the
//! header `X-Copper-Error` with the kind.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// The header naming a gateway error's kind.
pub const ERROR_HEADER: HeaderName = HeaderName::from_static("x-copper-error");

/// How long an overcapacity answer tells the client to wait (`Retry-After`).
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Why the gateway did not pass a request on (or got no answer for it).
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No service in the path, or no visible publication of it (404, as Copper).
    #[error("{0}")]
    NoRoute(String),
    /// A gateway header (`X-Copper-…`) is unusable (400).
    #[error("{0}")]
    BadRequest(String),
    /// Every slot of the service is busy and its queue is full, or the wait in the queue
    /// ran out (503, with `Retry-After`).
    #[error("{0}")]
    Overcapacity(String),
    /// The upstream could not be reached, refused the request, or its endpoint is not an
    /// `http://` URL (502).
    #[error("{0}")]
    Unreachable(String),
    /// The upstream did not answer in time (504).
    #[error("{0}")]
    Timeout(String),
    /// The node cannot serve now: shutting down (503).
    #[error("{0}")]
    Unavailable(String),
}

/// Every kind a gateway error has, as [`GatewayError::kind`] gives them.
pub const KINDS: [&str; 6] = [
    "no_route",
    "bad_request",
    "overcapacity",
    "upstream_unreachable",
    "upstream_timeout",
    "unavailable",
];

/// The kind named by an `X-Copper-Error` value (an owner node's answer passed through),
/// `other` if it is none of [`KINDS`] (so metric labels stay few).
pub fn known_kind(value: &[u8]) -> &'static str {
    KINDS
        .iter()
        .find(|k| k.as_bytes() == value)
        .copied()
        .unwrap_or("other")
}

impl GatewayError {
    /// The kind, as the body's `error` and the `X-Copper-Error` header give it.
    pub fn kind(&self) -> &'static str {
        match self {
            GatewayError::NoRoute(_) => "no_route",
            GatewayError::BadRequest(_) => "bad_request",
            GatewayError::Overcapacity(_) => "overcapacity",
            GatewayError::Unreachable(_) => "upstream_unreachable",
            GatewayError::Timeout(_) => "upstream_timeout",
            GatewayError::Unavailable(_) => "unavailable",
        }
    }

    /// The status it answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::NoRoute(_) => StatusCode::NOT_FOUND,
            GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::Overcapacity(_) | GatewayError::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            GatewayError::Unreachable(_) => StatusCode::BAD_GATEWAY,
            GatewayError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The response for a request to `service` (if one was named).
    pub fn response(&self, service: Option<&str>) -> Response {
        let body = json!({
            "error": self.kind(),
            "service": service,
            "message": self.to_string(),
        });
        let mut response = (self.status(), Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(ERROR_HEADER, HeaderValue::from_static(self.kind()));
        if matches!(self, GatewayError::Overcapacity(_)) {
            headers.insert(
                axum::http::header::RETRY_AFTER,
                HeaderValue::from(RETRY_AFTER.as_secs()),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passed_through_kinds_stay_few() {
        for error in [
            GatewayError::NoRoute(String::new()),
            GatewayError::Overcapacity(String::new()),
            GatewayError::Timeout(String::new()),
        ] {
            assert_eq!(known_kind(error.kind().as_bytes()), error.kind());
        }
        assert_eq!(known_kind(b"anything-an-upstream-says"), "other");
    }

    #[test]
    fn overcapacity_says_when_to_retry() {
        let response = GatewayError::Overcapacity("busy".to_string()).response(Some("svc"));
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[ERROR_HEADER], "overcapacity");
        assert_eq!(response.headers()[axum::http::header::RETRY_AFTER], "1");
    }
}
