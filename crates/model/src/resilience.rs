//! Failure recovery settings of a TrafficPolicy (timeouts, retries, outlier detection, circuit
//! breakers) and their per-rule overrides on an HTTPRoute (Gateway API's `timeouts` and GEP-1731
//! `retry`). See docs/RESOURCES.md, "Failure recovery", for the defaults and semantics.
//!
//! Durations are kept as written (`250ms`) and checked by validation; [`Resolved`] helpers turn
//! a validated policy into numbers with the defaults applied, for the xDS translation.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::parse_duration;

/// `retries.backoff.baseInterval` default (Envoy's).
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);
/// `retries.backoff.maxInterval` default: ten times the base, as Envoy.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_millis(250);
/// `retries.attempts` default (retries after the first try).
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 2;
/// `retries.budget.percent` default: retries at most 20% of requests.
pub const DEFAULT_BUDGET_PERCENT: u32 = 20;
/// `retries.budget.minRetriesPerSecond` default.
pub const DEFAULT_BUDGET_MIN_PER_SECOND: u32 = 3;
/// `retries.maxBufferBytes` default: request bodies up to this size are kept for replay.
pub const DEFAULT_MAX_BUFFER_BYTES: u32 = 64 * 1024;
/// `retries.retryOn` default.
pub const DEFAULT_RETRY_ON: &[&str] = &["connect-failure", "reset", "gateway-error", "unavailable"];
/// Every `retryOn` condition (Envoy's `x-envoy-retry-on` / `x-envoy-retry-grpc-on` names).
pub const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "retriable-status-codes",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];
/// The circuit-breaker limit of every field left out (Envoy's default).
pub const DEFAULT_BREAKER_LIMIT: u32 = 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Timeouts {
    /// Connecting to an endpoint (default 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<String>,
    /// The whole request, retries and backoff included, until the response head (default: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// One try (Gateway API's `backendRequest`; default: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request: Option<String>,
    /// An idle pooled HTTP connection is closed after this (default 90s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicy {
    /// Retries after the first try (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// When to retry (default `connect-failure, reset, gateway-error, unavailable`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retry_on: Vec<String>,
    /// HTTP statuses that are retried too (e.g. 409, 429).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retriable_status_codes: Vec<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<RetryBudget>,
    /// Also retry POST, PATCH, CONNECT (default: only idempotent methods).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retry_non_idempotent: bool,
    /// Request bodies up to this many bytes are buffered for replay (default 65536).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_buffer_bytes: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backoff {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_interval: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    /// Retries may add at most this percentage of the requests (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
    /// Retries always allowed per second, whatever the request rate (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_retries_per_second: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive 5xx answers that eject an endpoint (default 5; 0 = off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_5xx: Option<u32>,
    /// Consecutive gateway errors (502/503/504, connect failure, reset, timeout; default 5; 0 = off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_errors: Option<u32>,
    /// How often success rates are evaluated (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Ejection time = this × the number of times the endpoint was ejected (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<String>,
    /// Cap of the ejection time (default 300s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_time: Option<String>,
    /// At most this share of the endpoints is ejected at once, but always at least one (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
    /// Below this share of available endpoints, balance over all of them (default 50; 0 = never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub panic_threshold: Option<u32>,
    /// Success-rate ejection (Envoy's); off unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<SuccessRate>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SuccessRate {
    /// Hosts with enough requests needed to evaluate (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_hosts: Option<u32>,
    /// Requests in an interval for a host to count (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_volume: Option<u32>,
    /// Ejected below mean − stdevFactor/1000 × stdev (default 1900).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdev_factor: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreakers {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

/// `timeouts` on an HTTPRoute rule (Gateway API).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteTimeouts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request: Option<String>,
}

/// `retry` on an HTTPRoute rule (Gateway API GEP-1731): overrides the service's retries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteRetry {
    /// HTTP statuses to retry (besides connect failures and resets).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub codes: Vec<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// The base backoff interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
}

/// A validated duration field, or its default (validation rejected bad ones already).
pub fn duration_or(s: Option<&str>, default: Duration) -> Duration {
    s.and_then(|s| parse_duration(s).ok()).unwrap_or(default)
}

/// `healthCheck.interval` default.
pub const DEFAULT_HC_INTERVAL: Duration = Duration::from_secs(5);
/// `healthCheck.timeout` default.
pub const DEFAULT_HC_TIMEOUT: Duration = Duration::from_secs(1);
/// `healthCheck.healthyThreshold` default (the sidecar's app check uses the same).
pub const DEFAULT_HC_HEALTHY_THRESHOLD: u32 = 2;
/// `healthCheck.unhealthyThreshold` default.
pub const DEFAULT_HC_UNHEALTHY_THRESHOLD: u32 = 3;
/// `healthCheck.http.expectedStatuses` default: every 2xx.
pub const DEFAULT_HC_EXPECTED: std::ops::RangeInclusive<u16> = 200..=299;

/// Active health checking of a service's endpoints by every calling sidecar (Envoy's
/// `Cluster.health_checks`). Exactly one of `http`, `tcp`, `grpc`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ActiveHealthCheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpHealthCheck>,
    /// A connection (and, to an mTLS endpoint, the mTLS handshake) is a pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpHealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcHealthCheck>,
    /// Time between two checks of one endpoint (default 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// One check's limit (default 1s; at most `interval`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Consecutive passes that readmit an unhealthy endpoint (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<u32>,
    /// Consecutive failures that take an endpoint out (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpHealthCheck {
    /// The request path, e.g. `/healthz`.
    pub path: String,
    /// Statuses that pass (default: any 2xx).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expected_statuses: Vec<u16>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpHealthCheck {}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcHealthCheck {
    /// The `grpc.health.v1` service name asked about (default: the server as a whole).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
}

/// `loadBalancer.localityFailover` default spillover threshold (percent).
pub const DEFAULT_SPILLOVER_THRESHOLD: u32 = 70;

/// Prefer endpoints in the caller's zone; spill to other zones when the share of available
/// endpoints in the caller's zone falls below `spilloverThreshold` percent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityFailover {
    /// Default true (the block's presence turns it on).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// 1..=100, default 70.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spillover_threshold: Option<u32>,
}

fn yes() -> bool {
    true
}

impl LocalityFailover {
    /// Envoy's `overprovisioning_factor` for the threshold: a priority gets
    /// min(100, healthy% × factor / 100) of the traffic, so it starts to spill below
    /// 10000 / factor percent.
    pub fn overprovisioning_factor(&self) -> u32 {
        let t = self
            .spillover_threshold
            .unwrap_or(DEFAULT_SPILLOVER_THRESHOLD)
            .clamp(1, 100);
        (10_000 + t / 2) / t
    }
}
