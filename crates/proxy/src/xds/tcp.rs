//! A TCP service's inbound filter chain (docs/XDS.md, "TCP services") → [`ConnectionPolicy`]:
//! zero or more `envoy.filters.network.rbac` filters, then `envoy.filters.network.tcp_proxy`.
//! Strict, as the rest of the security translation: a principal, permission or matcher outside
//! the subset the control plane emits is an error (the listener is NACKed).

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, filter};
use envoy_types::pb::envoy::config::rbac::v3::{
    Permission, Principal, permission, principal, rbac,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as RbacConfig;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy, tcp_proxy::ClusterSpecifier,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use trellis_model::wire;

use crate::authz::{
    ConnectionPolicy, NameMatch, Principal as Who, RbacAction, RbacFilter, RbacPolicy,
};

const RBAC_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";
const TCP_PROXY_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

/// Deepest principal nesting accepted (the control plane emits at most four levels).
const MAX_DEPTH: usize = 16;

/// True when the chain ends in tcp_proxy: the service is served as raw TCP.
pub(crate) fn is_tcp_chain(c: &FilterChain) -> bool {
    c.filters
        .last()
        .is_some_and(|f| f.name == wire::TCP_PROXY_FILTER)
}

/// The chain's RBAC filters and the idle timeout of the tcp_proxy at its end (`None`:
/// Envoy's default).
pub(crate) fn connection_policy(
    c: &FilterChain,
) -> Result<(ConnectionPolicy, Option<Duration>), String> {
    let here = |e: String| format!("chain `{}`: {e}", c.name);
    let Some((proxy, rbacs)) = c.filters.split_last() else {
        return Err(here("no filters".into()));
    };
    let proxy: TcpProxy = decode(typed(proxy).map_err(here)?, TCP_PROXY_TYPE_URL).map_err(here)?;
    match proxy.cluster_specifier {
        Some(ClusterSpecifier::Cluster(name)) if !name.is_empty() => {}
        _ => {
            return Err(here(format!(
                "{}: needs a `cluster`",
                wire::TCP_PROXY_FILTER
            )));
        }
    }
    let idle = super::resilience::opt_duration(
        &format!("{}.idle_timeout", wire::TCP_PROXY_FILTER),
        proxy.idle_timeout.as_ref(),
    )
    .map_err(here)?;
    let mut policy = ConnectionPolicy::default();
    for (i, f) in rbacs.iter().enumerate() {
        if f.name != wire::RBAC_NETWORK_FILTER {
            return Err(here(format!(
                "filter {i} `{}` is not supported before tcp_proxy (only `{}`)",
                f.name,
                wire::RBAC_NETWORK_FILTER
            )));
        }
        let cfg: RbacConfig = decode(typed(f).map_err(here)?, RBAC_TYPE_URL).map_err(here)?;
        policy
            .filters
            .push(rbac_filter(&cfg).map_err(|e| here(format!("filter {i} (rbac): {e}")))?);
    }
    Ok((policy, idle))
}

fn typed(f: &Filter) -> Result<&Any, String> {
    match &f.config_type {
        Some(filter::ConfigType::TypedConfig(any)) => Ok(any),
        _ => Err(format!("filter `{}` has no typed_config", f.name)),
    }
}

fn decode<T: Message + Default>(any: &Any, type_url: &str) -> Result<T, String> {
    if any.type_url != type_url {
        return Err(format!("expected `{type_url}`, got `{}`", any.type_url));
    }
    T::decode(any.value.as_slice()).map_err(|e| format!("cannot decode `{type_url}`: {e}"))
}

fn rbac_filter(cfg: &RbacConfig) -> Result<RbacFilter, String> {
    if cfg.matcher.is_some() || cfg.shadow_matcher.is_some() {
        return Err("`matcher` is not supported (use `rules`)".into());
    }
    let Some(rules) = &cfg.rules else {
        return Err("no `rules`".into());
    };
    let action = match rbac::Action::try_from(rules.action) {
        Ok(rbac::Action::Allow) => RbacAction::Allow,
        Ok(rbac::Action::Deny) => RbacAction::Deny,
        _ => return Err(format!("action {}: expected ALLOW or DENY", rules.action)),
    };
    let mut names: Vec<&String> = rules.policies.keys().collect();
    names.sort();
    let mut policies = Vec::with_capacity(names.len());
    for name in names {
        let p = &rules.policies[name];
        let at = |e: String| format!("policy `{name}`: {e}");
        if p.condition.is_some() || p.checked_condition.is_some() {
            return Err(at("CEL conditions are not supported".into()));
        }
        if !p.permissions.iter().all(is_any_permission) || p.permissions.is_empty() {
            return Err(at(
                "only `permissions: [{any: true}]` is supported for TCP connections".into(),
            ));
        }
        let principals = p
            .principals
            .iter()
            .map(|pr| principal(pr, 0))
            .collect::<Result<Vec<_>, _>>()
            .map_err(at)?;
        policies.push(RbacPolicy {
            name: Arc::from(name.as_str()),
            principals,
        });
    }
    Ok(RbacFilter { action, policies })
}

fn is_any_permission(p: &Permission) -> bool {
    matches!(p.rule, Some(permission::Rule::Any(true)))
}

fn principal(p: &Principal, depth: usize) -> Result<Who, String> {
    use principal::Identifier;
    if depth > MAX_DEPTH {
        return Err(format!("principals nested deeper than {MAX_DEPTH}"));
    }
    let set = |s: &principal::Set| {
        s.ids
            .iter()
            .map(|p| principal(p, depth + 1))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(match &p.identifier {
        Some(Identifier::Any(true)) => Who::Any,
        Some(Identifier::AndIds(s)) => Who::And(set(s)?),
        Some(Identifier::OrIds(s)) => Who::Or(set(s)?),
        Some(Identifier::NotId(inner)) => Who::Not(Box::new(principal(inner, depth + 1)?)),
        Some(Identifier::Authenticated(a)) => {
            Who::Authenticated(a.principal_name.as_ref().map(name_match).transpose()?)
        }
        other => {
            let what = match other {
                None => "an empty principal".to_string(),
                Some(Identifier::Any(false)) => "`any: false`".to_string(),
                Some(_) => "this principal kind".to_string(),
            };
            return Err(format!(
                "{what} is not supported (expected any, authenticated, and_ids, or_ids, not_id)"
            ));
        }
    })
}

fn name_match(m: &StringMatcher) -> Result<NameMatch, String> {
    if m.ignore_case {
        return Err("principal_name: ignore_case is not supported".into());
    }
    Ok(match &m.match_pattern {
        Some(MatchPattern::Exact(s)) => NameMatch::Exact(s.clone()),
        Some(MatchPattern::Prefix(s)) => NameMatch::Prefix(s.clone()),
        Some(MatchPattern::Suffix(s)) => NameMatch::Suffix(s.clone()),
        Some(MatchPattern::SafeRegex(r)) => NameMatch::Regex(
            crate::routing::compile_full(&r.regex)
                .map_err(|e| format!("principal_name: regex `{}`: {e}", r.regex))?,
        ),
        _ => {
            return Err(
                "principal_name: only exact, prefix, suffix and safe_regex are supported".into(),
            );
        }
    })
}

#[cfg(test)]
mod tests;
