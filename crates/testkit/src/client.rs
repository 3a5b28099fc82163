//! A test client that sends requests through a sidecar's outbound listener and counts the
//! answers per instance (the `x-instance` header set by [`crate::EchoServer`]).
//!
//! Requests name the target service either as an HTTP proxy request (absolute-form URI,
//! `GET http://catalog/path`) or with a `Host` header on an origin-form request; HTTP/2 (h2c,
//! prior knowledge) always sends `:authority`. Each worker keeps one keep-alive connection.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow};
use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// One request's time limit: a hang is a failure, not a stuck test.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How the request names the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressing {
    /// `GET http://service/path HTTP/1.1` (the app uses the sidecar as an HTTP proxy).
    Proxy,
    /// `GET /path HTTP/1.1` with `Host: service`.
    Host,
    /// HTTP/2 with prior knowledge, `:authority = service`.
    H2c,
}

/// What to send.
#[derive(Debug, Clone)]
pub struct Req {
    pub service: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub method: http::Method,
    pub body: Bytes,
}

impl Req {
    pub fn get(service: &str, path: &str) -> Self {
        Self {
            service: service.to_string(),
            path: path.to_string(),
            headers: Vec::new(),
            method: http::Method::GET,
            body: Bytes::new(),
        }
    }

    /// A POST with `body` (sent with its Content-Length).
    pub fn post(service: &str, path: &str, body: impl Into<Bytes>) -> Self {
        Self {
            method: http::Method::POST,
            body: body.into(),
            ..Self::get(service, path)
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// One answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The `x-instance` header (which echo backend answered).
    pub fn instance(&self) -> Option<String> {
        header(&self.headers, "x-instance")
    }

    /// The proxy's `x-trellis-reason` header on its own errors.
    pub fn reason(&self) -> Option<String> {
        header(&self.headers, "x-trellis-reason")
    }

    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("body is not JSON: {}", String::from_utf8_lossy(&self.body)))
    }
}

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// One request's result: the answer, or what went wrong on the way.
pub type Outcome = Result<Reply, String>;

/// The results of [`Client::run`], indexed like the requests.
#[derive(Debug, Default)]
pub struct Outcomes {
    pub results: Vec<Outcome>,
}

impl Outcomes {
    /// 2xx answers per `x-instance`.
    pub fn per_instance(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for r in self.results.iter().flatten() {
            if (200..300).contains(&r.status)
                && let Some(i) = r.instance()
            {
                *m.entry(i).or_insert(0) += 1;
            }
        }
        m
    }

    /// Requests that failed (transport error or non-2xx), with a description.
    pub fn failures(&self) -> Vec<(usize, String)> {
        self.results
            .iter()
            .enumerate()
            .filter_map(|(i, r)| match r {
                Ok(r) if (200..300).contains(&r.status) => None,
                Ok(r) => Some((
                    i,
                    format!(
                        "status {} reason {:?} body {}",
                        r.status,
                        r.reason(),
                        String::from_utf8_lossy(&r.body)
                    ),
                )),
                Err(e) => Some((i, e.clone())),
            })
            .collect()
    }

    /// Fraction of all requests answered by `instance`.
    pub fn share(&self, instance: &str) -> f64 {
        let n = self.per_instance().get(instance).copied().unwrap_or(0);
        n as f64 / self.results.len().max(1) as f64
    }

    /// `x-instance` of request `i`, if it succeeded.
    pub fn instance_of(&self, i: usize) -> Option<String> {
        self.results
            .get(i)?
            .as_ref()
            .ok()
            .filter(|r| (200..300).contains(&r.status))?
            .instance()
    }

    /// Answers counted by `"STATUS REASON"` (`"200 "` for upstream answers, `"503
    /// fault_abort"`), and `"error E"` per transport error, for logs and assertions.
    pub fn tally(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for r in &self.results {
            let key = match r {
                Ok(reply) => format!("{} {}", reply.status, reply.reason().unwrap_or_default()),
                Err(e) => format!("error {e}"),
            };
            *m.entry(key).or_insert(0) += 1;
        }
        m
    }

    /// A one-line summary for assertion messages.
    pub fn summary(&self) -> String {
        let failures = self.failures();
        format!(
            "{} requests, per instance {:?}, {} failed{}",
            self.results.len(),
            self.per_instance(),
            failures.len(),
            failures
                .first()
                .map(|(i, e)| format!(" (first: #{i}: {e})"))
                .unwrap_or_default()
        )
    }
}

