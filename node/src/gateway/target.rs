//! Where a gateway request goes: the service named by the path's first segment (stripped)
//! or by `X-Copper-Service` (path kept), the resolution options (`X-Copper-Min-Distance`,
//! `X-Copper-Max-Distance`), and the upstream URL built from a publication's endpoint.

use axum::http::{HeaderMap, Uri};
use copycat::registry::{Distance, SubscribeOptions};

use super::error::GatewayError;

/// Names the service instead of the path's first segment; the path is then passed whole.
pub const SERVICE_HEADER: &str = "x-copper-service";
/// The nearest distance accepted (0, 1 or 2).
pub const MIN_DISTANCE_HEADER: &str = "x-copper-min-distance";
/// The farthest distance accepted (0, 1 or 2).
pub const MAX_DISTANCE_HEADER: &str = "x-copper-max-distance";

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The service as the client named it (`hello` for `http:hello`).
    pub service: String,
    /// Path and query to ask the upstream for.
    pub path_and_query: String,
    /// How to resolve `http:{service}`.
    pub options: SubscribeOptions,
}

/// Reads the target of a request to `uri` with `headers`.
pub fn target(uri: &Uri, headers: &HeaderMap) -> Result<Target, GatewayError> {
    let path = uri.path();
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let (service, path) = match headers.get(SERVICE_HEADER) {
        Some(value) => {
            let service = value
                .to_str()
                .map_err(|_| GatewayError::BadRequest(format!("{SERVICE_HEADER} is not text")))?;
            (service.trim().to_string(), path.to_string())
        }
        None => {
            let rest = path.strip_prefix('/').unwrap_or(path);
            let (service, rest) = rest.split_once('/').map_or((rest, ""), |(s, r)| (s, r));
            (service.to_string(), format!("/{rest}"))
        }
    };
    if service.is_empty() {
        return Err(GatewayError::NoRoute(
            "no service named: call /{service}/{path} or set X-Copper-Service".to_string(),
        ));
    }
    let name = format!("http:{service}");
    let min = distance(headers, MIN_DISTANCE_HEADER)?;
    let max = distance(headers, MAX_DISTANCE_HEADER)?;
    let options = match (min, max) {
        (None, None) => SubscribeOptions::name(&name),
        (min, max) => {
            let min = min.unwrap_or(Distance::SameNode);
            let max = max.unwrap_or(Distance::OtherDatacenter);
            if min > max {
                return Err(GatewayError::BadRequest(format!(
                    "{MIN_DISTANCE_HEADER} is above {MAX_DISTANCE_HEADER}"
                )));
            }
            SubscribeOptions::new().then(&name, min, max)
        }
    };
    Ok(Target {
        service,
        path_and_query: format!("{path}{query}"),
        options,
    })
}

/// A distance header's value, if present.
fn distance(headers: &HeaderMap, header: &str) -> Result<Option<Distance>, GatewayError> {
    let Some(value) = headers.get(header) else {
        return Ok(None);
    };
    match value.to_str().map(str::trim) {
        Ok("0") => Ok(Some(Distance::SameNode)),
        Ok("1") => Ok(Some(Distance::SameDatacenter)),
        Ok("2") => Ok(Some(Distance::OtherDatacenter)),
        _ => Err(GatewayError::BadRequest(format!(
            "{header}: use 0 (same node), 1 (same datacenter) or 2 (any)"
        ))),
    }
}

/// The upstream URL: the publication's `http://` endpoint (with any path it has) followed
/// by the request's path and query.
pub fn upstream_uri(endpoint: &str, path_and_query: &str) -> Result<Uri, GatewayError> {
    if !endpoint.starts_with("http://") {
        return Err(GatewayError::Unreachable(format!(
            "endpoint {endpoint:?} is not an http:// URL"
        )));
    }
    let base = endpoint.trim_end_matches('/');
    format!("{base}{path_and_query}")
        .parse()
        .map_err(|e| GatewayError::Unreachable(format!("endpoint {endpoint:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn the_first_segment_names_the_service_and_is_stripped() {
        let uri: Uri = "/hello/a/b?x=1".parse().expect("uri");
        let t = target(&uri, &HeaderMap::new()).expect("target");
        assert_eq!(t.service, "hello");
        assert_eq!(t.path_and_query, "/a/b?x=1");
        assert_eq!(t.options, SubscribeOptions::name("http:hello"));
        let t = target(&"/hello".parse().expect("uri"), &HeaderMap::new()).expect("target");
        assert_eq!(t.path_and_query, "/");
        assert!(target(&"/".parse().expect("uri"), &HeaderMap::new()).is_err());
    }

    #[test]
    fn headers_name_the_service_and_the_distances() {
        let uri: Uri = "/hello/a".parse().expect("uri");
        let t = target(&uri, &headers(&[(SERVICE_HEADER, "other")])).expect("target");
        assert_eq!(
            (t.service.as_str(), t.path_and_query.as_str()),
            ("other", "/hello/a")
        );
        let t = target(&uri, &headers(&[(MAX_DISTANCE_HEADER, "1")])).expect("target");
        let want = SubscribeOptions::new().then(
            "http:hello",
            Distance::SameNode,
            Distance::SameDatacenter,
        );
        assert_eq!(t.options, want);
        assert!(target(&uri, &headers(&[(MIN_DISTANCE_HEADER, "3")])).is_err());
        let both = headers(&[(MIN_DISTANCE_HEADER, "2"), (MAX_DISTANCE_HEADER, "1")]);
        assert!(target(&uri, &both).is_err());
    }

    #[test]
    fn upstream_urls_keep_the_endpoint_path() {
        let uri = upstream_uri("http://127.0.0.1:9000/api/", "/x?y=1").expect("uri");
        assert_eq!(uri.to_string(), "http://127.0.0.1:9000/api/x?y=1");
        assert!(upstream_uri("https://h:1", "/").is_err());
        assert!(upstream_uri("tcp://h:1", "/").is_err());
    }
}
