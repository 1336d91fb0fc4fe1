//! Long-polls: `GET /v1/watch` (changes after a revision) and `GET /v1/ready` (c2's
//! `requires`). Both wait on the follower's revision channel, never on a runtime thread:
//! the registry's own waits block, so the handlers only look (under short locks) after
//! each change.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
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
pub async fn watch(
    State(app): State<Arc<App>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw.as_deref(), &["name", "from", "wait_ms"])?;
    let names = query.names(false)?;
    let from = query.u64("from")?;
    let wait = query.wait(DEFAULT_WATCH_WAIT, MAX_WAIT)?;
    let _slot = long_poll_slot(&app)?;
    let deadline = Instant::now() + wait;
    let mut revisions = app.revisions.clone();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut watch = app.registry.watch(&names, from)?;
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
        }
    }
}