/// Sends requests to one sidecar outbound listener.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    outbound: SocketAddr,
    addressing: Addressing,
}

impl Client {
    /// A client using the HTTP proxy form (absolute URI).
    pub fn new(outbound: SocketAddr) -> Self {
        Self {
            outbound,
            addressing: Addressing::Proxy,
        }
    }

    pub fn with_addressing(mut self, addressing: Addressing) -> Self {
        self.addressing = addressing;
        self
    }

    /// Sends one request on a fresh connection.
    pub async fn send(&self, req: &Req) -> anyhow::Result<Reply> {
        let mut conn = Conn::connect(self.outbound, self.addressing).await?;
        conn.send(req, self.addressing).await
    }

    /// Sends `total` requests built by `make(i)` with `concurrency` workers, each on its own
    /// keep-alive connection (reconnecting after an error).
    pub async fn run<F>(&self, total: usize, concurrency: usize, make: F) -> Outcomes
    where
        F: Fn(usize) -> Req + Send + Sync + 'static,
    {
        let make = Arc::new(make);
        let next = Arc::new(AtomicUsize::new(0));
        let results: Arc<Mutex<Vec<Option<Outcome>>>> = Arc::new(Mutex::new(vec![None; total]));
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..concurrency.max(1) {
            let (make, next, results) = (make.clone(), next.clone(), results.clone());
            let (outbound, addressing) = (self.outbound, self.addressing);
            workers.spawn(async move {
                let mut conn: Option<Conn> = None;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let req = make(i);
                    let result = async {
                        if conn.is_none() {
                            conn = Some(Conn::connect(outbound, addressing).await?);
                        }
                        match conn.as_mut() {
                            Some(c) => c.send(&req, addressing).await,
                            None => Err(anyhow!("no connection")),
                        }
                    }
                    .await;
                    if result.is_err() {
                        conn = None;
                    }
                    if let Ok(mut r) = results.lock()
                        && let Some(slot) = r.get_mut(i)
                    {
                        *slot = Some(result.map_err(|e| format!("{e:#}")));
                    }
                }
            });
        }
        while workers.join_next().await.is_some() {}
        let results = std::mem::take(&mut *results.lock().unwrap_or_else(|e| e.into_inner()));
        Outcomes {
            results: results
                .into_iter()
                .map(|r| r.unwrap_or_else(|| Err("not sent".to_string())))
                .collect(),
        }
    }
}

enum Conn {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Conn {
    async fn connect(addr: SocketAddr, addressing: Addressing) -> anyhow::Result<Self> {
        let stream = tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("connect to {addr} timed out"))?
            .with_context(|| format!("connect to {addr}"))?;
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(stream);
        if addressing == Addressing::H2c {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .with_context(|| format!("h2c handshake with {addr}"))?;
            tokio::spawn(conn);
            Ok(Self::H2(sender))
        } else {
            let (sender, conn) = http1::handshake(io)
                .await
                .with_context(|| format!("HTTP/1 handshake with {addr}"))?;
            tokio::spawn(conn);
            Ok(Self::H1(sender))
        }
    }

    async fn send(&mut self, req: &Req, addressing: Addressing) -> anyhow::Result<Reply> {
        let uri = match addressing {
            Addressing::Host => req.path.clone(),
            Addressing::Proxy | Addressing::H2c => format!("http://{}{}", req.service, req.path),
        };
        let mut builder = Request::builder().method(req.method.clone()).uri(&uri);
        if addressing == Addressing::Host {
            builder = builder.header(http::header::HOST, &req.service);
        }
        for (k, v) in &req.headers {
            builder = builder.header(k, v);
        }
        let request = builder
            .body(Full::new(req.body.clone()))
            .with_context(|| format!("invalid request {uri}"))?;
        let fut = async {
            let resp = match self {
                Self::H1(s) => {
                    s.ready().await.context("connection closed")?;
                    s.send_request(request).await
                }
                Self::H2(s) => {
                    s.ready().await.context("connection closed")?;
                    s.send_request(request).await
                }
            }
            .with_context(|| format!("GET {uri}"))?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .with_context(|| format!("GET {uri}: reading the body"))?
                .to_bytes();
            Ok(Reply {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .map_err(|_| anyhow!("GET {uri}: no answer within {REQUEST_TIMEOUT:?}"))?
    }
}
