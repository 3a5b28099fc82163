//! Per-field rules on typed resources: names, load-balancer options, route matches and
//! weights. Number ranges are checked here too (with the schema's wording, so that a value
//! reported by both collapses into one error) for resources that did not come from YAML.

use std::collections::BTreeSet;

use crate::{
    Algorithm, HeaderMatch, HeaderMatchType, HttpRouteResource, Metadata, PathMatchType, Resource,
    ServiceResource, TrafficPolicyResource,
};

use super::Issue;
use super::schema::shorten;

/// HTTP methods a route may match.
pub const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Largest compiled regex we accept, so a hostile pattern cannot take the control plane's memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Checks a DNS label: lowercase letters, digits and `-`, 1..=63 characters, starting with a
/// letter and not ending with `-`. The error says what is wrong.
pub fn check_dns_label(s: &str) -> Result<(), String> {
    let shown = shorten(s);
    if s.is_empty() {
        return Err("must not be empty: use a DNS label such as `catalog`".to_string());
    }
    if s.len() > 63 {
        return Err(format!(
            "`{shown}` is {} characters long: a DNS label has at most 63",
            s.len()
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "`{shown}` contains {c:?}: only lowercase letters, digits and `-` are allowed"
        ));
    }
    if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(format!("`{shown}` must start with a lowercase letter"));
    }
    if s.ends_with('-') {
        return Err(format!("`{shown}` must not end with `-`"));
    }
    Ok(())
}

/// Checks an HTTP header name (an RFC 9110 token).
pub fn check_header_name(s: &str) -> Result<(), String> {
    const EXTRA: &str = "!#$%&'*+-.^_`|~";
    if s.is_empty() {
        return Err("header name must not be empty".to_string());
    }
    match s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || EXTRA.contains(*c)))
    {
        Some(c) => Err(format!(
            "`{}` is not a valid header name: {c:?} is not allowed (letters, digits and !#$%&'*+-.^_`|~ are)",
            shorten(s)
        )),
        None => Ok(()),
    }
}

