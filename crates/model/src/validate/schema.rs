//! The shape of each kind, checked on the untyped YAML tree before typed deserialization.
//!
//! serde stops at the first problem and does not say where it is; walking the tree against
//! this schema reports every unknown field, missing field and wrong type with its full path
//! (`spec.rules[0].backendRefs[1].wieght`). The schema mirrors `resource.rs`: a field the
//! schema accepts must deserialize, and the tests check both agree on the examples.

use serde_json::Value;

use super::Issue;

/// What a value must look like.
pub(crate) enum Shape {
    Str,
    Bool,
    /// An integer in `min..=max` (the user-facing range, always within the Rust type).
    Int {
        min: u64,
        max: u64,
    },
    /// A number (fractions allowed) in `min..=max`.
    Number {
        min: f64,
        max: f64,
    },
    /// A string out of a fixed set (serde unit enums).
    OneOf(&'static [&'static str]),
    /// An integer in `min..=max` or one of the names (a gRPC status: `14` or `UNAVAILABLE`).
    IntOrName {
        min: u64,
        max: u64,
        names: &'static [&'static str],
    },
    /// A map from strings to strings (labels).
    StrMap,
    List(&'static Shape),
    Obj(&'static [Field]),
}

/// Whether a field may be left out, or written as `null`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    Required,
    /// May be absent, not null (`#[serde(default)]` on a non-`Option`).
    Optional,
    /// May be absent or null (`Option<T>`).
    Nullable,
}

pub(crate) struct Field {
    pub name: &'static str,
    pub shape: &'static Shape,
    pub need: Need,
}

pub(crate) const fn f(name: &'static str, shape: &'static Shape, need: Need) -> Field {
    Field { name, shape, need }
}

use Need::{Nullable, Optional, Required};

pub(crate) static METADATA: Shape = Shape::Obj(&[
    f("name", &Shape::Str, Required),
    f("namespace", &Shape::Str, Optional),
    f("labels", &Shape::StrMap, Optional),
]);

pub(crate) static SERVICE_REF: Shape = Shape::Obj(&[f("name", &Shape::Str, Required)]);

static SUBSET: Shape = Shape::Obj(&[
    f("name", &Shape::Str, Required),
    f("labels", &Shape::StrMap, Required),
]);

static SERVICE_SPEC: Shape = Shape::Obj(&[
    f(
        "protocol",
        &Shape::OneOf(&["http", "http2", "grpc", "tcp"]),
        Optional,
    ),
    f("subsets", &Shape::List(&SUBSET), Optional),
    f("mtls", &MTLS, Optional),
]);

/// The mTLS mode names, as written in YAML.
pub(crate) const MTLS_MODES: &[&str] = &["STRICT", "PERMISSIVE"];

static MTLS: Shape = Shape::Obj(&[f("mode", &Shape::OneOf(MTLS_MODES), Optional)]);

static HASH_KEY: Shape = Shape::Obj(&[
    f("header", &Shape::Str, Nullable),
    f("sourceIp", &Shape::Bool, Optional),
]);

/// The algorithm names, as written in YAML.
pub(crate) const ALGORITHMS: &[&str] = &[
    "RoundRobin",
    "Random",
    "Weighted",
    "LeastRequest",
    "PeakEwma",
    "RingHash",
    "Maglev",
];

static LOAD_BALANCER: Shape = Shape::Obj(&[
    f("algorithm", &Shape::OneOf(ALGORITHMS), Optional),
    f("hashKey", &HASH_KEY, Nullable),
    f(
        "ringSize",
        &Shape::Int {
            min: 64,
            max: 8_388_608,
        },
        Nullable,
    ),
    f(
        "tableSize",
        &Shape::Int {
            min: 5,
            max: 5_000_011,
        },
        Nullable,
    ),
    f("localityFailover", &LOCALITY_FAILOVER, Nullable),
]);

static LOCALITY_FAILOVER: Shape = Shape::Obj(&[
    f("enabled", &Shape::Bool, Optional),
    f(
        "spilloverThreshold",
        &Shape::Int { min: 1, max: 100 },
        Nullable,
    ),
]);

const fn int(min: u64, max: u64) -> Shape {
    Shape::Int { min, max }
}

static TIMEOUTS: Shape = Shape::Obj(&[
    f("connect", &Shape::Str, Nullable),
    f("request", &Shape::Str, Nullable),
    f("backendRequest", &Shape::Str, Nullable),
    f("idle", &Shape::Str, Nullable),
]);

