//! Fault injection: the documented shape parses into its fields (fractional percentages, gRPC
//! status names), and every bad value is reported naming its field.

use super::super::*;
use super::resilience::{self, assert_each_reported, errors};
use crate::{GrpcStatus, HeaderMatchType, Resource, fault_per_million};

fn policy(faults: &str) -> String {
    resilience::policy(&format!("  faults: {faults}\n"))
}

fn route(faults: &str) -> String {
    resilience::route(&format!("      faults: {faults}\n"))
}

#[test]
fn a_full_faults_block_parses_into_its_fields() {
    let text = policy(
        "
    delay: { fixedDelay: 50ms, percentage: 0.5 }
    abort: { grpcStatus: UNAVAILABLE, percentage: 12.3456 }
    headers: [ { name: x-chaos, value: \"on|yes\", type: RegularExpression } ]",
    );
    assert!(errors(&text).is_empty(), "{:?}", errors(&text));
    let docs = parse_indexed("mesh.yaml", &text).expect("valid");
    let Resource::TrafficPolicy(p) = &docs[0].resource else {
        panic!("expected a TrafficPolicy");
    };
    let f = p.spec.faults.as_ref().expect("faults");
    let d = f.delay.as_ref().expect("delay");
    assert_eq!(d.fixed_delay, "50ms");
    assert_eq!(fault_per_million(d.percentage), 5_000);
    let a = f.abort.as_ref().expect("abort");
    assert_eq!(a.grpc_status, Some(GrpcStatus::Name("UNAVAILABLE".into())));
    assert_eq!(a.grpc_status.as_ref().and_then(GrpcStatus::code), Some(14));
    assert_eq!(fault_per_million(a.percentage), 123_456);
    assert_eq!(f.headers[0].kind, HeaderMatchType::RegularExpression);
}

#[test]
fn percentages_default_to_all_requests_and_codes_may_be_numbers() {
    let text = route("{ abort: { httpStatus: 503 }, delay: { fixedDelay: 1s } }");
    assert!(errors(&text).is_empty(), "{:?}", errors(&text));
    assert_eq!(fault_per_million(None), 1_000_000);
    let text = route("{ abort: { grpcStatus: 14, percentage: 100 } }");
    assert!(errors(&text).is_empty(), "{:?}", errors(&text));
    // An empty block on a rule turns the service's faults off for it.
    assert!(errors(&route("{}")).is_empty());
}

#[test]
fn bad_faults_name_their_field() {
    let cases: &[(&str, String, &str)] = &[
        (
            "percentage over 100",
            policy("{ abort: { httpStatus: 503, percentage: 150 } }"),
            "spec.faults.abort.percentage: 150 is out of range: must be between 0 and 100",
        ),
        (
            "negative percentage",
            route("{ delay: { fixedDelay: 5ms, percentage: -1 } }"),
            "spec.rules[0].faults.delay.percentage: -1 is out of range",
        ),
        (
            "percentage finer than the wire",
            policy("{ delay: { fixedDelay: 5ms, percentage: 0.00001 } }"),
            "spec.faults.delay.percentage: 0.00001 is finer than the 0.0001%",
        ),
        (
            "percentage as a string",
            policy("{ delay: { fixedDelay: 5ms, percentage: ten } }"),
            "spec.faults.delay.percentage: expected a number",
        ),
        (
            "both statuses",
            policy("{ abort: { httpStatus: 503, grpcStatus: 14 } }"),
            "spec.faults.abort: sets both `httpStatus` and `grpcStatus`",
        ),
        (
            "no status",
            policy("{ abort: { percentage: 5 } }"),
            "spec.faults.abort: needs `httpStatus` (e.g. 503) or `grpcStatus`",
        ),
        (
            "http status out of range",
            policy("{ abort: { httpStatus: 700 } }"),
            "spec.faults.abort.httpStatus: 700 is out of range: must be between 200 and 599",
        ),
        (
            "http status below 200",
            route("{ abort: { httpStatus: 100 } }"),
            "spec.rules[0].faults.abort.httpStatus: 100 is out of range",
        ),
        (
            "grpc status out of range",
            policy("{ abort: { grpcStatus: 17 } }"),
            "spec.faults.abort.grpcStatus: 17 is out of range: must be between 1 and 16",
        ),
        (
            "grpc OK is no fault",
            policy("{ abort: { grpcStatus: OK } }"),
            "spec.faults.abort.grpcStatus: unknown value `OK`",
        ),
        (
            "misspelt grpc name",
            policy("{ abort: { grpcStatus: UNAVAILBLE } }"),
            "(did you mean `UNAVAILABLE`?)",
        ),
        (
            "zero delay",
            policy("{ delay: { fixedDelay: 0s } }"),
            "spec.faults.delay.fixedDelay: `0s` must be positive",
        ),
        (
            "absurd delay",
            policy("{ delay: { fixedDelay: 2h } }"),
            "spec.faults.delay.fixedDelay: `2h` is too long: at most 3600s",
        ),
        (
            "bad delay",
            policy("{ delay: { fixedDelay: soon } }"),
            "spec.faults.delay.fixedDelay: `soon`",
        ),
        (
            "missing delay",
            policy("{ delay: { percentage: 5 } }"),
            "spec.faults.delay.fixedDelay: missing required field",
        ),
        (
            "empty on a policy",
            policy("{}"),
            "spec.faults: injects nothing",
        ),
        (
            "headers alone on a rule",
            route("{ headers: [ { name: x-a, value: b } ] }"),
            "spec.rules[0].faults: headers without `delay` or `abort` inject nothing",
        ),
        (
            "bad header name",
            policy("{ abort: { httpStatus: 503 }, headers: [ { name: \"x a\", value: b } ] }"),
            "spec.faults.headers[0].name",
        ),
        (
            "bad header regex",
            route(
                "{ abort: { httpStatus: 503 }, headers: [ { name: x-a, value: \"(\", type: RegularExpression } ] }",
            ),
            "spec.rules[0].faults.headers[0].value",
        ),
        (
            "unknown field",
            policy("{ abort: { httpStatus: 503, percent: 5 } }"),
            "spec.faults.abort.percent: unknown field `percent`",
        ),
    ];
    assert_each_reported(cases);
}

#[test]
fn the_documented_example_is_valid() {
    let doc = include_str!("../../../../../docs/RESOURCES.md");
    let section = &doc[doc.find("### Fault injection").expect("the section")..];
    let start = section.find("```yaml\n").expect("an example") + "```yaml\n".len();
    let end = start + section[start..].find("```").expect("its end");
    let example = &section[start..end];
    assert!(example.contains("faults:"), "{example}");
    assert!(errors(example).is_empty(), "{:?}", errors(example));
}
