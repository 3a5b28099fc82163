//! The compiled authorization policies of one service and the decision for one request.
//!
//! Evaluation (docs/RESOURCES.md, AuthorizationPolicy):
//! 1. if any DENY policy matches, the request is denied;
//! 2. otherwise, if at least one ALLOW policy applies to the service, the request is allowed
//!    only when one of them matches (so a mesh-wide ALLOW policy without rules denies
//!    everything not allowed by another ALLOW policy);
//! 3. otherwise it is allowed.
//!
//! A policy matches when any of its rules does; a rule matches when each of its non-empty
//! parts does (any `from`, any `to`, every `when`). Pure: no I/O, no clock.

use std::sync::Arc;

use http::HeaderMap;
use serde_json::Value;
use trellis_model::{
    AuthorizationAction, AuthorizationPolicyResource, AuthorizationRule, ClaimCondition,
    RequestOperation, RequestSource,
};

use super::path::path_only;

/// What is known about a request when it is authorized.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// The caller's SPIFFE id, from its verified mTLS certificate; `None` for plaintext.
    pub principal: Option<&'a str>,
    /// The caller's namespace (from its SPIFFE id).
    pub namespace: Option<&'a str>,
    pub method: &'a str,
    /// The path as returned by [`super::normalize_path`]; a query is ignored.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    /// Claims of a verified JWT, when the request carried one.
    pub claims: Option<&'a Value>,
}

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny {
        /// A fixed description, safe to return to the caller.
        reason: &'static str,
        /// The DENY policy that matched, if one did.
        policy: Option<Arc<str>>,
    },
}

/// Reason given when a DENY policy matched.
pub const DENIED_BY_POLICY: &str = "denied by an authorization policy";
/// Reason given when ALLOW policies apply and none matched.
pub const NOT_ALLOWED: &str = "no authorization policy allows this request";

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}

/// A value pattern: exact, `prefix*`, `*suffix` or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl Pattern {
    fn new(s: &str) -> Pattern {
        if s == "*" {
            Pattern::Any
        } else if let Some(p) = s.strip_suffix('*') {
            Pattern::Prefix(p.to_string())
        } else if let Some(p) = s.strip_prefix('*') {
            Pattern::Suffix(p.to_string())
        } else {
            Pattern::Exact(s.to_string())
        }
    }

    fn matches(&self, v: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exact(e) => v == e,
            Pattern::Prefix(p) => v.starts_with(p.as_str()),
            Pattern::Suffix(s) => v.ends_with(s.as_str()),
        }
    }
}

fn compile_all(values: &[String]) -> Vec<Pattern> {
    values.iter().map(|v| Pattern::new(v)).collect()
}

fn any_matches(patterns: &[Pattern], v: Option<&str>) -> bool {
    v.is_some_and(|v| patterns.iter().any(|p| p.matches(v)))
}

#[derive(Debug, Clone)]
struct Source {
    principals: Vec<Pattern>,
    not_principals: Vec<Pattern>,
    namespaces: Vec<Pattern>,
}

impl Source {
    fn new(s: &RequestSource) -> Source {
        Source {
            principals: compile_all(&s.principals),
            not_principals: compile_all(&s.not_principals),
            namespaces: compile_all(&s.namespaces),
        }
    }

    fn matches(&self, req: &RequestFacts<'_>) -> bool {
        (self.principals.is_empty() || any_matches(&self.principals, req.principal))
            && (self.not_principals.is_empty() || !any_matches(&self.not_principals, req.principal))
            && (self.namespaces.is_empty() || any_matches(&self.namespaces, req.namespace))
    }
}

#[derive(Debug, Clone)]
struct Operation {
    methods: Vec<String>,
    paths: Vec<Pattern>,
    /// Lower-cased header name and value pattern.
    headers: Vec<(String, Pattern)>,
}

impl Operation {
    fn new(o: &RequestOperation) -> Operation {
        Operation {
            methods: o.methods.clone(),
            paths: compile_all(&o.paths),
            headers: o
                .headers
                .iter()
                .map(|h| (h.name.to_ascii_lowercase(), Pattern::new(&h.value)))
                .collect(),
        }
    }

    fn matches(&self, req: &RequestFacts<'_>) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| m == req.method))
            && (self.paths.is_empty() || any_matches(&self.paths, Some(path_only(req.path))))
            && self.headers.iter().all(|(name, pattern)| {
                req.headers
                    .get_all(name.as_str())
                    .iter()
                    .any(|v| v.to_str().is_ok_and(|v| pattern.matches(v)))
            })
    }
}

#[derive(Debug, Clone)]
struct Condition {
    claim: String,
    values: Vec<Pattern>,
}