static STATUS_CODES: Shape = Shape::List(&STATUS_CODE);
static STATUS_CODE: Shape = int(100, 599);

static BACKOFF: Shape = Shape::Obj(&[
    f("baseInterval", &Shape::Str, Nullable),
    f("maxInterval", &Shape::Str, Nullable),
]);

static BUDGET: Shape = Shape::Obj(&[
    f("percent", &Shape::Int { min: 0, max: 100 }, Nullable),
    f(
        "minRetriesPerSecond",
        &Shape::Int {
            min: 0,
            max: 10_000,
        },
        Nullable,
    ),
]);

static RETRIES: Shape = Shape::Obj(&[
    f("attempts", &Shape::Int { min: 0, max: 10 }, Nullable),
    f(
        "retryOn",
        &Shape::List(&Shape::OneOf(crate::RETRY_ON)),
        Optional,
    ),
    f("retriableStatusCodes", &STATUS_CODES, Optional),
    f("backoff", &BACKOFF, Nullable),
    f("budget", &BUDGET, Nullable),
    f("retryNonIdempotent", &Shape::Bool, Optional),
    f(
        "maxBufferBytes",
        &Shape::Int {
            min: 0,
            max: 16 * 1024 * 1024,
        },
        Nullable,
    ),
]);

static SUCCESS_RATE: Shape = Shape::Obj(&[
    f(
        "minimumHosts",
        &Shape::Int {
            min: 1,
            max: 10_000,
        },
        Nullable,
    ),
    f(
        "requestVolume",
        &Shape::Int {
            min: 1,
            max: 1_000_000,
        },
        Nullable,
    ),
    f(
        "stdevFactor",
        &Shape::Int {
            min: 1,
            max: 100_000,
        },
        Nullable,
    ),
]);

static OUTLIER: Shape = Shape::Obj(&[
    f(
        "consecutive5xx",
        &Shape::Int {
            min: 0,
            max: 10_000,
        },
        Nullable,
    ),
    f(
        "consecutiveGatewayErrors",
        &Shape::Int {
            min: 0,
            max: 10_000,
        },
        Nullable,
    ),
    f("interval", &Shape::Str, Nullable),
    f("baseEjectionTime", &Shape::Str, Nullable),
    f("maxEjectionTime", &Shape::Str, Nullable),
    f(
        "maxEjectionPercent",
        &Shape::Int { min: 0, max: 100 },
        Nullable,
    ),
    f("panicThreshold", &Shape::Int { min: 0, max: 100 }, Nullable),
    f("successRate", &SUCCESS_RATE, Nullable),
]);

/// Circuit-breaker limits: at least 1 (0 would refuse everything), at most a billion.
static BREAKER_LIMIT: Shape = int(1, 1_000_000_000);

static BREAKERS: Shape = Shape::Obj(&[
    f("maxConnections", &BREAKER_LIMIT, Nullable),
    f("maxPendingRequests", &BREAKER_LIMIT, Nullable),
    f("maxRequests", &BREAKER_LIMIT, Nullable),
    f("maxRetries", &BREAKER_LIMIT, Nullable),
]);

static PERCENTAGE: Shape = Shape::Number {
    min: 0.0,
    max: 100.0,
};

static FAULT_DELAY: Shape = Shape::Obj(&[
    f("fixedDelay", &Shape::Str, Required),
    f("percentage", &PERCENTAGE, Nullable),
]);

static FAULT_ABORT: Shape = Shape::Obj(&[
    f("httpStatus", &int(200, 599), Nullable),
    f(
        "grpcStatus",
        &Shape::IntOrName {
            min: 1,
            max: 16,
            names: crate::GRPC_CODES.split_at(1).1,
        },
        Nullable,
    ),
    f("percentage", &PERCENTAGE, Nullable),
]);

static FAULTS: Shape = Shape::Obj(&[
    f("delay", &FAULT_DELAY, Nullable),
    f("abort", &FAULT_ABORT, Nullable),
    f("headers", &Shape::List(&HEADER_MATCH), Optional),
]);

static POLICY_SPEC: Shape = Shape::Obj(&[
    f("targetRef", &SERVICE_REF, Required),
    f("loadBalancer", &LOAD_BALANCER, Optional),
    f("timeouts", &TIMEOUTS, Nullable),
    f("retries", &RETRIES, Nullable),
    f("outlierDetection", &OUTLIER, Nullable),
    f("circuitBreakers", &BREAKERS, Nullable),
    f("faults", &FAULTS, Nullable),
    f("healthCheck", &HEALTH_CHECK, Nullable),
]);

