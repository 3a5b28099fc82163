//! Timeouts, retries, outlier detection and circuit breakers: valid examples parse with their
//! fields, and every bad value is reported naming its field, with a hint.

use super::super::*;
use crate::{Resource, TrafficPolicySpec};

/// Knows the service `catalog` (also used by the fault tests).
pub(super) struct Store;

impl KnownServices for Store {
    fn service_exists(&self, name: &str) -> bool {
        name == "catalog"
    }
    fn subsets(&self, _service: &str) -> Vec<String> {
        Vec::new()
    }
}

/// A TrafficPolicy for `catalog` with `spec` (indented under `spec:`) after its targetRef.
pub(super) fn policy(spec: &str) -> String {
    format!(
        "apiVersion: trellis.dev/v1alpha1
kind: TrafficPolicy
metadata:
  name: catalog
spec:
  targetRef: {{ name: catalog }}
{spec}"
    )
}

/// An HTTPRoute for `catalog` whose one rule has `rule_extra` (indented) after its backendRefs.
pub(super) fn route(rule_extra: &str) -> String {
    format!(
        "apiVersion: trellis.dev/v1alpha1
kind: HTTPRoute
metadata:
  name: r
spec:
  parentRefs: [{{ name: catalog }}]
  rules:
    - backendRefs: [{{ name: catalog }}]
{rule_extra}"
    )
}

pub(super) fn errors(text: &str) -> Vec<String> {
    match parse_and_validate("mesh.yaml", text, &Store) {
        Ok(_) => Vec::new(),
        Err(e) => e.errors.iter().map(ToString::to_string).collect(),
    }
}

const FULL: &str = "  timeouts: { connect: 500ms, request: 2s, backendRequest: 500ms, idle: 30s }
  retries:
    attempts: 3
    retryOn: [5xx, reset, connect-failure, retriable-status-codes, unavailable, resource-exhausted]
    retriableStatusCodes: [409, 429]
    backoff: { baseInterval: 10ms, maxInterval: 100ms }
    budget: { percent: 25, minRetriesPerSecond: 5 }
    retryNonIdempotent: true
    maxBufferBytes: 1024
  outlierDetection:
    consecutive5xx: 3
    consecutiveGatewayErrors: 2
    interval: 1s
    baseEjectionTime: 5s
    maxEjectionTime: 60s
    maxEjectionPercent: 50
    panicThreshold: 30
    successRate: { minimumHosts: 3, requestVolume: 10, stdevFactor: 1000 }
  circuitBreakers: { maxConnections: 10, maxPendingRequests: 5, maxRequests: 20, maxRetries: 3 }
";

#[test]
fn a_full_policy_parses_into_its_fields() {
    let text = policy(FULL);
    assert!(errors(&text).is_empty(), "{:?}", errors(&text));
    let docs = parse_indexed("mesh.yaml", &text).expect("valid");
    let Resource::TrafficPolicy(p) = &docs[0].resource else {
        panic!("expected a TrafficPolicy");
    };
    let TrafficPolicySpec {
        timeouts,
        retries,
        outlier_detection,
        circuit_breakers,
        ..
    } = &p.spec;
    assert_eq!(
        timeouts.as_ref().and_then(|t| t.backend_request.as_deref()),
        Some("500ms")
    );
    let r = retries.as_ref().expect("retries");
    assert_eq!(r.attempts, Some(3));
    assert_eq!(r.retriable_status_codes, vec![409, 429]);
    assert!(r.retry_non_idempotent);
    let o = outlier_detection.as_ref().expect("outlier");
    assert_eq!(o.consecutive_5xx, Some(3));
    assert_eq!(
        o.success_rate.as_ref().and_then(|s| s.stdev_factor),
        Some(1000)
    );
    assert_eq!(
        circuit_breakers.as_ref().and_then(|c| c.max_requests),
        Some(20)
    );
}

#[test]
fn a_route_rule_takes_gateway_api_timeouts_and_retry() {
    let text = route(
        "      timeouts: { request: 1s, backendRequest: 250ms }
      retry: { codes: [503, 429], attempts: 2, backoff: 20ms }
",
    );
    assert!(errors(&text).is_empty(), "{:?}", errors(&text));
}

