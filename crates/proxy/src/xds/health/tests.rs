//! `Cluster.health_checks` and the panic threshold: what the control plane sends parses into
//! the check it describes; anything else is NACKed naming the field.

use envoy_types::pb::envoy::config::cluster::v3::cluster::CommonLbConfig;
use envoy_types::pb::envoy::config::core::v3::health_check::{
    CustomHealthCheck, GrpcHealthCheck, HttpHealthCheck, Payload, TcpHealthCheck,
};
use envoy_types::pb::envoy::r#type::v3::{Int64Range, Percent};
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};

use super::*;

fn ms(n: i32) -> Option<PbDuration> {
    Some(PbDuration {
        seconds: 0,
        nanos: n * 1_000_000,
    })
}

fn base(checker: HealthChecker) -> HealthCheck {
    HealthCheck {
        interval: ms(200),
        timeout: ms(100),
        initial_jitter: ms(150),
        healthy_threshold: Some(UInt32Value { value: 2 }),
        unhealthy_threshold: Some(UInt32Value { value: 3 }),
        health_checker: Some(checker),
        ..Default::default()
    }
}

fn cluster(checks: Vec<HealthCheck>) -> Cluster {
    Cluster {
        name: "catalog".into(),
        health_checks: checks,
        ..Default::default()
    }
}

#[test]
fn an_http_check_parses_with_its_ranges_and_codec() {
    let hc = base(HealthChecker::HttpHealthCheck(HttpHealthCheck {
        path: "/healthz".into(),
        expected_statuses: vec![
            Int64Range {
                start: 200,
                end: 203,
            },
            Int64Range {
                start: 404,
                end: 405,
            },
        ],
        codec_client_type: CodecClientType::Http2 as i32,
        ..Default::default()
    }));
    let got = active_check(&cluster(vec![hc]))
        .expect("valid")
        .expect("a check");
    assert_eq!(
        got,
        ActiveCheck {
            config: HealthCheckConfig {
                probe: Probe::Http {
                    path: "/healthz".into(),
                    expected: Some(vec![(200, 202), (404, 404)]),
                },
                interval: Duration::from_millis(200),
                timeout: Duration::from_millis(100),
                thresholds: Thresholds {
                    healthy: 2,
                    unhealthy: 3
                },
            },
            initial_jitter: Duration::from_millis(150),
            h2: true,
        }
    );
    // Envoy's default expected status: 200 only.
    let hc = base(HealthChecker::HttpHealthCheck(HttpHealthCheck {
        path: "/h".into(),
        ..Default::default()
    }));
    let got = active_check(&cluster(vec![hc]))
        .expect("valid")
        .expect("a check");
    assert_eq!(
        got.config.probe,
        Probe::Http {
            path: "/h".into(),
            expected: Some(vec![(200, 200)])
        }
    );
    assert!(!got.h2);
}

#[test]
fn tcp_and_grpc_checks_parse() {
    let tcp = active_check(&cluster(vec![base(HealthChecker::TcpHealthCheck(
        TcpHealthCheck::default(),
    ))]))
    .expect("valid")
    .expect("a check");
    assert_eq!(tcp.config.probe, Probe::Tcp);
    let grpc = active_check(&cluster(vec![base(HealthChecker::GrpcHealthCheck(
        GrpcHealthCheck {
            service_name: "my.Svc".into(),
            ..Default::default()
        },
    ))]))
    .expect("valid")
    .expect("a check");
    assert_eq!(
        grpc.config.probe,
        Probe::Grpc {
            service: "my.Svc".into()
        }
    );
    assert!(grpc.h2);
    assert_eq!(
        active_check(&cluster(vec![])),
        Ok(None),
        "no check unless configured"
    );
}