static HEALTH_CHECK: Shape = Shape::Obj(&[
    f("http", &HTTP_HEALTH_CHECK, Nullable),
    f("tcp", &Shape::Obj(&[]), Nullable),
    f(
        "grpc",
        &Shape::Obj(&[f("service", &Shape::Str, Optional)]),
        Nullable,
    ),
    f("interval", &Shape::Str, Nullable),
    f("timeout", &Shape::Str, Nullable),
    f(
        "healthyThreshold",
        &Shape::Int { min: 1, max: 100 },
        Nullable,
    ),
    f(
        "unhealthyThreshold",
        &Shape::Int { min: 1, max: 100 },
        Nullable,
    ),
]);

static HTTP_HEALTH_CHECK: Shape = Shape::Obj(&[
    f("path", &Shape::Str, Required),
    f("expectedStatuses", &STATUS_CODES, Optional),
]);

static ROUTE_TIMEOUTS: Shape = Shape::Obj(&[
    f("request", &Shape::Str, Nullable),
    f("backendRequest", &Shape::Str, Nullable),
]);

static ROUTE_RETRY: Shape = Shape::Obj(&[
    f("codes", &STATUS_CODES, Optional),
    f("attempts", &Shape::Int { min: 0, max: 10 }, Nullable),
    f("backoff", &Shape::Str, Nullable),
]);

static PATH_MATCH: Shape = Shape::Obj(&[
    f(
        "type",
        &Shape::OneOf(&["Exact", "PathPrefix", "RegularExpression"]),
        Optional,
    ),
    f("value", &Shape::Str, Required),
]);

static HEADER_MATCH: Shape = Shape::Obj(&[
    f(
        "type",
        &Shape::OneOf(&["Exact", "RegularExpression"]),
        Optional,
    ),
    f("name", &Shape::Str, Required),
    f("value", &Shape::Str, Required),
]);

static ROUTE_MATCH: Shape = Shape::Obj(&[
    f("path", &PATH_MATCH, Nullable),
    f("headers", &Shape::List(&HEADER_MATCH), Optional),
    f("method", &Shape::Str, Nullable),
]);

static BACKEND_REF: Shape = Shape::Obj(&[
    f("name", &Shape::Str, Required),
    f("subset", &Shape::Str, Nullable),
    f(
        "weight",
        &Shape::Int {
            min: 0,
            max: 1_000_000,
        },
        Optional,
    ),
]);

static ROUTE_RULE: Shape = Shape::Obj(&[
    f("matches", &Shape::List(&ROUTE_MATCH), Optional),
    f("backendRefs", &Shape::List(&BACKEND_REF), Required),
    f("timeouts", &ROUTE_TIMEOUTS, Nullable),
    f("retry", &ROUTE_RETRY, Nullable),
    f("faults", &FAULTS, Nullable),
]);

static ROUTE_SPEC: Shape = Shape::Obj(&[
    f("parentRefs", &Shape::List(&SERVICE_REF), Required),
    f("rules", &Shape::List(&ROUTE_RULE), Optional),
]);

pub(crate) static SERVICE: Shape = Shape::Obj(&[
    f("apiVersion", &Shape::Str, Required),
    f("kind", &Shape::Str, Required),
    f("metadata", &METADATA, Required),
    f("spec", &SERVICE_SPEC, Optional),
]);

pub(crate) static TRAFFIC_POLICY: Shape = Shape::Obj(&[
    f("apiVersion", &Shape::Str, Required),
    f("kind", &Shape::Str, Required),
    f("metadata", &METADATA, Required),
    f("spec", &POLICY_SPEC, Required),
]);

pub(crate) static HTTP_ROUTE: Shape = Shape::Obj(&[
    f("apiVersion", &Shape::Str, Required),
    f("kind", &Shape::Str, Required),
    f("metadata", &METADATA, Required),
    f("spec", &ROUTE_SPEC, Required),
]);

static STR_LIST: Shape = Shape::List(&Shape::Str);

static AUTHZ_SOURCE: Shape = Shape::Obj(&[
    f("principals", &STR_LIST, Optional),
    f("notPrincipals", &STR_LIST, Optional),
    f("namespaces", &STR_LIST, Optional),
]);

static AUTHZ_HEADER: Shape = Shape::Obj(&[
    f("name", &Shape::Str, Required),
    f("value", &Shape::Str, Required),
]);