impl Condition {
    fn new(c: &ClaimCondition) -> Condition {
        Condition {
            claim: c.claim.clone(),
            values: compile_all(&c.values),
        }
    }

    fn matches(&self, claims: Option<&Value>) -> bool {
        let Some(value) = claims.and_then(|c| lookup_claim(c, &self.claim)) else {
            return false;
        };
        let split = matches!(self.claim.as_str(), "scope" | "scp");
        claim_strings(value, split)
            .iter()
            .any(|v| self.values.iter().any(|p| p.matches(v)))
    }
}

/// The claim named `name`: a top-level key, else a dotted path into nested objects.
fn lookup_claim<'v>(claims: &'v Value, name: &str) -> Option<&'v Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    name.split('.').try_fold(claims, |v, part| v.get(part))
}

/// The strings a claim holds: a string (split on whitespace for `scope`), the strings and
/// numbers of an array, or a number or boolean as text.
fn claim_strings(v: &Value, split_words: bool) -> Vec<String> {
    match v {
        Value::String(s) if split_words => s.split_whitespace().map(str::to_string).collect(),
        Value::String(s) => vec![s.clone()],
        Value::Number(n) => vec![n.to_string()],
        Value::Bool(b) => vec![b.to_string()],
        Value::Array(items) => items
            .iter()
            .filter(|i| !i.is_array() && !i.is_object())
            .flat_map(|i| claim_strings(i, split_words))
            .collect(),
        Value::Null | Value::Object(_) => Vec::new(),
    }
}

#[derive(Debug, Clone)]
struct Rule {
    from: Vec<Source>,
    to: Vec<Operation>,
    when: Vec<Condition>,
}

impl Rule {
    fn new(r: &AuthorizationRule) -> Rule {
        Rule {
            from: r.from.iter().map(Source::new).collect(),
            to: r.to.iter().map(Operation::new).collect(),
            when: r.when.iter().map(Condition::new).collect(),
        }
    }

    fn matches(&self, req: &RequestFacts<'_>) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(req)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(req)))
            && self.when.iter().all(|c| c.matches(req.claims))
    }
}

#[derive(Debug, Clone)]
struct Compiled {
    name: Arc<str>,
    rules: Vec<Rule>,
}

impl Compiled {
    fn matches(&self, req: &RequestFacts<'_>) -> bool {
        self.rules.iter().any(|r| r.matches(req))
    }
}

/// The authorization policies of one service, compiled once per config change and shared
/// read-only by every request.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    deny: Vec<Compiled>,
    allow: Vec<Compiled>,
}

impl PolicySet {
    /// Compiles every given policy (the caller has chosen those that apply to the service,
    /// as the control plane's snapshot does). Policies are kept in name order.
    pub fn compile<'a>(
        policies: impl IntoIterator<Item = &'a AuthorizationPolicyResource>,
    ) -> PolicySet {
        let mut set = PolicySet::default();
        let mut sorted: Vec<&AuthorizationPolicyResource> = policies.into_iter().collect();
        sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        for p in sorted {
            let compiled = Compiled {
                name: Arc::from(p.metadata.name.as_str()),
                rules: p.spec.rules.iter().map(Rule::new).collect(),
            };
            match p.spec.action {
                AuthorizationAction::Deny => set.deny.push(compiled),
                AuthorizationAction::Allow => set.allow.push(compiled),
            }
        }
        set
    }

    /// Compiles the policies among `policies` that apply to `service`.
    pub fn for_service<'a>(
        service: &str,
        policies: impl IntoIterator<Item = &'a AuthorizationPolicyResource>,
    ) -> PolicySet {
        PolicySet::compile(policies.into_iter().filter(|p| p.spec.applies_to(service)))
    }

    /// True when no policy applies: every request is allowed.
    pub fn is_empty(&self) -> bool {
        self.deny.is_empty() && self.allow.is_empty()
    }

    /// True when some policy has a `when` condition, so verified claims matter.
    pub fn uses_claims(&self) -> bool {
        self.deny
            .iter()
            .chain(&self.allow)
            .any(|p| p.rules.iter().any(|r| !r.when.is_empty()))
    }

    /// The decision for one request: DENY policies first, then ALLOW policies if any apply.
    pub fn evaluate(&self, req: &RequestFacts<'_>) -> Decision {
        if let Some(p) = self.deny.iter().find(|p| p.matches(req)) {
            return Decision::Deny {
                reason: DENIED_BY_POLICY,
                policy: Some(p.name.clone()),
            };
        }
        if self.allow.is_empty() || self.allow.iter().any(|p| p.matches(req)) {
            return Decision::Allow;
        }
        Decision::Deny {
            reason: NOT_ALLOWED,
            policy: None,
        }
    }
}

#[cfg(test)]
mod tests;
