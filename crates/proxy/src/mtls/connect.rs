//! Outbound mTLS to one endpoint: TLS 1.3 with this sidecar's certificate, the server's
//! SPIFFE ID checked against the cluster's expected IDs, SNI = the destination service, ALPN
//! `h2` then `http/1.1`. One HTTP/2 connection per endpoint carries every request (so new
//! handshakes are rare); it is replaced when it closes. A peer that answers `http/1.1` gets an
//! HTTP/1.1 keep-alive pool over TLS instead ([`EndpointPool::with_tls`]).
//!
//! Endpoints are shared process-wide by (address, SNI, expected IDs) like the plaintext pools,
//! so a config update that keeps an endpoint keeps its connection.

use std::collections::HashMap;
use std::future::{Future, ready};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::body::ReqBody;
use arc_swap::ArcSwapOption;
use futures_util::FutureExt;
use futures_util::future::Either;
use http::header;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{HANDSHAKE_TIMEOUT, Tls, handshake_failure_reason, mark_upgrade, restore_orig_proto};
use crate::identity::{ALPN_H2, ALPN_HTTP11, ExpectedIds, client_config};
use crate::idle::{Activity, Metered};
use crate::metrics::Direction;
use crate::pool::{EndpointPool, PoolError, PoolTls, UpstreamBody};
use crate::resilience::Breaker;
use crate::security::TlsPolicy;

type Key = (SocketAddr, String, Vec<String>);

/// The process-wide mTLS endpoints for one connect timeout and idle timeout.
#[derive(Debug)]
pub(crate) struct MtlsPools {
    connect_timeout: Duration,
    idle_timeout: Duration,
    by_key: Mutex<HashMap<Key, Weak<MtlsEndpoint>>>,
}

impl MtlsPools {
    pub fn new(connect_timeout: Duration, idle_timeout: Duration) -> Self {
        MtlsPools {
            connect_timeout,
            idle_timeout,
            by_key: Mutex::new(HashMap::new()),
        }
    }

    /// The mTLS endpoint for `addr` under `policy` (config time only).
    pub fn endpoint(&self, addr: SocketAddr, policy: &TlsPolicy) -> Arc<MtlsEndpoint> {
        let key = (addr, policy.sni.clone(), policy.expected_ids.clone());
        let mut map = self
            .by_key
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(e) = map.get(&key).and_then(Weak::upgrade) {
            return e;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let sni = ServerName::try_from(policy.sni.clone())
            .unwrap_or_else(|_| ServerName::IpAddress(addr.ip().into()));
        let e = Arc::new(MtlsEndpoint {
            addr,
            connect_timeout: self.connect_timeout,
            idle_timeout: self.idle_timeout,
            sni,
            expected: ExpectedIds::new(policy.expected_ids.iter().cloned()),
            config: OnceLock::new(),
            h2: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            h1: OnceLock::new(),
            alert: AlertSlot::default(),
        });
        map.insert(key, Arc::downgrade(&e));
        e
    }
}

/// mTLS connections to one endpoint.
pub(crate) struct MtlsEndpoint {
    addr: SocketAddr,
    connect_timeout: Duration,
    /// The HTTP/2 connection is let go after this long without a byte either way; it closes
    /// once its last in-flight request is done, and the next request opens a new one.
    idle_timeout: Duration,
    sni: ServerName<'static>,
    expected: ExpectedIds,
    /// Built at the first connect (it needs the identity, fixed for the process).
    config: OnceLock<Arc<ClientConfig>>,
    /// The shared HTTP/2 connection, if open.
    h2: ArcSwapOption<SendRequest<ReqBody>>,
    /// Single-flight connects: concurrent first requests wait for one handshake.
    connecting: tokio::sync::Mutex<()>,
    /// Set once the peer answered `http/1.1` in ALPN.
    h1: OnceLock<Arc<EndpointPool>>,
    /// A fatal alert the peer sent on the HTTP/2 connection (it refused our certificate).
    alert: AlertSlot,
}

impl std::fmt::Debug for MtlsEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MtlsEndpoint")
            .field("addr", &self.addr)
            .field("sni", &self.sni)
            .field("expected", &self.expected)
            .field("h1_fallback", &self.h1.get().is_some())
            .finish_non_exhaustive()
    }
}

