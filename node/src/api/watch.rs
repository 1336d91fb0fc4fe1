//! Long-polls: `GET /v1/watch` (changes after a revision; also as server-sent events)
//! and `GET /v1/ready` (c2's `requires`). Both wait on the follower's revision channel, never on a runtime thread:
//! the registry's own waits block, so the handlers only look (under short locks) after
//! each change.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use copycat::registry::{RegistryError, Revision, SubscribeOptions, Watch, WatchEvent};
use serde_json::{json, Value};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::error::ApiError;
use super::query::Query;
use super::App;

/// Longest `wait_ms` accepted (under the server's request timeout).
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// `wait_ms` of a watch that gives none.
pub const DEFAULT_WATCH_WAIT: Duration = Duration::from_secs(25);
/// `wait_ms` of a ready that gives none.
pub const DEFAULT_READY_WAIT: Duration = Duration::from_secs(10);
/// Most changes in one watch answer; the client resumes from its `revision` for more.
pub const MAX_CHANGES: usize = 1000;
/// How often a ready looks again without a registry change: a publication's owner can
/// come alive in gossip without any change to the map.
const READY_RECHECK: Duration = Duration::from_millis(100);

/// Resolves once the node begins to shut down.
async fn until_stopping(mut stopping: tokio::sync::watch::Receiver<bool>) {
    // An error means the sender is gone: the node is stopping too.
    let _ = stopping.wait_for(|stop| *stop).await;
}

/// The answer of a long-poll cut short by the node's shutdown.
fn shutting_down() -> ApiError {
    ApiError::Unavailable("the node is shutting down".to_string())
}

/// A slot of the long-poll limit, or a 503.
fn long_poll_slot(app: &App) -> Result<OwnedSemaphorePermit, ApiError> {
    app.long_polls.clone().try_acquire_owned().map_err(|_| {
        ApiError::Unavailable(format!(
            "{} long-polls are waiting already; retry later",
            super::MAX_LONG_POLLS
        ))
    })
}

