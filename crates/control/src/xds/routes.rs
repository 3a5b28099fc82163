//! The `outbound` RouteConfiguration: one VirtualHost per service, HTTPRoute rules first, then
//! a default route to the service's cluster (docs/XDS.md, "Route matching subset").

use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
    WeightedCluster,
    header_matcher::HeaderMatchSpecifier,
    route::Action,
    route_action::{self, ClusterSpecifier, HashPolicy, hash_policy},
    route_match::PathSpecifier,
    weighted_cluster::ClusterWeight,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatcher, StringMatcher, string_matcher::MatchPattern,
};
use envoy_types::pb::google::protobuf::UInt32Value;
use trellis_model::{
    Algorithm, BackendRef, HeaderMatch, HeaderMatchType, HttpRouteMatch, PathMatch, PathMatchType,
    Protocol, wire,
};

use super::translate::upstream_protocol;
use super::{faults, resilience};
use crate::snapshot::{MeshSnapshot, ServiceView};

/// Name of the default route that ends every virtual host.
pub const DEFAULT_ROUTE: &str = "default";

pub fn outbound_route_config(snapshot: &MeshSnapshot) -> RouteConfiguration {
    RouteConfiguration {
        name: wire::OUTBOUND.to_string(),
        // TCP services are reached through the sidecar's upstream ports, never over HTTP.
        virtual_hosts: snapshot
            .services
            .values()
            .filter(|view| upstream_protocol(view) != Protocol::Tcp)
            .map(|view| virtual_host(snapshot, view))
            .collect(),
        ..Default::default()
    }
}

// `per_request_buffer_limit_bytes` is deprecated in favour of `request_body_buffer_limit`, which
// the Envoy releases Trellis is tested with do not know yet.
#[allow(deprecated)]
fn virtual_host(snapshot: &MeshSnapshot, view: &ServiceView) -> VirtualHost {
    let mut routes = Vec::new();
    let policy = view.policy.as_ref();
    let buffer_limit = resilience::buffer_limit(policy).map(|value| UInt32Value { value });
    for http_route in &view.routes {
        for (rule_idx, rule) in http_route.spec.rules.iter().enumerate() {
            let mut action = route_action(snapshot, &rule.backend_refs);
            resilience::apply_to_route(&mut action, policy, Some(rule));
            let any_match = [HttpRouteMatch::default()];
            let matches = if rule.matches.is_empty() {
                &any_match[..]
            } else {
                &rule.matches[..]
            };
            let filters = faults::per_filter_config(rule.faults.as_ref());
            for (match_idx, m) in matches.iter().enumerate() {
                routes.push(Route {
                    name: format!("{}/{rule_idx}/{match_idx}", http_route.metadata.name),
                    r#match: Some(route_match(m)),
                    action: Some(Action::Route(action.clone())),
                    per_request_buffer_limit_bytes: buffer_limit,
                    typed_per_filter_config: filters.clone(),
                    ..Default::default()
                });
            }
        }
    }
    let mut default_action = RouteAction {
        hash_policy: hash_policies(Some(view)),
        cluster_specifier: Some(ClusterSpecifier::Cluster(wire::cluster_name(
            &view.name, None,
        ))),
        ..Default::default()
    };
    resilience::apply_to_route(&mut default_action, policy, None);
    routes.push(Route {
        name: DEFAULT_ROUTE.to_string(),
        r#match: Some(prefix_match("/")),
        action: Some(Action::Route(default_action)),
        per_request_buffer_limit_bytes: buffer_limit,
        ..Default::default()
    });
    VirtualHost {
        name: view.name.clone(),
        domains: vec![view.name.clone(), format!("{}:*", view.name)],
        routes,
        typed_per_filter_config: faults::per_filter_config(policy.and_then(|p| p.faults.as_ref())),
        ..Default::default()
    }
}

fn prefix_match(prefix: &str) -> RouteMatch {
    RouteMatch {
        path_specifier: Some(PathSpecifier::Prefix(prefix.to_string())),
        ..Default::default()
    }
}