fn check_regex(s: &str) -> Result<(), String> {
    regex::RegexBuilder::new(s)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map(|_| ())
        .map_err(|e| {
            let first = e.to_string();
            let msg = first.lines().last().unwrap_or("invalid").trim().to_string();
            format!("`{}` is not a valid regular expression: {msg}", shorten(s))
        })
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// Runs every per-field rule of one resource.
pub(crate) fn check_resource(r: &Resource, out: &mut Vec<Issue>) {
    check_metadata(r.metadata(), out);
    match r {
        Resource::Service(s) => check_service(s, out),
        Resource::TrafficPolicy(p) => check_policy(p, out),
        Resource::HttpRoute(h) => check_route(h, out),
        Resource::AuthorizationPolicy(p) => super::security::check_authorization(p, out),
        Resource::RateLimitPolicy(p) => super::ratelimit::check_rate_limit(p, out),
        Resource::RequestAuthentication(a) => super::security::check_authentication(a, out),
    }
}

/// One header match (`at` = its path): a valid header name, a regex that compiles.
pub(super) fn check_header_match(at: &str, hm: &HeaderMatch, out: &mut Vec<Issue>) {
    if let Err(e) = check_header_name(&hm.name) {
        out.push(Issue::new(&format!("{at}.name"), e));
    }
    if hm.kind == HeaderMatchType::RegularExpression
        && let Err(e) = check_regex(&hm.value)
    {
        out.push(Issue::new(&format!("{at}.value"), e));
    }
}

pub(super) fn label(field: &str, value: &str, out: &mut Vec<Issue>) {
    if let Err(e) = check_dns_label(value) {
        out.push(Issue::new(field, e));
    }
}

/// The same message as the schema's, so that the two collapse into one.
fn range(field: &str, n: u64, min: u64, max: u64, out: &mut Vec<Issue>) {
    if n < min || n > max {
        out.push(Issue::new(
            field,
            format!("{n} is out of range: must be between {min} and {max}"),
        ));
    }
}

fn check_metadata(m: &Metadata, out: &mut Vec<Issue>) {
    label("metadata.name", &m.name, out);
    label("metadata.namespace", &m.namespace, out);
    for k in m.labels.keys() {
        if k.is_empty() {
            out.push(Issue::new(
                "metadata.labels",
                "label keys must not be empty".into(),
            ));
        }
    }
}

fn check_service(s: &ServiceResource, out: &mut Vec<Issue>) {
    let mut seen = BTreeSet::new();
    for (i, sub) in s.spec.subsets.iter().enumerate() {
        let here = format!("spec.subsets[{i}]");
        label(&format!("{here}.name"), &sub.name, out);
        if !seen.insert(sub.name.as_str()) {
            out.push(Issue::new(
                &format!("{here}.name"),
                format!("subset `{}` is declared twice", shorten(&sub.name)),
            ));
        }
        if sub.labels.is_empty() {
            out.push(Issue::new(
                &format!("{here}.labels"),
                "must select at least one label, e.g. `{ version: v1 }`".into(),
            ));
        }
        if sub.labels.keys().any(String::is_empty) {
            out.push(Issue::new(
                &format!("{here}.labels"),
                "label keys must not be empty".into(),
            ));
        }
    }
}

fn check_policy(p: &TrafficPolicyResource, out: &mut Vec<Issue>) {
    label("spec.targetRef.name", &p.spec.target_ref.name, out);
    super::resilience::check_policy(&p.spec, out);
    let lb = &p.spec.load_balancer;
    let alg = lb.algorithm;
    let hashing = matches!(alg, Algorithm::RingHash | Algorithm::Maglev);
    match (&lb.hash_key, hashing) {
        (None, true) => out.push(Issue::new(
            "spec.loadBalancer.hashKey",
            format!(
                "required for algorithm {alg:?}: set `{{ header: NAME }}` or `{{ sourceIp: true }}`"
            ),
        )),
        (Some(_), false) => out.push(Issue::new(
            "spec.loadBalancer.hashKey",
            format!(
                "only used by RingHash and Maglev, not {alg:?}: remove it or change the algorithm"
            ),
        )),
        (Some(key), true) => match (&key.header, key.source_ip) {
            (Some(_), true) | (None, false) => out.push(Issue::new(
                "spec.loadBalancer.hashKey",
                "set exactly one of `header` and `sourceIp`".into(),
            )),
            (Some(h), false) => {
                if let Err(e) = check_header_name(h) {
                    out.push(Issue::new("spec.loadBalancer.hashKey.header", e));
                }
            }
            (None, true) => {}
        },
        (None, false) => {}
    }
    if lb.ring_size.is_some() && alg != Algorithm::RingHash {
        out.push(Issue::new(
            "spec.loadBalancer.ringSize",
            format!("only used by RingHash, not {alg:?}: remove it or change the algorithm"),
        ));
    }
    if let Some(n) = lb.ring_size {
        range("spec.loadBalancer.ringSize", n, 64, 8_388_608, out);
    }
    if let Some(t) = lb.table_size {
        range("spec.loadBalancer.tableSize", t, 5, 5_000_011, out);
        if alg != Algorithm::Maglev {
            out.push(Issue::new(
                "spec.loadBalancer.tableSize",
                format!("only used by Maglev, not {alg:?}: remove it or change the algorithm"),
            ));
        }
        if (5..=5_000_011).contains(&t) && !is_prime(t) {
            out.push(Issue::new(
                "spec.loadBalancer.tableSize",
                format!("{t} is not a prime: Maglev needs a prime table size, e.g. 65537"),
            ));
        }
    }
}

fn check_route(h: &HttpRouteResource, out: &mut Vec<Issue>) {
    let spec = &h.spec;
    if spec.parent_refs.is_empty() {
        out.push(Issue::new(
            "spec.parentRefs",
            "must name at least one service: `- name: SERVICE`".into(),
        ));
    }
    for (i, p) in spec.parent_refs.iter().enumerate() {
        label(&format!("spec.parentRefs[{i}].name"), &p.name, out);
    }
    if spec.rules.is_empty() {
        out.push(Issue::new(
            "spec.rules",
            "must hold at least one rule with backendRefs".into(),
        ));
    }
    for (r, rule) in spec.rules.iter().enumerate() {
        let here = format!("spec.rules[{r}]");
        super::resilience::check_rule(&here, rule, out);
        for (m, mat) in rule.matches.iter().enumerate() {
            let at = format!("{here}.matches[{m}]");
            if let Some(path) = &mat.path {
                let field = format!("{at}.path.value");
                match path.kind {
                    PathMatchType::Exact | PathMatchType::PathPrefix => {
                        if !path.value.starts_with('/') {
                            out.push(Issue::new(
                                &field,
                                format!("`{}` must start with `/`", shorten(&path.value)),
                            ));
                        }
                    }
                    PathMatchType::RegularExpression => {
                        if let Err(e) = check_regex(&path.value) {
                            out.push(Issue::new(&field, e));
                        }
                    }
                }
            }
            for (k, hm) in mat.headers.iter().enumerate() {
                check_header_match(&format!("{at}.headers[{k}]"), hm, out);
            }
            if let Some(method) = &mat.method
                && !METHODS.contains(&method.as_str())
            {
                out.push(Issue::new(
                    &format!("{at}.method"),
                    format!(
                        "unknown method `{}`: expected one of {}",
                        shorten(method),
                        METHODS.join(", ")
                    ),
                ));
            }
        }
        if rule.backend_refs.is_empty() {
            out.push(Issue::new(
                &format!("{here}.backendRefs"),
                "must name at least one backend: `- name: SERVICE`".into(),
            ));
        } else if rule.backend_refs.iter().all(|b| b.weight == 0) {
            out.push(Issue::new(
                &format!("{here}.backendRefs"),
                "every weight is 0: at least one backend needs a weight above 0".into(),
            ));
        }
        for (b, backend) in rule.backend_refs.iter().enumerate() {
            let at = format!("{here}.backendRefs[{b}]");
            label(&format!("{at}.name"), &backend.name, out);
            if let Some(subset) = &backend.subset {
                label(&format!("{at}.subset"), subset, out);
            }
            range(
                &format!("{at}.weight"),
                u64::from(backend.weight),
                0,
                1_000_000,
                out,
            );
        }
    }
}
