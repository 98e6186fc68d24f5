//! Server-Sent Events: a session's subscription stream and the operators' stream, with
//! `Last-Event-ID` replay from the bus's retained window and the `lagged` notice (API.md).

use std::convert::Infallible;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use tokio_stream::StreamExt;

use super::dto::EventsQuery;
use super::error::ApiError;
use crate::registry::events::{Event, EventType};
use crate::registry::feed::{FeedFilter, FeedItem};
use crate::registry::model::split_list;
use crate::registry::{Caller, Registry};

/// The SSE `data:` of an event: the pipe payload with `type` right after `seq`.
pub fn sse_data(event: &Event) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in event.payload() {
        let after_seq = k == "seq";
        out.insert(k, v);
        if after_seq {
            out.insert("type".into(), event.kind.as_str().into());
        }
    }
    out
}

fn render(item: FeedItem) -> SseEvent {
    match item {
        FeedItem::Event(event) => SseEvent::default()
            .event(event.kind.as_str())
            .id(event.seq.to_string())
            .data(Value::Object(sse_data(&event)).to_string()),
        FeedItem::Lagged(n) => SseEvent::default()
            .event("lagged")
            .data(serde_json::json!({ "dropped": n }).to_string()),
    }
}

fn last_event_id(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

fn stream(registry: &Registry, filter: FeedFilter) -> Response {
    let feed = registry.open_feed(filter);
    let events = feed.map(|item| Ok::<_, Infallible>(render(item)));
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// `GET /v2/sessions/{session_id}/events?types=…`: subscribes like `SUBSCRIBE`, then streams.
pub async fn subscribe(
    State(registry): State<Registry>,
    Path(sid): Path<String>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let items = split_list(q.types.as_deref().unwrap_or(""));
    registry.subscribe(Caller::Front, &sid, &items)?;
    let types = EventType::parse_list(&items)?.into_iter().collect();
    Ok(stream(
        &registry,
        FeedFilter {
            session: Some(sid),
            types: Some(types),
            after: last_event_id(&headers),
        },
    ))
}

/// `GET /v2/admin/events?types=…`: every session's events (all types when none is named).
pub async fn admin(
    State(registry): State<Registry>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let items = split_list(q.types.as_deref().unwrap_or(""));
    let types = if items.is_empty() {
        None
    } else {
        Some(EventType::parse_list(&items)?.into_iter().collect())
    };
    Ok(stream(
        &registry,
        FeedFilter {
            session: None,
            types,
            after: last_event_id(&headers),
        },
    ))
}
