//! Hostile input: whatever is applied, parsing must return errors (or resources), never panic,
//! and finish on large inputs.

use proptest::prelude::*;
use trellis_model::{
    CheckReport, Heartbeat, LeaseRequest, NoServices, TtlCheckRegistration, check_note,
    check_report, check_ttl_check, parse_and_validate, parse_documents, sanitize_output,
};

const ROUTE_HEAD: &str = "apiVersion: trellis.dev/v1alpha1
kind: HTTPRoute
metadata:
  name: r
spec:
  parentRefs: [{ name: a }]
  rules:
";

fn must_fail(case: &str, text: &str) -> Vec<String> {
    match parse_documents("h.yaml", text) {
        Ok(r) => panic!("{case}: expected errors, got {r:?}"),
        Err(e) => {
            assert!(!e.errors.is_empty(), "{case}");
            e.errors.iter().map(ToString::to_string).collect()
        }
    }
}

#[test]
fn deeply_nested_yaml_is_an_error() {
    let deep_flow = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    must_fail("deep flow", &deep_flow);
    let mut deep_block = String::new();
    for i in 0..500 {
        deep_block.push_str(&" ".repeat(i));
        deep_block.push_str("a:\n");
    }
    must_fail("deep block", &deep_block);
    let deep_in_spec = format!(
        "apiVersion: trellis.dev/v1alpha1\nkind: Service\nmetadata: {{name: a}}\nspec: {}{}",
        "{x: ".repeat(1000),
        "}".repeat(1000)
    );
    must_fail("deep in spec", &deep_in_spec);
}

#[test]
fn a_megabyte_document_is_handled() {
    // A route with a quarter megabyte of rules: parses (it is only large).
    let mut text = ROUTE_HEAD.to_string();
    while text.len() < 1 << 18 {
        text.push_str("    - backendRefs: [{ name: a, weight: 1 }]\n");
    }
    let errs = match parse_and_validate("h.yaml", &text, &NoServices) {
        Ok(_) => panic!("service `a` does not exist, expected errors"),
        Err(e) => e.errors,
    };
    // Many dangling references, all reported, none lost.
    assert!(errs.len() > 1000, "{}", errs.len());
    // A megabyte-long name.
    let long = format!(
        "apiVersion: trellis.dev/v1alpha1\nkind: Service\nmetadata: {{name: {}}}\n",
        "a".repeat(1 << 20)
    );
    let errs = must_fail("long name", &long);
    assert!(
        errs[0].len() < 400,
        "messages shorten user text: {}",
        errs[0].len()
    );
    // A megabyte of unknown fields.
    let mut fields =
        "apiVersion: trellis.dev/v1alpha1\nkind: Service\nmetadata: {name: a}\n".to_string();
    let mut i = 0;
    while fields.len() < 1 << 20 {
        fields.push_str(&format!("field{i}: {i}\n"));
        i += 1;
    }
    let errs = must_fail("many fields", &fields);
    assert!(
        errs.len() <= 26,
        "errors per document are capped: {}",
        errs.len()
    );
}

#[test]
fn odd_scalars_are_errors() {
    let cases = [
        ("huge number", ROUTE_HEAD.to_string() + "    - backendRefs: [{ name: a, weight: 1e400 }]\n"),
        ("negative huge", ROUTE_HEAD.to_string() + "    - backendRefs: [{ name: a, weight: -99999999999999999999 }]\n"),
        ("nan", ROUTE_HEAD.to_string() + "    - backendRefs: [{ name: a, weight: .nan }]\n"),
        ("control chars", "apiVersion: trellis.dev/v1alpha1\nkind: Service\nmetadata: {name: \"a\\u0000\\u202e\"}\n".to_string()),
        ("non-ascii name", "apiVersion: trellis.dev/v1alpha1\nkind: Service\nmetadata: {name: caté}\n".to_string()),
        ("replacement chars", "\u{fffd}\u{fffd}: \u{feff}\n".to_string()),
        ("binary tag", "!!binary aGVsbG8=\n".to_string()),
        ("alias bomb", "a: &a [1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n".to_string()),
        ("tabs", "\tkind: Service\n".to_string()),
        ("many documents", "---\nkind: X\n".repeat(5000)),
        ("non-string keys", "? [a, b]\n: c\n".to_string()),
        ("bad regex size", ROUTE_HEAD.to_string() + "    - matches: [{ path: { type: RegularExpression, value: \"(a{1000}){1000}\" } }]\n      backendRefs: [{ name: a }]\n"),
    ];
    for (case, text) in &cases {
        must_fail(case, text);
    }
}

