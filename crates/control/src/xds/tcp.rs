//! TCP services (`protocol: tcp`) the Envoy way (docs/XDS.md, "TCP services"): the inbound
//! listener's filter chains hold `envoy.filters.network.rbac` filters (the applying
//! AuthorizationPolicies, DENY then ALLOW) and `envoy.filters.network.tcp_proxy` to the app's
//! `inbound|<app-port>` cluster. Pure functions.
//!
//! A connection has only a caller (its SPIFFE ID from mTLS): no method, path, header or token.
//! Policies keep Istio's rules for HTTP-only conditions on TCP traffic, so a mesh-wide policy
//! written for HTTP services cannot open or leave open a TCP service by accident:
//! - an ALLOW rule with `to` or `when` never matches a connection (it is left out);
//! - a DENY rule with `to` or `when` is kept with its `from` only (it denies more: fail closed).

use std::collections::HashMap;

use envoy_types::pb::envoy::config::listener::v3::{Filter, filter::ConfigType};
use envoy_types::pb::envoy::config::rbac::v3::{
    Permission, Policy, Principal, Rbac, permission, principal, rbac::Action,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as RbacFilter;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy, tcp_proxy::ClusterSpecifier,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::Duration;
use envoy_types::util::pack_any;
use trellis_model::{
    AuthorizationAction, AuthorizationPolicyResource, AuthorizationRule, RequestSource, wire,
};

/// The network filters of a TCP service's inbound chain: a DENY RBAC filter (when a DENY
/// policy applies), an ALLOW RBAC filter (when an ALLOW policy applies), then tcp_proxy to
/// the app's cluster, with the service's idle timeout (`None`: Envoy's default, 1h).
pub fn inbound_filters(
    policies: &[AuthorizationPolicyResource],
    app_cluster: &str,
    idle_timeout: Option<Duration>,
) -> Vec<Filter> {
    let mut out = Vec::with_capacity(3);
    for action in [AuthorizationAction::Deny, AuthorizationAction::Allow] {
        if let Some(rbac) = rbac(policies, action) {
            out.push(Filter {
                name: wire::RBAC_NETWORK_FILTER.to_string(),
                config_type: Some(ConfigType::TypedConfig(pack_any(rbac))),
            });
        }
    }
    let proxy = TcpProxy {
        stat_prefix: wire::TCP_STAT_PREFIX.to_string(),
        cluster_specifier: Some(ClusterSpecifier::Cluster(app_cluster.to_string())),
        idle_timeout,
        ..Default::default()
    };
    out.push(Filter {
        name: wire::TCP_PROXY_FILTER.to_string(),
        config_type: Some(ConfigType::TypedConfig(pack_any(proxy))),
    });
    out
}

/// The RBAC filter for the policies with `action`, or `None` when none applies. An ALLOW
/// filter whose policies all match nothing still denies every connection (it is there).
pub fn rbac(
    policies: &[AuthorizationPolicyResource],
    action: AuthorizationAction,
) -> Option<RbacFilter> {
    let mine: Vec<&AuthorizationPolicyResource> = policies
        .iter()
        .filter(|p| p.spec.action == action)
        .collect();
    if mine.is_empty() {
        return None;
    }
    let mut map = HashMap::new();
    for p in mine {
        let principals: Vec<Principal> = p
            .spec
            .rules
            .iter()
            .filter_map(|r| rule_principal(r, action))
            .collect();
        if principals.is_empty() {
            // Matches no connection: leaving it out is the same, and Envoy wants principals.
            continue;
        }
        map.insert(
            p.metadata.name.clone(),
            Policy {
                permissions: vec![Permission {
                    rule: Some(permission::Rule::Any(true)),
                }],
                principals,
                ..Default::default()
            },
        );
    }
    let envoy_action = match action {
        AuthorizationAction::Allow => Action::Allow,
        AuthorizationAction::Deny => Action::Deny,
    };
    Some(RbacFilter {
        rules: Some(Rbac {
            action: envoy_action as i32,
            policies: map,
            ..Default::default()
        }),
        stat_prefix: format!(
            "{}_{}_",
            wire::TCP_STAT_PREFIX,
            envoy_action.as_str_name().to_ascii_lowercase()
        ),
        ..Default::default()
    })
}

/// The principal a rule matches on a connection; `None`: it never matches one (an ALLOW rule
/// with HTTP-only conditions).
fn rule_principal(rule: &AuthorizationRule, action: AuthorizationAction) -> Option<Principal> {
    let http_only = !rule.to.is_empty() || !rule.when.is_empty();
    if http_only && action == AuthorizationAction::Allow {
        return None;
    }
    if rule.from.is_empty() {
        return Some(id(principal::Identifier::Any(true)));
    }
    Some(any_of(rule.from.iter().map(source).collect()))
}

/// Every non-empty list of a source must match.
fn source(s: &RequestSource) -> Principal {
    let mut all = Vec::with_capacity(3);
    if !s.principals.is_empty() {
        all.push(any_of(
            s.principals
                .iter()
                .map(|p| authenticated(spiffe_matcher(p)))
                .collect(),
        ));
    }
    if !s.not_principals.is_empty() {
        let listed = any_of(
            s.not_principals
                .iter()
                .map(|p| authenticated(spiffe_matcher(p)))
                .collect(),
        );
        all.push(id(principal::Identifier::NotId(Box::new(listed))));
    }
    if !s.namespaces.is_empty() {
        all.push(any_of(
            s.namespaces
                .iter()
                .map(|n| authenticated(Some(namespace_matcher(n))))
                .collect(),
        ));
    }
    match all.len() {
        1 => all.remove(0),
        _ => id(principal::Identifier::AndIds(principal::Set { ids: all })),
    }
}

fn id(identifier: principal::Identifier) -> Principal {
    Principal {
        identifier: Some(identifier),
    }
}

fn any_of(mut ids: Vec<Principal>) -> Principal {
    if ids.len() == 1 {
        return ids.remove(0);
    }
    id(principal::Identifier::OrIds(principal::Set { ids }))
}

/// A caller with a verified certificate whose URI SAN matches (any, without a matcher).
fn authenticated(principal_name: Option<StringMatcher>) -> Principal {
    id(principal::Identifier::Authenticated(
        principal::Authenticated { principal_name },
    ))
}

fn matcher(pattern: string_matcher::MatchPattern) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(pattern),
        ..Default::default()
    }
}

