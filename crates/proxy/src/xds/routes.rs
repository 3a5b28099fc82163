//! xDS RouteConfiguration → [`RouteTable`]. Only what docs/XDS.md emits is supported; anything
//! else is rejected with a message naming the route, so the update is NACKed rather than
//! silently routed differently than configured.

use std::sync::Arc;

use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::PolicySpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, Route, RouteConfiguration, VirtualHost,
};
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::google::protobuf::Any;
use http::header::HeaderName;
use trellis_model::wire;

use super::translate::{decode, translate_all};
use crate::resilience::RoutePolicy;
use crate::resilience::fault::FaultPolicy;
use crate::routing::{self, HashPolicy, HeaderMatch, HeaderTarget, PathMatch, StringMatch};

/// Every RouteConfiguration in a response → (name, table).
pub(crate) fn route_configs(
    resources: &[Any],
) -> Result<Vec<(String, routing::RouteTable)>, String> {
    translate_all(resources, |any| {
        let rc: RouteConfiguration = decode(any, super::ROUTE_TYPE)?;
        let table = route_config(&rc)?;
        Ok((rc.name, table))
    })
}

pub(crate) fn route_config(rc: &RouteConfiguration) -> Result<routing::RouteTable, String> {
    let mut vhosts = Vec::with_capacity(rc.virtual_hosts.len());
    let mut errors = Vec::new();
    for vh in &rc.virtual_hosts {
        match virtual_host(vh) {
            Ok(v) => vhosts.push(v),
            Err(e) => errors.push(format!(
                "RouteConfiguration `{}` virtual host `{}`: {e}",
                rc.name, vh.name
            )),
        }
    }
    if errors.is_empty() {
        Ok(routing::RouteTable::new(vhosts))
    } else {
        Err(errors.join("; "))
    }
}

