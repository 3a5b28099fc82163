//! The request body sent upstream: the downstream body streamed as it arrives, or (when a
//! retry policy applies) a body buffered for replay. See [`crate::resilience`] for when bodies
//! are buffered. [`collect`] reads a body into a [`Replay`], for request bodies kept for a retry
//! and for small response bodies read whole while a retry is still possible.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

/// A request body on its way upstream.
#[derive(Debug)]
pub(crate) enum ReqBody {
    /// The downstream body, streamed.
    Stream(Incoming),
    /// A fully buffered body (and its trailers), replayable with [`Replay::clone`].
    Replay(Replay),
    /// A body too large to buffer: what was read already, then the rest of the stream.
    Prefixed {
        prefix: Option<Bytes>,
        rest: Incoming,
    },
}

impl From<Incoming> for ReqBody {
    fn from(b: Incoming) -> Self {
        ReqBody::Stream(b)
    }
}

/// A buffered body: data and trailers, sent as at most two frames.
#[derive(Debug, Clone, Default)]
pub(crate) struct Replay {
    pub data: Bytes,
    pub trailers: Option<HeaderMap>,
    sent_data: bool,
    sent_trailers: bool,
}

impl Replay {
    pub fn new(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Replay {
            data,
            trailers,
            sent_data: false,
            sent_trailers: false,
        }
    }

    /// The same body, from the start.
    pub fn fresh(&self) -> Self {
        Replay::new(self.data.clone(), self.trailers.clone())
    }

    pub fn done(&self) -> bool {
        (self.sent_data || self.data.is_empty()) && (self.sent_trailers || self.trailers.is_none())
    }

    /// The data not sent yet, in bytes.
    pub fn remaining(&self) -> u64 {
        if self.sent_data {
            0
        } else {
            self.data.len() as u64
        }
    }

    /// The next frame to send: the data, then the trailers, then nothing.
    pub fn next_frame(&mut self) -> Option<Frame<Bytes>> {
        if !self.sent_data && !self.data.is_empty() {
            self.sent_data = true;
            return Some(Frame::data(self.data.clone()));
        }
        if !self.sent_trailers
            && let Some(t) = self.trailers.clone()
        {
            self.sent_trailers = true;
            return Some(Frame::trailers(t));
        }
        None
    }
}

/// Reads `body` to its end into a [`Replay`] (data and trailers), or, once more than `limit`
/// bytes came, stops and gives back what was read (`Err`): the rest stays in `body`. A body of
/// one data frame is kept as it came, without a copy.
pub(crate) async fn collect<B>(
    body: &mut B,
    limit: usize,
) -> Result<Result<Replay, Bytes>, B::Error>
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut first: Option<Bytes> = None;
    let mut more: Option<BytesMut> = None;
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        match frame?.into_data() {
            Ok(chunk) => {
                let len = match (&first, &mut more) {
                    (None, _) => {
                        let len = chunk.len();
                        first = Some(chunk);
                        len
                    }
                    (Some(f), None) => {
                        let mut m = BytesMut::with_capacity(f.len() + chunk.len());
                        m.extend_from_slice(f);
                        m.extend_from_slice(&chunk);
                        let len = m.len();
                        more = Some(m);
                        len
                    }
                    (Some(_), Some(m)) => {
                        m.extend_from_slice(&chunk);
                        m.len()
                    }
                };
                if len > limit {
                    return Ok(Err(match more {
                        Some(m) => m.freeze(),
                        None => first.unwrap_or_default(),
                    }));
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
            }
        }
    }
    let data = match more {
        Some(m) => m.freeze(),
        None => first.unwrap_or_default(),
    };
    Ok(Ok(Replay::new(data, trailers)))
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut *self {
            ReqBody::Stream(b) => Pin::new(b).poll_frame(cx),
            ReqBody::Replay(r) => Poll::Ready(r.next_frame().map(Ok)),
            ReqBody::Prefixed { prefix, rest } => {
                if let Some(p) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(p))));
                }
                Pin::new(rest).poll_frame(cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Stream(b) => b.is_end_stream(),
            ReqBody::Replay(r) => r.done(),
            ReqBody::Prefixed { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Stream(b) => b.size_hint(),
            ReqBody::Replay(r) => SizeHint::with_exact(r.remaining()),
            ReqBody::Prefixed { prefix, rest } => {
                let p = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let h = rest.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(h.lower().saturating_add(p));
                if let Some(u) = h.upper() {
                    out.set_upper(u.saturating_add(p));
                }
                out
            }
        }
    }
}

#[cfg(test)]
mod tests;
