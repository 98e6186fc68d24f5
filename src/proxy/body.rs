//! Body wrappers that count the bytes they carry into a member's statistics.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::live::MemberLive;

/// A request body (`Incoming`) whose data bytes are added to a member's `bytes_received` as
/// they pass, and which fails once more than its limit has passed (`max_body_size` for bodies
/// whose length was not announced).
#[derive(Debug)]
pub struct Counted {
    inner: Incoming,
    sink: Option<Arc<MemberLive>>,
    /// 0 = unlimited.
    limit: u64,
    seen: u64,
    exceeded: Arc<AtomicBool>,
}

/// The error of a body that went past its limit.
#[derive(Debug, thiserror::Error)]
#[error("request body too large")]
pub struct TooLarge;

impl Counted {
    /// Counts into `live`'s `bytes_received` and stops after `limit` bytes (0 = unlimited);
    /// `exceeded` is set when it did.
    pub fn new(
        inner: Incoming,
        live: Arc<MemberLive>,
        limit: u64,
        exceeded: Arc<AtomicBool>,
    ) -> Counted {
        Counted {
            inner,
            sink: Some(live),
            limit,
            seen: 0,
            exceeded,
        }
    }

    /// Passes bytes through without counting or limiting.
    pub fn uncounted(inner: Incoming) -> Counted {
        Counted {
            inner,
            sink: None,
            limit: 0,
            seen: 0,
            exceeded: Arc::default(),
        }
    }
}

impl Body for Counted {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                let len = data.len() as u64;
                self.seen += len;
                if let Some(live) = &self.sink {
                    live.stats.bytes_received.fetch_add(len, Ordering::Relaxed);
                }
                if self.limit > 0 && self.seen > self.limit {
                    self.exceeded.store(true, Ordering::Release);
                    return Poll::Ready(Some(Err(Box::new(TooLarge))));
                }
            }
        }
        polled.map(|frame| frame.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Counts the response bytes a client receives (after compression) into a member's
/// `bytes_sent`; `None` for the proxy's own pages.
#[derive(Debug)]
pub struct CountSent<B> {
    inner: B,
    live: Option<Arc<MemberLive>>,
}

impl<B> CountSent<B> {
    pub fn new(inner: B, live: Option<Arc<MemberLive>>) -> CountSent<B> {
        CountSent { inner, live }
    }
}

impl<B> Body for CountSent<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(live)) = (&polled, &self.live) {
            if let Some(data) = frame.data_ref() {
                live.stats
                    .bytes_sent
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
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
