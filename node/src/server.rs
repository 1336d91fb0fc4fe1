//! A bounded HTTP/1.1 server for an axum [`Router`]: hyper 1 under a custom accept loop.
//!
//! Every resource an HTTP client can make this process spend has a bound, and each bound
//! says what happens when it is reached (the constants below). What is left to the caller:
//! the [`Router`] itself, passed through [`limit_requests`] for the per-request bounds, and
//! a future that resolves when the server should stop.
//!
//! The same bounds as the `hashmap` example's server (`examples/hashmap/server.rs`, which
//! a separate package cannot share), with JSON refusals and a request timeout above the
//! API's longest long-poll. The local API runs one; the gateway and the forwarding entry
//! run one per gateway thread (`--gateway-threads`), accepting on the same sockets.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::error_handling::HandleErrorLayer;
use axum::extract::{ConnectInfo, DefaultBodyLimit};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{BoxError, Router};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use slog::{warn, Logger};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{watch, Semaphore};
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::{ServiceBuilder, ServiceExt};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

/// Open HTTP connections at once. At the cap the accept loop stops accepting until a
/// connection closes: new connections wait in the kernel's listen backlog (a connect
/// succeeds, the request is answered once a slot frees), and once that backlog
/// ([`LISTEN_BACKLOG`]) is full the kernel drops further connection attempts (clients
/// retry their SYN, then time out). Every held connection is bounded in time by
/// [`HEADER_READ_TIMEOUT`] and [`CONNECTION_MAX_AGE`], so a wait at the cap is too.
pub const MAX_CONNECTIONS: usize = 1024;

/// Connections the kernel holds for the accept loop (the `listen` backlog; the kernel
/// may lower it to `net.core.somaxconn`). Where they wait at [`MAX_CONNECTIONS`] or
/// during an [`ACCEPT_ERROR_BACKOFF`].
pub const LISTEN_BACKLOG: u32 = 1024;

/// How long a client has to send a complete request head, counted from the moment the
/// server is ready to read one: on a new connection, and again after each response on a
/// kept-alive one (so it is also the keep-alive idle bound). Past it hyper closes the
/// connection without a response, which frees its slot of [`MAX_CONNECTIONS`].
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one connection may live, however busy. Past it the connection is shut down
/// gracefully (the request in progress is answered, then the connection closes) and, if
/// that takes more than [`CONNECTION_CLOSE_GRACE`], dropped: a client that stops reading
/// its response cannot hold a slot for longer than the two together.
pub const CONNECTION_MAX_AGE: Duration = Duration::from_secs(120);

/// How long a connection being shut down (at [`CONNECTION_MAX_AGE`], or when the server
/// stops) may take to finish its response before it is dropped.
pub const CONNECTION_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Requests being handled at once, across all connections. One more is refused at once
/// with a 503 (tower's load shedding in front of its concurrency limit) instead of
/// queueing without bound behind slow writes.
pub const MAX_IN_FLIGHT_REQUESTS: usize = 256;

/// Longest time to handle one request, reading its body included. Past it the client gets
/// a 408 and the handler is dropped, so a client trickling a body holds no request slot
/// for longer. Above the API's longest long-poll (`api::MAX_WAIT`, 60 s) and the
/// registry's 10 s publish timeout, which answer first.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(90);

/// Pause after an accept error that is not about one connection (EMFILE and ENFILE when
/// file descriptors run out, ENOBUFS, ENOMEM): the loop sleeps this long, then accepts
/// again. Pending connections wait in the backlog meanwhile; the server never stops.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// At most one log line per this interval for accept errors; the next line says how many
/// were held back.
pub const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// The connection-level bounds of [`serve`]; [`Limits::default`] takes the constants
/// above.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// See [`MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// See [`HEADER_READ_TIMEOUT`].
    pub header_read_timeout: Duration,
    /// See [`CONNECTION_MAX_AGE`]; `None`: a connection lives as long as its client keeps
    /// it busy (the gateway, whose responses stream for as long as they take; an idle
    /// connection still closes after `header_read_timeout`).
    pub connection_max_age: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: MAX_CONNECTIONS,
            header_read_timeout: HEADER_READ_TIMEOUT,
            connection_max_age: Some(CONNECTION_MAX_AGE),
        }
    }
}

