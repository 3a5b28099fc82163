//! `HTTPFault` → [`FaultPolicy`]: the fields the control plane sends, a virtual host's faults
//! inherited by its routes and replaced by a route's own, and what is NACKed.

use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::FaultDelay;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::HeaderDelay;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::FaultAbort;
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
use envoy_types::util::pack_any;
use http::{HeaderMap, HeaderValue, Method};

use super::*;
use crate::xds::routes;

fn percent(numerator: u32, d: DenominatorType) -> Option<FractionalPercent> {
    Some(FractionalPercent {
        numerator,
        denominator: d as i32,
    })
}

fn delay(ms: i64, p: Option<FractionalPercent>) -> Option<FaultDelay> {
    Some(FaultDelay {
        fault_delay_secifier: Some(FaultDelaySecifier::FixedDelay(PbDuration {
            seconds: ms / 1000,
            nanos: ((ms % 1000) * 1_000_000) as i32,
        })),
        percentage: p,
    })
}

fn abort(e: ErrorType, p: Option<FractionalPercent>) -> Option<FaultAbort> {
    Some(FaultAbort {
        error_type: Some(e),
        percentage: p,
        ..Default::default()
    })
}

fn policy(f: HttpFault) -> Arc<FaultPolicy> {
    http_fault(&f).expect("valid").expect("injects something")
}

#[test]
fn the_control_planes_fields_translate() {
    let p = policy(HttpFault {
        delay: delay(1050, percent(5_000, DenominatorType::Million)),
        abort: abort(
            ErrorType::GrpcStatus(14),
            percent(20, DenominatorType::Hundred),
        ),
        headers: vec![HeaderMatcher {
            name: "x-chaos".into(),
            header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(MatchPattern::Exact("on".into())),
                ..Default::default()
            })),
            ..Default::default()
        }],
        ..Default::default()
    });
    assert_eq!(
        p.delay,
        Some(Delay {
            fixed: Duration::from_millis(1050),
            per_million: 5_000
        })
    );
    assert_eq!(
        p.abort,
        Some(Abort {
            status: AbortStatus::Grpc(14),
            per_million: 200_000
        })
    );
    let mut on = HeaderMap::new();
    on.insert("x-chaos", HeaderValue::from_static("on"));
    assert!(p.headers.iter().all(|h| h.matches(&Method::GET, &on)));
    assert!(
        !p.headers
            .iter()
            .all(|h| h.matches(&Method::GET, &HeaderMap::new()))
    );

    // TEN_THOUSAND, a numerator over the denominator (100%, as Envoy), no percentage (0%).
    let p = policy(HttpFault {
        delay: delay(5, percent(15, DenominatorType::TenThousand)),
        abort: abort(
            ErrorType::HttpStatus(503),
            percent(200, DenominatorType::Hundred),
        ),
        ..Default::default()
    });
    assert_eq!(p.delay.map(|d| d.per_million), Some(1_500));
    assert_eq!(p.abort.map(|a| a.per_million), Some(PER_MILLION));
    let p = policy(HttpFault {
        abort: abort(ErrorType::HttpStatus(418), None),
        ..Default::default()
    });
    assert_eq!(p.abort.map(|a| a.per_million), Some(0));
    // An empty HTTPFault injects nothing.
    assert_eq!(http_fault(&HttpFault::default()), Ok(None));
}

