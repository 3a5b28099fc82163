//! xDS failure-recovery fields → typed policies (docs/XDS.md, "Failure recovery"):
//! `RouteAction.timeout` / `retry_policy` → [`RoutePolicy`]; `Cluster.circuit_breakers`,
//! `outlier_detection`, `common_lb_config.healthy_panic_threshold` → [`ClusterPolicy`]; the idle
//! timeout in the HTTP protocol options. Malformed values are errors (the update is NACKed).

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::RoutingPriority;
use envoy_types::pb::envoy::config::route::v3::RouteAction;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use prost::Message;
use trellis_model::{DEFAULT_BACKOFF_BASE, DEFAULT_MAX_BUFFER_BYTES, wire};

use crate::resilience::breaker::Limits;
use crate::resilience::budget::BudgetConfig;
use crate::resilience::outlier::{OutlierConfig, SuccessRateConfig};
use crate::resilience::retry::{RetryOn, RetryPolicy};
use crate::resilience::{ClusterPolicy, RoutePolicy};

/// Key of the upstream HTTP protocol options in `typed_extension_protocol_options`.
const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
/// The one `retriable_request_headers` form understood: the idempotent methods.
const IDEMPOTENT_METHODS_REGEX: &str = "GET|HEAD|OPTIONS|PUT|DELETE|TRACE";
/// More retries than this is a mistake, not a policy.
const MAX_RETRIES: u32 = 10;
/// Longest duration accepted anywhere here (a day).
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// A protobuf duration: non-negative, normalized, at most a day.
pub(crate) fn duration(field: &str, d: &PbDuration) -> Result<Duration, String> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(format!(
            "{field} = {}s {}ns: must be a non-negative, normalized duration",
            d.seconds, d.nanos
        ));
    }
    let out = Duration::new(d.seconds as u64, d.nanos as u32);
    if out > MAX_DURATION {
        return Err(format!("{field} = {}s: longer than a day", d.seconds));
    }
    Ok(out)
}

pub(crate) fn opt_duration(
    field: &str,
    d: Option<&PbDuration>,
) -> Result<Option<Duration>, String> {
    d.map(|d| duration(field, d)).transpose()
}

fn percent(field: &str, v: f64) -> Result<f64, String> {
    if !(0.0..=100.0).contains(&v) {
        return Err(format!("{field} = {v}: must be between 0 and 100"));
    }
    Ok(v)
}

/// The route's timeouts and retries; `None` when it has neither (the fast path).
pub(crate) fn route_policy(
    action: &RouteAction,
    buffer_limit: Option<u32>,
) -> Result<Option<RoutePolicy>, String> {
    // 0 means "no timeout", as in Envoy.
    let request_timeout =
        opt_duration("timeout", action.timeout.as_ref())?.filter(|d| !d.is_zero());
    let Some(rp) = &action.retry_policy else {
        return Ok(request_timeout.map(|t| RoutePolicy {
            request_timeout: Some(t),
            ..RoutePolicy::default()
        }));
    };
    let per_try_timeout =
        opt_duration("retry_policy.per_try_timeout", rp.per_try_timeout.as_ref())?
            .filter(|d| !d.is_zero());
    let attempts = rp.num_retries.as_ref().map_or(1, |n| n.value);
    if attempts > MAX_RETRIES {
        return Err(format!(
            "retry_policy.num_retries = {attempts}: at most {MAX_RETRIES}"
        ));
    }
    let on = RetryOn::parse(&rp.retry_on).map_err(|e| format!("retry_policy: {e}"))?;
    let mut status_codes = Vec::with_capacity(rp.retriable_status_codes.len());
    for c in &rp.retriable_status_codes {
        match u16::try_from(*c) {
            Ok(c) if (100..=599).contains(&c) => status_codes.push(c),
            _ => {
                return Err(format!(
                    "retry_policy.retriable_status_codes: {c} is not an HTTP status (100..=599)"
                ));
            }
        }
    }
    let (backoff_base, backoff_max) = match &rp.retry_back_off {
        None => (DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_BASE * 10),
        Some(b) => {
            let base = opt_duration("retry_back_off.base_interval", b.base_interval.as_ref())?
                .filter(|d| !d.is_zero())
                .ok_or("retry_back_off.base_interval is required and must be positive")?;
            let max = opt_duration("retry_back_off.max_interval", b.max_interval.as_ref())?
                .unwrap_or(base * 10);
            if max < base {
                return Err(format!(
                    "retry_back_off.max_interval ({max:?}) is shorter than base_interval ({base:?})"
                ));
            }
            (base, max)
        }
    };
    let idempotent_only = match rp.retriable_request_headers.as_slice() {
        [] => false,
        [h] if h.name == ":method" && !h.invert_match && is_idempotent_regex(h) => true,
        _ => {
            return Err(format!(
                "retry_policy.retriable_request_headers: only `:method` matching the regex `{IDEMPOTENT_METHODS_REGEX}` is supported"
            ));
        }
    };
    for p in &rp.retry_host_predicate {
        if p.name != wire::PREVIOUS_HOSTS_PREDICATE {
            return Err(format!(
                "retry_policy.retry_host_predicate `{}` is not supported (only `{}`)",
                p.name,
                wire::PREVIOUS_HOSTS_PREDICATE
            ));
        }
    }
    let retry = (attempts > 0).then(|| RetryPolicy {
        attempts,
        on,
        status_codes,
        backoff_base,
        backoff_max,
        idempotent_only,
        buffer_limit: buffer_limit.unwrap_or(DEFAULT_MAX_BUFFER_BYTES) as usize,
    });
    let policy = RoutePolicy {
        request_timeout,
        per_try_timeout,
        retry,
        faults: None,
    };
    Ok((policy != RoutePolicy::default()).then_some(policy))
}

