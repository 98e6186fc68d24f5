//! A body wrapper that counts the bytes it carries into a member's statistics.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::live::MemberLive;

/// Which counter a body feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Request bodies read from clients.
    Received,
    /// Response bodies written to clients.
    Sent,
}

/// An `Incoming` body whose data bytes are added to a member's counter as they pass.
#[derive(Debug)]
pub struct Counted {
    inner: Incoming,
    sink: Option<(Arc<MemberLive>, Direction)>,
}

impl Counted {
    /// Counts into `live`'s counter for `direction`.
    pub fn new(inner: Incoming, live: Arc<MemberLive>, direction: Direction) -> Counted {
        Counted {
            inner,
            sink: Some((live, direction)),
        }
    }

    /// Passes bytes through without counting.
    pub fn uncounted(inner: Incoming) -> Counted {
        Counted { inner, sink: None }
    }

    fn counter(live: &MemberLive, direction: Direction) -> &AtomicU64 {
        match direction {
            Direction::Received => &live.stats.bytes_received,
            Direction::Sent => &live.stats.bytes_sent,
        }
    }
}

impl Body for Counted {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some((live, direction))) = (&polled, &self.sink) {
            if let Some(data) = frame.data_ref() {
                Counted::counter(live, *direction).fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
