//! HTTP requests in the access log: [`Pending`] is started by the listener before the
//! handler runs (when the log is on), and [`Logged`], the response body, counts the bytes
//! sent and emits the record once the body is done or dropped.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, Version};
use http_body::{Body, Frame, SizeHint};

use super::{AccessLog, Record, UpstreamSlot};
use crate::http::{ProxyBody, REASON};
use crate::metrics::Direction;
use crate::server::ConnInfo;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// A request being served, whose record is completed by its response.
#[derive(Debug)]
pub(crate) struct Pending {
    record: Record,
    begun: Instant,
    slot: Arc<UpstreamSlot>,
    log: Arc<AccessLog>,
}

/// The protocol name Envoy logs for `v`.
pub(crate) fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

impl Pending {
    /// Copies what the log needs from `req`'s head and gives it the slot where the handler
    /// notes its upstream (`super::note`).
    pub fn start<B>(
        req: &mut Request<B>,
        conn: &ConnInfo,
        direction: Direction,
        log: &Arc<AccessLog>,
    ) -> Self {
        let mut r = Record::new(direction, protocol(req.version()), conn.peer);
        let h = req.headers();
        r.method = Some(req.method().clone());
        r.path = req.uri().path_and_query().cloned();
        r.authority = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .or_else(|| h.get(header::HOST).cloned());
        r.bytes_received = h
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        r.request_id = h.get(REQUEST_ID).cloned();
        r.traceparent = h.get(TRACEPARENT).cloned();
        r.user_agent = h.get(header::USER_AGENT).cloned();
        r.peer_id = conn.peer_id.clone();
        let slot = Arc::new(UpstreamSlot::default());
        req.extensions_mut().insert(slot.clone());
        Pending {
            record: r,
            begun: Instant::now(),
            slot,
            log: log.clone(),
        }
    }

    /// The response, its body wrapped to finish the record.
    pub fn respond(mut self, resp: Response<ProxyBody>) -> Response<Logged> {
        let r = &mut self.record;
        r.status = Some(resp.status().as_u16());
        r.reason = resp.headers().get(REASON).cloned();
        if r.reason.is_none() {
            r.upstream_service_time = Some(self.begun.elapsed());
        }
        r.grpc_status = resp.headers().get(GRPC_STATUS).cloned();
        r.upstream = self.slot.take();
        resp.map(|inner| Logged {
            inner,
            sent: 0,
            pending: Some(Box::new(self)),
        })
    }
}

/// A response body that counts the bytes sent and logs the request when it is dropped
/// (after its end, or when the downstream went away).
#[derive(Debug)]
pub(crate) struct Logged {
    inner: ProxyBody,
    sent: u64,
    pending: Option<Box<Pending>>,
}

impl Body for Logged {
    type Data = Bytes;
    type Error = <ProxyBody as Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.sent += data.len() as u64;
            } else if let Some(trailers) = frame.trailers_ref()
                && let Some(status) = trailers.get(GRPC_STATUS)
                && let Some(p) = self.pending.as_mut()
            {
                p.record.grpc_status = Some(status.clone());
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

impl Drop for Logged {
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            let Pending {
                mut record,
                begun,
                log,
                ..
            } = *p;
            record.duration = begun.elapsed();
            record.bytes_sent = self.sent;
            log.log(record);
        }
    }
}
