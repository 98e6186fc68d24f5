//! Event feeds for streams (gRPC `Subscribe`/`WatchEvents`, SSE): a bus receiver filtered to
//! what one session (or an operator) should see, with replay and lag reporting (API.md).

use std::collections::{BTreeSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;

use super::events::{Event, EventType};
use super::Registry;

/// How many items a feed buffers for a slow reader before it drops events.
const FEED_BUFFER: usize = 256;

/// One item of a feed.
#[derive(Debug, Clone)]
pub enum FeedItem {
    Event(Arc<Event>),
    /// `n` events were dropped for this reader (the `lagged` notice).
    Lagged(u64),
}

/// A live feed; dropping it closes the stream it serves.
pub struct Feed {
    rx: mpsc::Receiver<FeedItem>,
    _guard: StreamGuard,
}

/// Keeps a session connected while its stream is open (§2.5).
struct StreamGuard {
    registry: Registry,
    session: Option<String>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Some(id) = &self.session {
            self.registry.stream_closed(id);
        }
    }
}

impl Stream for Feed {
    type Item = FeedItem;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<FeedItem>> {
        self.rx.poll_recv(cx)
    }
}

/// Whom a feed serves.
#[derive(Debug, Clone)]
pub struct FeedFilter {
    /// A session's stream, or every session's (operators).
    pub session: Option<String>,
    /// Only these types (`None`: all, or the session's subscriptions).
    pub types: Option<BTreeSet<EventType>>,
    /// Replay retained events after this sequence number first.
    pub after: Option<u64>,
}

impl Registry {
    /// Opens a feed. The bus receiver exists before this returns, so an event caused after the
    /// caller sends its response headers is never missed.
    pub fn open_feed(&self, filter: FeedFilter) -> Feed {
        let mut live = self.bus().subscribe();
        let replay = filter
            .after
            .map(|seq| self.bus().replay_after(seq))
            .unwrap_or_default();
        if let Some(id) = &filter.session {
            self.stream_opened(id);
        }
        let (tx, rx) = mpsc::channel(FEED_BUFFER);
        let registry = self.clone();
        let stop = self.inner.stopping.clone();
        let session = filter.session.clone();
        let guard_session = filter.session.clone();
        tokio::spawn(async move {
            // Highest sequence number looked at, of any session.
            let mut last = 0u64;
            // Events dropped for this reader and not yet announced by a `lagged` notice.
            let mut unreported = 0u64;
            // Retained events to go through first (replay, or catching up after the task
            // itself fell behind the bus); the reader asked for these, so they wait for room.
            let mut backlog: VecDeque<Arc<Event>> = replay.into();
            loop {
                let (event, from_backlog) = match backlog.pop_front() {
                    Some(event) => (event, true),
                    None => {
                        let received = tokio::select! {
                            biased;
                            _ = stop.wait() => return,
                            _ = tx.closed() => return,
                            permit = tx.reserve(), if unreported > 0 => {
                                let Ok(permit) = permit else { return };
                                permit.send(FeedItem::Lagged(unreported));
                                unreported = 0;
                                continue;
                            }
                            received = live.recv() => received,
                        };
                        match received {
                            Ok(event) => (event, false),
                            Err(broadcast::error::RecvError::Lagged(_)) => {
                                backlog.extend(registry.bus().replay_after(last));
                                continue;
                            }
                            Err(broadcast::error::RecvError::Closed) => return,
                        }
                    }
                };
                if event.seq <= last {
                    continue;
                }
                last = event.seq;
                match registry.feed_wants(&filter, &event) {
                    None => return,
                    Some(false) => continue,
                    Some(true) => {}
                }
                if from_backlog {
                    if tx.send(FeedItem::Event(event)).await.is_err() {
                        return;
                    }
                    continue;
                }
                if unreported > 0 {
                    // The notice goes out in place of the missed events, before newer ones.
                    registry.count_stream_drops(session.as_deref(), 1);
                    unreported += 1;
                    continue;
                }
                match tx.try_send(FeedItem::Event(event)) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        registry.count_stream_drops(session.as_deref(), 1);
                        unreported += 1;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
        });
        Feed {
            rx,
            _guard: StreamGuard {
                registry: self.clone(),
                session: guard_session,
            },
        }
    }

    /// Whether a feed carries `event`; `None` when its session has ended.
    fn feed_wants(&self, filter: &FeedFilter, event: &Event) -> Option<bool> {
        if filter
            .types
            .as_ref()
            .is_some_and(|t| !t.contains(&event.kind))
        {
            return Some(false);
        }
        let Some(id) = &filter.session else {
            return Some(true);
        };
        let st = self.lock();
        let session = st.sessions.get(id)?;
        Some(
            session.subscriptions.contains(&event.kind)
                && event.reaches(&session.id, &session.service),
        )
    }

    fn count_stream_drops(&self, session: Option<&str>, n: u64) {
        if let Some(id) = session {
            self.count_dropped(id, n);
        }
    }
}
