//! RateLimitPolicy → Envoy's local rate limit on the inbound listener (docs/XDS.md, "Rate
//! limits"): one `envoy.filters.http.local_ratelimit` HTTP filter (before the router, with no
//! bucket of its own: disabled unless a route enables it), and per rule one inline route to
//! the app carrying the rule's `LocalRateLimit` in `typed_per_filter_config`, in rule order,
//! the rule without `match` on the final `/` route. `perSource` rides on the route's metadata
//! (`trellis.rateLimitPerSource: true`), which Envoy ignores: Envoy enforces such a rule as one
//! bucket for all callers, which limits more, never less. A `global` rule is marked the same
//! way (`trellis.rateLimitGlobal: true`): Trellis sidecars lease their share of its rate from
//! the control plane; Envoy, which cannot, enforces the full rate on each instance. Pure
//! functions.

use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, Metadata, RuntimeFractionalPercent,
};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteMatch, route::Action, route_action::ClusterSpecifier,
    route_match::PathSpecifier,
};
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, TokenBucket, fractional_percent};
use envoy_types::pb::google::protobuf::{Duration, Struct, UInt32Value, Value, value::Kind};
use envoy_types::util::pack_any;
use trellis_model::{RateLimitPathType, RateLimitRule, wire};

use crate::snapshot::ServiceView;

/// The HTTP filter, when a RateLimitPolicy applies to the service.
pub fn rate_limit_filter(view: Option<&ServiceView>) -> Option<HttpFilter> {
    view.and_then(|v| v.rate_limit.as_ref())?;
    let config = LocalRateLimit {
        stat_prefix: wire::RATE_LIMIT_STAT_PREFIX.to_string(),
        ..Default::default()
    };
    Some(HttpFilter {
        name: wire::RATE_LIMIT_FILTER.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(config))),
        ..Default::default()
    })
}

/// The inbound routes to `cluster`: one per matching rule, then the default `/` route (with
/// the catch-all rule's limit, if there is one).
pub fn inbound_routes(view: Option<&ServiceView>, cluster: &str) -> Vec<Route> {
    let rules = view
        .and_then(|v| v.rate_limit.as_ref())
        .map(|p| p.spec.rules.as_slice())
        .unwrap_or_default();
    let mut routes = Vec::with_capacity(rules.len() + 1);
    for (i, rule) in rules.iter().enumerate() {
        let Some(m) = &rule.matches else { continue };
        let path = match m.path.kind {
            RateLimitPathType::Exact => PathSpecifier::Path(m.path.value.clone()),
            RateLimitPathType::PathPrefix if m.path.value == "/" => {
                PathSpecifier::Prefix("/".to_string())
            }
            RateLimitPathType::PathPrefix => {
                PathSpecifier::PathSeparatedPrefix(m.path.value.clone())
            }
        };
        routes.push(limited_route(
            format!("ratelimit-{i}"),
            path,
            cluster,
            Some(rule),
        ));
    }
    let default = rules.iter().find(|r| r.matches.is_none());
    routes.push(limited_route(
        "default".to_string(),
        PathSpecifier::Prefix("/".to_string()),
        cluster,
        default,
    ));
    routes
}

fn limited_route(
    name: String,
    path: PathSpecifier,
    cluster: &str,
    rule: Option<&RateLimitRule>,
) -> Route {
    let mut route = Route {
        name,
        r#match: Some(RouteMatch {
            path_specifier: Some(path),
            ..Default::default()
        }),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.to_string())),
            ..Default::default()
        })),
        ..Default::default()
    };
    if let Some(rule) = rule {
        route.typed_per_filter_config.insert(
            wire::RATE_LIMIT_FILTER.to_string(),
            pack_any(local_rate_limit(rule)),
        );
        let flags = [
            (wire::RATE_LIMIT_PER_SOURCE, rule.per_source),
            (wire::RATE_LIMIT_GLOBAL, rule.global),
        ];
        if flags.iter().any(|(_, on)| *on) {
            let marker = Struct {
                fields: flags
                    .iter()
                    .filter(|(_, on)| *on)
                    .map(|(k, _)| {
                        let v = Value {
                            kind: Some(Kind::BoolValue(true)),
                        };
                        (k.to_string(), v)
                    })
                    .collect(),
            };
            route.metadata = Some(Metadata {
                filter_metadata: [(wire::METADATA_NAMESPACE.to_string(), marker)].into(),
                ..Default::default()
            });
        }
    }
    route
}

fn always() -> Option<RuntimeFractionalPercent> {
    Some(RuntimeFractionalPercent {
        default_value: Some(FractionalPercent {
            numerator: 100,
            denominator: fractional_percent::DenominatorType::Hundred as i32,
        }),
        runtime_key: String::new(),
    })
}

/// One rule's bucket: `burst` tokens, `requestsPerUnit` added every `unit`; 429 with
/// `x-trellis-reason: rate_limited` and `Retry-After`, gRPC RESOURCE_EXHAUSTED.
pub fn local_rate_limit(rule: &RateLimitRule) -> LocalRateLimit {
    let secs = i64::try_from(rule.unit.duration().as_secs()).unwrap_or(1);
    LocalRateLimit {
        stat_prefix: wire::RATE_LIMIT_STAT_PREFIX.to_string(),
        token_bucket: Some(TokenBucket {
            max_tokens: rule.burst(),
            tokens_per_fill: Some(UInt32Value {
                value: rule.requests_per_unit,
            }),
            fill_interval: Some(Duration {
                seconds: secs,
                nanos: 0,
            }),
        }),
        filter_enabled: always(),
        filter_enforced: always(),
        response_headers_to_add: vec![HeaderValueOption {
            header: Some(HeaderValue {
                key: "x-trellis-reason".to_string(),
                value: wire::RATE_LIMITED_REASON.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        rate_limited_as_resource_exhausted: true,
        enable_retry_after_header: true,
        ..Default::default()
    }
}