#[test]
fn bad_values_name_their_field() {
    let cases: &[(&str, String, &str)] = &[
        (
            "bad duration",
            policy("  timeouts: { request: 2 seconds }\n"),
            "spec.timeouts.request: `2 seconds`",
        ),
        (
            "zero duration",
            policy("  timeouts: { request: 0s }\n"),
            "spec.timeouts.request: `0s` must be positive",
        ),
        (
            "absurd duration",
            policy("  timeouts: { idle: 100000h }\n"),
            "spec.timeouts.idle: `100000h` is too long",
        ),
        (
            "try longer than request",
            policy("  timeouts: { request: 1s, backendRequest: 2s }\n"),
            "spec.timeouts.backendRequest: 2s is longer than timeouts.request (1s)",
        ),
        (
            "too many attempts",
            policy("  retries: { attempts: 1000 }\n"),
            "spec.retries.attempts: 1000 is out of range: must be between 0 and 10",
        ),
        (
            "unknown condition",
            policy("  retries: { retryOn: [5xxx] }\n"),
            "spec.retries.retryOn[0]: unknown value `5xxx`",
        ),
        (
            "status code out of range",
            policy("  retries: { retriableStatusCodes: [99] }\n"),
            "spec.retries.retriableStatusCodes[0]: 99 is out of range",
        ),
        (
            "status condition without codes",
            policy("  retries: { retryOn: [retriable-status-codes] }\n"),
            "spec.retries.retryOn: `retriable-status-codes` needs `retriableStatusCodes`",
        ),
        (
            "backoff cap below base",
            policy("  retries: { backoff: { baseInterval: 100ms, maxInterval: 10ms } }\n"),
            "spec.retries.backoff.maxInterval: 10ms is shorter than baseInterval (100ms)",
        ),
        (
            "budget over 100%",
            policy("  retries: { budget: { percent: 500 } }\n"),
            "spec.retries.budget.percent: 500 is out of range",
        ),
        (
            "huge buffer",
            policy("  retries: { maxBufferBytes: 4294967295 }\n"),
            "spec.retries.maxBufferBytes: 4294967295 is out of range",
        ),
        (
            "ejection cap below base",
            policy("  outlierDetection: { baseEjectionTime: 30s, maxEjectionTime: 10s }\n"),
            "spec.outlierDetection.maxEjectionTime: 10s is shorter than baseEjectionTime (30s)",
        ),
        (
            "ejection percent",
            policy("  outlierDetection: { maxEjectionPercent: 101 }\n"),
            "spec.outlierDetection.maxEjectionPercent: 101 is out of range",
        ),
        (
            "zero breaker",
            policy("  circuitBreakers: { maxRequests: 0 }\n"),
            "spec.circuitBreakers.maxRequests: 0 is out of range: must be between 1 and 1000000000",
        ),
        (
            "negative breaker",
            policy("  circuitBreakers: { maxRetries: -1 }\n"),
            "spec.circuitBreakers.maxRetries",
        ),
        (
            "unknown field",
            policy("  retries: { atempts: 2 }\n"),
            "spec.retries.atempts",
        ),
        (
            "rule retry attempts",
            route("      retry: { attempts: 11 }\n"),
            "spec.rules[0].retry.attempts: 11 is out of range",
        ),
        (
            "rule backoff",
            route("      retry: { backoff: soon }\n"),
            "spec.rules[0].retry.backoff: `soon`",
        ),
        (
            "rule try longer than request",
            route("      timeouts: { request: 1s, backendRequest: 5s }\n"),
            "spec.rules[0].timeouts.backendRequest: 5s is longer",
        ),
    ];
    assert_each_reported(cases);
}

/// Each `(case, document, expected)`: the document's errors include one containing `expected`.
pub(super) fn assert_each_reported(cases: &[(&str, String, &str)]) {
    for (case, text, expected) in cases {
        let errs = errors(text);
        assert!(
            errs.iter()
                .any(|e| e.contains(expected) && e.starts_with("mesh.yaml: document 1")),
            "{case}: expected an error containing {expected:?}, got {errs:#?}"
        );
    }
}

#[test]
fn health_check_and_locality_failover_parse_into_their_fields() {
    let text = policy(
        "  loadBalancer: { localityFailover: { spilloverThreshold: 80 } }
  healthCheck:
    http: { path: /healthz, expectedStatuses: [200, 204] }
    interval: 2s
    timeout: 500ms
    healthyThreshold: 1
    unhealthyThreshold: 4
",
    );
    assert!(errors(&text).is_empty(), "{:?}", errors(&text));
    let docs = parse_indexed("mesh.yaml", &text).expect("valid");
    let Resource::TrafficPolicy(p) = &docs[0].resource else {
        panic!("not a policy")
    };
    let TrafficPolicySpec {
        health_check,
        load_balancer,
        ..
    } = &p.spec;
    let h = health_check.as_ref().expect("healthCheck");
    let http = h.http.as_ref().expect("http");
    assert_eq!(
        (http.path.as_str(), &http.expected_statuses[..]),
        ("/healthz", &[200, 204][..])
    );
    assert_eq!(
        (
            h.interval.as_deref(),
            h.timeout.as_deref(),
            h.healthy_threshold,
            h.unhealthy_threshold
        ),
        (Some("2s"), Some("500ms"), Some(1), Some(4))
    );
    let l = load_balancer
        .locality_failover
        .as_ref()
        .expect("localityFailover");
    assert!(l.enabled);
    assert_eq!(l.overprovisioning_factor(), 125);
    for (spec, expected) in [
        ("  healthCheck: { tcp: {} }\n", true),
        ("  healthCheck: { grpc: { service: my.pkg.Svc } }\n", true),
        (
            "  loadBalancer: { localityFailover: { enabled: false } }\n",
            true,
        ),
    ] {
        assert_eq!(
            errors(&policy(spec)).is_empty(),
            expected,
            "{spec}: {:?}",
            errors(&policy(spec))
        );
    }
}

