//! The proxy's header rules and the streamed response body that holds its slot.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Bytes;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// Headers that concern one connection only (RFC 9110 §7.6.1), never passed on.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes the hop-by-hop headers, those the `Connection` header lists included.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&listed) {
        headers.remove(name);
    }
}

/// Prepares a request's headers for the upstream: hop-by-hop headers and `Host` go (the
/// client sets the upstream's), `X-Forwarded-For` gets the client's address appended, and
/// `Forwarded` (RFC 7239) an element naming the client, the host it asked and the protocol.
pub fn forward_headers(headers: &mut HeaderMap, client: Option<SocketAddr>) {
    strip_hop_by_hop(headers);
    let host = headers.remove(header::HOST);
    let Some(client) = client else {
        return;
    };
    let ip = client.ip();
    let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(earlier) => format!("{earlier}, {ip}"),
        None => ip.to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert("x-forwarded-for", value);
    }
    let node = if ip.is_ipv6() {
        format!("\"[{ip}]\"")
    } else {
        ip.to_string()
    };
    let mut element = format!("for={node};proto=http");
    if let Some(host) = host.as_ref().and_then(|h| h.to_str().ok()) {
        element.push_str(&format!(";host=\"{host}\""));
    }
    let forwarded = match headers.get(header::FORWARDED).and_then(|v| v.to_str().ok()) {
        Some(earlier) => format!("{earlier}, {element}"),
        None => element,
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded) {
        headers.insert(header::FORWARDED, value);
    }
}

/// An upstream's response body, streamed to the client; `guard` (a slot of the
/// publication's capacity) is held until the body is finished or dropped, so a slot stays
/// taken while the response is still flowing.
pub struct HeldBody<G> {
    inner: Incoming,
    _guard: G,
}

impl<G> HeldBody<G> {
    /// `inner`, holding `guard` until dropped.
    pub fn new(inner: Incoming, guard: G) -> Self {
        HeldBody {
            inner,
            _guard: guard,
        }
    }
}

impl<G: Unpin> Body for HeldBody<G> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_the_client_is_named() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-private"),
        );
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert(header::HOST, HeaderValue::from_static("localhost:5380"));
        headers.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.9"));
        headers.insert("x-kept", HeaderValue::from_static("yes"));
        forward_headers(&mut headers, Some("127.0.0.1:4000".parse().expect("addr")));
        assert!(headers.get(header::CONNECTION).is_none());
        assert!(headers.get("x-private").is_none());
        assert!(headers.get(header::TE).is_none());
        assert!(headers.get(header::HOST).is_none());
        assert_eq!(headers["x-kept"], "yes");
        assert_eq!(headers["x-forwarded-for"], "10.0.0.9, 127.0.0.1");
        assert_eq!(
            headers[header::FORWARDED],
            "for=127.0.0.1;proto=http;host=\"localhost:5380\""
        );
    }
}
