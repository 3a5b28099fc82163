//! TrafficPolicy failure recovery → Envoy fields (docs/XDS.md, "Failure recovery"):
//! `Cluster.connect_timeout`, `circuit_breakers` (thresholds and `retry_budget`),
//! `outlier_detection`, `common_lb_config.healthy_panic_threshold`, the idle timeout in the
//! HTTP protocol options; `RouteAction.timeout`, `max_stream_duration` (grpc-timeout) and
//! `retry_policy`. Pure functions over the validated policy; defaults are applied here so the
//! wire always says what the sidecar will do.

use std::time::Duration as StdDuration;

use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, OutlierDetection,
    circuit_breakers::{Thresholds, thresholds::RetryBudget},
    cluster::CommonLbConfig,
};
use envoy_types::pb::envoy::config::core::v3::RoutingPriority;
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, RetryPolicy, RouteAction,
    header_matcher::HeaderMatchSpecifier,
    retry_policy::{RetryBackOff, RetryHostPredicate, retry_host_predicate},
    route_action::MaxStreamDuration,
};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatcher, StringMatcher, string_matcher::MatchPattern,
};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{Duration, UInt32Value};
use envoy_types::util::pack_any;
use trellis_model::{
    DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_MAX, DEFAULT_BREAKER_LIMIT,
    DEFAULT_BUDGET_MIN_PER_SECOND, DEFAULT_BUDGET_PERCENT, DEFAULT_MAX_BUFFER_BYTES,
    DEFAULT_RETRY_ATTEMPTS, DEFAULT_RETRY_ON, HttpRouteRule, TrafficPolicySpec, duration_or,
    parse_duration, wire,
};

/// The connect timeout when the policy sets none.
pub const DEFAULT_CONNECT_TIMEOUT: StdDuration = StdDuration::from_secs(1);

pub fn pb_duration(d: StdDuration) -> Duration {
    Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn u32v(value: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value })
}

fn parsed(s: Option<&str>) -> Option<StdDuration> {
    s.and_then(|s| parse_duration(s).ok())
}

/// `Cluster.connect_timeout`.
pub fn connect_timeout(policy: Option<&TrafficPolicySpec>) -> Duration {
    let t = policy.and_then(|p| p.timeouts.as_ref());
    pb_duration(duration_or(
        t.and_then(|t| t.connect.as_deref()),
        DEFAULT_CONNECT_TIMEOUT,
    ))
}

/// The idle timeout of pooled upstream connections, when the policy sets one.
pub fn idle_timeout(policy: Option<&TrafficPolicySpec>) -> Option<Duration> {
    let t = policy?.timeouts.as_ref()?;
    parsed(t.idle.as_deref()).map(pb_duration)
}

