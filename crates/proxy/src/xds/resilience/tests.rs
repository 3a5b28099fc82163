//! xDS failure-recovery fields → policies, and the malformed values that are NACKed.

use super::*;
use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::thresholds::RetryBudget;
use envoy_types::pb::envoy::config::cluster::v3::{CircuitBreakers, OutlierDetection};
use envoy_types::pb::envoy::config::route::v3::RetryPolicy as PbRetryPolicy;
use envoy_types::pb::envoy::config::route::v3::retry_policy::{RetryBackOff, RetryHostPredicate};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::UInt32Value;

fn d(ms: i64) -> Option<PbDuration> {
    Some(PbDuration {
        seconds: ms / 1000,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    })
}

fn u(v: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value: v })
}

fn retry(on: &str) -> PbRetryPolicy {
    PbRetryPolicy {
        retry_on: on.to_string(),
        num_retries: u(2),
        per_try_timeout: d(300),
        retriable_status_codes: vec![429],
        retry_back_off: Some(RetryBackOff {
            base_interval: d(10),
            max_interval: d(100),
        }),
        ..Default::default()
    }
}

#[test]
fn a_route_without_timeout_or_retries_has_no_policy() {
    assert_eq!(route_policy(&RouteAction::default(), None), Ok(None));
    let zero = RouteAction {
        timeout: d(0),
        ..Default::default()
    };
    assert_eq!(route_policy(&zero, None), Ok(None), "0 = no timeout");
}

#[test]
fn route_timeouts_and_retries() {
    let action = RouteAction {
        timeout: d(2000),
        retry_policy: Some(retry("5xx,retriable-status-codes")),
        ..Default::default()
    };
    let p = route_policy(&action, Some(1024))
        .expect("valid")
        .expect("policy");
    assert_eq!(p.request_timeout, Some(Duration::from_secs(2)));
    assert_eq!(p.per_try_timeout, Some(Duration::from_millis(300)));
    let r = p.retry.expect("retry");
    assert_eq!(r.attempts, 2);
    assert!(r.on.contains(RetryOn::FIVE_XX) && r.on.contains(RetryOn::STATUS_CODES));
    assert_eq!(r.status_codes, vec![429]);
    assert_eq!(
        (r.backoff_base, r.backoff_max),
        (Duration::from_millis(10), Duration::from_millis(100))
    );
    assert!(!r.idempotent_only);
    assert_eq!(r.buffer_limit, 1024);
}

#[test]
fn malformed_route_values_are_errors() {
    let mut cases: Vec<(&str, RouteAction)> = Vec::new();
    cases.push((
        "timeout",
        RouteAction {
            timeout: Some(PbDuration {
                seconds: -1,
                nanos: 0,
            }),
            ..Default::default()
        },
    ));
    cases.push((
        "timeout",
        RouteAction {
            timeout: Some(PbDuration {
                seconds: 1,
                nanos: 2_000_000_000,
            }),
            ..Default::default()
        },
    ));
    cases.push((
        "longer than a day",
        RouteAction {
            timeout: Some(PbDuration {
                seconds: i64::MAX,
                nanos: 0,
            }),
            ..Default::default()
        },
    ));
    let with = |f: &dyn Fn(&mut PbRetryPolicy)| {
        let mut r = retry("5xx");
        f(&mut r);
        RouteAction {
            retry_policy: Some(r),
            ..Default::default()
        }
    };
    cases.push(("`bogus`", with(&|r| r.retry_on = "5xx,bogus".into())));
    cases.push(("num_retries", with(&|r| r.num_retries = u(1000))));
    cases.push((
        "retriable_status_codes",
        with(&|r| r.retriable_status_codes = vec![99_999]),
    ));
    cases.push((
        "max_interval",
        with(&|r| {
            r.retry_back_off = Some(RetryBackOff {
                base_interval: d(100),
                max_interval: d(10),
            })
        }),
    ));
    cases.push((
        "base_interval",
        with(&|r| {
            r.retry_back_off = Some(RetryBackOff {
                base_interval: None,
                max_interval: d(10),
            })
        }),
    ));
    cases.push((
        "retry_host_predicate",
        with(&|r| {
            r.retry_host_predicate = vec![RetryHostPredicate {
                name: "envoy.retry_host_predicates.omit_canary_hosts".into(),
                config_type: None,
            }]
        }),
    ));
    cases.push((
        "retriable_request_headers",
        with(&|r| r.retriable_request_headers = vec![Default::default()]),
    ));
    for (want, action) in cases {
        let e = route_policy(&action, None).expect_err(want);
        assert!(e.contains(want), "{want}: {e}");
    }
}

fn thresholds(t: Thresholds) -> Cluster {
    Cluster {
        circuit_breakers: Some(CircuitBreakers {
            thresholds: vec![t],
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn cluster_breakers_budget_and_detector() {
    assert!(
        cluster_policy(&Cluster::default())
            .expect("valid")
            .is_empty()
    );
    let mut c = thresholds(Thresholds {
        max_requests: u(7),
        retry_budget: Some(RetryBudget {
            budget_percent: Some(Percent { value: 25.0 }),
            min_retry_concurrency: u(4),
            budget_interval: None,
        }),
        ..Default::default()
    });
    c.outlier_detection = Some(OutlierDetection {
        consecutive_5xx: u(3),
        enforcing_consecutive_gateway_failure: u(100),
        enforcing_success_rate: u(0),
        base_ejection_time: d(2000),
        ..Default::default()
    });
    let p = cluster_policy(&c).expect("valid");
    let b = p.breakers.expect("breakers");
    assert_eq!((b.max_requests, b.max_retries), (7, 1024));
    let budget = p.budget.expect("budget");
    assert_eq!((budget.percent, budget.min_per_second), (25.0, 4));
    let o = p.outlier.expect("outlier");
    assert_eq!(o.consecutive_5xx, Some(3));
    assert_eq!(o.consecutive_gateway, Some(5));
    assert_eq!(o.base_ejection, Duration::from_secs(2));
    assert_eq!(o.max_ejection, Duration::from_secs(300));
    assert_eq!((o.max_ejection_percent, o.panic_threshold), (10, 50));
    assert!(o.success_rate.is_none());
    // Envoy's defaults: gateway failures not enforced, success rate enforced.
    let c = Cluster {
        outlier_detection: Some(OutlierDetection::default()),
        ..Default::default()
    };
    let o = cluster_policy(&c).expect("valid").outlier.expect("outlier");
    assert_eq!(o.consecutive_gateway, None);
    assert!(o.success_rate.is_some());
}

#[test]
fn malformed_cluster_values_are_errors() {
    let cases: Vec<(&str, Cluster)> = vec![
        (
            "max_requests = 0",
            thresholds(Thresholds {
                max_requests: u(0),
                ..Default::default()
            }),
        ),
        (
            "budget_percent",
            thresholds(Thresholds {
                retry_budget: Some(RetryBudget {
                    budget_percent: Some(Percent { value: f64::NAN }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        ),
        (
            "max_ejection_percent",
            Cluster {
                outlier_detection: Some(OutlierDetection {
                    max_ejection_percent: u(500),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
        (
            "base_ejection_time",
            Cluster {
                outlier_detection: Some(OutlierDetection {
                    base_ejection_time: Some(PbDuration {
                        seconds: -5,
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
    ];
    for (want, c) in cases {
        let e = cluster_policy(&c).expect_err(want);
        assert!(e.contains(want), "{want}: {e}");
    }
}
