//! Body wrappers that count the bytes they carry into a member's statistics.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::live::MemberLive;

/// A request body (`Incoming`) whose data bytes are added to a member's `bytes_received` as
/// they pass.
#[derive(Debug)]
pub struct Counted {
    inner: Incoming,
    sink: Option<Arc<MemberLive>>,
}

impl Counted {
    /// Counts into `live`'s `bytes_received`.
    pub fn new(inner: Incoming, live: Arc<MemberLive>) -> Counted {
        Counted {
            inner,
            sink: Some(live),
        }
    }

    /// Passes bytes through without counting.
    pub fn uncounted(inner: Incoming) -> Counted {
        Counted { inner, sink: None }
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
        if let (Poll::Ready(Some(Ok(frame))), Some(live)) = (&polled, &self.sink) {
            if let Some(data) = frame.data_ref() {
                live.stats
                    .bytes_received
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
