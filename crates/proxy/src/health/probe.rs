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
        Probe::Http { path } => {
            let h2 = matches!(app_protocol, Protocol::Http2 | Protocol::Grpc);
            http_check(stream, addr, path, h2)
                .await
                .unwrap_or_else(critical)
        }
        Probe::Grpc { service } => grpc_check(stream, addr, service)
            .await
            .unwrap_or_else(critical),
    }
}

/// The HTTP status's verdict: 2xx/3xx passing, 429 (the app sheds load) warning, else critical.
pub(crate) fn http_verdict(status: StatusCode) -> CheckStatus {
    if status.is_success() || status.is_redirection() {
        CheckStatus::Passing
    } else if status == StatusCode::TOO_MANY_REQUESTS {
        CheckStatus::Warning
    } else {
        CheckStatus::Critical
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

async fn http_check(
    stream: TcpStream,
    addr: SocketAddr,
    path: &str,
    h2: bool,
) -> Result<Outcome, String> {
    // HTTP/1.1 in origin form with Host; HTTP/2 needs the scheme and authority.
    let uri = if h2 {
        format!("http://{addr}{path}")
    } else {
        path.to_string()
    };
    let req = Request::get(uri.as_str())
        .header(http::header::HOST, addr.to_string())
        .header(http::header::USER_AGENT, "trellis-health-check/1")
        .body(Full::new(Bytes::new()))
        .map_err(|e| format!("GET {path}: {e}"))?;
    let resp = send(stream, req, h2)
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    let status = resp.status();
    Ok(Outcome {
        status: http_verdict(status),
        output: format!("HTTP GET {path}: {status}"),
    })
}

async fn grpc_check(stream: TcpStream, addr: SocketAddr, service: &str) -> Result<Outcome, String> {
    let what = "grpc.health.v1.Health/Check";
    let msg = prost::Message::encode_to_vec(&HealthCheckRequest {
        service: service.to_string(),
    });
    let mut frame = Vec::with_capacity(5 + msg.len());
    frame.push(0);
    frame.extend_from_slice(&u32::try_from(msg.len()).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(&msg);
    let req = Request::post(format!("http://{addr}/grpc.health.v1.Health/Check").as_str())
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .header(http::header::USER_AGENT, "trellis-health-check/1")
        .body(Full::new(Bytes::from(frame)))
        .map_err(|e| format!("{what}: {e}"))?;
    let resp = send(stream, req, true)
        .await
        .map_err(|e| format!("{what}: {e}"))?;
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