#[test]
fn the_overprovisioning_factor_spills_below_the_threshold() {
    // Envoy: a priority keeps min(100, healthy% × factor / 100) of the traffic.
    for (threshold, factor) in [(70, 143), (50, 200), (100, 100), (1, 10_000), (71, 141)] {
        let l = crate::LocalityFailover {
            enabled: true,
            spillover_threshold: Some(threshold),
        };
        let f = l.overprovisioning_factor();
        assert_eq!(f, factor, "threshold {threshold}");
        // Just at the threshold the local zone still takes (about) everything.
        assert!(threshold * f >= 9_950, "threshold {threshold}: {f}");
    }
}

#[test]
fn bad_health_checks_name_their_field() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "nothing to check",
            "  healthCheck: { interval: 1s }\n",
            "spec.healthCheck: says nothing to check",
        ),
        (
            "two kinds",
            "  healthCheck: { tcp: {}, grpc: {} }\n",
            "spec.healthCheck: gives several of",
        ),
        (
            "relative path",
            "  healthCheck: { http: { path: healthz } }\n",
            "spec.healthCheck.http.path: `healthz` is not a request path",
        ),
        (
            "path with a space",
            "  healthCheck: { http: { path: '/a b' } }\n",
            "spec.healthCheck.http.path",
        ),
        (
            "missing path",
            "  healthCheck: { http: {} }\n",
            "spec.healthCheck.http.path",
        ),
        (
            "bad status",
            "  healthCheck: { http: { path: /h, expectedStatuses: [700] } }\n",
            "spec.healthCheck.http.expectedStatuses[0]: 700 is out of range",
        ),
        (
            "bad grpc service",
            "  healthCheck: { grpc: { service: 'a b' } }\n",
            "spec.healthCheck.grpc.service: `a b` is not a gRPC service name",
        ),
        (
            "zero interval",
            "  healthCheck: { tcp: {}, interval: 0s }\n",
            "spec.healthCheck.interval: `0s` must be positive",
        ),
        (
            "tiny interval",
            "  healthCheck: { tcp: {}, interval: 1ms }\n",
            "spec.healthCheck.interval: 1ms is too short",
        ),
        (
            "timeout over interval",
            "  healthCheck: { tcp: {}, interval: 1s, timeout: 2s }\n",
            "spec.healthCheck.timeout: 2s is longer than the interval (1s)",
        ),
        (
            "default timeout over interval",
            "  healthCheck: { tcp: {}, interval: 100ms }\n",
            "spec.healthCheck.timeout: 1s is longer than the interval (100ms)",
        ),
        (
            "zero threshold",
            "  healthCheck: { tcp: {}, unhealthyThreshold: 0 }\n",
            "spec.healthCheck.unhealthyThreshold: 0 is out of range",
        ),
        (
            "huge threshold",
            "  healthCheck: { tcp: {}, healthyThreshold: 1000 }\n",
            "spec.healthCheck.healthyThreshold: 1000 is out of range",
        ),
        (
            "unknown field",
            "  healthCheck: { tcp: {}, intervall: 1s }\n",
            "spec.healthCheck.intervall",
        ),
        (
            "spillover 0",
            "  loadBalancer: { localityFailover: { spilloverThreshold: 0 } }\n",
            "spec.loadBalancer.localityFailover.spilloverThreshold: 0 is out of range",
        ),
        (
            "spillover over 100",
            "  loadBalancer: { localityFailover: { spilloverThreshold: 150 } }\n",
            "spec.loadBalancer.localityFailover.spilloverThreshold: 150 is out of range",
        ),
    ];
    for (case, spec, expected) in cases {
        let errs = errors(&policy(spec));
        assert!(
            errs.iter().any(|e| e.contains(expected)),
            "{case}: expected an error containing {expected:?}, got {errs:#?}"
        );
    }
}
