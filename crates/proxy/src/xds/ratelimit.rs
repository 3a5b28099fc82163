//! The inbound HttpConnectionManager's local rate limits (docs/XDS.md, "Rate limits") →
//! [`RuleConfig`]s: the routes of its inline route config that carry an
//! `envoy.filters.http.local_ratelimit` `LocalRateLimit` in `typed_per_filter_config`, in
//! order. Strict: a bucket this subset does not read (descriptors, a filter-level bucket,
//! enforcement below 100%, ...) is an error, so the proxy NACKs rather than enforce something
//! else than the control plane meant.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
use envoy_types::pb::envoy::config::route::v3::{Route, route_match::PathSpecifier};
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager::RouteSpecifier, http_filter,
};
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use envoy_types::pb::google::protobuf::{Any, value::Kind};
use prost::Message;
use trellis_model::{MAX_RATE, wire};

use crate::ratelimit::{BucketSpec, PathRule, RuleConfig};

/// The filter-level config must not limit by itself (the control plane never sends one).
pub(crate) fn check_filter(f: &HttpFilter) -> Result<(), String> {
    let Some(http_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        return Err(format!("{}: no typed_config", f.name));
    };
    let c: LocalRateLimit = decode(any).map_err(|e| format!("{}: {e}", f.name))?;
    if c.token_bucket.is_some() {
        return Err(format!(
            "{}: a filter-level token_bucket is not supported: buckets go on the routes",
            f.name
        ));
    }
    Ok(())
}

fn decode(any: &Any) -> Result<LocalRateLimit, String> {
    if any.type_url != wire::RATE_LIMIT_TYPE_URL {
        return Err(format!(
            "expected `{}`, got `{}`",
            wire::RATE_LIMIT_TYPE_URL,
            any.type_url
        ));
    }
    LocalRateLimit::decode(any.value.as_slice())
        .map_err(|e| format!("cannot decode LocalRateLimit: {e}"))
}

fn is_always(p: Option<&RuntimeFractionalPercent>) -> bool {
    p.and_then(|p| p.default_value.as_ref()).is_some_and(|f| {
        let denominator = match DenominatorType::try_from(f.denominator) {
            Ok(DenominatorType::Hundred) => 100,
            Ok(DenominatorType::TenThousand) => 10_000,
            Ok(DenominatorType::Million) => 1_000_000,
            Err(_) => return false,
        };
        f.numerator >= denominator
    })
}

/// The rules of the HCM's inline routes, in route order; empty without a RouteConfig.
pub(crate) fn rules(hcm: &HttpConnectionManager) -> Result<Vec<RuleConfig>, String> {
    let Some(RouteSpecifier::RouteConfig(rc)) = &hcm.route_specifier else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for vh in &rc.virtual_hosts {
        for (i, route) in vh.routes.iter().enumerate() {
            if let Some(rule) =
                rule(route).map_err(|e| format!("inbound route {i} (`{}`): {e}", route.name))?
            {
                out.push(rule);
            }
        }
    }
    Ok(out)
}

fn rule(route: &Route) -> Result<Option<RuleConfig>, String> {
    let Some(any) = route.typed_per_filter_config.get(wire::RATE_LIMIT_FILTER) else {
        return Ok(None);
    };
    let c = decode(any)?;
    let Some(bucket) = &c.token_bucket else {
        return Err("LocalRateLimit without token_bucket".into());
    };
    if !is_always(c.filter_enabled.as_ref()) || !is_always(c.filter_enforced.as_ref()) {
        return Err("filter_enabled and filter_enforced must be 100%".into());
    }
    if !c.descriptors.is_empty()
        || !c.rate_limits.is_empty()
        || c.local_rate_limit_per_downstream_connection
    {
        return Err("descriptors, rate_limits and per-connection buckets are not supported".into());
    }
    let tokens_per_fill = bucket.tokens_per_fill.as_ref().map_or(1, |v| v.value);
    let interval = bucket
        .fill_interval
        .as_ref()
        .ok_or("token_bucket.fill_interval is required")?;
    let fill_interval = u64::try_from(interval.seconds)
        .ok()
        .filter(|_| (0..1_000_000_000).contains(&interval.nanos))
        .map(|s| Duration::new(s, u32::try_from(interval.nanos).unwrap_or(0)))
        .filter(|d| *d >= Duration::from_millis(1) && *d <= Duration::from_secs(86_400))
        .ok_or("token_bucket.fill_interval must be between 1ms and 24h")?;
    if bucket.max_tokens == 0
        || bucket.max_tokens > MAX_RATE
        || tokens_per_fill == 0
        || tokens_per_fill > MAX_RATE
    {
        return Err(format!(
            "token_bucket: max_tokens {} and tokens_per_fill {tokens_per_fill} must be within 1..={MAX_RATE}",
            bucket.max_tokens
        ));
    }
    let path = match route
        .r#match
        .as_ref()
        .and_then(|m| m.path_specifier.as_ref())
    {
        Some(PathSpecifier::Prefix(p)) if p == "/" => PathRule::Any,
        Some(PathSpecifier::Path(p)) => PathRule::Exact(p.clone()),
        Some(PathSpecifier::PathSeparatedPrefix(p)) => PathRule::Prefix(p.clone()),
        other => {
            return Err(format!(
                "a rate-limited route must match `prefix: /`, `path` or `path_separated_prefix`, not {other:?}"
            ));
        }
    };
    let flag = |key: &str| {
        route
            .metadata
            .as_ref()
            .and_then(|m| m.filter_metadata.get(wire::METADATA_NAMESPACE))
            .and_then(|s| s.fields.get(key))
            .is_some_and(|v| matches!(v.kind, Some(Kind::BoolValue(true))))
    };
    let (per_source, global) = (
        flag(wire::RATE_LIMIT_PER_SOURCE),
        flag(wire::RATE_LIMIT_GLOBAL),
    );
    if per_source && global {
        return Err("a rule cannot be both per-source and global".into());
    }
    Ok(Some(RuleConfig {
        name: route.name.clone(),
        path,
        bucket: BucketSpec {
            capacity: bucket.max_tokens,
            tokens_per_fill,
            fill_interval,
        },
        per_source,
        global,
    }))
}

#[cfg(test)]
mod tests;