/// Takes every change the watch has now, without waiting (at most [`MAX_CHANGES`] unless
/// `all`); `true` when the watch had more than that. Changes at or before `after` are
/// skipped: a watch resumed on a node whose replica is behind the revision it resumes
/// from (the client saw it on another node) starts from the replica's revision, so it
/// would otherwise hand out again what the client already has.
fn drain(
    watch: &mut Watch,
    all: bool,
    after: Option<Revision>,
    out: &mut Vec<WatchEvent>,
) -> Result<bool, ApiError> {
    loop {
        if !all && out.len() >= MAX_CHANGES {
            return Ok(true);
        }
        match watch.next_timeout(Duration::ZERO) {
            Ok(Some(event)) if after.is_some_and(|after| event.revision <= after) => {}
            Ok(Some(event)) => out.push(event),
            Ok(None) => return Ok(false),
            Err(RegistryError::Timeout) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
}

/// `GET /v1/watch?name=A&name=B&from=REV&wait_ms=W`: without `from`, at once the current
/// publications of those names (every name if none) as `added` changes; with `from`, the
/// changes after `REV` as soon as there is one, `204` after `W` ms without any, `410` if
/// `REV` left the history. The answer's `revision` is where to resume.
///
/// With `Accept: text/event-stream` the answer is a stream of server-sent events instead
/// (see [`watch_events`]).
pub async fn watch(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw.as_deref(), &["name", "from", "wait_ms"])?;
    let names = query.names(false)?;
    let from = query.u64("from")?;
    let wait = query.wait(DEFAULT_WATCH_WAIT, MAX_WAIT)?;
    if wants_events(&headers) {
        let from = match last_event_id(&headers)? {
            Some(last) => Some(last),
            None => from,
        };
        return watch_events(app, names, from).await;
    }
    let _slot = long_poll_slot(&app)?;
    let deadline = Instant::now() + wait;
    let mut revisions = app.revisions.clone();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut watch = app.registry.watch(&names, from)?;
    let stopping = app.stopping.clone();
    let mut events = Vec::new();
    loop {
        // Seen before looking, so a change after the look wakes the wait below.
        revisions.borrow_and_update();
        // Every change up to here is looked at by the drain below (unless it stops at
        // MAX_CHANGES), so resuming after it loses nothing.
        let looked_at = app.registry.revision();
        let more = drain(&mut watch, from.is_none(), from, &mut events)?;
        if !events.is_empty() || from.is_none() {
            let last = events.last().map_or(0, |e| e.revision);
            let revision = if more { last } else { last.max(looked_at) };
            let changes: Vec<Value> = events.iter().map(|e| app.vantage.change(e)).collect();
            return Ok(Json(json!({"revision": revision, "changes": changes})).into_response());
        }
        tokio::select! {
            changed = revisions.changed() => {
                if changed.is_err() {
                    return Err(ApiError::Unavailable("the registry stopped".to_string()));
                }
            }
            () = tokio::time::sleep_until(deadline) => return Ok(StatusCode::NO_CONTENT.into_response()),
            () = until_stopping(stopping.clone()) => return Err(shutting_down()),
        }
    }
}

/// `GET /v1/ready?name=A&name=B&wait_ms=W`: once every named service has a publication
/// visible from this node (as a bare-name resolve sees it), `200` with one entry per name
/// (`name`, `endpoint`, `host`, `port`, and the resolution); `504` after `W` ms.
pub async fn ready(
    State(app): State<Arc<App>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw.as_deref(), &["name", "wait_ms"])?;
    let names = query.names(true)?;
    let wait = query.wait(DEFAULT_READY_WAIT, MAX_WAIT)?;
    let _slot = long_poll_slot(&app)?;
    let deadline = Instant::now() + wait;
    let subscriptions = names
        .iter()
        .map(|n| app.registry.subscribe(SubscribeOptions::name(n)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut revisions = app.revisions.clone();
    let stopping = app.stopping.clone();
    loop {
        revisions.borrow_and_update();
        let mut ready = Vec::with_capacity(names.len());
        let mut missing = None;
        for (name, subscription) in names.iter().zip(&subscriptions) {
            match subscription.resolve() {
                Ok(publication) => ready.push(app.vantage.ready(name, &publication)),
                Err(RegistryError::NoPublication(_)) => {
                    missing = Some(name);
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let Some(missing) = missing else {
            return Ok(Json(Value::Array(ready)).into_response());
        };
        if Instant::now() >= deadline {
            return Err(ApiError::Timeout(format!(
                "{missing} has no visible publication after {} ms",
                wait.as_millis()
            )));
        }
        let recheck = (Instant::now() + READY_RECHECK).min(deadline);
        tokio::select! {
            changed = revisions.changed() => {
                if changed.is_err() {
                    // The follower stopped (shutdown): keep to the recheck pace.
                    tokio::time::sleep_until(recheck).await;
                }
            }
            () = tokio::time::sleep_until(recheck) => {}
            () = until_stopping(stopping.clone()) => return Err(shutting_down()),
        }
    }
}

/// What the server-sent-events stream of a watch carries from one event to the next.
struct EventStream {
    app: Arc<App>,
    watch: Watch,
    after: Option<Revision>,
    revisions: tokio::sync::watch::Receiver<Revision>,
    pending: std::collections::VecDeque<WatchEvent>,
    /// Held while the stream lives: it counts as a long-poll.
    _slot: OwnedSemaphorePermit,
}

impl EventStream {
    /// The next change as an event, waiting for one; `None` once the registry stopped.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                let data = self.app.vantage.change(&event);
                let kind = data["kind"].as_str().unwrap_or("changed").to_string();
                return Some(
                    Event::default()
                        .event(kind)
                        .id(event.revision.to_string())
                        .data(data.to_string()),
                );
            }
            self.revisions.borrow_and_update();
            let mut found = Vec::new();
            match drain(&mut self.watch, true, self.after, &mut found) {
                Ok(_) => {}
                Err(e) => {
                    let body = json!({"error": e.kind(), "message": e.to_string()});
                    // The stream ends after this event; the client reconnects.
                    self.after = None;
                    self.revisions = closed_revisions();
                    return Some(Event::default().event("error").data(body.to_string()));
                }
            }
            self.pending.extend(found);
            if self.pending.is_empty() {
                let stopping = self.app.stopping.clone();
                tokio::select! {
                    changed = self.revisions.changed() => changed.ok()?,
                    () = until_stopping(stopping.clone()) => return None,
                }
            }
        }
    }
}

/// A revision receiver whose sender is gone: `changed()` fails at once.
fn closed_revisions() -> tokio::sync::watch::Receiver<Revision> {
    tokio::sync::watch::channel(0).1
}

/// `GET /v1/watch` with `Accept: text/event-stream`: the same changes as server-sent
/// events (`event:` the kind, `id:` the revision, `data:` the change as JSON), without end;
/// a client that reconnects with `Last-Event-ID` (or `from`) resumes after that revision.
async fn watch_events(
    app: Arc<App>,
    names: Vec<String>,
    from: Option<Revision>,
) -> Result<Response, ApiError> {
    let slot = long_poll_slot(&app)?;
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let watch = app.registry.watch(&names, from)?;
    let state = EventStream {
        revisions: app.revisions.clone(),
        app,
        watch,
        after: from,
        pending: Default::default(),
        _slot: slot,
    };
    let events = futures_util::stream::unfold(state, |mut state| async move {
        let event = state.next().await?;
        Some((Ok::<Event, std::convert::Infallible>(event), state))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Whether the client asks for server-sent events.
fn wants_events(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

/// The revision a reconnecting event-stream client last saw (`Last-Event-ID`).
fn last_event_id(headers: &HeaderMap) -> Result<Option<Revision>, ApiError> {
    headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<Revision>().ok())
                .ok_or_else(|| ApiError::invalid("Last-Event-ID", "not a revision"))
        })
        .transpose()
}
