//! Text output of the client commands: aligned tables and the `describe` report, built from
//! the API's JSON answers. Pure functions of their input (and of `now`), so they are tested
//! without a server.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use trellis_model::{
    Algorithm, HttpRouteResource, HttpRouteRule, Kind, PathMatchType, Resource, ServiceSpec,
    TrafficPolicySpec,
};

/// Unix time in milliseconds.
pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A JSON value as plain text: strings without quotes, null as `-`.
pub(super) fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

fn field(v: &Value, key: &str) -> String {
    v.get(key).map(text).unwrap_or_else(|| "-".to_string())
}

fn number(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

/// Columns separated by two spaces, left-aligned, no trailing spaces.
pub(super) fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = widths.get(i).copied().unwrap_or(0);
            line.extend(std::iter::repeat_n(
                ' ',
                pad.saturating_sub(cell.chars().count()),
            ));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `45s`, `12m`, `5h`, `3d`.
pub(super) fn format_age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// `k=v,k2=v2`, or `-` when empty.
fn labels(v: Option<&Value>) -> String {
    match v.and_then(Value::as_object) {
        Some(map) if !map.is_empty() => map
            .iter()
            .map(|(k, v)| format!("{k}={}", text(v)))
            .collect::<Vec<_>>()
            .join(","),
        _ => "-".to_string(),
    }
}

/// `httproute/catalog-canary configured`, one per applied resource.
pub(super) fn applied_lines(body: &Value) -> Vec<String> {
    body.get("applied")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .map(|a| {
                    format!(
                        "{}/{} {}",
                        field(a, "kind").to_ascii_lowercase(),
                        field(a, "name"),
                        field(a, "action")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn services(items: &[Value]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|s| {
            let declared = s.get("declared").and_then(Value::as_bool).unwrap_or(false);
            vec![
                field(s, "name"),
                if declared { "yes" } else { "no" }.to_string(),
                field(s, "instances"),
                field(s, "healthy"),
            ]
        })
        .collect();
    render(&["NAME", "DECLARED", "INSTANCES", "HEALTHY"], &rows)
}

fn address(i: &Value) -> String {
    match number(i, "port") {
        Some(p) if field(i, "address").contains(':') => format!("[{}]:{p}", field(i, "address")),
        Some(p) => format!("{}:{p}", field(i, "address")),
        None => field(i, "address"),
    }
}

fn age(i: &Value, now_ms: u64) -> String {
    number(i, "registered_at_ms")
        .map(|at| format_age(now_ms.saturating_sub(at)))
        .unwrap_or_else(|| "-".to_string())
}

/// passing / warning / critical (`held` when self-preservation keeps it); from an older
/// control plane without states, its `health`.
fn status(i: &Value) -> String {
    let s = match i.get("status").and_then(Value::as_str) {
        Some(s) => s.to_string(),
        None => field(i, "health"),
    };
    if i.get("held").and_then(Value::as_bool) == Some(true) {
        format!("{s} (held)")
    } else {
        s
    }
}

/// Why it is not passing, cut to one short line.
fn check_output(i: &Value) -> String {
    let out = i
        .get("status_output")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if out.is_empty() {
        return "-".to_string();
    }
    let mut short: String = out.chars().take(60).collect();
    if short.len() < out.len() {
        short.push_str("...");
    }
    short
}

pub(super) fn instances(items: &[Value], now_ms: u64) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| {
            vec![
                field(i, "service"),
                field(i, "id"),
                address(i),
                status(i),
                labels(i.get("labels")),
                age(i, now_ms),
                check_output(i),
            ]
        })
        .collect();
    render(
        &[
            "SERVICE", "ID", "ADDRESS", "STATUS", "LABELS", "AGE", "CHECK",
        ],
        &rows,
    )
}

/// The accepted versions: one value when every type agrees, else `Type=v,...`.
fn acked(p: &Value) -> String {
    let Some(map) = p.get("acked").and_then(Value::as_object) else {
        return "-".to_string();
    };
    let mut versions: Vec<String> = map.values().map(text).collect();
    versions.dedup();
    match versions.len() {
        0 => "-".to_string(),
        1 => versions.remove(0),
        _ => map
            .iter()
            .map(|(k, v)| format!("{k}={}", text(v)))
            .collect::<Vec<_>>()
            .join(","),
    }
}

fn last_nack(p: &Value) -> String {
    match p.get("last_nack") {
        Some(n) if n.is_object() => {
            let msg = field(n, "message");
            let msg = match msg.char_indices().nth(60) {
                Some((i, _)) => format!("{}...", &msg[..i]),
                None => msg,
            };
            format!("{} {}: {msg}", field(n, "type_name"), field(n, "version"))
        }
        _ => "-".to_string(),
    }
}

pub(super) fn proxies(items: &[Value]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|p| {
            vec![
                field(p, "node_id"),
                field(p, "service"),
                acked(p),
                last_nack(p),
            ]
        })
        .collect();
    render(&["NODE", "SERVICE", "ACKED-VERSION", "LAST-NACK"], &rows)
}

fn backends(rules: &[HttpRouteRule]) -> String {
    let mut out: Vec<String> = Vec::new();
    for rule in rules {
        for b in &rule.backend_refs {
            let target = match &b.subset {
                Some(s) => format!("{}/{s}", b.name),
                None => b.name.clone(),
            };
            out.push(format!("{target}:{}", b.weight));
        }
    }
    out.join(",")
}

fn algorithm(spec: &TrafficPolicySpec) -> String {
    let lb = &spec.load_balancer;
    let mut s = format!("{:?}", lb.algorithm);
    if let Some(key) = &lb.hash_key {
        match &key.header {
            Some(h) => {
                let _ = write!(s, " (hash on header {h}");
            }
            None => s.push_str(" (hash on source IP"),
        }
        match (lb.algorithm, lb.ring_size, lb.table_size) {
            (Algorithm::RingHash, Some(n), _) => {
                let _ = write!(s, ", ring size {n}");
            }
            (Algorithm::Maglev, _, Some(n)) => {
                let _ = write!(s, ", table size {n}");
            }
            _ => {}
        }
        s.push(')');
    }
    s
}

/// `/api: 100/second burst 20 per source, *: 1000/hour`.
fn rate_rules(rules: &[trellis_model::RateLimitRule]) -> String {
    rules
        .iter()
        .map(|r| {
            let path = r.matches.as_ref().map_or("*", |m| m.path.value.as_str());
            let unit = format!("{:?}", r.unit).to_ascii_lowercase();
            let per = if r.per_source { " per source" } else { "" };
            let global = if r.global { " global" } else { "" };
            format!(
                "{path}: {}/{unit} burst {}{per}{global}",
                r.requests_per_unit,
                r.burst()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A table of resources; one kind gets kind-specific columns, all kinds a summary.
pub(super) fn resources(items: &[Resource], kind: Option<Kind>) -> String {
    match kind {
        Some(Kind::Service) => {
            let rows: Vec<Vec<String>> = items
                .iter()
                .filter_map(|r| match r {
                    Resource::Service(s) => Some(vec![
                        s.metadata.name.clone(),
                        format!("{:?}", s.spec.protocol).to_ascii_lowercase(),
                        s.spec.mtls.mode.to_string(),
                        subsets(&s.spec),
                    ]),
                    _ => None,
                })
                .collect();
            render(&["NAME", "PROTOCOL", "MTLS", "SUBSETS"], &rows)
        }
        Some(Kind::TrafficPolicy) => {
            let rows: Vec<Vec<String>> = items
                .iter()
                .filter_map(|r| match r {
                    Resource::TrafficPolicy(p) => Some(vec![
                        p.metadata.name.clone(),
                        p.spec.target_ref.name.clone(),
                        algorithm(&p.spec),
                    ]),
                    _ => None,
                })
                .collect();
            render(&["NAME", "TARGET", "ALGORITHM"], &rows)
        }
        Some(Kind::HttpRoute) => {
            let rows: Vec<Vec<String>> = items
                .iter()
                .filter_map(|r| match r {
                    Resource::HttpRoute(h) => Some(vec![
                        h.metadata.name.clone(),
                        parents(h),
                        h.spec.rules.len().to_string(),
                        backends(&h.spec.rules),
                    ]),
                    _ => None,
                })
                .collect();
            render(&["NAME", "PARENTS", "RULES", "BACKENDS"], &rows)
        }
        Some(Kind::AuthorizationPolicy) => super::security::authorization_policies(items),
        Some(Kind::RequestAuthentication) => super::security::request_authentications(items),
        Some(Kind::RateLimitPolicy) => {
            let rows: Vec<Vec<String>> = items
                .iter()
                .filter_map(|r| match r {
                    Resource::RateLimitPolicy(p) => Some(vec![
                        p.metadata.name.clone(),
                        p.spec.target_ref.name.clone(),
                        rate_rules(&p.spec.rules),
                    ]),
                    _ => None,
                })
                .collect();
            render(&["NAME", "TARGET", "RULES"], &rows)
        }
        None => {
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|r| vec![r.kind().to_string(), r.name().to_string()])
                .collect();
            render(&["KIND", "NAME"], &rows)
        }
    }
}

fn parents(h: &HttpRouteResource) -> String {
    h.spec
        .parent_refs
        .iter()
        .map(|p| p.name.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

fn subsets(spec: &ServiceSpec) -> String {
    if spec.subsets.is_empty() {
        return "-".to_string();
    }
    spec.subsets
        .iter()
        .map(|s| {
            let sel: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{} {{{}}}", s.name, sel.join(","))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One route rule as a line: `PathPrefix /api, header x-canary=true, GET -> catalog/v1 90, ...`.
fn rule_line(rule: &HttpRouteRule) -> String {
    let matches: Vec<String> = rule
        .matches
        .iter()
        .map(|m| {
            let mut parts = Vec::new();
            if let Some(p) = &m.path {
                let kind = match p.kind {
                    PathMatchType::Exact => "path =",
                    PathMatchType::PathPrefix => "path prefix",
                    PathMatchType::RegularExpression => "path ~",
                };
                parts.push(format!("{kind} {}", p.value));
            }
            for h in &m.headers {
                parts.push(format!("header {}={}", h.name, h.value));
            }
            if let Some(method) = &m.method {
                parts.push(method.clone());
            }
            parts.join(" and ")
        })
        .collect();
    let when = if matches.is_empty() {
        "everything".to_string()
    } else {
        matches.join(" | ")
    };
    let total: u64 = rule.backend_refs.iter().map(|b| u64::from(b.weight)).sum();
    let to: Vec<String> = rule
        .backend_refs
        .iter()
        .map(|b| {
            let target = match &b.subset {
                Some(s) => format!("{}/{s}", b.name),
                None => b.name.clone(),
            };
            let pct = (u64::from(b.weight) * 100).checked_div(total).unwrap_or(0);
            format!("{target} {pct}%")
        })
        .collect();
    format!("{when} -> {}", to.join(", "))
}

/// The `describe service` report from `GET /v1/services/{name}`.
pub(super) fn describe_service(body: &Value, now_ms: u64) -> String {
    let mut out = String::new();
    let declared: Option<ServiceSpec> = body
        .get("declared")
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    let policy: Option<TrafficPolicySpec> = body
        .get("policy")
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    let routes: Vec<HttpRouteResource> = body
        .get("routes")
        .and_then(Value::as_array)
        .map(|rs| rs.iter().filter_map(route_of).collect())
        .unwrap_or_default();
    let instances = array(body, "instances");
    let proxies_list = array(body, "proxies");

    let _ = writeln!(out, "Name:      {}", field(body, "name"));
    match &declared {
        Some(spec) => {
            let _ = writeln!(
                out,
                "Declared:  yes (protocol {})",
                format!("{:?}", spec.protocol).to_ascii_lowercase()
            );
            let _ = writeln!(out, "Subsets:   {}", subsets(spec));
        }
        None => {
            let _ = writeln!(out, "Declared:  no (known from its instances)");
        }
    }
    super::security::describe_header(body, &mut out);
    let policy_text = policy
        .as_ref()
        .map(algorithm)
        .unwrap_or_else(|| "RoundRobin (default, no TrafficPolicy)".to_string());
    let _ = writeln!(out, "Balancing: {policy_text}");
    let limits: Option<trellis_model::RateLimitPolicyResource> = body
        .get("rate_limit")
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    if let Some(p) = limits {
        let _ = writeln!(
            out,
            "Limits:    {} ({})",
            rate_rules(&p.spec.rules),
            p.metadata.name
        );
    }

    let passing = instances
        .iter()
        .filter(|i| status(i) == "passing" || status(i) == "healthy")
        .count();
    let _ = writeln!(out, "\nInstances: {} ({passing} passing)", instances.len());
    if !instances.is_empty() {
        let rows: Vec<Vec<String>> = instances
            .iter()
            .map(|i| {
                let beat = number(i, "last_heartbeat_ms_ago")
                    .map(|ms| format!("{} ago", format_age(ms)))
                    .unwrap_or_else(|| "-".to_string());
                vec![
                    field(i, "id"),
                    address(i),
                    status(i),
                    field(i, "zone"),
                    field(i, "weight"),
                    labels(i.get("labels")),
                    beat,
                    age(i, now_ms),
                    check_output(i),
                ]
            })
            .collect();
        let table = render(
            &[
                "ID",
                "ADDRESS",
                "STATUS",
                "ZONE",
                "WEIGHT",
                "LABELS",
                "HEARTBEAT",
                "AGE",
                "CHECK",
            ],
            &rows,
        );
        indent(&mut out, &table);
    }

    let _ = writeln!(out, "\nRoutes: {}", routes.len());
    for r in &routes {
        let _ = writeln!(out, "  {}", r.metadata.name);
        for (i, rule) in r.spec.rules.iter().enumerate() {
            let _ = writeln!(out, "    rule {}: {}", i + 1, rule_line(rule));
        }
    }

    super::resilience::describe(policy.as_ref(), &routes, &mut out);
    super::security::describe_policies(body, &mut out);

    let _ = writeln!(out, "\nProxies: {}", proxies_list.len());
    if !proxies_list.is_empty() {
        indent(&mut out, &proxies(&proxies_list));
    }
    out
}

fn array(body: &Value, key: &str) -> Vec<Value> {
    body.get(key)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// A route as the API sends it: with or without its `kind` tag.
fn route_of(v: &Value) -> Option<HttpRouteResource> {
    match serde_json::from_value::<Resource>(v.clone()) {
        Ok(Resource::HttpRoute(h)) => Some(h),
        _ => serde_json::from_value(v.clone()).ok(),
    }
}

fn indent(out: &mut String, block: &str) {
    for line in block.lines() {
        let _ = writeln!(out, "  {line}");
    }
}

/// The text of `trellis describe reason`.
pub(super) fn describe_reason(r: &trellis_model::reason::Reason) -> String {
    format!(
        "Reason:  {} (HTTP {})\nWhat:    {}.\nFix:     {}.\n",
        r.token, r.status, r.what, r.fix
    )
}
