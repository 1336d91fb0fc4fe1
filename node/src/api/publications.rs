//! `POST /v1/publications`, `DELETE /v1/publications/{id}`,
//! `PUT /v1/publications/{id}/keepalive`: publications that live while their client keeps
//! them alive; `GET /v1/publications` lists what the registry holds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use copycat::registry::{PublishSettings, MAX_NAME_BYTES};
use serde_json::{json, Map, Value};
use slog::info;

use super::error::ApiError;
use super::query::{check_name, distance, Query};
use super::App;
use crate::gateway::forward::FORWARD_METADATA_KEY;
use crate::publications::api_id;

/// Time to live of a publication that gives no `ttl_ms`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
/// Shortest accepted time to live: below it a client could hardly keep up with keepalives.
pub const MIN_TTL: Duration = Duration::from_millis(100);
/// Longest accepted time to live.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Most tags, and most metadata entries, of one publication.
pub const MAX_LABELS: usize = 64;
/// Longest tag, metadata key or metadata value, in bytes.
pub const MAX_LABEL_BYTES: usize = 256;
/// Metadata keys the node sets itself (the forwarding address,
/// [`crate::gateway::forward::FORWARD_METADATA_KEY`]); a client may not.
pub const RESERVED_METADATA_PREFIX: &str = "copycat.";
/// Largest accepted body of `POST /v1/publications`.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The fields of `POST /v1/publications`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishRequest {
    /// The service name.
    pub name: String,
    /// Where it is served.
    pub endpoint: String,
    /// Copper's settings.
    pub settings: PublishSettings,
    /// Time to live without a keepalive.
    pub ttl: Duration,
}

const FIELDS: [&str; 9] = [
    "name",
    "endpoint",
    "concurrency",
    "queue_size",
    "max_distance",
    "priority",
    "ttl_ms",
    "tags",
    "metadata",
];

impl PublishRequest {
    /// Parses and checks a body; the error names the first bad field.
    pub fn parse(body: &[u8]) -> Result<PublishRequest, ApiError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::invalid("body", format!("not JSON: {e}")))?;
        let Value::Object(object) = value else {
            return Err(ApiError::invalid("body", "expected a JSON object"));
        };
        if let Some(key) = object.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(ApiError::invalid(key, "unknown field"));
        }
        let name = string(&object, "name")?.ok_or_else(|| ApiError::invalid("name", "required"))?;
        check_name("name", &name)?;
        let endpoint = string(&object, "endpoint")?
            .ok_or_else(|| ApiError::invalid("endpoint", "required"))?;
        if endpoint.is_empty() || endpoint.len() > MAX_NAME_BYTES {
            return Err(ApiError::invalid(
                "endpoint",
                format!("must be 1 to {MAX_NAME_BYTES} bytes"),
            ));
        }
        let defaults = PublishSettings::default();
        let concurrency = number(&object, "concurrency", 1, u32::MAX as u64)?
            .map_or(defaults.concurrency, |n| n as u32);
        let queue_size = number(&object, "queue_size", 0, u32::MAX as u64)?
            .map_or(defaults.queue_size, |n| n as u32);
        let max_distance = match number(&object, "max_distance", 0, 2)? {
            Some(n) => distance("max_distance", n)?,
            None => defaults.max_distance,
        };
        let priority = number(&object, "priority", 0, u32::MAX as u64)?
            .map_or(defaults.priority, |n| n as u32);
        let ttl = number(
            &object,
            "ttl_ms",
            MIN_TTL.as_millis() as u64,
            MAX_TTL.as_millis() as u64,
        )?
        .map_or(DEFAULT_TTL, Duration::from_millis);
        Ok(PublishRequest {
            name,
            endpoint,
            settings: PublishSettings {
                concurrency,
                queue_size,
                max_distance,
                priority,
                tags: tags(&object)?,
                metadata: metadata(&object)?,
            },
            ttl,
        })
    }
}

