//! HTTP/1.1 upstream connection pools, one per endpoint address, resolved when a config is
//! applied so the request path does no lookup: it pops an idle connection (LIFO: the warmest),
//! sends, and the response body hands the connection back when it has been read to the end.
//!
//! Why not hyper-util's legacy `Client`: per request it hashes the `(scheme, authority)` pool
//! key twice under the pool's lock, allocates request extensions, and spawns a task that waits
//! for the connection to become idle again. Here checkout is a `Vec::pop` under an uncontended
//! mutex and the connection is returned by the body itself.
//!
//! A request that finds its pooled connection closed before anything was written (the server
//! closed an idle keep-alive connection) is retried once per pooled connection and then on a
//! fresh one, as the legacy client does. Idle connections older than [`IDLE_TIMEOUT`] are
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
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::body::{Replay, ReqBody};
use crate::metrics::{Direction, TlsMetrics};
use crate::resilience::Breaker;
use crate::resilience::breaker::Slot;

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

/// Held by a connection's task: counts it open, and holds its `maxConnections` slot.
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
    tx: SendRequest<ReqBody>,
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
    #[error("HTTP/1.1 handshake with {addr}: {source}")]
    Handshake {
        addr: SocketAddr,
        source: hyper::Error,
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
    Http(#[from] hyper::Error),
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
            connect_timeout,
            idle_timeout,
            idle: Mutex::new(Vec::new()),
            live: Arc::default(),
            tls: Some(tls),
        })
    }

    /// Sends `req` (origin-form URI, `Host` set) over a pooled or new connection, under
    /// `breaker`'s `maxConnections` and `maxPendingRequests` if there is one. `now` is the
    /// request's start, used as a coarse clock for idle expiry (no extra clock read).
    ///
    /// The common case — an idle connection that is ready — hands the request to it before
    /// returning, so the future only waits for the response head and stays small (it is moved
    /// into hyper's per-connection slot on every request); anything else runs boxed.
    pub fn send(
        self: &Arc<Self>,
        req: Request<ReqBody>,
        now: Instant,
        breaker: Option<&Arc<Breaker>>,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, PoolError>> + Send + 'static + use<>
    {
        let pool = self.clone();
        let breaker = breaker.cloned();
        match self.pop_idle(now) {
            Some(mut tx) if tx.is_ready() => {
                // Combinators, not an `async` block: a block would hold `sent` twice.
                Either::Left(tx.try_send_request(req).then(move |sent| match sent {
                    Ok(resp) => Either::Left(ready(Ok(
                        resp.map(|body| UpstreamBody::pooled(body, tx, pool, now)),
                    ))),
                    Err(mut e) => match e.take_message() {
                        // Closed before the request was written: safe to send it elsewhere.
                        Some(req) => {
                            Either::Right(Box::pin(pool.send_slow(req, None, now, breaker)))
                        }
                        None => Either::Left(ready(Err(PoolError::Http(e.into_error())))),
                    },
                }))
            }
            idle => Either::Right(Box::pin(pool.send_slow(req, idle, now, breaker))),
        }
    }

    /// [`Self::send`] when no idle connection was ready: wait for `first` (if any) to become
    /// ready, else try the other idle ones, else connect — under `breaker`, as a pending
    /// request, and waiting for a free connection when the cluster's are at their limit.
    async fn send_slow(
        self: Arc<Self>,
        mut req: Request<ReqBody>,
        mut first: Option<SendRequest<ReqBody>>,
        now: Instant,
        breaker: Option<Arc<Breaker>>,
    ) -> Result<Response<UpstreamBody>, PoolError> {
        let mut pending = None;
        loop {
            let pooled = match first.take() {
                Some(mut tx) => match tx.ready().await {
                    Ok(()) => Some(tx),
                    Err(_) => continue,
                },
                None => self.checkout(now).await,
            };
            let (mut tx, reused) = match (pooled, &breaker) {
                (Some(tx), _) => (tx, true),
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
            match tx.try_send_request(req).await {
                Ok(resp) => {
                    let pool = self.clone();
                    return Ok(resp.map(|body| UpstreamBody::pooled(body, tx, pool, now)));
                }
                Err(mut e) => match e.take_message() {
                    // Closed before the request was written: safe to send it elsewhere.
                    Some(r) if reused => req = r,
                    _ => return Err(PoolError::Http(e.into_error())),
                },
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
    fn pop_idle(&self, now: Instant) -> Option<SendRequest<ReqBody>> {
        let mut idle = self.lock();
        while let Some(i) = idle.pop() {
            if !i.tx.is_closed() && now.saturating_duration_since(i.since) <= self.idle_timeout {
                return Some(i.tx);
            }
        }
        None
    }

    /// An idle connection that is ready for a request, if any.
    async fn checkout(&self, now: Instant) -> Option<SendRequest<ReqBody>> {
        loop {
            let idle = self.lock().pop()?;
            if idle.tx.is_closed() || now.saturating_duration_since(idle.since) > self.idle_timeout
            {
                continue;
            }
            let mut tx = idle.tx;
            // Usually ready at once; right after a body ended, the connection task may still be
            // finishing that response.
            if tx.ready().await.is_ok() {
                return Some(tx);
            }
        }
    }

    /// A new connection; `slot` (the cluster's `maxConnections` slot, if any) is held until it
    /// closes.
    async fn connect(&self, slot: Option<Slot>) -> Result<SendRequest<ReqBody>, PoolError> {
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
            return h1_handshake(TokioIo::new(stream), addr, LiveConn::new(&self.live, slot)).await;
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
        h1_handshake(TokioIo::new(stream), addr, LiveConn::new(&self.live, slot)).await
    }

    fn put(&self, tx: SendRequest<ReqBody>, since: Instant) {
        if tx.is_closed() {
            return;
        }
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
            idle.push(Idle { tx, since });
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

/// An HTTP/1.1 client handshake on a new connection, its task spawned.
async fn h1_handshake<I>(
    io: I,
    addr: SocketAddr,
    live: LiveConn,
) -> Result<SendRequest<ReqBody>, PoolError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (tx, conn) = http1::Builder::new()
        .handshake(io)
        .await
        .map_err(|source| PoolError::Handshake { addr, source })?;
    tokio::spawn(async move {
        let _live = live;
        if let Err(e) = conn.await {
            tracing::debug!(endpoint = %addr, error = %e, "upstream connection ended with an error");
        }
    });
    Ok(tx)
}

/// An upstream response body. One from a pooled HTTP/1.1 connection gives the connection back
/// once read to the end; dropped earlier, the connection is closed (HTTP/1.1 cannot skip the
/// rest of a response). A body already read whole (see [`UpstreamBody::read_whole`]) is
/// served from memory.
#[derive(Debug)]
pub(crate) struct UpstreamBody {
    inner: Inner,
    reuse: Option<Reuse>,
}

#[derive(Debug)]
enum Inner {
    Stream(Incoming),
    Read(Replay),
}

#[derive(Debug)]
struct Reuse {
    tx: SendRequest<ReqBody>,
    pool: Arc<EndpointPool>,
    since: Instant,
}

impl UpstreamBody {
    /// A body from a connection that is not pooled here (HTTP/2).
    pub fn plain(inner: Incoming) -> Self {
        UpstreamBody {
            inner: Inner::Stream(inner),
            reuse: None,
        }
    }

    fn pooled(
        inner: Incoming,
        tx: SendRequest<ReqBody>,
        pool: Arc<EndpointPool>,
        since: Instant,
    ) -> Self {
        let mut body = UpstreamBody {
            inner: Inner::Stream(inner),
            reuse: Some(Reuse { tx, pool, since }),
        };
        body.release_if_done();
        body
    }

    fn release_if_done(&mut self) {
        if self.is_end_stream()
            && let Some(r) = self.reuse.take()
        {
            r.pool.put(r.tx, r.since);
        }
    }

    /// Reads the whole body when its length is known and at most `limit` bytes, so that a
    /// peer failing mid-body is an error here, while a retry is still possible, rather than
    /// a truncated response downstream. Bodies of unknown or larger length stay streamed.
    pub async fn read_whole(mut self, limit: usize) -> Result<Self, hyper::Error> {
        if self.is_end_stream() || self.size_hint().exact().is_none_or(|n| n > limit as u64) {
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
            reuse: None,
        })
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            Inner::Stream(b) => Pin::new(b).poll_frame(cx),
            Inner::Read(r) => return Poll::Ready(r.next_frame().map(Ok)),
        };
        match &polled {
            Poll::Ready(None) => {
                if let Some(r) = this.reuse.take() {
                    r.pool.put(r.tx, r.since);
                }
            }
            Poll::Ready(Some(Ok(_))) => this.release_if_done(),
            Poll::Ready(Some(Err(_))) => this.reuse = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Stream(b) => b.is_end_stream(),
            Inner::Read(r) => r.done(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Stream(b) => b.size_hint(),
            Inner::Read(r) => SizeHint::with_exact(r.remaining()),
        }
    }
}

#[cfg(test)]
mod tests;