/// Why an mTLS request failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MtlsError {
    #[error("connect to {addr} timed out after {timeout:?}")]
    ConnectTimeout { addr: SocketAddr, timeout: Duration },
    #[error("connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("mTLS handshake with {addr} failed ({reason}): {source}")]
    Handshake {
        addr: SocketAddr,
        reason: &'static str,
        source: io::Error,
    },
    #[error("HTTP/2 handshake with {addr} over mTLS: {source}")]
    H2Handshake {
        addr: SocketAddr,
        source: hyper::Error,
    },
    #[error("mTLS client configuration: {0}")]
    Config(String),
    /// The peer refused our certificate after the client side of the TLS 1.3 handshake had
    /// completed (its alert arrives with the first HTTP/2 frames).
    #[error("mTLS with {addr} refused by the peer: {source}")]
    Refused {
        addr: SocketAddr,
        source: hyper::Error,
    },
    #[error(
        "{addr}: {pending} requests already wait for the connection (circuitBreakers.maxPendingRequests)"
    )]
    PendingOverflow { addr: SocketAddr, pending: u32 },
    #[error(transparent)]
    Http(hyper::Error),
    #[error(transparent)]
    H1(PoolError),
}

impl MtlsError {
    /// Nothing was sent: no connection could be made.
    pub fn is_connect(&self) -> bool {
        match self {
            MtlsError::Http(_) | MtlsError::PendingOverflow { .. } => false,
            MtlsError::H1(e) => e.is_connect(),
            _ => true,
        }
    }

    /// The TLS handshake (or its configuration) failed: e.g. the server's identity is not
    /// one the control plane says serves this destination.
    pub fn is_tls(&self) -> bool {
        matches!(
            self,
            MtlsError::Handshake { .. }
                | MtlsError::Config(_)
                | MtlsError::Refused { .. }
                | MtlsError::H1(PoolError::Tls { .. })
        )
    }
}

enum Conn {
    H2(SendRequest<ReqBody>),
    H1(Arc<EndpointPool>),
}