fn is_idempotent_regex(h: &envoy_types::pb::envoy::config::route::v3::HeaderMatcher) -> bool {
    #[allow(deprecated)]
    match &h.header_match_specifier {
        Some(HeaderMatchSpecifier::StringMatch(sm)) => matches!(
            &sm.match_pattern,
            Some(MatchPattern::SafeRegex(r)) if r.regex == IDEMPOTENT_METHODS_REGEX
        ),
        Some(HeaderMatchSpecifier::SafeRegexMatch(r)) => r.regex == IDEMPOTENT_METHODS_REGEX,
        _ => false,
    }
}

/// The cluster's circuit breakers, retry budget and outlier detection.
pub(crate) fn cluster_policy(c: &Cluster) -> Result<ClusterPolicy, String> {
    let mut out = ClusterPolicy::default();
    if let Some(cb) = &c.circuit_breakers {
        let mut default = None;
        for t in &cb.thresholds {
            if t.priority == RoutingPriority::Default as i32 {
                if default.is_some() {
                    return Err("circuit_breakers: two thresholds for priority DEFAULT".into());
                }
                default = Some(t);
            }
        }
        if let Some(t) = default {
            let limit = |field: &str, v: Option<u32>| -> Result<u32, String> {
                match v {
                    None => Ok(trellis_model::DEFAULT_BREAKER_LIMIT),
                    Some(0) => Err(format!(
                        "circuit_breakers.{field} = 0: would refuse every request"
                    )),
                    Some(n) => Ok(n),
                }
            };
            out.breakers = Some(Limits {
                max_connections: limit("max_connections", t.max_connections.map(|v| v.value))?,
                max_pending_requests: limit(
                    "max_pending_requests",
                    t.max_pending_requests.map(|v| v.value),
                )?,
                max_requests: limit("max_requests", t.max_requests.map(|v| v.value))?,
                max_retries: limit("max_retries", t.max_retries.map(|v| v.value))?,
            });
            if let Some(b) = &t.retry_budget {
                out.budget = Some(BudgetConfig {
                    percent: percent(
                        "retry_budget.budget_percent",
                        b.budget_percent.as_ref().map_or(20.0, |p| p.value),
                    )?,
                    min_per_second: b.min_retry_concurrency.as_ref().map_or(3, |v| v.value),
                });
            }
        }
    }
    if let Some(o) = &c.outlier_detection {
        let enforced = |v: Option<u32>, default: u32| v.unwrap_or(default) > 0;
        let u = |v: &Option<envoy_types::pb::google::protobuf::UInt32Value>| {
            v.as_ref().map(|v| v.value)
        };
        let max_ejection_percent = u(&o.max_ejection_percent).unwrap_or(10);
        if max_ejection_percent > 100 {
            return Err(format!(
                "outlier_detection.max_ejection_percent = {max_ejection_percent}: must be at most 100"
            ));
        }
        let base_ejection = opt_duration(
            "outlier_detection.base_ejection_time",
            o.base_ejection_time.as_ref(),
        )?
        .unwrap_or(Duration::from_secs(30));
        let interval = opt_duration("outlier_detection.interval", o.interval.as_ref())?
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_secs(10));
        let panic = match c
            .common_lb_config
            .as_ref()
            .and_then(|l| l.healthy_panic_threshold.as_ref())
        {
            Some(p) => percent("common_lb_config.healthy_panic_threshold", p.value)?,
            None => 50.0,
        };
        let success_rate = enforced(u(&o.enforcing_success_rate), 100).then(|| SuccessRateConfig {
            minimum_hosts: u(&o.success_rate_minimum_hosts).unwrap_or(5),
            request_volume: u(&o.success_rate_request_volume).unwrap_or(100).max(1),
            stdev_factor: u(&o.success_rate_stdev_factor).unwrap_or(1900),
        });
        out.outlier = Some(OutlierConfig {
            consecutive_5xx: enforced(u(&o.enforcing_consecutive_5xx), 100)
                .then(|| u(&o.consecutive_5xx).unwrap_or(5).max(1)),
            // Envoy does not enforce gateway failures unless told (its default is 0).
            consecutive_gateway: enforced(u(&o.enforcing_consecutive_gateway_failure), 0)
                .then(|| u(&o.consecutive_gateway_failure).unwrap_or(5).max(1)),
            interval,
            base_ejection,
            max_ejection: opt_duration(
                "outlier_detection.max_ejection_time",
                o.max_ejection_time.as_ref(),
            )?
            .unwrap_or(Duration::from_secs(300))
            .max(base_ejection),
            max_ejection_percent,
            panic_threshold: panic.round() as u32,
            success_rate,
        });
    }
    Ok(out)
}

/// `common_http_protocol_options.idle_timeout` of the cluster's HTTP protocol options.
pub(crate) fn idle_timeout(c: &Cluster) -> Result<Option<Duration>, String> {
    let Some(any) = c
        .typed_extension_protocol_options
        .get(HTTP_PROTOCOL_OPTIONS)
    else {
        return Ok(None);
    };
    let options = HttpProtocolOptions::decode(any.value.as_slice())
        .map_err(|e| format!("{HTTP_PROTOCOL_OPTIONS}: cannot decode: {e}"))?;
    let idle = options
        .common_http_protocol_options
        .as_ref()
        .and_then(|o| o.idle_timeout.as_ref());
    Ok(opt_duration("common_http_protocol_options.idle_timeout", idle)?.filter(|d| !d.is_zero()))
}

#[cfg(test)]
mod tests;
