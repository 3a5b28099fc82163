//! An in-process HTTP echo backend (HTTP/1.1 and h2c on one port, via hyper-util's auto
//! server) that answers every request with its instance name: header `x-instance` and a JSON
//! body `{instance, path, method, version, headers}`. It can add a fixed latency to every
//! answer, to play a slow instance, and on demand answer every request with a fixed status
//! ([`EchoServer::fail_with`], e.g. 503) or hang without answering ([`EchoServer::hang`]).
//! It can also send a head and half a body, then break the connection
//! ([`EchoServer::break_bodies`]), to play an app that dies mid-response.
//! `GET /healthz` answers a status the test sets ([`EchoServer::set_health`]), or alternates
//! 200/503 ([`EchoServer::set_flapping`]), and counts the checks.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::body::{Body, Frame, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// What `/healthz` answers.
#[derive(Debug)]
struct Health {
    status: AtomicU16,
    flapping: AtomicBool,
    checks: AtomicUsize,
}

impl Health {
    fn answer(&self) -> StatusCode {
        let n = self.checks.fetch_add(1, Ordering::SeqCst);
        if self.flapping.load(Ordering::SeqCst) {
            return if n.is_multiple_of(2) {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
        }
        StatusCode::from_u16(self.status.load(Ordering::SeqCst)).unwrap_or(StatusCode::OK)
    }
}

/// A running echo server; stops (with all its connections) when dropped.
pub struct EchoServer {
    name: String,
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    received: Arc<AtomicUsize>,
    status: Arc<AtomicU16>,
    hang: tokio::sync::watch::Sender<bool>,
    broken: Arc<AtomicBool>,
    health: Arc<Health>,
    task: JoinHandle<()>,
}

impl EchoServer {
    /// Starts on 127.0.0.1:0.
    pub async fn start(name: &str) -> anyhow::Result<Self> {
        Self::start_with_latency(name, Duration::ZERO).await
    }

    /// Starts on 127.0.0.1:0; every answer is delayed by `latency` (the slow-instance knob).
    pub async fn start_with_latency(name: &str, latency: Duration) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("echo server: cannot bind 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let hits = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(AtomicUsize::new(0));
        let status = Arc::new(AtomicU16::new(200));
        let (hang, hang_rx) = tokio::sync::watch::channel(false);
        let broken = Arc::new(AtomicBool::new(false));
        let health = Arc::new(Health {
            status: AtomicU16::new(200),
            flapping: AtomicBool::new(false),
            checks: AtomicUsize::new(0),
        });
        let state = Arc::new(State {
            name: name.to_string(),
            latency,
            hits: hits.clone(),
            received: received.clone(),
            status: status.clone(),
            hang: hang_rx,
            broken: broken.clone(),
            health: health.clone(),
        });
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(state.answer(req).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                // Reap finished connections so the set does not grow without bound.
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(Self {
            name: name.to_string(),
            addr,
            hits,
            received,
            status,
            hang,
            broken,
            health,
            task,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Requests answered so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }

    /// Requests received so far (answered or not, whatever the status).
    pub fn received(&self) -> usize {
        self.received.load(Ordering::Relaxed)
    }

    /// From now on every request is answered with `status` (200: back to normal echoing).
    pub fn fail_with(&self, status: u16) {
        self.status.store(status, Ordering::Relaxed);
    }

    /// What `GET /healthz` answers from now on (default 200).
    pub fn set_health(&self, status: u16) {
        self.health.flapping.store(false, Ordering::SeqCst);
        self.health.status.store(status, Ordering::SeqCst);
    }

    /// `GET /healthz` alternates 200 and 503, one per check.
    pub fn set_flapping(&self) {
        self.health.flapping.store(true, Ordering::SeqCst);
    }

    /// `GET /healthz` calls answered so far.
    pub fn health_checks(&self) -> usize {
        self.health.checks.load(Ordering::SeqCst)
    }

    /// `true`: requests are received but not answered until `hang(false)` (a stuck app).
    pub fn hang(&self, hang: bool) {
        self.hang.send_replace(hang);
    }

    /// `true`: requests are answered with a 200 head (`Content-Length` set), half the body,
    /// then a broken connection (an app dying mid-response); counted in `received` only.
    pub fn break_bodies(&self, broken: bool) {
        self.broken.store(broken, Ordering::SeqCst);
    }
}

/// A body that sends its first half, stalls a moment (the app is dying), then fails, so hyper
/// breaks the connection (HTTP/1.1) or resets the stream (HTTP/2) with the `Content-Length`
/// unmet. The stall lets the head and the half travel on before the break, as they would.
struct BrokenBody {
    half: Option<Bytes>,
    declared: u64,
    stall: Pin<Box<tokio::time::Sleep>>,
}

impl Body for BrokenBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if let Some(half) = self.half.take() {
            return Poll::Ready(Some(Ok(Frame::data(half))));
        }
        match self.stall.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => Poll::Ready(Some(Err(std::io::Error::other(
                "the echo app broke off its answer",
            )))),
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.declared)
    }
}

type EchoBody = Either<Full<Bytes>, BrokenBody>;

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct State {
    name: String,
    latency: Duration,
    hits: Arc<AtomicUsize>,
    received: Arc<AtomicUsize>,
    status: Arc<AtomicU16>,
    hang: tokio::sync::watch::Receiver<bool>,
    broken: Arc<AtomicBool>,
    health: Arc<Health>,
}

impl State {
    async fn answer(&self, req: Request<Incoming>) -> Response<EchoBody> {
        if self.broken.load(Ordering::SeqCst) && req.uri().path() != "/healthz" {
            self.received.fetch_add(1, Ordering::Relaxed);
            let full = format!("{} answers this but breaks off halfway\n", self.name);
            let body = BrokenBody {
                half: Some(Bytes::from(full[..full.len() / 2].to_string())),
                declared: full.len() as u64,
                stall: Box::pin(tokio::time::sleep(Duration::from_millis(50))),
            };
            let mut resp = Response::new(Either::Right(body));
            resp.headers_mut().insert(
                http::header::CONTENT_LENGTH,
                http::HeaderValue::from(full.len()),
            );
            if let Ok(v) = http::HeaderValue::from_str(&self.name) {
                resp.headers_mut().insert("x-instance", v);
            }
            return resp;
        }
        self.plain(req).await.map(Either::Left)
    }

