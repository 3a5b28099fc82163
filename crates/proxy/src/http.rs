//! HTTP plumbing shared by the listeners: the response body type, pooled upstream clients
//! (HTTP/1.1: [`crate::pool`]; HTTP/2: hyper-util's client, whose connections are shared by
//! streams anyway), hop-by-hop header handling and the proxy's own error responses.

use std::sync::Arc;
use std::time::Duration;

use crate::body::ReqBody;
use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::Either as FutEither;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::future::Future;

use crate::mtls::connect::{MtlsError, MtlsPools};
use crate::pool::{EndpointPool, H1Pools, PoolError, UpstreamBody};

/// Every response the proxy sends: a streamed upstream body, or a small body of its own.
pub(crate) type ProxyBody = Either<UpstreamBody, Full<Bytes>>;

/// Header naming why the proxy answered itself.
pub(crate) const REASON: HeaderName = HeaderName::from_static("x-trellis-reason");

/// A pooled HTTP/2 client (one connection per endpoint address, kept for the process lifetime).
pub(crate) type HttpClient = Client<HttpConnector, ReqBody>;

/// The HTTP/1.1 pools, the HTTP/2 (h2c prior knowledge) client and the mTLS endpoints for one
/// connect timeout.
#[derive(Debug, Clone)]
pub(crate) struct HttpClients {
    pub idle_timeout: Duration,
    pub h1: Arc<H1Pools>,
    pub h2: HttpClient,
    pub mtls: Arc<MtlsPools>,
}

impl HttpClients {
    /// Clients whose idle connections are closed after `idle_timeout`.
    pub fn with_idle(connect_timeout: Duration, idle_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let h2 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(idle_timeout)
            .http2_only(true)
            .http2_adaptive_window(true)
            .build(connector);
        HttpClients {
            idle_timeout,
            h1: Arc::new(H1Pools::new(connect_timeout, idle_timeout)),
            h2,
            mtls: Arc::new(MtlsPools::new(connect_timeout, idle_timeout)),
        }
    }
}

/// Why forwarding to an upstream failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("cannot forward this request URI: {0}")]
    Uri(#[from] http::Error),
    #[error(transparent)]
    H1(#[from] PoolError),
    #[error(transparent)]
    H2(#[from] hyper_util::client::legacy::Error),
    #[error(transparent)]
    Mtls(#[from] MtlsError),
    /// The response head came, but its body failed before its end (read whole for a retry,
    /// see [`UpstreamBody::read_whole`]).
    #[error("the response body broke off: {0}")]
    Body(#[source] crate::pool::BodyError),
}

impl UpstreamError {
    /// No connection could be made (nothing was sent).
    pub fn is_connect(&self) -> bool {
        match self {
            UpstreamError::Uri(_) => false,
            UpstreamError::H1(e) => e.is_connect(),
            UpstreamError::H2(e) => e.is_connect(),
            UpstreamError::Mtls(e) => e.is_connect(),
            UpstreamError::Body(_) => false,
        }
    }

    /// A circuit breaker refused to let the request wait for a connection.
    pub fn is_overflow(&self) -> bool {
        matches!(
            self,
            UpstreamError::H1(PoolError::PendingOverflow { .. })
                | UpstreamError::Mtls(MtlsError::PendingOverflow { .. })
                | UpstreamError::Mtls(MtlsError::H1(PoolError::PendingOverflow { .. }))
        )
    }

    /// The mTLS handshake with the upstream failed (e.g. an unexpected server identity).
    pub fn is_tls(&self) -> bool {
        match self {
            UpstreamError::Mtls(e) => e.is_tls(),
            UpstreamError::H1(e) => matches!(e, PoolError::Tls { .. }),
            _ => false,
        }
    }
}

/// One upstream endpoint: its HTTP/1.1 pool, and its address for the HTTP/2 client.
pub(crate) struct Target<'a> {
    pub pool: &'a Arc<EndpointPool>,
    pub authority: &'a Authority,
    pub h2: &'a HttpClient,
    /// The cluster's circuit breakers: HTTP/1.1 connections then count against
    /// `maxConnections` and `maxPendingRequests`.
    pub breaker: Option<&'a Arc<crate::resilience::Breaker>>,
}

/// Forwards `req` (hop-by-hop headers already stripped): HTTP/2 requests over the h2 client with
/// an absolute URI naming the endpoint, others over the endpoint's HTTP/1.1 pool in origin form.
/// `now` is the request's start (a coarse clock for the pool's idle expiry).
///
/// The preparation runs before this returns; the future only waits for the upstream.
pub(crate) fn send<B: Into<ReqBody>>(
    req: Request<B>,
    to: Target<'_>,
    now: std::time::Instant,
) -> impl Future<Output = Result<Response<UpstreamBody>, UpstreamError>> + Send + 'static + use<B> {
    let mut req = req.map(Into::into);
    if req.version() == Version::HTTP_2 {
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(to.authority.clone());
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        let h2 = match Uri::from_parts(parts) {
            Ok(uri) => {
                *req.uri_mut() = uri;
                FutEither::Left(to.h2.request(req).map(|r| match r {
                    Ok(resp) => Ok(resp.map(UpstreamBody::plain)),
                    Err(e) => Err(UpstreamError::H2(e)),
                }))
            }
            Err(e) => FutEither::Right(std::future::ready(Err(UpstreamError::Uri(e.into())))),
        };
        return FutEither::Left(h2);
    }
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        // Absolute form (as sent to an HTTP proxy): the origin server gets the path only.
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(pq);
    }
    FutEither::Right(
        to.pool
            .send(req, now, to.breaker)
            .map(|r| r.map_err(UpstreamError::H1)),
    )
}

/// A response generated by the proxy itself, with `x-trellis-reason`.
pub(crate) fn local_reply(
    status: StatusCode,
    reason: &'static str,
    body: impl Into<Bytes>,
) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(body.into())));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(REASON, HeaderValue::from_static(reason));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// True for gRPC requests (`content-type: application/grpc`, `application/grpc+proto`, ...).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// A response the proxy makes itself to a gRPC caller: trailers-only (HTTP 200, `grpc-status`
/// `code`, `grpc-message`), with `x-trellis-reason`.
pub(crate) fn grpc_reply(code: u16, reason: &'static str, message: &str) -> Response<ProxyBody> {
    let mut resp = local_reply(StatusCode::OK, reason, Bytes::new());
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(GRPC_STATUS, HeaderValue::from(code));
    if let Ok(v) = HeaderValue::from_str(&grpc_message(message.trim_end())) {
        h.insert(GRPC_MESSAGE, v);
    }
    resp
}