impl MtlsEndpoint {
    /// Sends `req`, already prepared with [`prepare_h2`], over the endpoint's HTTP/2
    /// connection; connects (one handshake for all waiting requests) when there is none.
    /// With `breaker`, requests waiting for that connect count against `maxPendingRequests`
    /// (`maxConnections` has no say over the one HTTP/2 connection per endpoint), and an
    /// HTTP/1.1-only peer's pool is used under both limits.
    pub fn send(
        self: &Arc<Self>,
        tls: &Arc<Tls>,
        req: Request<ReqBody>,
        now: Instant,
        breaker: Option<&Arc<Breaker>>,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, MtlsError>> + Send + 'static + use<>
    {
        if let Some(tx) = &*self.h2.load()
            && !tx.is_closed()
        {
            let mut tx = SendRequest::clone(tx);
            let this = self.clone();
            let tls = tls.clone();
            let breaker = breaker.cloned();
            return Either::Left(tx.try_send_request(req).then(move |sent| match sent {
                Ok(resp) => Either::Left(ready(Ok(resp.map(UpstreamBody::plain)))),
                Err(mut e) => match e.take_message() {
                    // The connection closed before the request was written: reconnect.
                    Some(req) => Either::Right(Box::pin(this.send_slow(tls, req, now, breaker))),
                    None => Either::Left(ready(Err(this.http_error(&tls, e.into_error())))),
                },
            }));
        }
        Either::Right(Box::pin(self.clone().send_slow(
            tls.clone(),
            req,
            now,
            breaker.cloned(),
        )))
    }

    async fn send_slow(
        self: Arc<Self>,
        tls: Arc<Tls>,
        mut req: Request<ReqBody>,
        now: Instant,
        breaker: Option<Arc<Breaker>>,
    ) -> Result<Response<UpstreamBody>, MtlsError> {
        let mut retried = false;
        loop {
            let pending = match &breaker {
                Some(b) if self.h1.get().is_none() && self.open_h2().is_none() => {
                    Some(b.try_pending().ok_or(MtlsError::PendingOverflow {
                        addr: self.addr,
                        pending: b.limits.max_pending_requests,
                    })?)
                }
                _ => None,
            };
            let conn = self.connection(&tls).await?;
            drop(pending);
            match conn {
                Conn::H1(pool) => {
                    to_h1(&mut req);
                    return pool
                        .send(req, now, breaker.as_ref())
                        .await
                        .map_err(MtlsError::H1);
                }
                Conn::H2(mut tx) => match tx.try_send_request(req).await {
                    Ok(resp) => return Ok(resp.map(UpstreamBody::plain)),
                    Err(mut e) => match e.take_message() {
                        Some(r) if !retried => {
                            retried = true;
                            req = r;
                        }
                        _ => return Err(self.http_error(&tls, e.into_error())),
                    },
                },
            }
        }
    }

    fn open_h2(&self) -> Option<SendRequest<ReqBody>> {
        self.h2
            .load()
            .as_deref()
            .filter(|tx| !tx.is_closed())
            .cloned()
    }

    async fn connection(self: &Arc<Self>, tls: &Tls) -> Result<Conn, MtlsError> {
        if let Some(pool) = self.h1.get() {
            return Ok(Conn::H1(pool.clone()));
        }
        if let Some(tx) = self.open_h2() {
            return Ok(Conn::H2(tx));
        }
        let _single = self.connecting.lock().await;
        if let Some(pool) = self.h1.get() {
            return Ok(Conn::H1(pool.clone()));
        }
        if let Some(tx) = self.open_h2() {
            return Ok(Conn::H2(tx));
        }
        let config = self.config(tls)?;
        let addr = self.addr;
        let stream = self.connect_tls(tls, &config).await?;
        tls.metrics.handshake(Direction::Outbound);
        if stream.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
            // The peer speaks HTTP/1.1 only: pool HTTP/1.1 connections over TLS from now on
            // (this first connection is dropped; it happens once per endpoint).
            tracing::debug!(endpoint = %addr, "mTLS peer chose http/1.1; using an HTTP/1.1 pool");
            let mut h1_config = (*config).clone();
            h1_config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
            let pool = EndpointPool::with_tls(
                addr,
                self.connect_timeout,
                self.idle_timeout,
                PoolTls {
                    connector: TlsConnector::from(Arc::new(h1_config)),
                    sni: self.sni.clone(),
                    metrics: tls.metrics.clone(),
                },
            );
            let pool = self.h1.get_or_init(|| pool).clone();
            return Ok(Conn::H1(pool));
        }
        let activity = Arc::new(Activity::default());
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .adaptive_window(true)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(TokioIo::new(AlertWatch {
                inner: Metered::new(stream, Some(activity.clone())),
                alert: self.alert.clone(),
            }))
            .await
            .map_err(|source| match self.take_alert() {
                Some(_) => self.refused(tls, source),
                None => MtlsError::H2Handshake { addr, source },
            })?;
        let tx = Arc::new(tx);
        self.h2.store(Some(tx.clone()));
        let (endpoint, idle, metrics) = (
            Arc::downgrade(self),
            self.idle_timeout,
            tls.metrics.conn.clone(),
        );
        let shared = Arc::downgrade(&tx);
        tokio::spawn(async move {
            metrics.mtls_upstream_open.inc();
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                () = crate::idle::quiet(&activity, idle) => {
                    // Let go of it: new requests open another connection; this one closes
                    // as soon as no request holds it (hyper ends it with the last handle).
                    if let Some(e) = endpoint.upgrade() {
                        e.forget(&shared);
                    }
                    drop(endpoint);
                    drop(shared);
                    metrics.idle_timeout(Direction::Outbound, "http");
                    tracing::debug!(endpoint = %addr, ?idle, "idle mTLS HTTP/2 connection released");
                    conn.await
                }
            };
            metrics.mtls_upstream_open.dec();
            if let Err(e) = ended {
                tracing::debug!(endpoint = %addr, error = %e, "mTLS HTTP/2 connection ended with an error");
            }
        });
        Ok(Conn::H2(SendRequest::clone(&tx)))
    }

    /// Stops handing out `conn` (if it is still the endpoint's connection).
    fn forget(&self, conn: &Weak<SendRequest<ReqBody>>) {
        let current = self.h2.load();
        if let (Some(cur), Some(conn)) = (current.as_ref(), conn.upgrade())
            && Arc::ptr_eq(cur, &conn)
        {
            self.h2.compare_and_swap(&current, None);
        }
    }

    /// A fresh TCP connection and TLS handshake (connect timeout, then the handshake's).
    async fn connect_tls(
        &self,
        tls: &Tls,
        config: &Arc<ClientConfig>,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, MtlsError> {
        let addr = self.addr;
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| MtlsError::ConnectTimeout {
                addr,
                timeout: self.connect_timeout,
            })?
            .map_err(|source| MtlsError::Connect { addr, source })?;
        let _ = stream.set_nodelay(true);
        let connector = TlsConnector::from(config.clone());
        let handshake = connector.connect(self.sni.clone(), stream);
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(source)) => {
                let reason = handshake_failure_reason(&source);
                tls.metrics.handshake_error(Direction::Outbound, reason);
                tracing::debug!(endpoint = %addr, reason, error = %source, "outbound mTLS handshake failed");
                Err(MtlsError::Handshake {
                    addr,
                    reason,
                    source,
                })
            }
            Err(_) => {
                tls.metrics.handshake_error(Direction::Outbound, "timeout");
                Err(MtlsError::Handshake {
                    addr,
                    reason: "timeout",
                    source: io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"),
                })
            }
        }
    }

    /// A fresh connection and mTLS handshake, closed at once: the TCP health check of an
    /// mTLS endpoint (it proves the peer accepts this sidecar's identity, as traffic needs).
    pub async fn handshake(&self, tls: &Tls) -> Result<(), MtlsError> {
        let config = self.config(tls)?;
        self.connect_tls(tls, &config).await?;
        tls.metrics.handshake(Direction::Outbound);
        Ok(())
    }

    /// Classifies an HTTP/2 error: after a TLS alert from the peer it means the peer refused
    /// our certificate (counted as a failed handshake); else it is an HTTP error.
    fn http_error(&self, tls: &Tls, e: hyper::Error) -> MtlsError {
        match self.take_alert() {
            Some(_) => self.refused(tls, e),
            None => MtlsError::Http(e),
        }
    }

    fn take_alert(&self) -> Option<rustls::Error> {
        self.alert.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn refused(&self, tls: &Tls, source: hyper::Error) -> MtlsError {
        tls.metrics
            .handshake_error(Direction::Outbound, "refused_by_peer");
        tracing::debug!(endpoint = %self.addr, error = %source, "the mTLS peer refused this sidecar's certificate");
        MtlsError::Refused {
            addr: self.addr,
            source,
        }
    }

    fn config(&self, tls: &Tls) -> Result<Arc<ClientConfig>, MtlsError> {
        if let Some(c) = self.config.get() {
            return Ok(c.clone());
        }
        let c = client_config(&tls.identity, self.expected.clone())
            .map_err(|e| MtlsError::Config(e.to_string()))?;
        Ok(self.config.get_or_init(|| c).clone())
    }
}