/// Circuit breakers, retry budget, outlier detection and panic threshold on an EDS cluster.
pub fn apply_to_cluster(cluster: &mut Cluster, policy: Option<&TrafficPolicySpec>) {
    let Some(policy) = policy else { return };
    cluster.connect_timeout = Some(connect_timeout(Some(policy)));
    let breakers = policy.circuit_breakers.as_ref();
    if breakers.is_some() || policy.retries.is_some() {
        let limit = |v: Option<u32>| u32v(v.unwrap_or(DEFAULT_BREAKER_LIMIT));
        let budget = policy.retries.as_ref().map(|r| {
            let b = r.budget.clone().unwrap_or_default();
            RetryBudget {
                budget_percent: Some(Percent {
                    value: f64::from(b.percent.unwrap_or(DEFAULT_BUDGET_PERCENT)),
                }),
                min_retry_concurrency: u32v(
                    b.min_retries_per_second
                        .unwrap_or(DEFAULT_BUDGET_MIN_PER_SECOND),
                ),
                // Requests count for a second (the Trellis sidecar's window).
                budget_interval: Some(pb_duration(StdDuration::from_secs(1))),
            }
        });
        cluster.circuit_breakers = Some(CircuitBreakers {
            thresholds: vec![Thresholds {
                priority: RoutingPriority::Default as i32,
                max_connections: limit(breakers.and_then(|b| b.max_connections)),
                max_pending_requests: limit(breakers.and_then(|b| b.max_pending_requests)),
                max_requests: limit(breakers.and_then(|b| b.max_requests)),
                max_retries: limit(breakers.and_then(|b| b.max_retries)),
                retry_budget: budget,
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    if let Some(o) = &policy.outlier_detection {
        let enforce = |on: bool| u32v(if on { 100 } else { 0 });
        let c5 = o.consecutive_5xx.unwrap_or(5);
        let gw = o.consecutive_gateway_errors.unwrap_or(5);
        let sr = o.success_rate.as_ref();
        cluster.outlier_detection = Some(OutlierDetection {
            consecutive_5xx: u32v(c5.max(1)),
            enforcing_consecutive_5xx: enforce(c5 > 0),
            consecutive_gateway_failure: u32v(gw.max(1)),
            enforcing_consecutive_gateway_failure: enforce(gw > 0),
            interval: Some(pb_duration(duration_or(
                o.interval.as_deref(),
                StdDuration::from_secs(10),
            ))),
            base_ejection_time: Some(pb_duration(duration_or(
                o.base_ejection_time.as_deref(),
                StdDuration::from_secs(30),
            ))),
            max_ejection_time: Some(pb_duration(duration_or(
                o.max_ejection_time.as_deref(),
                StdDuration::from_secs(300),
            ))),
            max_ejection_percent: u32v(o.max_ejection_percent.unwrap_or(10)),
            enforcing_success_rate: enforce(sr.is_some()),
            success_rate_minimum_hosts: u32v(sr.and_then(|s| s.minimum_hosts).unwrap_or(5)),
            success_rate_request_volume: u32v(sr.and_then(|s| s.request_volume).unwrap_or(100)),
            success_rate_stdev_factor: u32v(sr.and_then(|s| s.stdev_factor).unwrap_or(1900)),
            ..Default::default()
        });
        cluster.common_lb_config = Some(CommonLbConfig {
            healthy_panic_threshold: Some(Percent {
                value: f64::from(o.panic_threshold.unwrap_or(50)),
            }),
            ..Default::default()
        });
    }
}

/// The idempotent methods (RFC 9110 §9.2.2) as one anchored RE2 alternative.
pub const IDEMPOTENT_METHODS_REGEX: &str = "GET|HEAD|OPTIONS|PUT|DELETE|TRACE";

/// Timeouts and retries on a route to `policy`'s service, with `rule`'s overrides.
pub fn apply_to_route(
    action: &mut RouteAction,
    policy: Option<&TrafficPolicySpec>,
    rule: Option<&HttpRouteRule>,
) {
    let timeouts = policy.and_then(|p| p.timeouts.as_ref());
    let rule_timeouts = rule.and_then(|r| r.timeouts.as_ref());
    let request = parsed(rule_timeouts.and_then(|t| t.request.as_deref()))
        .or_else(|| parsed(timeouts.and_then(|t| t.request.as_deref())));
    let per_try = parsed(rule_timeouts.and_then(|t| t.backend_request.as_deref()))
        .or_else(|| parsed(timeouts.and_then(|t| t.backend_request.as_deref())));
    if let Some(r) = request {
        action.timeout = Some(pb_duration(r));
        // Honour grpc-timeout, capped by the route's timeout (Envoy ignores it otherwise).
        action.max_stream_duration = Some(MaxStreamDuration {
            grpc_timeout_header_max: Some(pb_duration(r)),
            ..Default::default()
        });
    } else if policy.is_some() || rule.is_some() {
        // No route timeout: Envoy's default is 15s, Trellis' none; say "none" explicitly.
        action.timeout = Some(pb_duration(StdDuration::ZERO));
        action.max_stream_duration = Some(MaxStreamDuration {
            grpc_timeout_header_max: Some(pb_duration(StdDuration::ZERO)),
            ..Default::default()
        });
    }
    let retries = policy.and_then(|p| p.retries.as_ref());
    let rule_retry = rule.and_then(|r| r.retry.as_ref());
    if retries.is_none() && rule_retry.is_none() {
        if let Some(t) = per_try {
            action.retry_policy = Some(RetryPolicy {
                retry_on: "reset".to_string(),
                num_retries: u32v(0),
                per_try_timeout: Some(pb_duration(t)),
                ..Default::default()
            });
        }
        return;
    }
    let base = retries.cloned().unwrap_or_default();
    let mut retry_on: Vec<String> = if base.retry_on.is_empty() {
        DEFAULT_RETRY_ON.iter().map(|s| s.to_string()).collect()
    } else {
        base.retry_on.clone()
    };
    let mut codes: Vec<u32> = base
        .retriable_status_codes
        .iter()
        .map(|c| u32::from(*c))
        .collect();
    let mut attempts = base.attempts.unwrap_or(DEFAULT_RETRY_ATTEMPTS);
    let backoff = base.backoff.clone().unwrap_or_default();
    let mut base_interval = duration_or(backoff.base_interval.as_deref(), DEFAULT_BACKOFF_BASE);
    let mut max_interval = parsed(backoff.max_interval.as_deref())
        .unwrap_or_else(|| DEFAULT_BACKOFF_MAX.max(base_interval));
    if let Some(r) = rule_retry {
        if let Some(a) = r.attempts {
            attempts = a;
        }
        if !r.codes.is_empty() {
            codes = r.codes.iter().map(|c| u32::from(*c)).collect();
        }
        if let Some(b) = parsed(r.backoff.as_deref()) {
            base_interval = b;
            max_interval = b.saturating_mul(10);
        }
    }
    if !codes.is_empty() && !retry_on.iter().any(|c| c == "retriable-status-codes") {
        retry_on.push("retriable-status-codes".to_string());
    }
    codes.sort_unstable();
    codes.dedup();
    let mut retriable_request_headers = Vec::new();
    if !base.retry_non_idempotent {
        retriable_request_headers.push(HeaderMatcher {
            name: ":method".to_string(),
            header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(MatchPattern::SafeRegex(RegexMatcher {
                    regex: IDEMPOTENT_METHODS_REGEX.to_string(),
                    engine_type: None,
                })),
                ..Default::default()
            })),
            ..Default::default()
        });
    }
    action.retry_policy = Some(RetryPolicy {
        retry_on: retry_on.join(","),
        num_retries: u32v(attempts),
        per_try_timeout: per_try.map(pb_duration),
        retriable_status_codes: codes,
        retry_back_off: Some(RetryBackOff {
            base_interval: Some(pb_duration(base_interval)),
            max_interval: Some(pb_duration(max_interval)),
        }),
        retriable_request_headers,
        retry_host_predicate: vec![RetryHostPredicate {
            name: wire::PREVIOUS_HOSTS_PREDICATE.to_string(),
            config_type: Some(retry_host_predicate::ConfigType::TypedConfig(pack_any(
                PreviousHostsPredicate {},
            ))),
        }],
        host_selection_retry_max_attempts: 3,
        ..Default::default()
    });
}

/// `Route.per_request_buffer_limit_bytes`: how much of a body is kept for a retry.
pub fn buffer_limit(policy: Option<&TrafficPolicySpec>) -> Option<u32> {
    policy?
        .retries
        .as_ref()
        .map(|r| r.max_buffer_bytes.unwrap_or(DEFAULT_MAX_BUFFER_BYTES))
}

#[cfg(test)]
mod tests;