#[test]
fn unsupported_or_malformed_faults_are_nacked_naming_the_field() {
    let cases: Vec<(HttpFault, &str)> = vec![
        (
            HttpFault {
                abort: abort(ErrorType::HttpStatus(99), None),
                ..Default::default()
            },
            "abort.http_status = 99",
        ),
        (
            HttpFault {
                abort: abort(ErrorType::GrpcStatus(0), None),
                ..Default::default()
            },
            "abort.grpc_status = 0",
        ),
        (
            HttpFault {
                abort: Some(FaultAbort::default()),
                ..Default::default()
            },
            "abort needs http_status or grpc_status",
        ),
        (
            HttpFault {
                delay: delay(0, None),
                ..Default::default()
            },
            "delay.fixed_delay must be positive",
        ),
        (
            HttpFault {
                delay: delay(-5, None),
                ..Default::default()
            },
            "delay.fixed_delay",
        ),
        (
            HttpFault {
                delay: Some(FaultDelay {
                    fault_delay_secifier: Some(FaultDelaySecifier::HeaderDelay(HeaderDelay {})),
                    percentage: None,
                }),
                ..Default::default()
            },
            "delay.header_delay is not supported",
        ),
        (
            HttpFault {
                delay: delay(
                    5,
                    Some(FractionalPercent {
                        numerator: 1,
                        denominator: 9,
                    }),
                ),
                ..Default::default()
            },
            "delay.percentage.denominator = 9",
        ),
        (
            HttpFault {
                max_active_faults: Some(UInt32Value { value: 3 }),
                ..Default::default()
            },
            "`max_active_faults` is not supported",
        ),
        (
            HttpFault {
                abort_percent_runtime: "x".into(),
                ..Default::default()
            },
            "`*_runtime` is not supported",
        ),
        (
            HttpFault {
                abort: abort(ErrorType::HttpStatus(503), None),
                headers: vec![HeaderMatcher {
                    name: ":path".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            "headers: header match on `:path` is not supported",
        ),
    ];
    for (f, want) in cases {
        let err = http_fault(&f).expect_err(want);
        assert!(err.contains(want), "{want:?} not in {err:?}");
    }
    let mut any = pack_any(HttpFault::default());
    any.type_url = "type.googleapis.com/other".into();
    let err = fault_policy(&any).expect_err("wrong type");
    assert!(err.contains(wire::FAULT_TYPE_URL), "{err}");
}

fn route(name: &str, faults: Option<HttpFault>) -> Route {
    Route {
        name: name.into(),
        r#match: Some(RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix(format!("/{name}"))),
            ..Default::default()
        }),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster("catalog".into())),
            ..Default::default()
        })),
        typed_per_filter_config: faults
            .map(|f| (wire::FAULT_FILTER.to_string(), pack_any(f)))
            .into_iter()
            .collect(),
        ..Default::default()
    }
}

#[test]
fn routes_inherit_the_virtual_hosts_faults_unless_they_have_their_own() {
    let service = HttpFault {
        abort: abort(
            ErrorType::HttpStatus(503),
            percent(100, DenominatorType::Hundred),
        ),
        ..Default::default()
    };
    let rule = HttpFault {
        delay: delay(50, percent(100, DenominatorType::Hundred)),
        ..Default::default()
    };
    let rc = RouteConfiguration {
        name: "outbound".into(),
        virtual_hosts: vec![VirtualHost {
            name: "catalog".into(),
            domains: vec!["catalog".into()],
            routes: vec![
                route("own", Some(rule)),
                route("off", Some(HttpFault::default())),
                route("inherits", None),
            ],
            typed_per_filter_config: [(wire::FAULT_FILTER.to_string(), pack_any(service))].into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let table = routes::route_config(&rc).expect("valid");
    let faults: Vec<Option<&FaultPolicy>> = table.vhosts[0]
        .routes
        .iter()
        .map(|r| r.action.policy.as_ref().and_then(|p| p.faults.as_deref()))
        .collect();
    let own = faults[0].expect("own faults");
    assert!(own.abort.is_none());
    assert_eq!(own.delay.map(|d| d.fixed), Some(Duration::from_millis(50)));
    assert!(
        faults[1].is_none() && table.vhosts[0].routes[1].action.policy.is_none(),
        "an empty HTTPFault turns the faults off and leaves the fast path"
    );
    assert_eq!(
        faults[2].and_then(|f| f.abort).map(|a| a.status),
        Some(AbortStatus::Http(StatusCode::SERVICE_UNAVAILABLE))
    );
    // A bad virtual-host config NACKs the whole RouteConfiguration, naming the host.
    let mut bad = rc.clone();
    bad.virtual_hosts[0].typed_per_filter_config.insert(
        wire::FAULT_FILTER.to_string(),
        pack_any(HttpFault {
            abort: abort(ErrorType::HttpStatus(700), None),
            ..Default::default()
        }),
    );
    let err = routes::route_config(&bad).expect_err("bad abort");
    assert!(
        err.contains("virtual host `catalog`") && err.contains("abort.http_status = 700"),
        "{err}"
    );
}
