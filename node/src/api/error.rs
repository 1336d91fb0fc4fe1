//! The API's errors: each a JSON body `{"error": kind, "message": …}` (plus `"field"` for
//! invalid input) with a fitting status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use copycat::registry::RegistryError;
use serde_json::json;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A field of the body or the query is missing or unusable (400); nothing changed.
    #[error("{field}: {message}")]
    InvalidInput {
        /// The body field or query parameter.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// No such route or publication (404).
    #[error("{0}")]
    NotFound(String),
    /// No option of a resolution sees a publication (404).
    #[error("no visible publication for {0}")]
    NoPublication(String),
    /// The route exists, the method does not (405).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A watch asked to resume from a revision that left the history (410): watch again
    /// without `from`.
    #[error(
        "revision {asked} is too old: the oldest change kept is {oldest}; watch again without from"
    )]
    Compacted {
        /// The revision asked for.
        asked: u64,
        /// The oldest one kept.
        oldest: u64,
    },
    /// The wait ended before the condition held (504).
    #[error("{0}")]
    Timeout(String),
    /// The node cannot serve this now: shutting down, overloaded, over capacity (503).
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected failure (500).
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// An [`ApiError::InvalidInput`] for `field`.
    pub fn invalid(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::InvalidInput {
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// The `error` kind of the body.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::InvalidInput { .. } => "invalid_input",
            ApiError::NotFound(_) => "not_found",
            ApiError::NoPublication(_) => "no_publication",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Compacted { .. } => "revision_compacted",
            ApiError::Timeout(_) => "timeout",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The status it answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidInput { .. } => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) | ApiError::NoPublication(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Compacted { .. } => StatusCode::GONE,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            // The API checks its input before the registry sees it; this is what is left.
            RegistryError::InvalidPublication(message) => ApiError::invalid("publication", message),
            RegistryError::NoPublication(names) => ApiError::NoPublication(names),
            RegistryError::Timeout => {
                ApiError::Timeout("the registry did not answer in time".to_string())
            }
            RegistryError::RevisionCompacted { asked, oldest } => {
                ApiError::Compacted { asked, oldest }
            }
            e @ (RegistryError::Overcapacity { .. } | RegistryError::Superseded) => {
                ApiError::Unavailable(e.to_string())
            }
            RegistryError::CopyCat(copycat::Error::Timeout) => {
                ApiError::Timeout("the registry's write did not commit in time".to_string())
            }
            RegistryError::CopyCat(e) => ApiError::Unavailable(e.to_string()),
            // RegistryError is non-exhaustive in spirit: anything new is a 500 until mapped.
            #[allow(unreachable_patterns)]
            e => ApiError::Internal(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.kind(), "message": self.to_string()});
        if let ApiError::InvalidInput { field, .. } = &self {
            body["field"] = json!(field);
        }
        (self.status(), Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;

    /// The response `error` makes: status and JSON body.
    async fn answer(error: ApiError) -> (StatusCode, serde_json::Value) {
        let response = error.into_response();
        let status = response.status();
        let body = to_bytes(response.into_body(), 1 << 16).await.expect("body");
        (status, serde_json::from_slice(&body).expect("json"))
    }

    #[tokio::test]
    async fn a_watch_from_a_compacted_revision_is_410_naming_the_oldest_kept() {
        let compacted = RegistryError::RevisionCompacted {
            asked: 3,
            oldest: 10_004,
        };
        let (status, body) = answer(ApiError::from(compacted)).await;
        assert_eq!(status, StatusCode::GONE);
        assert_eq!(body["error"], "revision_compacted");
        let message = body["message"].as_str().expect("message");
        assert!(
            message.contains("revision 3") && message.contains("10004"),
            "{message}"
        );
    }
}