/// Percent-encodes a `grpc-message` as the gRPC HTTP/2 spec says: bytes outside printable
/// ASCII, and `%`, as `%XX`.
pub(crate) fn grpc_message(text: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

/// Sets `Host` from the URI's authority (an absolute-form request) when the request has none.
pub(crate) fn host_from_authority<B>(req: &mut Request<B>) {
    // The authority first: an origin-form request (the usual HTTP/1.1 one) has none, and
    // then the header map is not searched.
    if let Some(a) = req.uri().authority()
        && !req.headers().contains_key(header::HOST)
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        req.headers_mut().insert(header::HOST, v);
    }
}

/// An upstream response as it goes downstream: its hop-by-hop fields gone (a head this proxy's
/// HTTP/1.1 pool parsed carries none, so it is not scanned again) and the downstream's version.
pub(crate) fn downstream_response(
    resp: Response<UpstreamBody>,
    version: Version,
) -> Response<ProxyBody> {
    let (mut head, body) = resp.into_parts();
    if body.may_carry_hop_by_hop() {
        strip_hop_by_hop(&mut head.headers);
    }
    head.version = version;
    Response::from_parts(head, Either::Left(body))
}

/// Whether a field describes one connection only (RFC 9110, section 7.6.1) and so is never
/// passed on: `Connection`, `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`, `Upgrade`,
/// and `TE` unless it is exactly `trailers` (which gRPC needs end to end). The names a
/// `Connection` field lists go too; that takes the whole message ([`strip_hop_by_hop`]).
/// The HTTP/1.1 pool's parser ([`crate::pool`]) asks this of each field it reads.
pub(crate) fn is_hop_by_hop(name: &HeaderName, value: &[u8]) -> bool {
    // Standard names compare as integers; the two that are not standard, as strings.
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || (name == header::TE && value != b"trailers")
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// Removes the hop-by-hop fields ([`is_hop_by_hop`]) and the names `Connection` lists.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the few fields a message has collects the ones to remove; most carry
    // none, and then nothing is allocated or looked up by hashing a name that is absent.
    let mut gone: Vec<HeaderName> = Vec::new();
    let mut connection = false;
    for (name, value) in headers.iter() {
        if is_hop_by_hop(name, value.as_bytes()) {
            connection |= name == header::CONNECTION;
            gone.push(name.clone());
        }
    }
    if connection {
        // The names every Connection value lists, when present: found among the message's
        // names, not looked up by hashing each token.
        for value in headers.get_all(header::CONNECTION) {
            for token in value.to_str().unwrap_or("").split(',') {
                let token = token.trim();
                if token.is_empty() || token.eq_ignore_ascii_case("trailers") {
                    continue;
                }
                if let Some(name) = headers
                    .keys()
                    .find(|k| k.as_str().eq_ignore_ascii_case(token))
                {
                    gone.push(name.clone());
                }
            }
        }
    }
    for name in gone {
        // A name met twice (two values) was removed, both values, the first time.
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-custom"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-custom", HeaderValue::from_static("1"));
        h.insert("proxy-connection", HeaderValue::from_static("close"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.insert("x-keep", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h.get("x-keep").map(|v| v.as_bytes()), Some(&b"yes"[..]));
    }

    #[test]
    fn every_connection_value_names_headers_to_strip_in_any_case() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("X-Second, trailers"),
        );
        h.insert("x-second", HeaderValue::from_static("1"));
        h.insert("x-keep", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-keep"], "{h:?}");

        // A Connection that names nothing present, and no other hop-by-hop header.
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("13"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::CONTENT_LENGTH));
    }

    #[test]
    fn te_goes_when_any_of_its_values_is_more_than_trailers() {
        let mut h = HeaderMap::new();
        h.append(header::TE, HeaderValue::from_static("trailers"));
        h.append(header::TE, HeaderValue::from_static("gzip"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        strip_hop_by_hop(&mut h);
        assert!(!h.contains_key(header::TE), "{h:?}");
        assert!(h.contains_key(header::CONTENT_LENGTH));
    }

    #[test]
    fn keeps_te_trailers() {
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h);
        assert_eq!(
            h.get(header::TE).map(|v| v.as_bytes()),
            Some(&b"trailers"[..])
        );
    }
}
