//! HTTP/1.1 upstream connection pools, one per endpoint address, resolved when a config is
//! applied so the request path does no lookup: it pops an idle connection (LIFO: the warmest),
//! sends, and the response body hands the connection back when it has been read to the end.
//! The connections have no task of their own: [`h1`] writes the request and reads the
//! response from the task that sends it.
//!
//! Why not hyper-util's legacy `Client`: per request it hashes the `(scheme, authority)` pool
//! key twice under the pool's lock, allocates request extensions, and spawns a task that waits
//! for the connection to become idle again. Here checkout is a `Vec::pop` under an uncontended
//! mutex and the connection is returned by the body itself.
//!
//! A request that finds its pooled connection closed by the server (an idle keep-alive
//! connection it timed out) goes to the next pooled connection and then to a fresh one, when
//! nothing of it was written, or when it has no body, an idempotent method, and the
//! connection closed before any byte of an answer. Idle connections older than [`IDLE_TIMEOUT`] are
//! closed when the pool is next used; a pool and its connections go away when no cluster refers
//! to the endpoint any more.
//!
//! A cluster with circuit breakers passes them to [`EndpointPool::send`]: a new
//! connection takes a `maxConnections` slot for its lifetime (counted against the cluster
//! that opened it), and a request that finds no idle connection takes a `maxPendingRequests`
//! slot while it waits, for a connect, or, when the cluster's connections are at their limit,
//! for one of this endpoint's connections to be free. An endpoint with no connection at all
//! always gets one, as in Envoy, so a limit below the number of endpoints starves none.

use std::collections::HashMap;
use std::future::{Future, ready};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::Either;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::body::{Replay, ReqBody};
use crate::metrics::{Direction, TlsMetrics};
use crate::resilience::Breaker;
use crate::resilience::breaker::Slot;

pub(crate) mod h1;
use h1::{Conn, Failure, H1Body, H1Error, Head, Io};

/// Idle connections older than this are closed instead of reused, unless the cluster sets
/// an idle timeout (`common_http_protocol_options.idle_timeout`).
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// At most this many idle connections are kept per endpoint.
const MAX_IDLE: usize = 1024;

/// The process-wide HTTP/1.1 pools for one connect timeout, by endpoint address.
#[derive(Debug)]
pub(crate) struct H1Pools {
    connect_timeout: Duration,
    idle_timeout: Duration,
    by_addr: Mutex<HashMap<SocketAddr, Weak<EndpointPool>>>,
}

impl H1Pools {
    pub fn new(connect_timeout: Duration, idle_timeout: Duration) -> Self {
        H1Pools {
            connect_timeout,
            idle_timeout,
            by_addr: Mutex::new(HashMap::new()),
        }
    }

    /// The pool for `addr`, shared with every cluster that has this endpoint (config time only).
    pub fn endpoint(&self, addr: SocketAddr) -> Arc<EndpointPool> {
        let mut map = self
            .by_addr
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(pool) = map.get(&addr).and_then(Weak::upgrade) {
            return pool;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let pool = Arc::new(EndpointPool {
            addr,
            host: addr.to_string(),
            connect_timeout: self.connect_timeout,
            idle_timeout: self.idle_timeout,
            idle: Mutex::new(Vec::new()),
            live: Arc::default(),
            tls: None,
        });
        map.insert(addr, Arc::downgrade(&pool));
        pool
    }
}

/// Keep-alive HTTP/1.1 connections to one endpoint.
#[derive(Debug)]
pub(crate) struct EndpointPool {
    addr: SocketAddr,
    /// `addr` as text, the `Host` of requests that come without one.
    host: String,
    connect_timeout: Duration,
    /// Idle connections older than this are closed instead of reused.
    idle_timeout: Duration,
    idle: Mutex<Vec<Idle>>,
    /// Its open connections, and the requests waiting for one to be free.
    live: Arc<Live>,
    /// mTLS for every new connection (an mTLS peer that speaks HTTP/1.1 only).
    tls: Option<PoolTls>,
}

/// How an HTTP/1.1 pool makes TLS connections.
#[derive(Clone)]
pub(crate) struct PoolTls {
    pub connector: TlsConnector,
    pub sni: ServerName<'static>,
    pub metrics: TlsMetrics,
}

impl std::fmt::Debug for PoolTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolTls")
            .field("sni", &self.sni)
            .finish_non_exhaustive()
    }
}