static AUTHZ_OPERATION: Shape = Shape::Obj(&[
    f("methods", &STR_LIST, Optional),
    f("paths", &STR_LIST, Optional),
    f("headers", &Shape::List(&AUTHZ_HEADER), Optional),
]);

static AUTHZ_CONDITION: Shape = Shape::Obj(&[
    f("claim", &Shape::Str, Required),
    f("values", &STR_LIST, Required),
]);

static AUTHZ_RULE: Shape = Shape::Obj(&[
    f("from", &Shape::List(&AUTHZ_SOURCE), Optional),
    f("to", &Shape::List(&AUTHZ_OPERATION), Optional),
    f("when", &Shape::List(&AUTHZ_CONDITION), Optional),
]);

static AUTHZ_SPEC: Shape = Shape::Obj(&[
    f("targetRef", &SERVICE_REF, Nullable),
    f("action", &Shape::OneOf(&["ALLOW", "DENY"]), Optional),
    f("rules", &Shape::List(&AUTHZ_RULE), Optional),
]);

static JWT_HEADER: Shape = Shape::Obj(&[
    f("name", &Shape::Str, Required),
    f("prefix", &Shape::Str, Nullable),
]);

static FORWARD_CLAIMS: Shape = Shape::Obj(&[
    f("header", &Shape::Str, Required),
    f("claims", &STR_LIST, Required),
]);

static JWT_RULE: Shape = Shape::Obj(&[
    f("issuer", &Shape::Str, Required),
    f("audiences", &STR_LIST, Optional),
    f("jwksUri", &Shape::Str, Nullable),
    f("jwks", &Shape::Str, Nullable),
    // Names are checked by the rules, which explain why HS* and `none` are refused.
    f("algorithms", &STR_LIST, Optional),
    f("clockSkew", &Shape::Str, Nullable),
    f("fromHeaders", &Shape::List(&JWT_HEADER), Optional),
    f("fromParams", &STR_LIST, Optional),
    f("forwardClaimsHeader", &FORWARD_CLAIMS, Nullable),
]);

static INTROSPECTION: Shape = Shape::Obj(&[
    f("endpoint", &Shape::Str, Required),
    f("clientId", &Shape::Str, Required),
    f("clientSecret", &Shape::Str, Nullable),
    f("clientSecretFile", &Shape::Str, Nullable),
    f("issuer", &Shape::Str, Nullable),
    f("audiences", &STR_LIST, Optional),
    f("cacheTtl", &Shape::Str, Nullable),
    f("fromHeaders", &Shape::List(&JWT_HEADER), Optional),
    f("fromParams", &STR_LIST, Optional),
    f("forwardClaimsHeader", &FORWARD_CLAIMS, Nullable),
]);

static AUTHN_SPEC: Shape = Shape::Obj(&[
    f("targetRef", &SERVICE_REF, Nullable),
    f("jwtRules", &Shape::List(&JWT_RULE), Optional),
    f("introspection", &INTROSPECTION, Nullable),
]);

pub(crate) static AUTHORIZATION_POLICY: Shape = Shape::Obj(&[
    f("apiVersion", &Shape::Str, Required),
    f("kind", &Shape::Str, Required),
    f("metadata", &METADATA, Required),
    f("spec", &AUTHZ_SPEC, Required),
]);

pub(crate) static REQUEST_AUTHENTICATION: Shape = Shape::Obj(&[
    f("apiVersion", &Shape::Str, Required),
    f("kind", &Shape::Str, Required),
    f("metadata", &METADATA, Required),
    f("spec", &AUTHN_SPEC, Required),
]);

/// Joins a field path and a key: `spec` + `rules` = `spec.rules`.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// How a value reads in an error message.
pub(crate) fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("`{b}`"),
        Value::Number(n) => format!("`{n}`"),
        Value::String(s) => format!("the string `{}`", shorten(s)),
        Value::Array(_) => "a list".to_string(),
        Value::Object(_) => "a map".to_string(),
    }
}

