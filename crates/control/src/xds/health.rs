//! TrafficPolicy `healthCheck` → `Cluster.health_checks` (docs/XDS.md, "Active health
//! checks"), and `loadBalancer.localityFailover` → per-node priorities and the
//! `overprovisioning_factor` of each ClusterLoadAssignment ("Locality failover"). Pure
//! functions over the validated policy, defaults filled in so the wire says what the sidecar
//! does.

use std::time::Duration as StdDuration;

use envoy_types::pb::envoy::config::core::v3::HealthCheck;
use envoy_types::pb::envoy::config::core::v3::health_check::{
    GrpcHealthCheck, HealthChecker, HttpHealthCheck, TcpHealthCheck,
};
use envoy_types::pb::envoy::r#type::v3::{CodecClientType, Int64Range};
use envoy_types::pb::google::protobuf::UInt32Value;
use trellis_model::{
    ActiveHealthCheck, DEFAULT_HC_EXPECTED, DEFAULT_HC_HEALTHY_THRESHOLD, DEFAULT_HC_INTERVAL,
    DEFAULT_HC_TIMEOUT, DEFAULT_HC_UNHEALTHY_THRESHOLD, LocalityFailover, Protocol,
    TrafficPolicySpec, duration_or,
};

use super::resilience::pb_duration;

/// The first check of an endpoint waits a random time up to this (or the interval, if
/// shorter), so that the checks of many sidecars do not arrive together.
pub const MAX_INITIAL_JITTER: StdDuration = StdDuration::from_secs(1);

/// `Cluster.health_checks` for the policy's `healthCheck` (empty without one). `h2`: the
/// checks travel as HTTP/2 (the service speaks HTTP/2, or its endpoints are reached over mTLS,
/// whose ALPN is `h2`).
pub fn health_checks(policy: Option<&TrafficPolicySpec>, h2: bool) -> Vec<HealthCheck> {
    let Some(h) = policy.and_then(|p| p.health_check.as_ref()) else {
        return Vec::new();
    };
    vec![health_check(h, h2)]
}

fn health_check(h: &ActiveHealthCheck, h2: bool) -> HealthCheck {
    let interval = duration_or(h.interval.as_deref(), DEFAULT_HC_INTERVAL);
    let timeout = duration_or(h.timeout.as_deref(), DEFAULT_HC_TIMEOUT);
    let checker = if let Some(http) = &h.http {
        HealthChecker::HttpHealthCheck(HttpHealthCheck {
            path: http.path.clone(),
            expected_statuses: expected_ranges(&http.expected_statuses),
            codec_client_type: if h2 {
                CodecClientType::Http2
            } else {
                CodecClientType::Http1
            } as i32,
            ..Default::default()
        })
    } else if let Some(g) = &h.grpc {
        HealthChecker::GrpcHealthCheck(GrpcHealthCheck {
            service_name: g.service.clone(),
            ..Default::default()
        })
    } else {
        HealthChecker::TcpHealthCheck(TcpHealthCheck::default())
    };
    let u = |v: u32| Some(UInt32Value { value: v });
    HealthCheck {
        timeout: Some(pb_duration(timeout)),
        interval: Some(pb_duration(interval)),
        initial_jitter: Some(pb_duration(interval.min(MAX_INITIAL_JITTER))),
        // Envoy checks an idle cluster only every 60s unless told; the sidecar always checks
        // at `interval`.
        no_traffic_interval: Some(pb_duration(interval)),
        healthy_threshold: u(h.healthy_threshold.unwrap_or(DEFAULT_HC_HEALTHY_THRESHOLD)),
        unhealthy_threshold: u(h
            .unhealthy_threshold
            .unwrap_or(DEFAULT_HC_UNHEALTHY_THRESHOLD)),
        health_checker: Some(checker),
        ..Default::default()
    }
}

/// The expected statuses as Envoy's half-open ranges, adjacent codes merged; every 2xx when
/// none is listed.
pub fn expected_ranges(codes: &[u16]) -> Vec<Int64Range> {
    if codes.is_empty() {
        return vec![Int64Range {
            start: i64::from(*DEFAULT_HC_EXPECTED.start()),
            end: i64::from(*DEFAULT_HC_EXPECTED.end()) + 1,
        }];
    }
    let mut sorted: Vec<i64> = codes.iter().map(|c| i64::from(*c)).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out: Vec<Int64Range> = Vec::new();
    for c in sorted {
        match out.last_mut() {
            Some(r) if r.end == c => r.end = c + 1,
            _ => out.push(Int64Range {
                start: c,
                end: c + 1,
            }),
        }
    }
    out
}

/// Whether health checks of a service travel as HTTP/2.
pub fn checks_over_h2(protocol: Protocol, mtls: bool) -> bool {
    mtls || matches!(protocol, Protocol::Http2 | Protocol::Grpc)
}

/// The locality settings that apply for a caller in `zone`: `None` (one priority, no
/// overprovisioning factor) when the policy has no enabled `localityFailover` or the caller
/// has no zone.
pub fn locality<'a>(
    policy: Option<&'a TrafficPolicySpec>,
    zone: Option<&str>,
) -> Option<&'a LocalityFailover> {
    zone?;
    policy?
        .load_balancer
        .locality_failover
        .as_ref()
        .filter(|l| l.enabled)
}

/// The priority of endpoints in `endpoint_zone` for a caller in `caller_zone`: 0 in the
/// caller's zone, 1 elsewhere.
pub fn priority(caller_zone: &str, endpoint_zone: &str) -> u32 {
    u32::from(caller_zone != endpoint_zone)
}

#[cfg(test)]
mod tests;