/// The last TLS alert a peer sent on one of an endpoint's connections.
type AlertSlot = Arc<Mutex<Option<rustls::Error>>>;

/// A TLS stream that remembers a fatal alert the peer sends after the handshake: a TLS 1.3
/// client finishes its handshake before the server has checked the client's certificate, so
/// a refusal arrives as a read error under HTTP/2, whose errors do not expose their cause.
struct AlertWatch<S> {
    inner: S,
    alert: AlertSlot,
}

impl<S: AsyncRead + Unpin> AsyncRead for AlertWatch<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Err(e)) = &polled
            && let Some(t) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
            && matches!(t, rustls::Error::AlertReceived(_))
        {
            *self.alert.lock().unwrap_or_else(|p| p.into_inner()) = Some(t.clone());
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AlertWatch<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Prepares a request for an mTLS endpoint: HTTP/2 (an HTTP/1.x request is marked with
/// [`super::ORIG_PROTO`]), absolute URI whose authority is what the app named (its `Host`,
/// moved to `:authority`), else the endpoint's address.
pub(crate) fn prepare_h2<B>(req: &mut Request<B>, endpoint: &Authority) -> Result<(), http::Error> {
    if req.version() != Version::HTTP_2 {
        mark_upgrade(req);
        *req.version_mut() = Version::HTTP_2;
    }
    let host = req
        .headers_mut()
        .remove(header::HOST)
        .and_then(|h| Authority::try_from(h.as_bytes()).ok());
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.authority = host.or(parts.authority).or_else(|| Some(endpoint.clone()));
    parts.scheme = Some(Scheme::HTTP);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    *req.uri_mut() = Uri::from_parts(parts)?;
    Ok(())
}

/// Undoes [`prepare_h2`] for a peer that speaks HTTP/1.1 only: HTTP/1.x, `Host`, origin form.
fn to_h1<B>(req: &mut Request<B>) {
    restore_orig_proto(req);
    if req.version() == Version::HTTP_2 {
        *req.version_mut() = Version::HTTP_11;
    }
    crate::http::host_from_authority(req);
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(pq);
}
