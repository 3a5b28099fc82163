//! Requests the inbound listener refuses before they reach the app, and the answer each gets:
//! an HTTP status with `x-trellis-reason` and a one-line body, or, for gRPC, a trailers-only
//! response (HTTP 200, `grpc-status`, `grpc-message`) that gRPC clients surface as a status.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};

use crate::authn::AuthnError;
use crate::authz::PathError;
use crate::http::{ProxyBody, REASON, local_reply};

/// `x-trellis-reason` values of the refusals (stable tokens, for dashboards and tests).
pub(crate) const NOT_READY: &str = "not_ready";
pub(crate) const BAD_PATH: &str = "bad_path";
pub(crate) const UNAUTHENTICATED: &str = "unauthenticated";
pub(crate) const RBAC_DENIED: &str = "rbac_denied";
pub(crate) const RATE_LIMITED: &str = trellis_model::wire::RATE_LIMITED_REASON;

/// gRPC status codes used here.
const GRPC_INTERNAL: &str = "13";
const GRPC_PERMISSION_DENIED: &str = "7";
const GRPC_UNAUTHENTICATED: &str = "16";
const GRPC_UNAVAILABLE: &str = "14";
const GRPC_RESOURCE_EXHAUSTED: &str = "8";

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The inbound security config has not been received yet (fail closed).
    NotReady,
    /// The path cannot be normalized.
    BadPath(PathError),
    /// A token was given and does not verify, or cannot be checked (fail closed).
    Unauthenticated(AuthnError),
    /// An authorization policy denies the request; the reason is fixed text.
    Denied(&'static str),
    /// Over a RateLimitPolicy's limit; a token is back in `retry_after_secs` (at least 1).
    RateLimited { retry_after_secs: u64 },
}

/// True for gRPC requests (`content-type: application/grpc`, `application/grpc+proto`, ...).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

impl Refusal {
    /// The stable `x-trellis-reason` token.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NotReady => NOT_READY,
            Refusal::BadPath(_) => BAD_PATH,
            Refusal::Unauthenticated(_) => UNAUTHENTICATED,
            Refusal::Denied(_) => RBAC_DENIED,
            Refusal::RateLimited { .. } => RATE_LIMITED,
        }
    }

    /// What the caller is told (no policy names, no token contents).
    pub fn message(&self) -> String {
        match self {
            Refusal::NotReady => "trellis: this sidecar has not received its inbound security \
                 policy yet; retry shortly"
                .to_string(),
            Refusal::BadPath(e) => format!("trellis: bad request path: {e}"),
            Refusal::Unauthenticated(e) => format!("trellis: unauthenticated: {e}"),
            Refusal::Denied(reason) => format!("trellis: access denied: {reason}"),
            Refusal::RateLimited { retry_after_secs } => format!(
                "trellis: rate limited: too many requests to this service; retry after {retry_after_secs}s"
            ),
        }
    }

    fn http_status(&self) -> StatusCode {
        match self {
            Refusal::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::BadPath(_) => StatusCode::BAD_REQUEST,
            Refusal::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Refusal::Denied(_) => StatusCode::FORBIDDEN,
            Refusal::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    fn grpc_status(&self) -> &'static str {
        match self {
            Refusal::NotReady => GRPC_UNAVAILABLE,
            // What gRPC maps HTTP 400 to.
            Refusal::BadPath(_) => GRPC_INTERNAL,
            Refusal::Unauthenticated(_) => GRPC_UNAUTHENTICATED,
            Refusal::Denied(_) => GRPC_PERMISSION_DENIED,
            Refusal::RateLimited { .. } => GRPC_RESOURCE_EXHAUSTED,
        }
    }

    /// The response: HTTP, or gRPC trailers-only when `grpc`.
    pub fn response(&self, grpc: bool) -> Response<ProxyBody> {
        let mut resp = if grpc {
            let mut resp = Response::new(Either::Right(Full::new(Bytes::new())));
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            h.insert(GRPC_STATUS, HeaderValue::from_static(self.grpc_status()));
            if let Ok(v) = HeaderValue::from_str(&grpc_message(&self.message())) {
                h.insert(GRPC_MESSAGE, v);
            }
            h.insert(REASON, HeaderValue::from_static(self.reason()));
            resp
        } else {
            local_reply(
                self.http_status(),
                self.reason(),
                format!("{}\n", self.message()),
            )
        };
        match self {
            Refusal::Unauthenticated(e) => {
                let (_, challenge) = e.challenge();
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, challenge);
            }
            Refusal::RateLimited { retry_after_secs } => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            Refusal::NotReady if !grpc => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        resp
    }
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