#[test]
fn bad_health_checks_are_nacked_naming_the_field() {
    let http = |f: fn(&mut HttpHealthCheck)| {
        let mut h = HttpHealthCheck {
            path: "/h".into(),
            ..Default::default()
        };
        f(&mut h);
        base(HealthChecker::HttpHealthCheck(h))
    };
    let tcp = base(HealthChecker::TcpHealthCheck(TcpHealthCheck::default()));
    let cases: Vec<(&str, Vec<HealthCheck>, &str)> = vec![
        (
            "two checks",
            vec![tcp.clone(), tcp.clone()],
            "health_checks has 2 entries",
        ),
        (
            "no interval",
            vec![HealthCheck {
                interval: None,
                ..tcp.clone()
            }],
            "health_checks[0].interval is required",
        ),
        (
            "zero timeout",
            vec![HealthCheck {
                timeout: ms(0),
                ..tcp.clone()
            }],
            "health_checks[0].timeout must be positive",
        ),
        (
            "negative interval",
            vec![HealthCheck {
                interval: Some(PbDuration {
                    seconds: -1,
                    nanos: 0,
                }),
                ..tcp.clone()
            }],
            "health_checks[0].interval = -1s",
        ),
        (
            "no threshold",
            vec![HealthCheck {
                healthy_threshold: None,
                ..tcp.clone()
            }],
            "healthy_threshold is required",
        ),
        (
            "zero threshold",
            vec![HealthCheck {
                unhealthy_threshold: Some(UInt32Value { value: 0 }),
                ..tcp.clone()
            }],
            "unhealthy_threshold = 0: must be within 1..=100",
        ),
        (
            "no checker",
            vec![HealthCheck {
                health_checker: None,
                ..tcp.clone()
            }],
            "health_checker is required",
        ),
        (
            "custom",
            vec![base(HealthChecker::CustomHealthCheck(CustomHealthCheck {
                name: "redis".into(),
                ..Default::default()
            }))],
            "custom_health_check `redis` is not supported",
        ),
        (
            "relative path",
            vec![http(|h| h.path = "h".into())],
            "http_health_check.path = \"h\"",
        ),
        (
            "bad range",
            vec![http(|h| {
                h.expected_statuses = vec![Int64Range {
                    start: 300,
                    end: 200,
                }]
            })],
            "expected_statuses: [300, 200)",
        ),
        (
            "range past 600",
            vec![http(|h| {
                h.expected_statuses = vec![Int64Range {
                    start: 200,
                    end: 700,
                }]
            })],
            "expected_statuses: [200, 700)",
        ),
        (
            "http3",
            vec![http(|h| {
                h.codec_client_type = CodecClientType::Http3 as i32
            })],
            "codec_client_type = 2",
        ),
        (
            "payload",
            vec![http(|h| h.send = Some(Payload::default()))],
            "send/receive payloads are not supported",
        ),
        (
            "tcp payload",
            vec![base(HealthChecker::TcpHealthCheck(TcpHealthCheck {
                send: Some(Payload::default()),
                ..Default::default()
            }))],
            "connect only",
        ),
        (
            "grpc name",
            vec![base(HealthChecker::GrpcHealthCheck(GrpcHealthCheck {
                service_name: "a b".into(),
                ..Default::default()
            }))],
            "grpc_health_check.service_name = \"a b\"",
        ),
    ];
    for (case, checks, expected) in cases {
        let err = active_check(&cluster(checks)).expect_err(case);
        assert!(err.contains(expected), "{case}: {err}");
    }
}

#[test]
fn the_panic_threshold_defaults_to_50_and_is_checked() {
    assert_eq!(panic_threshold(&cluster(vec![])), Ok(50));
    let with = |v: f64| Cluster {
        common_lb_config: Some(CommonLbConfig {
            healthy_panic_threshold: Some(Percent { value: v }),
            ..Default::default()
        }),
        ..cluster(vec![])
    };
    assert_eq!(panic_threshold(&with(0.0)), Ok(0));
    assert_eq!(panic_threshold(&with(30.4)), Ok(30));
    for bad in [-1.0, 101.0, f64::NAN] {
        let err = panic_threshold(&with(bad)).expect_err("out of range");
        assert!(err.contains("healthy_panic_threshold"), "{err}");
    }
}