    async fn plain(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.uri().path() == "/healthz" {
            let mut resp = Response::new(Full::new(Bytes::from_static(b"health\n")));
            *resp.status_mut() = self.health.answer();
            return resp;
        }
        self.received.fetch_add(1, Ordering::Relaxed);
        let mut hang = self.hang.clone();
        // A stuck app: wait (for the test to release it), never answer meanwhile.
        let _ = hang.wait_for(|h| !*h).await;
        let status = self.status.load(Ordering::Relaxed);
        if status != 200 {
            self.hits.fetch_add(1, Ordering::Relaxed);
            let mut resp = Response::new(Full::new(Bytes::from(format!(
                "{} answers {status}\n",
                self.name
            ))));
            *resp.status_mut() =
                StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            if let Ok(v) = http::HeaderValue::from_str(&self.name) {
                resp.headers_mut().insert("x-instance", v);
            }
            return resp;
        }
        let (parts, body) = req.into_parts();
        let body_len = body
            .collect()
            .await
            .map(|b| b.to_bytes().len())
            .unwrap_or(0);
        if !self.latency.is_zero() {
            // Simulated service time, not synchronisation.
            tokio::time::sleep(self.latency).await;
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        let headers: BTreeMap<String, String> = parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = serde_json::json!({
            "instance": self.name,
            "path": parts.uri.path(),
            "method": parts.method.as_str(),
            "version": format!("{:?}", parts.version),
            "headers": headers,
            "body_len": body_len,
        });
        let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
        *resp.status_mut() = StatusCode::OK;
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        if let Ok(v) = http::HeaderValue::from_str(&self.name) {
            h.insert("x-instance", v);
        }
        resp
    }
}

/// An in-process TCP echo backend: every byte received is written back; when the client ends
/// its writes, the echo finishes and the server ends its own (half-close). Counts accepted
/// connections and bytes received, so a test can prove a refused connection never reached it.
pub struct TcpEchoServer {
    addr: SocketAddr,
    stats: Arc<TcpStats>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct TcpStats {
    connections: AtomicUsize,
    bytes: AtomicUsize,
}

impl TcpEchoServer {
    /// Starts on 127.0.0.1:0.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("tcp echo server: cannot bind 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(TcpStats::default());
        let counted = stats.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                counted.connections.fetch_add(1, Ordering::Relaxed);
                let counted = counted.clone();
                conns.spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                counted.bytes.fetch_add(n, Ordering::Relaxed);
                                if stream.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = stream.shutdown().await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(Self { addr, stats, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.stats.connections.load(Ordering::Relaxed)
    }

    /// Bytes received so far, over every connection.
    pub fn bytes(&self) -> usize {
        self.stats.bytes.load(Ordering::Relaxed)
    }
}

impl Drop for TcpEchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