/// A string field, if present (`null` counts as absent).
fn string(object: &Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ApiError::invalid(
            field,
            format!("expected a string, got {other}"),
        )),
    }
}

/// An integer field in `min..=max`, if present.
fn number(
    object: &Map<String, Value>,
    field: &str,
    min: u64,
    max: u64,
) -> Result<Option<u64>, ApiError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => match value.as_u64() {
            Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(ApiError::invalid(
                field,
                format!("expected an integer from {min} to {max}, got {value}"),
            )),
        },
    }
}

/// A short label (tag, metadata key or value).
fn check_label(field: &str, label: &str) -> Result<(), ApiError> {
    if label.len() > MAX_LABEL_BYTES {
        return Err(ApiError::invalid(
            field,
            format!("{} bytes, over the limit of {MAX_LABEL_BYTES}", label.len()),
        ));
    }
    Ok(())
}

/// `tags`: an array of strings.
fn tags(object: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    let array = match object.get("tags") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(array)) if array.len() <= MAX_LABELS => array,
        Some(_) => {
            return Err(ApiError::invalid(
                "tags",
                format!("expected an array of at most {MAX_LABELS} strings"),
            ))
        }
    };
    array
        .iter()
        .map(|tag| match tag {
            Value::String(tag) => check_label("tags", tag).map(|()| tag.clone()),
            other => Err(ApiError::invalid(
                "tags",
                format!("expected strings, got {other}"),
            )),
        })
        .collect()
}

/// `metadata`: an object of string values.
fn metadata(object: &Map<String, Value>) -> Result<BTreeMap<String, String>, ApiError> {
    let map = match object.get("metadata") {
        None | Some(Value::Null) => return Ok(BTreeMap::new()),
        Some(Value::Object(map)) if map.len() <= MAX_LABELS => map,
        Some(_) => {
            return Err(ApiError::invalid(
                "metadata",
                format!("expected an object of at most {MAX_LABELS} string values"),
            ))
        }
    };
    map.iter()
        .map(|(key, value)| {
            check_label("metadata", key)?;
            if key.starts_with(RESERVED_METADATA_PREFIX) {
                return Err(ApiError::invalid(
                    "metadata",
                    format!("keys starting with {RESERVED_METADATA_PREFIX:?} are the node's"),
                ));
            }
            match value {
                Value::String(v) => check_label("metadata", v).map(|()| (key.clone(), v.clone())),
                other => Err(ApiError::invalid(
                    "metadata",
                    format!("value of {key:?}: expected a string, got {other}"),
                )),
            }
        })
        .collect()
}

/// `POST /v1/publications`: publishes, and answers `201 {"id"}` once the publication is
/// committed and visible on this node.
pub async fn create(State(app): State<Arc<App>>, body: Bytes) -> Result<Response, ApiError> {
    let request = PublishRequest::parse(&body)?;
    let registry = app.registry.clone();
    let (name, endpoint, mut settings) = (request.name, request.endpoint, request.settings);
    // Other nodes' gateways reach this publication through this node.
    settings.metadata.insert(
        FORWARD_METADATA_KEY.to_string(),
        app.addresses.forward_advertised.clone(),
    );
    let handle = tokio::task::spawn_blocking(move || registry.publish(&name, &endpoint, settings))
        .await
        .map_err(|e| ApiError::Internal(format!("publish task: {e}")))??;
    let publication = app.vantage.publication(handle.publication());
    let id = app.publications.insert(handle, request.ttl);
    info!(app.log, "published"; "id" => &id, "name" => publication["name"].as_str(),
        "ttl_ms" => request.ttl.as_millis() as u64);
    let body = json!({
        "id": id,
        "ttl_ms": request.ttl.as_millis() as u64,
        "publication": publication,
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `GET /v1/publications?name=A&name=B`: the publications of those names (every name if
/// none) in this node's replica of the registry, owners reported down included, each with
/// its distance from here; `local=true` keeps only the ones made through this node's API.
pub async fn list(
    State(app): State<Arc<App>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw.as_deref(), &["name", "local"])?;
    let mut names = query.names(false)?;
    let local = match query.one("local")? {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "local",
                format!("{other:?}: use true or false"),
            ))
        }
    };
    if names.is_empty() {
        names = app.follower.names();
    }
    names.sort();
    names.dedup();
    let mut listed = Vec::new();
    for name in &names {
        for publication in app.registry.publications(name) {
            if local && !app.publications.contains(&api_id(&publication.id)) {
                continue;
            }
            listed.push(app.vantage.publication(&publication));
        }
    }
    Ok(Json(Value::Array(listed)).into_response())
}

