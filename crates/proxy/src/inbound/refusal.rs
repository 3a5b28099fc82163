//! Requests the inbound listener refuses before they reach the app, and the answer each gets:
//! an HTTP status with `x-trellis-reason` and a one-line body, or, for gRPC, a trailers-only
//! response (HTTP 200, `grpc-status`, `grpc-message`) that gRPC clients surface as a status.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::authn::AuthnError;
use crate::authz::PathError;
use crate::http::{ProxyBody, grpc_reply, local_reply};

/// `x-trellis-reason` values of the refusals (stable tokens, for dashboards and tests).
pub(crate) const NOT_READY: &str = "not_ready";
pub(crate) const BAD_PATH: &str = "bad_path";
pub(crate) const UNAUTHENTICATED: &str = "unauthenticated";
pub(crate) const RBAC_DENIED: &str = "rbac_denied";
pub(crate) const RATE_LIMITED: &str = trellis_model::wire::RATE_LIMITED_REASON;

/// gRPC status codes used here.
const GRPC_INTERNAL: u16 = 13;
const GRPC_PERMISSION_DENIED: u16 = 7;
const GRPC_UNAUTHENTICATED: u16 = 16;
const GRPC_UNAVAILABLE: u16 = 14;
const GRPC_RESOURCE_EXHAUSTED: u16 = 8;

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

    fn grpc_status(&self) -> u16 {
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
            grpc_reply(self.grpc_status(), self.reason(), &self.message())
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