/// A listener on `addr` (`host:port`, the first address it resolves to) with a backlog
/// of [`LISTEN_BACKLOG`].
pub async fn bind(addr: &str) -> io::Result<TcpListener> {
    let addr = tokio::net::lookup_host(addr)
        .await?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As std and tokio do for listeners: a restarted server can bind its port again while
    // connections of the previous one are in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Wraps `router` in the per-request bounds: bodies over `max_body_bytes` get a 413 (at
/// once when `Content-Length` says so, else as soon as the body grows past it), a request
/// beyond [`MAX_IN_FLIGHT_REQUESTS`] a 503, a request slower than [`REQUEST_TIMEOUT`] a 408.
pub fn limit_requests(router: Router, max_body_bytes: usize) -> Router {
    router
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(RequestBodyLimitLayer::new(max_body_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(overloaded))
                .load_shed()
                .concurrency_limit(MAX_IN_FLIGHT_REQUESTS),
        )
}

/// Wraps the gateway's `router` in the in-flight limit only: its bodies stream (a 1 GiB
/// upload passes through without a size limit) and its requests last as long as their
/// upstream streams; the gateway bounds the wait for a slot and for the response head.
/// `in_flight` holds [`MAX_IN_FLIGHT_REQUESTS`] permits, shared by every router (one per
/// gateway thread) serving the same listener.
pub fn limit_gateway(router: Router, in_flight: Arc<Semaphore>) -> Router {
    router.layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(overloaded))
            .load_shed()
            .layer(GlobalConcurrencyLimitLayer::with_semaphore(in_flight)),
    )
}

/// The response to a request refused by the in-flight limit (the only error the layers
/// under [`HandleErrorLayer`] produce).
async fn overloaded(error: BoxError) -> impl IntoResponse {
    let message = if error.is::<tower::load_shed::error::Overloaded>() {
        format!("{MAX_IN_FLIGHT_REQUESTS} requests in flight; retry later")
    } else {
        error.to_string()
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(serde_json::json!({"error": "overloaded", "message": message})),
    )
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets open connections
/// finish their responses for up to [`CONNECTION_CLOSE_GRACE`] and returns.
///
/// Connections are HTTP/1.1 (hyper); a malformed request head (a negative or unparsable
/// `Content-Length`, say) gets hyper's 400 and the connection closes. Accept errors never
/// end the loop: they are logged to `log` (rate-limited) and, unless they concern only
/// the one connection, followed by [`ACCEPT_ERROR_BACKOFF`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
    log: Logger,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let mut accept_errors = RateLimitedLog::new(ACCEPT_ERROR_LOG_INTERVAL);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                // The semaphore is never closed.
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                if let Some(held_back) = accept_errors.should_log() {
                    warn!(log, "HTTP accept failed; accepting again shortly";
                        "error" => %e, "similar_errors_held_back" => held_back);
                }
                if !is_per_connection(&e) {
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
                continue;
            }
        };
        // Small responses leave at once; a failure here changes only latency.
        let _ = stream.set_nodelay(true);
        // Handlers may read the client's address (the gateway's X-Forwarded-For).
        let service =
            router
                .clone()
                .map_request(move |mut request: axum::http::Request<Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    request
                });
        let connection =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let mut stop = stop_rx.clone();
        // Drives the connection to its end, shutting it down gracefully at
        // its max age (CONNECTION_MAX_AGE) or when the server stops, and dropping it
        // CONNECTION_CLOSE_GRACE after that; then frees its slot.
        let max_age = limits.connection_max_age;
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let aged = async {
                match max_age {
                    Some(max_age) => tokio::time::sleep(max_age).await,
                    None => std::future::pending().await,
                }
            };
            let stopping = async {
                // An error means the sender is gone: the server is stopping too.
                let _ = stop.wait_for(|stop| *stop).await;
            };
            let ended = tokio::select! {
                // Errors (a malformed head, the header timeout, a reset) are the client's.
                _ = connection.as_mut() => true,
                () = aged => false,
                () = stopping => false,
            };
            if !ended {
                connection.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(CONNECTION_CLOSE_GRACE, connection).await;
            }
            drop(slot);
        });
    }
    // No new connections (connecting clients are refused rather than queued), then stop
    // every connection gracefully and wait (bounded) for their slots to come back.
    drop(listener);
    let _ = stop_tx.send(true);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(
        CONNECTION_CLOSE_GRACE + Duration::from_millis(100),
        slots.acquire_many(all),
    )
    .await;
}

/// Whether an accept error concerns only the connection being accepted (it was reset or
/// aborted before the accept, or the call was interrupted): then the next accept can
/// follow at once.
fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// Lets one log line through per interval and counts the ones held back.
struct RateLimitedLog {
    interval: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl RateLimitedLog {
    fn new(interval: Duration) -> Self {
        RateLimitedLog {
            interval,
            last: None,
            held_back: 0,
        }
    }

    /// `Some(lines held back since the last one)` if this line may be logged now.
    fn should_log(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|last| now - last < self.interval) {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}