/// The open connections of one pool, and a wake-up for requests waiting for one of them.
#[derive(Debug, Default)]
struct Live {
    open: AtomicUsize,
    /// Requests in [`EndpointPool::wait_for_free`]; zero (the common case) spares returning
    /// a connection the notification.
    waiting: AtomicUsize,
    freed: tokio::sync::Notify,
}

/// Held by a connection: counts it open, and holds its `maxConnections` slot.
struct LiveConn {
    live: Arc<Live>,
    _slot: Option<Slot>,
}

impl LiveConn {
    fn new(live: &Arc<Live>, slot: Option<Slot>) -> Self {
        live.open.fetch_add(1, Ordering::Relaxed);
        LiveConn {
            live: live.clone(),
            _slot: slot,
        }
    }
}

impl Drop for LiveConn {
    fn drop(&mut self) {
        self.live.open.fetch_sub(1, Ordering::Relaxed);
        // A waiter may now connect (this endpoint has a free connection slot).
        self.live.freed.notify_waiters();
    }
}

#[derive(Debug)]
struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

/// Why an upstream request failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PoolError {
    #[error("connect to {addr} timed out after {timeout:?}")]
    ConnectTimeout { addr: SocketAddr, timeout: Duration },
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("mTLS handshake with {addr} failed ({reason}): {source}")]
    Tls {
        addr: SocketAddr,
        reason: &'static str,
        source: std::io::Error,
    },
    #[error(
        "{addr}: {pending} requests already wait for a connection (circuitBreakers.maxPendingRequests)"
    )]
    PendingOverflow { addr: SocketAddr, pending: u32 },
    #[error(transparent)]
    Http(#[from] H1Error),
}

impl PoolError {
    /// The endpoint could not be reached at all (no request was sent).
    pub fn is_connect(&self) -> bool {
        !matches!(self, PoolError::Http(_) | PoolError::PendingOverflow { .. })
    }
}

impl EndpointPool {
    /// A pool (not shared through [`H1Pools`]) whose connections use mTLS.
    pub fn with_tls(
        addr: SocketAddr,
        connect_timeout: Duration,
        idle_timeout: Duration,
        tls: PoolTls,
    ) -> Arc<Self> {
        Arc::new(EndpointPool {
            addr,
            host: addr.to_string(),
            connect_timeout,
            idle_timeout,
            idle: Mutex::new(Vec::new()),
            live: Arc::default(),
            tls: Some(tls),
        })
    }

