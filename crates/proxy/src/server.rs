//! Serving one listener: accept, serve each connection with hyper-util's auto HTTP/1.1 + h2c
//! builder, and on shutdown stop accepting and drain in-flight requests up to a deadline.
//! The inbound listener first passes each connection through [`mtls::accept`] (mTLS, or
//! plaintext in PERMISSIVE mode only) and serves the TLS stream with the caller's identity,
//! as HTTP, or as a raw byte stream ([`crate::tcp::inbound`]) when the caller asked for one
//! (ALPN `trellis-tcp`) or this sidecar's service is TCP. Its HTTP connections are shut
//! down gracefully after the inbound config's idle timeout ([`crate::idle`]).
//!
//! With the access log on, a listener serves through a second service function that starts
//! a record per request ([`crate::accesslog::Pending`]); without it nothing is added.
//!
//! Every HTTP/1.1 connection has a request-head deadline ([`head_deadline`]): one that goes
//! `--request-head-timeout` with no request in progress and no new request head (a client that
//! sends its head a byte at a time, or an idle keep-alive connection) is closed. It replaces
//! hyper's `header_read_timeout`, which allocates and registers a timer for every request head;
//! this one is a single timer per connection, re-armed every eighth of the timeout, and costs a
//! request two relaxed atomic adds.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::task::AtomicWaker;
use http::{Request, Response, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::accesslog::{AccessLog, Pending};
use crate::http::ProxyBody;
use crate::idle::{Activity, Metered};
use crate::metrics::Direction;
use crate::mtls::{self, accept::Accepted};
use crate::shared::Shared;
use crate::tcp;

/// What is known about one downstream connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    pub peer: SocketAddr,
    /// The caller's SPIFFE ID from its verified client certificate; `None` for plaintext.
    pub peer_id: Option<Arc<str>>,
}

/// A listener's request handler.
pub(crate) trait Handler: Send + Sync + 'static {
    fn call(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: &ConnInfo,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + 'static + use<Self>;
}

/// How one listener serves its connections.
#[derive(Clone)]
pub(crate) struct Serving {
    pub name: &'static str,
    /// `Some`: every request is logged (crate::accesslog) under this direction.
    pub log: Option<(Arc<AccessLog>, Direction)>,
    /// The inbound listener: mTLS accept, raw TCP, and the config's idle timeout.
    pub inbound: Option<Arc<Shared>>,
    /// The request-head deadline of HTTP/1.1 connections ([`head_deadline`]); `None`: off.
    pub head_timeout: Option<Duration>,
}

/// The HTTP/1.1 + h2c connection builder of every listener.
///
/// hyper turns on a 30 s `header_read_timeout` by default as soon as a timer is set (and h2
/// needs the timer); it is turned off here, as [`head_deadline`] does its work with one timer
/// per connection instead of one per request head. HTTP/1.1 responses are written from one
/// flat buffer (`writev(false)`): one `send` of head and body, about 500 fewer instructions
/// per request than queueing them for a `writev` (docs/PERFORMANCE-NOTES.md).
fn http_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(None)
        .writev(false);
    builder.http2().timer(hyper_util::rt::TokioTimer::new());
    builder
}