const LIMIT_HEAD: &str = "apiVersion: trellis.dev/v1alpha1
kind: RateLimitPolicy
metadata: { name: l }
spec:
  targetRef: { name: a }
  rules:
";

#[test]
fn absurd_rates_are_errors() {
    for (case, rule) in [
        ("zero", "    - { requestsPerUnit: 0, unit: second }\n"),
        ("huge", "    - { requestsPerUnit: 1e400, unit: second }\n"),
        ("negative", "    - { requestsPerUnit: -5, unit: second }\n"),
        (
            "u64",
            "    - { requestsPerUnit: 18446744073709551616, unit: second }\n",
        ),
        (
            "nan burst",
            "    - { requestsPerUnit: 5, unit: second, burst: .nan }\n",
        ),
        ("string", "    - { requestsPerUnit: lots, unit: second }\n"),
        ("unit", "    - { requestsPerUnit: 5, unit: fortnight }\n"),
        (
            "path",
            "    - { match: { path: { value: \"/a\\u0000b\" } }, requestsPerUnit: 5, unit: second }\n",
        ),
    ] {
        must_fail(case, &(LIMIT_HEAD.to_string() + rule));
    }
    let many =
        "    - { match: { path: { value: /x } }, requestsPerUnit: 5, unit: second }\n".repeat(40);
    must_fail("too many rules", &(LIMIT_HEAD.to_string() + &many));
}

#[test]
fn hostile_check_reports_and_notes_are_refused() {
    let huge = "x".repeat(1_000_000);
    assert!(check_note(&huge).is_err());
    assert!(check_note("ok\u{1b}[31m").is_err());
    assert!(check_note("a\tb").is_ok());
    let report = CheckReport {
        output: huge.clone(),
        ..CheckReport::default()
    };
    assert!(check_report(&report).is_err());
    let reg = TtlCheckRegistration {
        ttl_ms: u64::MAX,
        note: None,
    };
    assert!(
        check_ttl_check("db", &reg)
            .expect_err("u64::MAX ttl")
            .starts_with("ttl_ms:")
    );
    assert!(sanitize_output(&huge).len() <= 1024);
    for body in [
        r#"{"check": {"status": "sick"}}"#,
        r#"{"check": {"status": "passing", "extra": 1}}"#,
        r#"{"check": 5}"#,
        r#"{"check": {"status": "passing", "output": 7}}"#,
    ] {
        assert!(serde_json::from_str::<Heartbeat>(body).is_err(), "{body}");
    }
    for body in [
        r#"{"service": "a", "instance": "b", "rule": "c", "demand": "x"}"#,
        r#"{}"#,
    ] {
        assert!(
            serde_json::from_str::<LeaseRequest>(body).is_err(),
            "{body}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn check_bodies_never_panic(text in any::<String>()) {
        let _ = serde_json::from_str::<Heartbeat>(&text);
        let _ = serde_json::from_str::<TtlCheckRegistration>(&text);
        let _ = serde_json::from_str::<LeaseRequest>(&text);
        let _ = check_note(&text);
        let _ = sanitize_output(&text);
    }

    #[test]
    fn never_panics_on_arbitrary_strings(text in any::<String>()) {
        let _ = parse_and_validate("p.yaml", &text, &NoServices);
    }

    #[test]
    fn never_panics_on_yaml_like_text(
        text in "([a-zA-Z:\\-\\[\\]{}#&*!|>'\" ,.0-9\n]|---\n|  |apiVersion: trellis.dev/v1alpha1\n|kind: HTTPRoute\n|kind: Service\n|metadata:\n  name: a\n|spec:\n){0,80}"
    ) {
        let _ = parse_and_validate("p.yaml", &text, &NoServices);
    }
}