/// Cuts long user text for messages.
pub(crate) fn shorten(s: &str) -> String {
    const MAX: usize = 60;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// Checks `v` against `shape`, pushing one issue per problem found.
pub(crate) fn check(v: &Value, shape: &Shape, path: &str, out: &mut Vec<Issue>) {
    let mut push = |reason: String| out.push(Issue::new(path, reason));
    match shape {
        Shape::Str => {
            if !v.is_string() {
                let hint = match v {
                    Value::Bool(_) | Value::Number(_) => format!(" (quote it: \"{v}\")"),
                    _ => String::new(),
                };
                push(format!("expected a string, found {}{hint}", describe(v)));
            }
        }
        Shape::Bool => {
            if !v.is_boolean() {
                push(format!("expected true or false, found {}", describe(v)));
            }
        }
        Shape::Int { min, max } => {
            if let Some(reason) = check_int(v, *min, *max) {
                push(reason);
            }
        }
        Shape::Number { min, max } => match v.as_f64() {
            Some(x) if v.is_number() && (*min..=*max).contains(&x) => {}
            Some(_) if v.is_number() => push(format!(
                "{} is out of range: must be between {min} and {max}",
                describe(v).trim_matches('`')
            )),
            _ => push(format!("expected a number, found {}", describe(v))),
        },
        Shape::IntOrName { min, max, names } => match v {
            Value::Number(_) => {
                if let Some(reason) = check_int(v, *min, *max) {
                    push(reason);
                }
            }
            Value::String(s) if names.contains(&s.as_str()) => {}
            Value::String(s) => push(format!(
                "unknown value `{}`: expected a code {min}..={max} or one of {}{}",
                shorten(s),
                names.join(", "),
                did_you_mean(s, names)
            )),
            _ => push(format!(
                "expected a code {min}..={max} or a name (e.g. UNAVAILABLE), found {}",
                describe(v)
            )),
        },
        Shape::OneOf(names) => match v.as_str() {
            Some(s) if names.contains(&s) => {}
            Some(s) => push(format!(
                "unknown value `{}`: expected one of {}{}",
                shorten(s),
                names.join(", "),
                did_you_mean(s, names)
            )),
            None => push(format!(
                "expected one of {}, found {}",
                names.join(", "),
                describe(v)
            )),
        },
        Shape::StrMap => match v.as_object() {
            Some(map) => {
                for (k, val) in map {
                    check(val, &Shape::Str, &join(path, k), out);
                }
            }
            None => push(format!(
                "expected a map of strings (key: value), found {}",
                describe(v)
            )),
        },
        Shape::List(item) => match v.as_array() {
            Some(items) => {
                for (i, it) in items.iter().enumerate() {
                    check(it, item, &format!("{path}[{i}]"), out);
                }
            }
            None => push(format!(
                "expected a list (items starting with `- `), found {}",
                describe(v)
            )),
        },
        Shape::Obj(fields) => check_object(v, fields, path, out),
    }
}

fn check_object(v: &Value, fields: &[Field], path: &str, out: &mut Vec<Issue>) {
    let Some(map) = v.as_object() else {
        out.push(Issue::new(
            path,
            format!("expected a map, found {}", describe(v)),
        ));
        return;
    };
    let names: Vec<&str> = fields.iter().map(|f| f.name).collect();
    for key in map.keys() {
        if !names.contains(&key.as_str()) {
            out.push(Issue::new(
                &join(path, key),
                format!(
                    "unknown field `{}`: expected one of {}{}",
                    shorten(key),
                    names.join(", "),
                    did_you_mean(key, &names)
                ),
            ));
        }
    }
    for field in fields {
        let here = join(path, field.name);
        match (map.get(field.name), field.need) {
            (None, Need::Required) => {
                out.push(Issue::new(&here, "missing required field".to_string()));
            }
            (None, _) | (Some(Value::Null), Need::Nullable) => {}
            (Some(val), _) => check(val, field.shape, &here, out),
        }
    }
}

fn check_int(v: &Value, min: u64, max: u64) -> Option<String> {
    let range = || format!("must be between {min} and {max}");
    let Value::Number(n) = v else {
        return Some(format!("expected an integer, found {}", describe(v)));
    };
    if let Some(u) = n.as_u64() {
        return (u < min || u > max).then(|| format!("{u} is out of range: {}", range()));
    }
    if let Some(i) = n.as_i64() {
        return Some(format!("{i} is out of range: {}", range()));
    }
    match n.as_f64() {
        Some(x) if x.is_finite() && x.fract() == 0.0 => {
            Some(format!("{n} is out of range: {}", range()))
        }
        _ => Some(format!("expected an integer, found `{n}`")),
    }
}

/// ` (did you mean `x`?)` when a known name is close to what was written.
pub(crate) fn did_you_mean(written: &str, known: &[&str]) -> String {
    if written.len() > 64 {
        return String::new();
    }
    let lower = written.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (edit_distance(&lower, &k.to_ascii_lowercase()), k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}