/// `DELETE /v1/publications/{id}`: unpublishes and answers `204` once the removal is
/// applied on this node; `404` for an id this node's API does not hold (never made here,
/// deleted, or expired).
pub async fn delete(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let handle = app
        .publications
        .take(&id)
        .ok_or_else(|| ApiError::NotFound(format!("no publication {id} on this node")))?;
    tokio::task::spawn_blocking(move || handle.unpublish())
        .await
        .map_err(|e| ApiError::Internal(format!("unpublish task: {e}")))??;
    info!(app.log, "unpublished"; "id" => &id);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `PUT /v1/publications/{id}/keepalive`: restarts the publication's time to live.
pub async fn keepalive(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let lifetime = app
        .publications
        .keepalive(&id)
        .ok_or_else(|| ApiError::NotFound(format!("no publication {id} on this node")))?;
    let body = json!({
        "id": id,
        "ttl_ms": lifetime.ttl.as_millis() as u64,
        "expires_in_ms": lifetime.expires_in.as_millis() as u64,
    });
    Ok(Json(body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(body: &str) -> String {
        match PublishRequest::parse(body.as_bytes()) {
            Err(ApiError::InvalidInput { field, .. }) => field,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn defaults_are_coppers() {
        let r =
            PublishRequest::parse(br#"{"name":"http:a","endpoint":"http://h:1"}"#).expect("valid");
        assert_eq!(r.settings, PublishSettings::default());
        assert_eq!(r.ttl, DEFAULT_TTL);
    }

    #[test]
    fn every_bad_field_is_named() {
        assert_eq!(field_of("[1]"), "body");
        assert_eq!(field_of("{"), "body");
        assert_eq!(field_of(r#"{"endpoint":"e"}"#), "name");
        assert_eq!(field_of(r#"{"name":"","endpoint":"e"}"#), "name");
        assert_eq!(field_of(r#"{"name":"n"}"#), "endpoint");
        assert_eq!(
            field_of(r#"{"name":"n","endpoint":"e","concurrency":0}"#),
            "concurrency"
        );
        assert_eq!(
            field_of(r#"{"name":"n","endpoint":"e","queue_size":-1}"#),
            "queue_size"
        );
        assert_eq!(
            field_of(r#"{"name":"n","endpoint":"e","max_distance":3}"#),
            "max_distance"
        );
        assert_eq!(
            field_of(r#"{"name":"n","endpoint":"e","priority":"x"}"#),
            "priority"
        );
        assert_eq!(
            field_of(r#"{"name":"n","endpoint":"e","ttl_ms":5}"#),
            "ttl_ms"
        );
        assert_eq!(
            field_of(r#"{"name":"n","endpoint":"e","tags":[1]}"#),
            "tags"
        );
        assert_eq!(
            field_of(r#"{"name":"n","endpoint":"e","metadata":{"a":1}}"#),
            "metadata"
        );
        // The node's own keys (the forwarding address) cannot be set by a client.
        assert_eq!(
            field_of(r#"{"name":"n","endpoint":"e","metadata":{"copycat.forward":"10.0.0.1:1"}}"#),
            "metadata"
        );
        assert_eq!(
            field_of(r#"{"name":"n","endpoint":"e","colour":1}"#),
            "colour"
        );
    }
}