/// Serves `listener` until `stop` turns true, then drains for at most `drain`.
pub(crate) async fn serve<H: Handler>(
    serving: Serving,
    listener: TcpListener,
    handler: Arc<H>,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) {
    let name = serving.name;
    let builder = Arc::new(http_builder());
    // Each connection holds a clone; draining waits until every clone is gone.
    let (open, mut closed) = mpsc::channel::<()>(1);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // E.g. out of file descriptors: back off instead of spinning.
                        tracing::warn!(listener = name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let conn = Conn {
                    builder: builder.clone(),
                    stop: stop.clone(),
                    _open: open.clone(),
                    log: serving.log.clone(),
                    head_timeout: serving.head_timeout,
                };
                let h = handler.clone();
                match &serving.inbound {
                    None => {
                        let info = ConnInfo { peer, peer_id: None };
                        tokio::spawn(conn.serve(name, TokioIo::new(stream), info, h, false, None));
                    }
                    Some(shared) => {
                        tokio::spawn(serve_inbound(stream, peer, conn, h, shared.clone()));
                    }
                }
            }
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
    }
    drop(listener);
    drop(open);
    tokio::select! {
        _ = closed.recv() => tracing::debug!(listener = name, "drained"),
        _ = tokio::time::sleep(drain) => {
            tracing::warn!(listener = name, ?drain, "drain timeout: closing remaining connections");
        }
    }
}

/// One inbound connection: [`mtls::accept`] (mTLS, or plaintext only in PERMISSIVE mode),
/// then raw TCP or HTTP with the caller's identity; requests another sidecar upgraded to
/// HTTP/2 are turned back into HTTP/1.x. Idle HTTP connections are closed after the inbound
/// config's idle timeout.
async fn serve_inbound<H: Handler>(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    conn: Conn,
    h: Arc<H>,
    shared: Arc<Shared>,
) {
    let Some(accepted) = mtls::accept::accept(stream, peer, &shared).await else {
        return;
    };
    let (tcp, idle) = {
        let snap = shared.live.load();
        let security = snap.inbound.as_deref();
        (
            security.is_some_and(|s| s.tcp.is_some()),
            crate::idle::effective(security.and_then(|s| s.idle_timeout)),
        )
    };
    match accepted {
        Accepted::Tls { stream, peer_id } => {
            // A raw TCP stream: asked for (ALPN), or the service is TCP.
            let raw = stream.get_ref().1.alpn_protocol() == Some(tcp::ALPN_TCP);
            if raw || tcp {
                drop(conn);
                tcp::inbound::serve(stream, peer, peer_id, shared).await;
                return;
            }
            let info = ConnInfo { peer, peer_id };
            if conn
                .serve("inbound", TokioIo::new(stream), info, h, true, idle)
                .await
            {
                shared.metrics.conn.idle_timeout(Direction::Inbound, "http");
            }
        }
        Accepted::Plain(stream) if tcp => {
            drop(conn);
            tcp::inbound::serve(stream, peer, None, shared).await;
        }
        Accepted::Plain(stream) => {
            let info = ConnInfo {
                peer,
                peer_id: None,
            };
            if conn
                .serve("inbound", TokioIo::new(stream), info, h, true, idle)
                .await
            {
                shared.metrics.conn.idle_timeout(Direction::Inbound, "http");
            }
        }
    }
}

/// What serving one accepted connection needs from its listener.
struct Conn {
    builder: Arc<auto::Builder<TokioExecutor>>,
    /// Turns true when the listener drains: the connection shuts down gracefully.
    stop: watch::Receiver<bool>,
    /// Held while the connection is open (the listener's drain waits for it).
    _open: mpsc::Sender<()>,
    log: Option<(Arc<AccessLog>, Direction)>,
    head_timeout: Option<Duration>,
}

