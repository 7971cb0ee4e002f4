//! `GET /v1/events`: Server-Sent Events of state changes (`lineup_core::events`).
//! Each event's SSE id is its index; a client that reconnects with `Last-Event-ID`
//! (or `?index=`) gets every event after it from the bounded history, or first an
//! event of type `lost` when the history no longer reaches back that far. Without
//! either, the stream starts with the next change.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::stream::{self, Stream};
use lineup_core::events::{Event, EventLog, Topic};
use lineup_core::*;
use serde::Deserialize;
use serde_json::json;

use crate::error::ApiError;
use crate::extract::{Auth, QueryParams};

/// Events sent per read of the history; the stream reads again at once after a full one.
const BATCH: usize = 500;

pub fn routes() -> Router<Lineup> {
    Router::new().route("/v1/events", get(events))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    pool: Option<String>,
    /// Comma-separated: eval, alloc, worker, pool. All when absent.
    types: Option<String>,
    /// Resume after this index (as `Last-Event-ID`, for clients that cannot set it).
    index: Option<u64>,
}

struct Filter {
    pool: Option<PoolId>,
    topics: Vec<Topic>,
}

impl Filter {
    fn keep(&self, e: &Event) -> bool {
        self.pool.as_ref().is_none_or(|p| *p == e.pool_id) && (self.topics.is_empty() || self.topics.contains(&e.topic))
    }
}

async fn events(
    State(l): State<Lineup>,
    Auth(who): Auth,
    headers: HeaderMap,
    QueryParams(q): QueryParams<EventsQuery>,
) -> Result<Response, ApiError> {
    if !matches!(who, Principal::Admin) {
        return Err(Error::Forbidden("this route needs the admin token".into()).into());
    }
    let Some(log) = l.events().cloned() else {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "not_supported",
            "the event stream is served by `lineup dev`, where one process makes every change",
        ));
    };
    let pool = q.pool.as_deref().map(PoolId::parse).transpose()?;
    let topics = match q.types.as_deref() {
        None | Some("") => Vec::new(),
        Some(t) => t.split(',').map(|s| Topic::parse(s.trim())).collect::<Result<Vec<_>>>()?,
    };
    let last = match headers.get("last-event-id") {
        Some(v) => Some(v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()).ok_or_else(|| {
            ApiError::bad_request("invalid_last_event_id", "Last-Event-ID must be an event index (an integer)")
        })?),
        None => q.index,
    };
    let after = last.unwrap_or_else(|| log.newest());
    let stream = event_stream(log, Filter { pool, topics }, after);
    Ok(axum::response::sse::Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

fn render(e: &Event) -> Sse {
    Sse::default().id(e.index.to_string()).event(e.topic.as_str()).data(serde_json::to_string(e).unwrap_or_default())
}

/// Events after `after` that `filter` keeps, as they come, until the log closes.
fn event_stream(log: Arc<EventLog>, filter: Filter, after: u64) -> impl Stream<Item = Result<Sse, Infallible>> {
    let rx = log.subscribe();
    let state = (log, rx, filter, after, VecDeque::<Sse>::new());
    stream::unfold(state, |(log, mut rx, filter, mut after, mut out)| async move {
        loop {
            if let Some(next) = out.pop_front() {
                return Some((Ok(next), (log, rx, filter, after, out)));
            }
            if log.is_closed() {
                return None;
            }
            rx.borrow_and_update();
            let got = log.since(after, BATCH, |e| filter.keep(e));
            if got.lost {
                // Where the history now starts: the client's next Last-Event-ID.
                let from = got.events.first().map_or(got.upto, |e| e.index.saturating_sub(1));
                let data = json!({
                    "after": after,
                    "resumed_from": from,
                    "message": "events were lost: the history does not reach back that far",
                });
                out.push_back(Sse::default().id(from.to_string()).event("lost").data(data.to_string()));
            }
            after = got.upto;
            out.extend(got.events.iter().map(render));
            if out.is_empty() && rx.changed().await.is_err() {
                return None;
            }
        }
    })
}
