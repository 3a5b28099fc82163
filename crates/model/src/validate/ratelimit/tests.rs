//! RateLimitPolicy validation: one row per rule.

use crate::{Resource, parse_documents};

fn doc(spec: &str) -> String {
    format!(
        "apiVersion: trellis.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {{ name: limits }}\nspec:\n{spec}"
    )
}

fn errors(spec: &str) -> Vec<String> {
    match parse_documents("rl.yaml", &doc(spec)) {
        Ok(d) => panic!("expected errors, got {d:?}"),
        Err(e) => e.errors.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn a_full_policy_parses() {
    let docs = parse_documents(
        "rl.yaml",
        &doc("  targetRef: { name: catalog }
  rules:
    - match: { path: { type: Exact, value: /login } }
      requestsPerUnit: 5
      unit: minute
      perSource: true
    - match: { path: { value: /api } }
      requestsPerUnit: 100
      unit: second
      burst: 20
    - { requestsPerUnit: 1000, unit: hour }
"),
    )
    .expect("valid");
    let Some(Resource::RateLimitPolicy(p)) = docs.first() else {
        panic!("{docs:?}");
    };
    assert_eq!(p.spec.rules.len(), 3);
    assert!(p.spec.rules[0].per_source);
    assert_eq!(p.spec.rules[1].burst(), 20);
    assert_eq!(p.spec.rules[2].burst(), 1000);
}

#[test]
fn bad_rules_are_named() {
    let cases: &[(&str, &str)] = &[
        (
            "  targetRef: { name: catalog }\n  rules: []\n",
            "spec.rules: must hold at least one rule",
        ),
        (
            "  targetRef: { name: catalog }\n  rules: [{ requestsPerUnit: 0, unit: second }]\n",
            "spec.rules[0].requestsPerUnit: 0 is out of range",
        ),
        (
            "  targetRef: { name: catalog }\n  rules: [{ requestsPerUnit: 99999999999, unit: second }]\n",
            "spec.rules[0].requestsPerUnit: 99999999999 is out of range",
        ),
        (
            "  targetRef: { name: catalog }\n  rules: [{ requestsPerUnit: 5, unit: second, burst: 0 }]\n",
            "spec.rules[0].burst: 0 is out of range",
        ),
        (
            "  targetRef: { name: catalog }\n  rules: [{ requestsPerUnit: 5, unit: day }]\n",
            "spec.rules[0].unit",
        ),
        (
            "  targetRef: { name: catalog }\n  rules: [{ requestsPerUnit: 5, unit: second }, { requestsPerUnit: 6, unit: second }]\n",
            "spec.rules[1].match: rules[0] already applies to every request",
        ),
        (
            "  targetRef: { name: catalog }\n  rules: [{ match: { path: { value: api } }, requestsPerUnit: 5, unit: second }]\n",
            "spec.rules[0].match.path.value: `api` must start with `/`",
        ),
        (
            "  targetRef: { name: catalog }\n  rules: [{ match: { path: { value: /a/../b } }, requestsPerUnit: 5, unit: second }]\n",
            "would never match",
        ),
        (
            "  targetRef: { name: catalog }\n  rules: [{ match: { path: { value: /api/ } }, requestsPerUnit: 5, unit: second }]\n",
            "without the trailing `/`",
        ),
        (
            "  targetRef: { name: catalog }\n  rules: [{ match: { path: { type: RegularExpression, value: /a } }, requestsPerUnit: 5, unit: second }]\n",
            "spec.rules[0].match.path.type",
        ),
        (
            "  targetRef: { name: catalog }\n  rules: [{ requestsPerUnit: 5, unit: second, perSource: 3 }]\n",
            "spec.rules[0].perSource",
        ),
        (
            "  rules: [{ requestsPerUnit: 5, unit: second }]\n",
            "spec.targetRef",
        ),
        (
            "  targetRef: { name: catalog }\n  rules: [{ requestsPerUnit: 5, unit: second, global: true, perSource: true }]\n",
            "spec.rules[0].global: a global rule cannot also be perSource",
        ),
    ];
    for (spec, want) in cases {
        let errs = errors(spec);
        assert!(
            errs.iter().any(|e| e.contains(want)),
            "{spec}: want `{want}` in {errs:#?}"
        );
    }
}
