//! The shape and per-field rules of `RateLimitPolicy`.

use super::Issue;
use super::rules::label;
use super::schema::{Field, METADATA, Need, SERVICE_REF, Shape, f, shorten};
use crate::{MAX_RATE, MAX_RATE_RULES, RateLimitPathType, RateLimitPolicyResource};

static RATE_PATH: Shape = Shape::Obj(&[
    f(
        "type",
        &Shape::OneOf(&["Exact", "PathPrefix"]),
        Need::Optional,
    ),
    f("value", &Shape::Str, Need::Required),
]);

static RATE_MATCH: Shape = Shape::Obj(&[f("path", &RATE_PATH, Need::Required)]);

static RATE: Shape = Shape::Int {
    min: 1,
    max: MAX_RATE as u64,
};

static RATE_RULE: Shape = Shape::Obj(&[
    f("match", &RATE_MATCH, Need::Nullable),
    f("requestsPerUnit", &RATE, Need::Required),
    f(
        "unit",
        &Shape::OneOf(&["second", "minute", "hour"]),
        Need::Required,
    ),
    f("burst", &RATE, Need::Nullable),
    f("perSource", &Shape::Bool, Need::Optional),
    f("global", &Shape::Bool, Need::Optional),
]);

static RATE_SPEC: Shape = Shape::Obj(&[
    f("targetRef", &SERVICE_REF, Need::Required),
    f("rules", &Shape::List(&RATE_RULE), Need::Required),
]);

const SPEC_FIELDS: &[Field] = &[
    f("apiVersion", &Shape::Str, Need::Required),
    f("kind", &Shape::Str, Need::Required),
    f("metadata", &METADATA, Need::Required),
    f("spec", &RATE_SPEC, Need::Required),
];

pub(crate) static RATE_LIMIT_POLICY: Shape = Shape::Obj(SPEC_FIELDS);

/// Longest path value accepted.
const MAX_PATH_LEN: usize = 1024;

pub(super) fn check_rate_limit(p: &RateLimitPolicyResource, out: &mut Vec<Issue>) {
    let spec = &p.spec;
    label("spec.targetRef.name", &spec.target_ref.name, out);
    if spec.rules.is_empty() {
        out.push(Issue::new(
            "spec.rules",
            "must hold at least one rule, e.g. `- { requestsPerUnit: 100, unit: second }`".into(),
        ));
    }
    if spec.rules.len() > MAX_RATE_RULES {
        out.push(Issue::new(
            "spec.rules",
            format!(
                "{} rules: at most {MAX_RATE_RULES} are allowed; merge rules or split the service",
                spec.rules.len()
            ),
        ));
    }
    let mut default_rule = None;
    for (i, rule) in spec.rules.iter().enumerate() {
        let here = format!("spec.rules[{i}]");
        if !(1..=MAX_RATE).contains(&rule.requests_per_unit) {
            out.push(Issue::new(
                &format!("{here}.requestsPerUnit"),
                format!(
                    "{} is out of range: must be between 1 and {MAX_RATE}",
                    rule.requests_per_unit
                ),
            ));
        }
        if let Some(b) = rule.burst
            && !(1..=MAX_RATE).contains(&b)
        {
            out.push(Issue::new(
                &format!("{here}.burst"),
                format!("{b} is out of range: must be between 1 and {MAX_RATE}"),
            ));
        }
        if rule.global && rule.per_source {
            out.push(Issue::new(
                &format!("{here}.global"),
                "a global rule cannot also be perSource: global limits are shared by the service's sidecars for every caller together; use one or the other".into(),
            ));
        }
        match &rule.matches {
            None => match default_rule {
                Some(first) => out.push(Issue::new(
                    &format!("{here}.match"),
                    format!(
                        "rules[{first}] already applies to every request without a match: give this rule a `match`, or remove one of them"
                    ),
                )),
                None => default_rule = Some(i),
            },
            Some(m) => {
                if let Err(e) = check_path(&m.path.value, m.path.kind) {
                    out.push(Issue::new(&format!("{here}.match.path.value"), e));
                }
            }
        }
    }
}

/// A path the inbound listener can match against a normalized request path.
fn check_path(s: &str, kind: RateLimitPathType) -> Result<(), String> {
    let shown = shorten(s);
    if !s.starts_with('/') {
        return Err(format!("`{shown}` must start with `/`"));
    }
    if s.len() > MAX_PATH_LEN {
        return Err(format!(
            "is {} characters long: at most {MAX_PATH_LEN} are allowed",
            s.len()
        ));
    }
    if s.contains(['?', '#', '\\', '*']) || s.chars().any(|c| c.is_control() || c == ' ') {
        return Err(format!(
            "`{shown}`: a plain path without `?`, `#`, `\\`, `*`, spaces or control characters (the query string is not matched)"
        ));
    }
    if s.contains("//") || s.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(format!(
            "`{shown}` would never match: requests are matched on normalized paths, without `//`, `.` or `..` segments"
        ));
    }
    if kind == RateLimitPathType::PathPrefix && s.len() > 1 && s.ends_with('/') {
        return Err(format!(
            "`{shown}`: a PathPrefix matches whole segments; write it without the trailing `/`"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
