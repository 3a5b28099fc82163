//! Fault injection (`faults`) on a TrafficPolicy, for every caller of the service, and on an
//! HTTPRoute rule, where it replaces the service's faults for the requests the rule matches.
//! Istio's shape: a fixed `delay` and an `abort` (HTTP or gRPC status), each for a percentage
//! of the requests, optionally only for requests whose `headers` match. The calling sidecar
//! injects them on its outbound path (docs/RESOURCES.md, "Fault injection").

use serde::{Deserialize, Serialize};

use crate::HeaderMatch;

/// `fixedDelay` at most this long: longer is a typo, not an experiment.
pub const MAX_FAULT_DELAY: std::time::Duration = std::time::Duration::from_secs(3600);
/// Percentages are carried as parts per million (Envoy's `FractionalPercent` MILLION): a
/// percentage has at most four decimals.
pub const FAULT_PERCENT_SCALE: f64 = 10_000.0;

/// gRPC status names, index = code (docs/RESOURCES.md; `OK` cannot be injected).
pub const GRPC_CODES: &[&str] = &[
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Faults {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
    /// All must match for a request to be faulted; empty: every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    /// How long a delayed request waits before it is forwarded (`50ms`).
    pub fixed_delay: String,
    /// Share of the requests delayed, 0..=100 with up to four decimals (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    /// The HTTP status answered (200..=599); exactly one of this and `grpcStatus`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// The gRPC status answered, a code (1..=16) or its name (`UNAVAILABLE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<GrpcStatus>,
    /// Share of the requests aborted, 0..=100 with up to four decimals (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<f64>,
}

/// A gRPC status as written: `14` or `UNAVAILABLE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum GrpcStatus {
    Code(u32),
    Name(String),
}

impl GrpcStatus {
    /// The numeric code; `None` for an unknown name.
    pub fn code(&self) -> Option<u32> {
        match self {
            GrpcStatus::Code(c) => Some(*c),
            GrpcStatus::Name(n) => GRPC_CODES
                .iter()
                .position(|c| c == n)
                .and_then(|i| u32::try_from(i).ok()),
        }
    }
}

/// A validated percentage (`None` = 100) as parts per million.
pub fn fault_per_million(percentage: Option<f64>) -> u32 {
    let p = percentage.unwrap_or(100.0).clamp(0.0, 100.0);
    (p * FAULT_PERCENT_SCALE).round() as u32
}