fn route_match(m: &HttpRouteMatch) -> RouteMatch {
    let path_specifier = match &m.path {
        None => PathSpecifier::Prefix("/".to_string()),
        Some(PathMatch { kind, value }) => match kind {
            PathMatchType::Exact => PathSpecifier::Path(value.clone()),
            PathMatchType::PathPrefix => {
                // Envoy rejects a path_separated_prefix ending in `/`; `/api/` means `/api`.
                let trimmed = value.trim_end_matches('/');
                if trimmed.is_empty() {
                    PathSpecifier::Prefix("/".to_string())
                } else {
                    PathSpecifier::PathSeparatedPrefix(trimmed.to_string())
                }
            }
            PathMatchType::RegularExpression => PathSpecifier::SafeRegex(regex(value)),
        },
    };
    let mut headers = header_matchers(&m.headers);
    if let Some(method) = &m.method {
        headers.push(header_matcher(
            ":method",
            MatchPattern::Exact(method.clone()),
        ));
    }
    RouteMatch {
        path_specifier: Some(path_specifier),
        headers,
        ..Default::default()
    }
}

/// HTTPRoute header matches as Envoy `HeaderMatcher`s (also the fault filter's `headers`).
pub fn header_matchers(headers: &[HeaderMatch]) -> Vec<HeaderMatcher> {
    headers
        .iter()
        .map(|h| {
            let pattern = match h.kind {
                HeaderMatchType::Exact => MatchPattern::Exact(h.value.clone()),
                HeaderMatchType::RegularExpression => MatchPattern::SafeRegex(regex(&h.value)),
            };
            header_matcher(&h.name, pattern)
        })
        .collect()
}

fn regex(re: &str) -> RegexMatcher {
    RegexMatcher {
        regex: re.to_string(),
        engine_type: None,
    }
}

fn header_matcher(name: &str, pattern: MatchPattern) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_string(),
        header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
            match_pattern: Some(pattern),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn route_action(snapshot: &MeshSnapshot, backends: &[BackendRef]) -> RouteAction {
    let cluster_specifier = match backends {
        [one] => Some(ClusterSpecifier::Cluster(wire::cluster_name(
            &one.name,
            one.subset.as_deref(),
        ))),
        [] => None,
        many => Some(ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: many
                .iter()
                .map(|b| ClusterWeight {
                    name: wire::cluster_name(&b.name, b.subset.as_deref()),
                    weight: Some(UInt32Value { value: b.weight }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })),
    };
    // The hash key of every hashing backend service, once each, in backend order.
    let mut hash_policy: Vec<HashPolicy> = Vec::new();
    for b in backends {
        for p in hash_policies(snapshot.services.get(&b.name)) {
            if !hash_policy.contains(&p) {
                hash_policy.push(p);
            }
        }
    }
    RouteAction {
        cluster_specifier,
        hash_policy,
        ..Default::default()
    }
}

/// `Route.route.hash_policy` for a service whose policy is RingHash or Maglev.
pub fn hash_policies(view: Option<&ServiceView>) -> Vec<route_action::HashPolicy> {
    let Some(lb) = view
        .and_then(|v| v.policy.as_ref())
        .map(|p| &p.load_balancer)
    else {
        return Vec::new();
    };
    if !matches!(lb.algorithm, Algorithm::RingHash | Algorithm::Maglev) {
        return Vec::new();
    }
    let Some(key) = &lb.hash_key else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(header) = &key.header {
        out.push(HashPolicy {
            policy_specifier: Some(hash_policy::PolicySpecifier::Header(hash_policy::Header {
                header_name: header.clone(),
                regex_rewrite: None,
            })),
            ..Default::default()
        });
    }
    if key.source_ip {
        out.push(HashPolicy {
            policy_specifier: Some(hash_policy::PolicySpecifier::ConnectionProperties(
                hash_policy::ConnectionProperties { source_ip: true },
            )),
            ..Default::default()
        });
    }
    out
}

#[cfg(test)]
mod tests;