    /// Sends `req` (origin-form URI, hop-by-hop headers removed) over a pooled or new
    /// connection, under `breaker`'s `maxConnections` and `maxPendingRequests` if there is one.
    /// `now` is the request's start, used as a coarse clock for idle expiry (no extra clock
    /// read).
    ///
    /// The request head is encoded before this returns. With an idle connection (the common
    /// case) the future writes it and waits for the response head, unboxed; anything else
    /// (connect, wait for a free connection, a stale connection's retry) runs boxed.
    pub fn send(
        self: &Arc<Self>,
        req: Request<ReqBody>,
        now: Instant,
        breaker: Option<&Arc<Breaker>>,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, PoolError>> + Send + 'static + use<>
    {
        let (parts, body) = req.into_parts();
        let head = self.encode(&parts, body.is_end_stream());
        drop(parts);
        self.send_head(head, body, now, breaker)
    }

    /// The head of a request for this endpoint's connections; `empty`: the body is known to
    /// be empty (without a `content-length`, a body is otherwise sent chunked).
    pub fn encode(&self, parts: &http::request::Parts, empty: bool) -> Head {
        h1::encode(parts, empty, &self.host)
    }

    /// [`Self::send`] with a head encoded already (by [`Self::encode`]).
    pub fn send_head(
        self: &Arc<Self>,
        head: Head,
        body: ReqBody,
        now: Instant,
        breaker: Option<&Arc<Breaker>>,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, PoolError>> + Send + 'static + use<>
    {
        let pool = self.clone();
        let breaker = breaker.cloned();
        match self.pop_idle(now) {
            Some(conn) => {
                Either::Left(
                    h1::exchange(conn, head, body, true).then(move |sent| match sent {
                        Ok(answer) => Either::Left(ready(Ok(answer.into_response(pool, now)))),
                        Err(Failure::Stale(head, body)) => {
                            Either::Right(Box::pin(pool.send_slow(head, body, now, breaker)))
                        }
                        Err(Failure::Error(e)) => Either::Left(ready(Err(PoolError::Http(e)))),
                    }),
                )
            }
            None => Either::Right(Box::pin(pool.send_slow(head, body, now, breaker))),
        }
    }

    /// [`Self::send`] when no idle connection was usable: the other idle ones, else a new
    /// connection — under `breaker`, as a pending request, and waiting for a free connection
    /// when the cluster's are at their limit.
    async fn send_slow(
        self: Arc<Self>,
        mut head: Head,
        mut body: ReqBody,
        now: Instant,
        breaker: Option<Arc<Breaker>>,
    ) -> Result<Response<UpstreamBody>, PoolError> {
        let mut pending = None;
        loop {
            let (conn, reused) = match (self.pop_idle(now), &breaker) {
                (Some(conn), _) => (conn, true),
                (None, None) => (self.connect(None).await?, false),
                (None, Some(b)) => {
                    if pending.is_none() {
                        pending = Some(b.try_pending().ok_or(PoolError::PendingOverflow {
                            addr: self.addr,
                            pending: b.limits.max_pending_requests,
                        })?);
                    }
                    match b.try_connection() {
                        Some(slot) => (self.connect(Some(slot)).await?, false),
                        None if self.live.open.load(Ordering::Relaxed) == 0 => {
                            (self.connect(None).await?, false)
                        }
                        None => {
                            self.wait_for_free().await;
                            continue;
                        }
                    }
                }
            };
            drop(pending.take());
            match h1::exchange(conn, head, body, reused).await {
                Ok(answer) => return Ok(answer.into_response(self.clone(), now)),
                // Only a reused connection is stale; the next try takes another or a new one.
                Err(Failure::Stale(h, b)) => (head, body) = (h, b),
                Err(Failure::Error(e)) => return Err(PoolError::Http(e)),
            }
        }
    }

    /// Returns once a connection was given back to this pool or one of its connections
    /// closed (or at once if either already happened).
    async fn wait_for_free(&self) {
        struct Waiting<'a>(&'a Live);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.waiting.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let live = &*self.live;
        live.waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(live);
        let notified = live.freed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // Checked under the idle lock, after `waiting` was raised: a connection put back
        // before this is seen here, one put back after it notifies (`put` reads `waiting`
        // after taking the same lock).
        if !self.lock().is_empty() || live.open.load(Ordering::Relaxed) == 0 {
            return;
        }
        notified.await;
    }

    /// The most recently used idle connection that is still open and not expired.
    fn pop_idle(&self, now: Instant) -> Option<Box<Conn>> {
        let mut idle = self.lock();
        while let Some(mut i) = idle.pop() {
            if now.saturating_duration_since(i.since) <= self.idle_timeout && i.conn.idle_usable() {
                return Some(i.conn);
            }
        }
        None
    }

    /// A new connection; `slot` (the cluster's `maxConnections` slot, if any) is held until it
    /// closes.
    async fn connect(&self, slot: Option<Slot>) -> Result<Box<Conn>, PoolError> {
        let addr = self.addr;
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| PoolError::ConnectTimeout {
                addr,
                timeout: self.connect_timeout,
            })?
            .map_err(|source| PoolError::Connect { addr, source })?;
        let _ = stream.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(Conn::new(
                Io::Plain(stream),
                LiveConn::new(&self.live, slot),
            ));
        };
        let handshake = tls.connector.connect(tls.sni.clone(), stream);
        let stream = match tokio::time::timeout(crate::mtls::HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => {
                let reason = crate::mtls::handshake_failure_reason(&source);
                tls.metrics.handshake_error(Direction::Outbound, reason);
                return Err(PoolError::Tls {
                    addr,
                    reason,
                    source,
                });
            }
            Err(_) => {
                tls.metrics.handshake_error(Direction::Outbound, "timeout");
                return Err(PoolError::Tls {
                    addr,
                    reason: "timeout",
                    source: std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "TLS handshake timed out",
                    ),
                });
            }
        };
        tls.metrics.handshake(Direction::Outbound);
        Ok(Conn::new(
            Io::Tls(Box::new(stream)),
            LiveConn::new(&self.live, slot),
        ))
    }

    /// Takes back a connection whose response was read to the end.
    fn put(&self, conn: Box<Conn>, since: Instant) {
        let mut idle = self.lock();
        // Oldest first: drop the expired ones from the front.
        let expired = idle
            .iter()
            .take_while(|i| since.saturating_duration_since(i.since) > self.idle_timeout)
            .count();
        if expired > 0 {
            idle.drain(..expired);
        }
        if idle.len() < MAX_IDLE {
            idle.push(Idle { conn, since });
        }
        drop(idle);
        if self.live.waiting.load(Ordering::Relaxed) > 0 {
            self.live.freed.notify_one();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    #[cfg(test)]
    pub fn idle_len(&self) -> usize {
        self.lock().len()
    }
}

impl h1::Answer {
    fn into_response(self, pool: Arc<EndpointPool>, since: Instant) -> Response<UpstreamBody> {
        let mut body = self.body;
        body.home = Some((pool, since));
        body.release_if_done();
        Response::from_parts(
            self.head,
            UpstreamBody {
                inner: Inner::H1(body),
                hop_by_hop_read: true,
            },
        )
    }
}

/// Why an upstream response body failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    #[error(transparent)]
    H1(#[from] H1Error),
}

/// An upstream response body. One from a pooled HTTP/1.1 connection gives the connection back
/// once read to the end; dropped earlier, the connection is closed (HTTP/1.1 cannot skip the
/// rest of a response). A body already read whole (see [`UpstreamBody::read_whole`]) is
/// served from memory.
#[derive(Debug)]
pub(crate) struct UpstreamBody {
    inner: Inner,
    /// The head came from this pool's HTTP/1.1 parser, which reads the hop-by-hop fields
    /// and keeps none of them.
    hop_by_hop_read: bool,
}

#[derive(Debug)]
enum Inner {
    Stream(Incoming),
    Read(Replay),
    H1(H1Body),
}

impl UpstreamBody {
    /// A body from a connection that is not pooled here (HTTP/2).
    pub fn plain(inner: Incoming) -> Self {
        UpstreamBody {
            inner: Inner::Stream(inner),
            hop_by_hop_read: false,
        }
    }

    /// Whether the response head may still carry hop-by-hop fields (RFC 9110, section
    /// 7.6.1) to strip before it goes downstream. A head parsed by this pool has none.
    pub fn may_carry_hop_by_hop(&self) -> bool {
        !self.hop_by_hop_read
    }

    /// Reads the whole body when its length is known and at most `limit` bytes, so that a
    /// peer failing mid-body is an error here, while a retry is still possible, rather than
    /// a truncated response downstream. Bodies of unknown or larger length stay streamed, and
    /// so does one whose bytes all came with its head (nothing is left to fail).
    pub async fn read_whole(mut self, limit: usize) -> Result<Self, BodyError> {
        if self.is_end_stream()
            || matches!(&self.inner, Inner::H1(b) if b.is_buffered())
            || self.size_hint().exact().is_none_or(|n| n > limit as u64)
        {
            return Ok(self);
        }
        // No bound on what `collect` reads: the length is known and within `limit`.
        let replay = match crate::body::collect(&mut self, usize::MAX).await? {
            Ok(replay) => replay,
            // Only past usize::MAX bytes, which no body reaches.
            Err(read) => Replay::new(read, None),
        };
        Ok(UpstreamBody {
            inner: Inner::Read(replay),
            hop_by_hop_read: self.hop_by_hop_read,
        })
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.inner {
            Inner::Stream(b) => Pin::new(b).poll_frame(cx).map_err(BodyError::Hyper),
            Inner::Read(r) => Poll::Ready(r.next_frame().map(Ok)),
            Inner::H1(b) => b.poll_frame(cx).map_err(BodyError::H1),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Stream(b) => b.is_end_stream(),
            Inner::Read(r) => r.done(),
            Inner::H1(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Stream(b) => b.size_hint(),
            Inner::Read(r) => SizeHint::with_exact(r.remaining()),
            Inner::H1(b) => b.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests;
