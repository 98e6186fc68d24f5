//! Registry feeds as gRPC event streams, with the `lagged` notice in place of dropped events.

use tokio_stream::StreamExt;

use super::convert;
use super::service::EventStream;
use crate::registry::events::EventType;
use crate::registry::feed::{FeedFilter, FeedItem};
use crate::registry::Registry;

/// A stream for one session (`Subscribe`) or for every session (`WatchEvents`).
pub fn event_stream(
    registry: &Registry,
    session: Option<String>,
    types: Option<std::collections::BTreeSet<EventType>>,
) -> EventStream {
    let notice_session = session.clone().unwrap_or_default();
    let feed = registry.open_feed(FeedFilter {
        session,
        types,
        after: None,
    });
    Box::pin(feed.map(move |item| {
        Ok(match item {
            FeedItem::Event(event) => convert::event(&event),
            FeedItem::Lagged(n) => convert::lagged(&notice_session, n),
        })
    }))
}