impl Conn {
    /// Serves HTTP/1.1 or h2 (detected from the preface) on one accepted connection.
    /// `restore`: turn requests marked by a peer sidecar's upgrade back into HTTP/1.x.
    /// `idle`: shut the connection down gracefully once no byte moved for that long.
    async fn serve<H, S>(
        self,
        name: &'static str,
        io: TokioIo<S>,
        info: ConnInfo,
        h: Arc<H>,
        restore: bool,
        idle: Option<Duration>,
    ) -> bool
    where
        H: Handler,
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let peer = info.peer;
        let activity = idle.map(|_| Arc::new(Activity::default()));
        let io = TokioIo::new(Metered::new(io.into_inner(), activity.clone()));
        let (builder, stop) = (self.builder, self.stop);
        let head = self
            .head_timeout
            .map(|t| (Arc::new(Requests::default()), t));
        let requests = head.as_ref().map(|(r, _)| r.clone());
        let deadline = async {
            match &head {
                Some((r, t)) => head_deadline(r, *t).await,
                None => std::future::pending().await,
            }
        };
        let ended = match self.log {
            None => {
                // `map`, not an `async` block that would hold the handler's future twice.
                let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                    if restore {
                        mtls::restore_orig_proto(&mut req);
                    }
                    let open = Open::start(requests.as_ref(), req.version());
                    h.clone()
                        .call(req, &info)
                        .map(move |resp| Ok::<_, Infallible>(Served::wrap(resp, open)))
                });
                let conn = builder.serve_connection(io, svc).into_owned();
                drive(
                    conn,
                    |c| c.graceful_shutdown(),
                    stop,
                    activity,
                    idle,
                    deadline,
                )
                .await
            }
            Some((log, direction)) => {
                let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                    if restore {
                        mtls::restore_orig_proto(&mut req);
                    }
                    let open = Open::start(requests.as_ref(), req.version());
                    let pending = Pending::start(&mut req, &info, direction, &log);
                    h.clone().call(req, &info).map(move |resp| {
                        Ok::<_, Infallible>(Served::wrap(pending.respond(resp), open))
                    })
                });
                let conn = builder.serve_connection(io, svc).into_owned();
                drive(
                    conn,
                    |c| c.graceful_shutdown(),
                    stop,
                    activity,
                    idle,
                    deadline,
                )
                .await
            }
        };
        if ended.1 == Ended::HeadTimeout {
            tracing::debug!(listener = name, %peer, timeout = ?self.head_timeout, "no request head in time: connection closed");
        }
        let ended = (ended.0, ended.1 == Ended::Idle);
        match ended {
            (Err(e), _) => {
                tracing::debug!(listener = name, %peer, error = %e, "connection ended with an error");
            }
            (Ok(()), true) => {
                tracing::debug!(listener = name, %peer, ?idle, "idle connection closed");
            }
            (Ok(()), false) => {}
        }
        ended.1
    }
}

/// How [`drive`] ended a connection, when it was not the connection's own end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Done,
    /// Shut down after the inbound idle timeout.
    Idle,
    /// Closed by the request-head deadline.
    HeadTimeout,
}

