//! One check of the app on 127.0.0.1: HTTP GET, TCP connect, or gRPC
//! `grpc.health.v1.Health/Check` (its two messages hand-encoded with prost; the protocol is
//! <https://github.com/grpc/grpc/blob/master/doc/health-checking.md>). No pooling: a check is
//! a fresh connection, as Envoy's and Consul's are, so it also proves the app still accepts.

use std::net::{Ipv4Addr, SocketAddr};

use bytes::{Buf, Bytes};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use trellis_model::{CheckStatus, Protocol};

use super::{Outcome, Probe};

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    pub service: String,
}

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct HealthCheckResponse {
    /// UNKNOWN = 0, SERVING = 1, NOT_SERVING = 2, SERVICE_UNKNOWN = 3.
    #[prost(int32, tag = "1")]
    pub status: i32,
}

const SERVING: i32 = 1;

/// Largest response body read (a health answer is a few bytes).
const MAX_BODY: usize = 64 * 1024;

fn critical(output: String) -> Outcome {
    Outcome {
        status: CheckStatus::Critical,
        output,
    }
}

pub(crate) async fn probe(probe: &Probe, port: u16, app_protocol: Protocol) -> Outcome {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => return critical(format!("connect {addr}: {e}")),
    };
    match probe {
        Probe::Tcp => Outcome {
            status: CheckStatus::Passing,
            output: format!("TCP connect {addr}: ok"),
        },
        Probe::Http { path, expected } => {
            let h2 = matches!(app_protocol, Protocol::Http2 | Protocol::Grpc);
            let authority = addr.to_string();
            let sent = match http_request(path, &authority, h2) {
                Ok(req) => send(stream, req.map(Full::new), h2).await,
                Err(e) => Err(e),
            };
            match sent {
                Ok(resp) => http_outcome(path, resp.status(), expected.as_deref()),
                Err(e) => critical(format!("GET {path}: {e}")),
            }
        }
        Probe::Grpc { service } => {
            let authority = addr.to_string();
            let resp = match grpc_request(service, &authority) {
                Ok(req) => send(stream, req.map(Full::new), true).await,
                Err(e) => Err(e),
            };
            match resp {
                Ok(resp) => grpc_outcome(service, resp).await,
                Err(e) => critical(format!("{GRPC_CHECK}: {e}")),
            }
        }
    }
}

/// The HTTP status's verdict for the app check: 2xx/3xx passing, 429 (the app sheds load)
/// warning, else critical.
pub(crate) fn http_verdict(status: StatusCode) -> CheckStatus {
    if status.is_success() || status.is_redirection() {
        CheckStatus::Passing
    } else if status == StatusCode::TOO_MANY_REQUESTS {
        CheckStatus::Warning
    } else {
        CheckStatus::Critical
    }
}

/// The verdict on an HTTP check's answer: within `expected` (inclusive ranges) passing, else
/// critical; without `expected`, [`http_verdict`].
pub(crate) fn http_outcome(
    path: &str,
    status: StatusCode,
    expected: Option<&[(u16, u16)]>,
) -> Outcome {
    let verdict = match expected {
        None => http_verdict(status),
        Some(ranges)
            if ranges
                .iter()
                .any(|(a, b)| (*a..=*b).contains(&status.as_u16())) =>
        {
            CheckStatus::Passing
        }
        Some(_) => CheckStatus::Critical,
    };
    Outcome {
        status: verdict,
        output: format!("HTTP GET {path}: {status}"),
    }
}

