//! TrafficPolicy resilience → Envoy fields, defaults applied.

use super::*;
use envoy_types::pb::envoy::config::route::v3::RouteAction;
use trellis_model::{HttpRouteResource, Resource, TrafficPolicySpec, parse_documents};

fn policy(spec: &str) -> TrafficPolicySpec {
    let text = format!(
        "apiVersion: trellis.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{ name: p }}\nspec:\n  targetRef: {{ name: catalog }}\n{spec}"
    );
    match parse_documents("t", &text).expect("valid").remove(0) {
        Resource::TrafficPolicy(p) => p.spec,
        other => panic!("not a policy: {other:?}"),
    }
}

fn rule(extra: &str) -> HttpRouteRule {
    let text = format!(
        "apiVersion: trellis.dev/v1alpha1\nkind: HTTPRoute\nmetadata: {{ name: r }}\nspec:\n  parentRefs: [{{ name: catalog }}]\n  rules:\n    - backendRefs: [{{ name: catalog }}]\n{extra}"
    );
    match parse_documents("t", &text).expect("valid").remove(0) {
        Resource::HttpRoute(HttpRouteResource { spec, .. }) => spec.rules[0].clone(),
        other => panic!("not a route: {other:?}"),
    }
}

fn secs(d: &Option<Duration>) -> f64 {
    d.as_ref()
        .map(|d| d.seconds as f64 + f64::from(d.nanos) / 1e9)
        .unwrap_or(-1.0)
}

#[test]
fn no_policy_changes_nothing() {
    let mut c = Cluster::default();
    apply_to_cluster(&mut c, None);
    assert_eq!(c, Cluster::default());
    let mut a = RouteAction::default();
    apply_to_route(&mut a, None, None);
    assert_eq!(a, RouteAction::default());
    // A policy with a load balancer only adds no breaker, budget or detector.
    let p = policy("  loadBalancer: { algorithm: Random }\n");
    apply_to_cluster(&mut c, Some(&p));
    assert!(c.circuit_breakers.is_none() && c.outlier_detection.is_none());
}

#[test]
fn clusters_get_breakers_budget_and_detector_with_defaults() {
    let p = policy(
        "  retries: {}\n  circuitBreakers: { maxRequests: 7 }\n  outlierDetection: { consecutive5xx: 0, baseEjectionTime: 2s }\n",
    );
    let mut c = Cluster::default();
    apply_to_cluster(&mut c, Some(&p));
    let t = &c.circuit_breakers.as_ref().expect("breakers").thresholds[0];
    assert_eq!(t.max_requests, u32v(7));
    assert_eq!(t.max_connections, u32v(1024));
    assert_eq!(t.max_retries, u32v(1024));
    let budget = t.retry_budget.as_ref().expect("budget");
    assert_eq!(budget.budget_percent.as_ref().map(|p| p.value), Some(20.0));
    assert_eq!(budget.min_retry_concurrency, u32v(3));
    let o = c.outlier_detection.as_ref().expect("detector");
    assert_eq!(o.enforcing_consecutive_5xx, u32v(0), "0 turns it off");
    assert_eq!(o.consecutive_gateway_failure, u32v(5));
    assert_eq!(o.enforcing_consecutive_gateway_failure, u32v(100));
    assert_eq!(
        o.enforcing_success_rate,
        u32v(0),
        "success rate off unless set"
    );
    assert_eq!(secs(&o.base_ejection_time), 2.0);
    assert_eq!(secs(&o.max_ejection_time), 300.0);
    assert_eq!(o.max_ejection_percent, u32v(10));
    let panic = c
        .common_lb_config
        .as_ref()
        .and_then(|l| l.healthy_panic_threshold.as_ref());
    assert_eq!(panic.map(|p| p.value), Some(50.0));
    assert_eq!(secs(&c.connect_timeout), 1.0);
}

#[test]
fn routes_get_timeouts_and_retry_policy() {
    let p = policy(
        "  timeouts: { request: 3s, backendRequest: 500ms }\n  retries: { attempts: 4, retriableStatusCodes: [429], retryOn: [5xx] }\n",
    );
    let mut a = RouteAction::default();
    apply_to_route(&mut a, Some(&p), None);
    assert_eq!(secs(&a.timeout), 3.0);
    assert_eq!(
        secs(
            &a.max_stream_duration
                .as_ref()
                .and_then(|m| m.grpc_timeout_header_max)
        ),
        3.0
    );
    let r = a.retry_policy.as_ref().expect("retry");
    assert_eq!(r.retry_on, "5xx,retriable-status-codes");
    assert_eq!(r.num_retries, u32v(4));
    assert_eq!(secs(&r.per_try_timeout), 0.5);
    assert_eq!(r.retriable_status_codes, vec![429]);
    let b = r.retry_back_off.as_ref().expect("backoff");
    assert_eq!(
        (secs(&b.base_interval), secs(&b.max_interval)),
        (0.025, 0.25)
    );
    assert_eq!(r.retriable_request_headers.len(), 1, "idempotent only");
    assert_eq!(
        r.retry_host_predicate[0].name,
        wire::PREVIOUS_HOSTS_PREDICATE
    );
}

#[test]
fn a_rule_overrides_the_policy() {
    let p = policy("  timeouts: { request: 3s }\n  retries: { retryNonIdempotent: true }\n");
    let r = rule(
        "      timeouts: { request: 1s, backendRequest: 200ms }\n      retry: { codes: [503], attempts: 1, backoff: 10ms }\n",
    );
    let mut a = RouteAction::default();
    apply_to_route(&mut a, Some(&p), Some(&r));
    assert_eq!(secs(&a.timeout), 1.0);
    let rp = a.retry_policy.as_ref().expect("retry");
    assert_eq!(rp.num_retries, u32v(1));
    assert_eq!(rp.retriable_status_codes, vec![503]);
    assert!(rp.retry_on.contains("retriable-status-codes"));
    assert_eq!(secs(&rp.per_try_timeout), 0.2);
    let b = rp.retry_back_off.as_ref().expect("backoff");
    assert_eq!((secs(&b.base_interval), secs(&b.max_interval)), (0.01, 0.1));
    assert!(
        rp.retriable_request_headers.is_empty(),
        "retryNonIdempotent"
    );
}

#[test]
fn a_per_try_timeout_alone_is_a_retry_policy_without_retries() {
    let p = policy("  timeouts: { backendRequest: 100ms }\n");
    let mut a = RouteAction::default();
    apply_to_route(&mut a, Some(&p), None);
    let rp = a.retry_policy.as_ref().expect("retry");
    assert_eq!(rp.num_retries, u32v(0));
    assert_eq!(secs(&rp.per_try_timeout), 0.1);
    assert_eq!(secs(&a.timeout), 0.0, "no route timeout, explicitly");
}