/// Drives `conn` to its end, shutting it down gracefully (in-flight requests finish) when the
/// listener drains or, with `idle`, once no byte moved through `activity` for that long; drops
/// it (closing it) once `head_deadline` completes, which it does only while no request is in
/// progress. Returns the connection's result and what ended it.
///
/// The connection's own wake-ups (its sockets, its upstream requests) come several times per
/// request; the three rare events do not. They are polled with a waker of their own
/// ([`Control`]), and only after it was woken, so a request does not pay for polling a watch
/// channel, an idle timer and the head deadline on every wake-up of its task.
async fn drive<F, E>(
    conn: F,
    shutdown: impl Fn(Pin<&mut F>),
    mut stop: watch::Receiver<bool>,
    activity: Option<Arc<Activity>>,
    idle: Option<Duration>,
    head_deadline: impl Future<Output = ()>,
) -> (Result<(), E>, Ended)
where
    F: Future<Output = Result<(), E>>,
{
    let mut conn = pin!(conn);
    let mut shutting = *stop.borrow();
    if shutting {
        shutdown(conn.as_mut());
    }
    // Completes with the reason to shut down: the listener drains (or its sender is gone),
    // or the connection was quiet for `idle`.
    let shut = async {
        let stopped = async { while stop.changed().await.is_ok() && !*stop.borrow() {} };
        let quiet = async {
            match (activity.as_deref(), idle) {
                (Some(a), Some(t)) => crate::idle::quiet(a, t).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = stopped => Ended::Done,
            () = quiet => Ended::Idle,
        }
    };
    let mut shut = pin!(shut);
    let mut head_deadline = pin!(head_deadline);
    let control = Arc::new(Control::default());
    let control_waker = Waker::from(control.clone());
    let mut ended = Ended::Done;
    std::future::poll_fn(|cx| {
        control.task.register(cx.waker());
        if control.woken.swap(false, Ordering::AcqRel) {
            let mut ccx = Context::from_waker(&control_waker);
            if !shutting && let Poll::Ready(why) = shut.as_mut().poll(&mut ccx) {
                shutting = true;
                ended = why;
                shutdown(conn.as_mut());
            }
            if head_deadline.as_mut().poll(&mut ccx).is_ready() {
                return Poll::Ready((Ok(()), Ended::HeadTimeout));
            }
        }
        conn.as_mut().poll(cx).map(|result| (result, ended))
    })
    .await
}

/// The waker of [`drive`]'s rare events: it notes that one of them was woken, then wakes the
/// connection's task.
#[derive(Debug)]
struct Control {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Default for Control {
    fn default() -> Self {
        // Woken at first, so the first poll registers every event's waker.
        Control {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        }
    }
}

impl Wake for Control {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// The requests of one downstream connection, as the request-head deadline sees them.
#[derive(Debug, Default)]
struct Requests {
    /// Request heads received so far.
    started: AtomicU64,
    /// Requests whose response has not been sent (or dropped) yet.
    open: AtomicU64,
    /// The connection speaks HTTP/2, which the deadline leaves alone.
    h2: AtomicBool,
}

/// One request in progress: counted in [`Requests::open`] until dropped with its response body.
struct Open(Option<Arc<Requests>>);

impl Open {
    fn start(requests: Option<&Arc<Requests>>, version: Version) -> Self {
        Open(requests.map(|r| {
            r.started.fetch_add(1, Ordering::Relaxed);
            r.open.fetch_add(1, Ordering::Relaxed);
            if version == Version::HTTP_2 {
                r.h2.store(true, Ordering::Relaxed);
            }
            r.clone()
        }))
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(r) = &self.0 {
            r.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A response body that keeps its request [`Open`] until hyper has sent it (or given up on it).
struct Served<B> {
    body: B,
    _open: Open,
}

impl<B> Served<B> {
    fn wrap(resp: Response<B>, open: Open) -> Response<Served<B>> {
        resp.map(|body| Served { body, _open: open })
    }
}

impl<B: Body + Unpin> Body for Served<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Shortest interval between two looks at a connection's requests.
const MIN_HEAD_TICK: Duration = Duration::from_millis(5);

/// Completes once the connection has gone `timeout` with no request in progress and no new
/// request head: its client is sending a head too slowly (or not at all), or it is an idle
/// keep-alive connection. Looks every `timeout / 8`, so it completes between `timeout` and
/// `1.125 × timeout` after the last response or the connection's start. Never completes on an
/// HTTP/2 connection (known from its first request), whose streams and pings have their own
/// limits.
async fn head_deadline(requests: &Requests, timeout: Duration) {
    let tick = (timeout / 8).max(MIN_HEAD_TICK);
    let mut seen = requests.started.load(Ordering::Relaxed);
    let mut since = tokio::time::Instant::now();
    let sleep = tokio::time::sleep(tick);
    let mut sleep = pin!(sleep);
    loop {
        sleep.as_mut().await;
        if requests.h2.load(Ordering::Relaxed) {
            return std::future::pending().await;
        }
        let now = tokio::time::Instant::now();
        let started = requests.started.load(Ordering::Relaxed);
        if started != seen || requests.open.load(Ordering::Relaxed) > 0 {
            seen = started;
            since = now;
        } else if now >= since + timeout {
            return;
        }
        sleep.as_mut().reset((now + tick).min(since + timeout));
    }
}

#[cfg(test)]
mod tests;