/// A `principals` pattern: exact, `prefix*`, `*suffix`; `*` (any identity) is no matcher.
fn spiffe_matcher(p: &str) -> Option<StringMatcher> {
    use string_matcher::MatchPattern;
    if p == "*" {
        None
    } else if let Some(prefix) = p.strip_suffix('*') {
        Some(matcher(MatchPattern::Prefix(prefix.to_string())))
    } else if let Some(suffix) = p.strip_prefix('*') {
        Some(matcher(MatchPattern::Suffix(suffix.to_string())))
    } else {
        Some(matcher(MatchPattern::Exact(p.to_string())))
    }
}

/// A `namespaces` pattern as a (full-match, RE2) regex over the SPIFFE ID
/// `spiffe://<trust-domain>/ns/<namespace>[/...]`.
pub fn namespace_matcher(n: &str) -> StringMatcher {
    let ns = if n == "*" {
        "[^/]+".to_string()
    } else if let Some(prefix) = n.strip_suffix('*') {
        format!("{}[^/]*", escape(prefix))
    } else if let Some(suffix) = n.strip_prefix('*') {
        format!("[^/]*{}", escape(suffix))
    } else {
        escape(n)
    };
    matcher(string_matcher::MatchPattern::SafeRegex(RegexMatcher {
        regex: format!("spiffe://[^/]+/ns/{ns}(/.*)?"),
        ..Default::default()
    }))
}

/// Escapes RE2 metacharacters (every ASCII punctuation character, which RE2 allows).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for c in s.chars() {
        if c.is_ascii_punctuation() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests;
