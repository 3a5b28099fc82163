//! `faults` → the HTTP fault filter: the outbound listener's (empty) filter, the service's
//! faults on its virtual host, a rule's override on its routes, and the field mapping.

use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use prost::Message;
use serde_json::json;

use super::*;
use crate::xds::fixtures::*;
use crate::xds::translate::*;

fn faults(v: serde_json::Value) -> Faults {
    serde_json::from_value(v).expect("valid faults literal")
}

fn decoded(any: &Any) -> HttpFault {
    assert_eq!(any.type_url, wire::FAULT_TYPE_URL);
    HttpFault::decode(any.value.as_slice()).expect("HTTPFault decodes")
}

fn per_million(p: &Option<FractionalPercent>) -> (u32, i32) {
    let p = p.as_ref().expect("percentage");
    (p.numerator, p.denominator)
}

const MILLION: i32 = fractional_percent::DenominatorType::Million as i32;

#[test]
fn a_faults_block_maps_to_envoy_fields() {
    let f = http_fault(&faults(json!({
        "delay": { "fixedDelay": "1s50ms", "percentage": 0.5 },
        "abort": { "grpcStatus": "UNAVAILABLE", "percentage": 12.3456 },
        "headers": [{ "name": "x-chaos", "value": "on", "type": "RegularExpression" }],
    })));
    let delay = f.delay.as_ref().expect("delay");
    match &delay.fault_delay_secifier {
        Some(FaultDelaySecifier::FixedDelay(d)) => {
            assert_eq!((d.seconds, d.nanos), (1, 50_000_000))
        }
        other => panic!("fixed delay expected: {other:?}"),
    }
    assert_eq!(per_million(&delay.percentage), (5_000, MILLION));
    let abort = f.abort.as_ref().expect("abort");
    assert_eq!(abort.error_type, Some(ErrorType::GrpcStatus(14)));
    assert_eq!(per_million(&abort.percentage), (123_456, MILLION));
    assert_eq!(f.headers.len(), 1);
    assert_eq!(f.headers[0].name, "x-chaos");
    let text = format!("{:?}", f.headers[0]);
    assert!(text.contains("SafeRegex") && text.contains("on"), "{text}");

    // An HTTP status, percentages left out (= 100%), no headers.
    let f = http_fault(&faults(json!({ "abort": { "httpStatus": 503 } })));
    let abort = f.abort.as_ref().expect("abort");
    assert_eq!(abort.error_type, Some(ErrorType::HttpStatus(503)));
    assert_eq!(per_million(&abort.percentage), (1_000_000, MILLION));
    assert!(f.delay.is_none() && f.headers.is_empty());
    // `faults: {}` (a rule turning the service's off) is an empty HTTPFault.
    assert_eq!(http_fault(&Faults::default()), HttpFault::default());
}

#[test]
fn the_outbound_listener_has_the_fault_filter_before_the_router() {
    let res = resources_for(&catalog_with_routes(None), &node(None));
    let l: Listener = decode(&res, LISTENER_TYPE, wire::OUTBOUND);
    let hcm = hcm(&l);
    let names: Vec<&str> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, vec![wire::FAULT_FILTER, ROUTER_FILTER]);
    match &hcm.http_filters[0].config_type {
        Some(http_filter::ConfigType::TypedConfig(any)) => {
            assert_eq!(
                decoded(any),
                HttpFault::default(),
                "injects nothing by itself"
            );
        }
        other => panic!("typed config expected: {other:?}"),
    }
}

#[test]
fn service_faults_ride_on_the_virtual_host_and_rules_override_them() {
    let mut snap = catalog_with_routes(None);
    let catalog = snap.services.get_mut("catalog").expect("catalog");
    catalog.policy = Some(
        serde_json::from_value(json!({
            "targetRef": { "name": "catalog" },
            "faults": { "abort": { "httpStatus": 503, "percentage": 20 } },
        }))
        .expect("policy literal"),
    );
    catalog.routes[0].spec.rules[0].faults = Some(faults(json!({
        "delay": { "fixedDelay": "50ms" },
        "headers": [{ "name": "x-env", "value": "qa" }],
    })));
    catalog.routes[0].spec.rules[1].faults = Some(Faults::default());
    let res = resources_for(&snap, &node(None));
    let rc: RouteConfiguration = decode(&res, ROUTE_TYPE, wire::OUTBOUND);
    let vh = &rc.virtual_hosts[0];
    assert_eq!(vh.name, "catalog");
    let service = decoded(&vh.typed_per_filter_config[wire::FAULT_FILTER]);
    assert_eq!(
        service.abort.as_ref().and_then(|a| a.error_type),
        Some(ErrorType::HttpStatus(503))
    );
    assert_eq!(
        per_million(&service.abort.as_ref().expect("abort").percentage),
        (200_000, MILLION)
    );
    // Rule 0 (two matches → two routes): its own delay, header-gated, no abort.
    for r in &vh.routes[..2] {
        let f = decoded(&r.typed_per_filter_config[wire::FAULT_FILTER]);
        assert!(f.abort.is_none() && f.delay.is_some(), "{}: {f:?}", r.name);
        let pattern = f.headers[0]
            .header_match_specifier
            .as_ref()
            .map(|s| format!("{s:?}"));
        assert!(
            pattern.is_some_and(|p| p.contains(&format!("{:?}", MatchPattern::Exact("qa".into())))),
            "{}",
            r.name
        );
    }
    // Rule 1 turns the faults off; the default route inherits the virtual host's.
    assert_eq!(
        decoded(&vh.routes[2].typed_per_filter_config[wire::FAULT_FILTER]),
        HttpFault::default()
    );
    assert_eq!(vh.routes[3].name, "default");
    assert!(vh.routes[3].typed_per_filter_config.is_empty());
    // Services without faults carry none.
    assert!(rc.virtual_hosts[1].typed_per_filter_config.is_empty());
}
