//! Retry decisions: which outcomes a policy retries (Envoy's `retry_on` names), which methods
//! may be retried, and the backoff before a retry (exponential, full jitter).

use std::time::Duration;

use http::{HeaderMap, HeaderName, Method};

/// Retry conditions, as a bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryOn(u16);

impl RetryOn {
    pub const FIVE_XX: RetryOn = RetryOn(1);
    pub const GATEWAY_ERROR: RetryOn = RetryOn(1 << 1);
    pub const RESET: RetryOn = RetryOn(1 << 2);
    pub const CONNECT_FAILURE: RetryOn = RetryOn(1 << 3);
    pub const STATUS_CODES: RetryOn = RetryOn(1 << 4);
    pub const GRPC_CANCELLED: RetryOn = RetryOn(1 << 5);
    pub const GRPC_DEADLINE_EXCEEDED: RetryOn = RetryOn(1 << 6);
    pub const GRPC_INTERNAL: RetryOn = RetryOn(1 << 7);
    pub const GRPC_RESOURCE_EXHAUSTED: RetryOn = RetryOn(1 << 8);
    pub const GRPC_UNAVAILABLE: RetryOn = RetryOn(1 << 9);

    const NAMES: [(&'static str, RetryOn); 10] = [
        ("5xx", Self::FIVE_XX),
        ("gateway-error", Self::GATEWAY_ERROR),
        ("reset", Self::RESET),
        ("connect-failure", Self::CONNECT_FAILURE),
        ("retriable-status-codes", Self::STATUS_CODES),
        ("cancelled", Self::GRPC_CANCELLED),
        ("deadline-exceeded", Self::GRPC_DEADLINE_EXCEEDED),
        ("internal", Self::GRPC_INTERNAL),
        ("resource-exhausted", Self::GRPC_RESOURCE_EXHAUSTED),
        ("unavailable", Self::GRPC_UNAVAILABLE),
    ];

    pub fn contains(self, other: RetryOn) -> bool {
        self.0 & other.0 == other.0
    }

    fn any(self, other: RetryOn) -> bool {
        self.0 & other.0 != 0
    }

    pub fn union(self, other: RetryOn) -> RetryOn {
        RetryOn(self.0 | other.0)
    }

    /// Parses Envoy's comma-separated `retry_on`; an unknown name is an error (NACK).
    pub fn parse(s: &str) -> Result<RetryOn, String> {
        let mut out = RetryOn::default();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let Some((_, bit)) = Self::NAMES.iter().find(|(n, _)| *n == name) else {
                return Err(format!(
                    "retry_on `{name}` is not supported (expected any of {})",
                    Self::NAMES.map(|(n, _)| n).join(", ")
                ));
            };
            out = out.union(*bit);
        }
        Ok(out)
    }
}

/// A route's retry policy (from `RouteAction.retry_policy`).
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub attempts: u32,
    pub on: RetryOn,
    pub status_codes: Vec<u16>,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Only GET, HEAD, OPTIONS, PUT, DELETE, TRACE are retried.
    pub idempotent_only: bool,
    /// Bodies up to this many bytes are buffered for replay; larger ones are not retried.
    pub buffer_limit: usize,
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response head: its status and, for gRPC, the `grpc-status` of a trailers-only answer.
    Response { status: u16, grpc: Option<u32> },
    /// No connection could be made (nothing was sent).
    ConnectFailure,
    /// The connection failed after the request was sent, before a response head.
    Reset,
    /// The per-try timeout fired.
    Timeout,
}

impl Outcome {
    /// A gateway error as outlier detection and `gateway-error` see it: 502, 503, 504, or no
    /// answer at all.
    pub fn is_gateway_error(self) -> bool {
        match self {
            Outcome::Response { status, .. } => matches!(status, 502..=504),
            _ => true,
        }
    }

    /// A 5xx answer or no answer.
    pub fn is_5xx(self) -> bool {
        match self {
            Outcome::Response { status, .. } => status >= 500,
            _ => true,
        }
    }
}

/// The `grpc-status` in a response head (a trailers-only answer), if any.
pub fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
    let v = headers.get(&GRPC_STATUS)?.to_str().ok()?;
    if v.len() > 3 {
        return None;
    }
    v.parse().ok()
}

/// Whether `policy` retries an attempt that ended with `outcome`.
pub fn retriable(policy: &RetryPolicy, outcome: Outcome) -> bool {
    let on = policy.on;
    match outcome {
        Outcome::ConnectFailure => on.any(
            RetryOn::CONNECT_FAILURE
                .union(RetryOn::FIVE_XX)
                .union(RetryOn::GATEWAY_ERROR),
        ),
        Outcome::Reset => on.any(
            RetryOn::RESET
                .union(RetryOn::FIVE_XX)
                .union(RetryOn::GATEWAY_ERROR),
        ),
        Outcome::Timeout => on.any(RetryOn::FIVE_XX.union(RetryOn::GATEWAY_ERROR)),
        Outcome::Response { status, grpc } => {
            (status >= 500 && on.contains(RetryOn::FIVE_XX))
                || (matches!(status, 502..=504) && on.contains(RetryOn::GATEWAY_ERROR))
                || (on.contains(RetryOn::STATUS_CODES) && policy.status_codes.contains(&status))
                || grpc.is_some_and(|g| grpc_retriable(on, g))
        }
    }
}

fn grpc_retriable(on: RetryOn, code: u32) -> bool {
    let bit = match code {
        1 => RetryOn::GRPC_CANCELLED,
        4 => RetryOn::GRPC_DEADLINE_EXCEEDED,
        8 => RetryOn::GRPC_RESOURCE_EXHAUSTED,
        13 => RetryOn::GRPC_INTERNAL,
        14 => RetryOn::GRPC_UNAVAILABLE,
        _ => return false,
    };
    on.contains(bit)
}

/// Whether a request with `method` may be retried at all under `policy`.
pub fn method_retriable(policy: &RetryPolicy, method: &Method) -> bool {
    !policy.idempotent_only
        || matches!(
            *method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::PUT
                | Method::DELETE
                | Method::TRACE
        )
}

/// The wait before retry number `retry` (0 for the first retry): uniformly random in
/// `[0, min(max, base × 2^retry)]` ("full jitter"); `unit` is a random number in `[0, 1)`.
pub fn backoff(base: Duration, max: Duration, retry: u32, unit: f64) -> Duration {
    let ceiling = base
        .checked_mul(1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(max)
        .min(max);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}