fn virtual_host(vh: &VirtualHost) -> Result<routing::VirtualHost, String> {
    if vh.domains.is_empty() {
        return Err("no domains".to_string());
    }
    // The service's faults, for every route that has none of its own.
    let faults = vh
        .typed_per_filter_config
        .get(wire::FAULT_FILTER)
        .map(super::faults::fault_policy)
        .transpose()?
        .flatten();
    let routes = vh
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            route(r, faults.as_ref()).map_err(|e| {
                let name = if r.name.is_empty() {
                    format!("#{i}")
                } else {
                    format!("`{}`", r.name)
                };
                format!("route {name}: {e}")
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(routing::VirtualHost {
        name: Arc::from(vh.name.as_str()),
        domains: vh.domains.clone(),
        routes,
    })
}

fn route(r: &Route, vh_faults: Option<&Arc<FaultPolicy>>) -> Result<routing::Route, String> {
    let m = r.r#match.as_ref().ok_or("no match")?;
    if !m.query_parameters.is_empty() {
        return Err("query_parameters matching is not supported".to_string());
    }
    let path = match &m.path_specifier {
        Some(PathSpecifier::Prefix(p)) => PathMatch::Prefix(p.clone()),
        Some(PathSpecifier::Path(p)) => PathMatch::Exact(p.clone()),
        Some(PathSpecifier::PathSeparatedPrefix(p)) => PathMatch::SeparatedPrefix(p.clone()),
        Some(PathSpecifier::SafeRegex(re)) => PathMatch::Regex(
            routing::compile_full(&re.regex)
                .map_err(|e| format!("safe_regex `{}` is invalid: {e}", re.regex))?,
        ),
        Some(_) => return Err(
            "only prefix, path, path_separated_prefix and safe_regex path matches are supported"
                .to_string(),
        ),
        None => return Err("no path match (use prefix: \"/\" to match everything)".to_string()),
    };
    let headers = m
        .headers
        .iter()
        .map(header_match)
        .collect::<Result<Vec<_>, _>>()?;
    let action = match &r.action {
        Some(Action::Route(a)) => a,
        Some(_) => return Err("only `route` actions are supported".to_string()),
        None => return Err("no action".to_string()),
    };
    let clusters = match &action.cluster_specifier {
        Some(ClusterSpecifier::Cluster(c)) if !c.is_empty() => vec![routing::WeightedCluster {
            name: Arc::from(c.as_str()),
            weight: 1,
        }],
        Some(ClusterSpecifier::WeightedClusters(w)) if !w.clusters.is_empty() => w
            .clusters
            .iter()
            .map(|c| {
                if c.name.is_empty() {
                    return Err("weighted cluster with an empty name".to_string());
                }
                Ok(routing::WeightedCluster {
                    name: Arc::from(c.name.as_str()),
                    weight: c.weight.as_ref().map_or(0, |w| w.value),
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => {
            return Err(
                "route action needs `cluster` or non-empty `weighted_clusters`".to_string(),
            );
        }
    };
    let total_weight = clusters
        .iter()
        .try_fold(0u32, |acc, c| acc.checked_add(c.weight))
        .ok_or("weighted_clusters weights overflow")?;
    if total_weight == 0 {
        return Err("weighted_clusters weights sum to 0".to_string());
    }
    let mut hash = None;
    for hp in &action.hash_policy {
        let policy = match &hp.policy_specifier {
            Some(PolicySpecifier::Header(h)) => HashPolicy::Header(header_name(&h.header_name)?),
            Some(PolicySpecifier::ConnectionProperties(c)) if c.source_ip => HashPolicy::SourceIp,
            _ => {
                return Err(
                    "hash_policy: only `header` and `connection_properties.source_ip` are supported"
                        .to_string(),
                );
            }
        };
        hash.get_or_insert(policy);
    }
    let mut policy = super::resilience::route_policy(action, buffer_limit(r))?;
    let faults = match r.typed_per_filter_config.get(wire::FAULT_FILTER) {
        Some(any) => super::faults::fault_policy(any)?,
        None => vh_faults.cloned(),
    };
    if let Some(f) = faults {
        policy.get_or_insert_with(RoutePolicy::default).faults = Some(f);
    }
    Ok(routing::Route {
        name: r.name.clone(),
        matcher: routing::RouteMatch { path, headers },
        action: routing::RouteAction {
            clusters,
            total_weight,
            hash,
            policy: policy.map(Arc::new),
        },
    })
}

/// `per_request_buffer_limit_bytes` (deprecated in Envoy for `request_body_buffer_limit`;
/// either is read).
#[allow(deprecated)]
fn buffer_limit(r: &Route) -> Option<u32> {
    r.per_request_buffer_limit_bytes
        .as_ref()
        .map(|v| v.value)
        .or_else(|| {
            r.request_body_buffer_limit
                .as_ref()
                .map(|v| u32::try_from(v.value).unwrap_or(u32::MAX))
        })
}

fn header_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| format!("`{name}` is not a valid header name"))
}

// The deprecated `*_match` forms are still what many control planes send; accept both.
#[allow(deprecated)]
pub(super) fn header_match(h: &HeaderMatcher) -> Result<HeaderMatch, String> {
    let target = match h.name.as_str() {
        ":method" => HeaderTarget::Method,
        n if n.starts_with(':') => {
            return Err(format!(
                "header match on `{n}` is not supported (only `:method` among pseudo-headers)"
            ));
        }
        n => HeaderTarget::Header(header_name(n)?),
    };
    let regex = |pattern: &str| {
        routing::compile_full(pattern).map_err(|e| {
            format!(
                "header `{}`: safe_regex `{pattern}` is invalid: {e}",
                h.name
            )
        })
    };
    let matcher = match &h.header_match_specifier {
        None => StringMatch::Present(true),
        Some(HeaderMatchSpecifier::ExactMatch(s)) => StringMatch::Exact(s.clone()),
        Some(HeaderMatchSpecifier::PrefixMatch(s)) => StringMatch::Prefix(s.clone()),
        Some(HeaderMatchSpecifier::SuffixMatch(s)) => StringMatch::Suffix(s.clone()),
        Some(HeaderMatchSpecifier::ContainsMatch(s)) => StringMatch::Contains(s.clone()),
        Some(HeaderMatchSpecifier::PresentMatch(p)) => StringMatch::Present(*p),
        Some(HeaderMatchSpecifier::SafeRegexMatch(re)) => StringMatch::Regex(regex(&re.regex)?),
        Some(HeaderMatchSpecifier::StringMatch(sm)) => string_matcher(sm, &regex)?,
        Some(HeaderMatchSpecifier::RangeMatch(_)) => {
            return Err(format!("header `{}`: range_match is not supported", h.name));
        }
    };
    Ok(HeaderMatch {
        target,
        matcher,
        invert: h.invert_match,
    })
}

fn string_matcher(
    sm: &StringMatcher,
    regex: &dyn Fn(&str) -> Result<regex::Regex, String>,
) -> Result<StringMatch, String> {
    let pattern = sm
        .match_pattern
        .as_ref()
        .ok_or("string_match without a pattern")?;
    if sm.ignore_case {
        // Case-insensitive forms become anchored regexes over the escaped literal.
        let re = match pattern {
            MatchPattern::Exact(s) => format!("(?i){}", regex::escape(s)),
            MatchPattern::Prefix(s) => format!("(?i){}.*", regex::escape(s)),
            MatchPattern::Suffix(s) => format!("(?i).*{}", regex::escape(s)),
            MatchPattern::Contains(s) => format!("(?i).*{}.*", regex::escape(s)),
            MatchPattern::SafeRegex(r) => format!("(?i){}", r.regex),
            MatchPattern::Custom(_) => {
                return Err("custom string matchers are not supported".to_string());
            }
        };
        return Ok(StringMatch::Regex(regex(&re)?));
    }
    Ok(match pattern {
        MatchPattern::Exact(s) => StringMatch::Exact(s.clone()),
        MatchPattern::Prefix(s) => StringMatch::Prefix(s.clone()),
        MatchPattern::Suffix(s) => StringMatch::Suffix(s.clone()),
        MatchPattern::Contains(s) => StringMatch::Contains(s.clone()),
        MatchPattern::SafeRegex(r) => StringMatch::Regex(regex(&r.regex)?),
        MatchPattern::Custom(_) => {
            return Err("custom string matchers are not supported".to_string());
        }
    })
}