async fn send(
    stream: TcpStream,
    req: Request<Full<Bytes>>,
    h2: bool,
) -> Result<http::Response<hyper::body::Incoming>, String> {
    let io = TokioIo::new(stream);
    if h2 {
        let (mut tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        tokio::spawn(conn);
        tx.send_request(req).await.map_err(|e| e.to_string())
    } else {
        let (mut tx, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
        tokio::spawn(conn);
        tx.send_request(req).await.map_err(|e| e.to_string())
    }
}

/// `GET path` to `authority`: HTTP/1.1 in origin form with Host; HTTP/2 with the scheme and
/// authority in the URI.
pub(crate) fn http_request(
    path: &str,
    authority: &str,
    h2: bool,
) -> Result<Request<Bytes>, String> {
    let uri = if h2 {
        format!("http://{authority}{path}")
    } else {
        path.to_string()
    };
    let mut req = Request::get(uri.as_str());
    if h2 {
        req = req.version(http::Version::HTTP_2);
    } else {
        req = req.header(http::header::HOST, authority);
    }
    req.header(http::header::USER_AGENT, USER_AGENT)
        .body(Bytes::new())
        .map_err(|e| e.to_string())
}

const GRPC_CHECK: &str = "grpc.health.v1.Health/Check";
const USER_AGENT: &str = "trellis-health-check/1";

/// `grpc.health.v1.Health/Check` for `service`, to `authority` (HTTP/2).
pub(crate) fn grpc_request(service: &str, authority: &str) -> Result<Request<Bytes>, String> {
    let msg = prost::Message::encode_to_vec(&HealthCheckRequest {
        service: service.to_string(),
    });
    let mut frame = Vec::with_capacity(5 + msg.len());
    frame.push(0);
    frame.extend_from_slice(&u32::try_from(msg.len()).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(&msg);
    Request::post(format!("http://{authority}/{GRPC_CHECK}").as_str())
        .version(http::Version::HTTP_2)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .header(http::header::USER_AGENT, USER_AGENT)
        .body(Bytes::from(frame))
        .map_err(|e| e.to_string())
}

/// The verdict on a `grpc.health.v1.Health/Check` answer: SERVING passing, else critical.
pub(crate) async fn grpc_outcome<B>(service: &str, resp: http::Response<B>) -> Outcome
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    grpc_answer(service, resp).await.unwrap_or_else(critical)
}

async fn grpc_answer<B>(service: &str, resp: http::Response<B>) -> Result<Outcome, String>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let what = GRPC_CHECK;
    if resp.status() != StatusCode::OK {
        return Err(format!("{what}: HTTP {}", resp.status()));
    }
    let header_status = grpc_status(resp.headers());
    let collected = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("{what}: reading the answer: {e}"))?;
    let trailer_status = collected.trailers().and_then(grpc_status);
    let code = trailer_status.or(header_status);
    if let Some((code, message)) = code.filter(|(c, _)| *c != 0) {
        return Err(format!("{what}: grpc-status {code} {message}"));
    }
    let mut body = collected.to_bytes();
    if body.len() < 5 {
        return Err(format!("{what}: the answer holds no message"));
    }
    let compressed = body.get_u8();
    let len = usize::try_from(body.get_u32()).unwrap_or(usize::MAX);
    if compressed != 0 || len > body.len() {
        return Err(format!("{what}: a malformed or compressed message"));
    }
    let resp: HealthCheckResponse = prost::Message::decode(&body[..len])
        .map_err(|e| format!("{what}: cannot decode the answer: {e}"))?;
    let name = match resp.status {
        0 => "UNKNOWN",
        1 => "SERVING",
        2 => "NOT_SERVING",
        3 => "SERVICE_UNKNOWN",
        _ => "an unknown status",
    };
    let shown = if service.is_empty() { "\"\"" } else { service };
    Ok(Outcome {
        status: if resp.status == SERVING {
            CheckStatus::Passing
        } else {
            CheckStatus::Critical
        },
        output: format!("{what}({shown}): {name}"),
    })
}

fn grpc_status(h: &http::HeaderMap) -> Option<(u32, String)> {
    let code = h.get("grpc-status")?.to_str().ok()?.trim().parse().ok()?;
    let message = h
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect();
    Some((code, message))
}
