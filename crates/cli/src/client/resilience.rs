//! `trellis describe service`: the failure-recovery policy in effect, one line per layer,
//! with the defaults a caller's sidecar applies for what the TrafficPolicy leaves out.

use std::fmt::Write as _;
use std::time::Duration;

use trellis_model::{
    DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_MAX, DEFAULT_BREAKER_LIMIT,
    DEFAULT_BUDGET_MIN_PER_SECOND, DEFAULT_BUDGET_PERCENT, DEFAULT_HC_HEALTHY_THRESHOLD,
    DEFAULT_HC_INTERVAL, DEFAULT_HC_TIMEOUT, DEFAULT_HC_UNHEALTHY_THRESHOLD,
    DEFAULT_MAX_BUFFER_BYTES, DEFAULT_RETRY_ATTEMPTS, DEFAULT_RETRY_ON,
    DEFAULT_SPILLOVER_THRESHOLD, Faults, GrpcStatus, HeaderMatchType, HttpRouteResource,
    TrafficPolicySpec, duration_or, format_duration,
};

fn dur(s: Option<&str>, default: Option<Duration>) -> String {
    match (s, default) {
        (Some(s), _) => s.to_string(),
        (None, Some(d)) => format_duration(d),
        (None, None) => "none".to_string(),
    }
}

/// One `faults` block: `delay 50ms for 10% of requests; abort 503 for 5% of requests; when
/// x-chaos = on`.
fn faults(f: &Faults) -> String {
    let pct = |p: Option<f64>| p.unwrap_or(100.0);
    let mut parts = Vec::new();
    if let Some(d) = &f.delay {
        parts.push(format!(
            "delay {} for {}% of requests",
            d.fixed_delay,
            pct(d.percentage)
        ));
    }
    if let Some(a) = &f.abort {
        let status = match (a.http_status, &a.grpc_status) {
            (Some(s), _) => s.to_string(),
            (None, Some(GrpcStatus::Code(c))) => format!("gRPC {c}"),
            (None, Some(GrpcStatus::Name(n))) => format!("gRPC {n}"),
            (None, None) => "?".to_string(),
        };
        parts.push(format!(
            "abort {status} for {}% of requests",
            pct(a.percentage)
        ));
    }
    if parts.is_empty() {
        return "none (the service's are off)".to_string();
    }
    if !f.headers.is_empty() {
        let when: Vec<String> = f
            .headers
            .iter()
            .map(|h| match h.kind {
                HeaderMatchType::Exact => format!("{} = {}", h.name, h.value),
                HeaderMatchType::RegularExpression => format!("{} ~ {}", h.name, h.value),
            })
            .collect();
        parts.push(format!("when {}", when.join(" and ")));
    }
    parts.join("; ")
}

/// The `Resilience:` section.
pub(super) fn describe(
    policy: Option<&TrafficPolicySpec>,
    routes: &[HttpRouteResource],
    out: &mut String,
) {
    let _ = writeln!(out, "\nResilience:");
    let t = policy.and_then(|p| p.timeouts.as_ref());
    let _ = writeln!(
        out,
        "  Timeouts:  connect {}, request {}, per try {}, idle {}",
        dur(
            t.and_then(|t| t.connect.as_deref()),
            Some(Duration::from_secs(1))
        ),
        dur(t.and_then(|t| t.request.as_deref()), None),
        dur(t.and_then(|t| t.backend_request.as_deref()), None),
        dur(
            t.and_then(|t| t.idle.as_deref()),
            Some(Duration::from_secs(90))
        ),
    );
    match policy.and_then(|p| p.retries.as_ref()) {
        None => {
            let _ = writeln!(out, "  Retries:   none (one try per request)");
        }
        Some(r) => {
            let on = if r.retry_on.is_empty() {
                DEFAULT_RETRY_ON.join(", ")
            } else {
                r.retry_on.join(", ")
            };
            let codes = if r.retriable_status_codes.is_empty() {
                String::new()
            } else {
                let c: Vec<String> = r
                    .retriable_status_codes
                    .iter()
                    .map(u16::to_string)
                    .collect();
                format!(" and status {}", c.join(", "))
            };
            let b = r.backoff.clone().unwrap_or_default();
            let budget = r.budget.clone().unwrap_or_default();
            let _ = writeln!(
                out,
                "  Retries:   up to {} on {on}{codes}; {}; backoff {}..{} (full jitter); budget {}% of requests + {}/s; bodies up to {} bytes replayed",
                r.attempts.unwrap_or(DEFAULT_RETRY_ATTEMPTS),
                if r.retry_non_idempotent {
                    "any method"
                } else {
                    "idempotent methods only"
                },
                dur(b.base_interval.as_deref(), Some(DEFAULT_BACKOFF_BASE)),
                dur(b.max_interval.as_deref(), Some(DEFAULT_BACKOFF_MAX)),
                budget.percent.unwrap_or(DEFAULT_BUDGET_PERCENT),
                budget
                    .min_retries_per_second
                    .unwrap_or(DEFAULT_BUDGET_MIN_PER_SECOND),
                r.max_buffer_bytes.unwrap_or(DEFAULT_MAX_BUFFER_BYTES),
            );
        }
    }
    match policy.and_then(|p| p.outlier_detection.as_ref()) {
        None => {
            let _ = writeln!(out, "  Outliers:  no outlier detection");
        }
        Some(o) => {
            let count = |v: Option<u32>, what: &str| match v.unwrap_or(5) {
                0 => None,
                n => Some(format!("{n} consecutive {what}")),
            };
            let triggers: Vec<String> = [
                count(o.consecutive_5xx, "5xx"),
                count(o.consecutive_gateway_errors, "gateway errors"),
                o.success_rate
                    .as_ref()
                    .map(|_| "a low success rate".to_string()),
            ]
            .into_iter()
            .flatten()
            .collect();
            let base = duration_or(o.base_ejection_time.as_deref(), Duration::from_secs(30));
            let _ = writeln!(
                out,
                "  Outliers:  eject after {} for {} × times ejected (at most {}); at most {}% ejected (at least one); below {}% available, balance over all",
                if triggers.is_empty() {
                    "nothing".to_string()
                } else {
                    triggers.join(" or ")
                },
                format_duration(base),
                dur(
                    o.max_ejection_time.as_deref(),
                    Some(Duration::from_secs(300))
                ),
                o.max_ejection_percent.unwrap_or(10),
                o.panic_threshold.unwrap_or(50),
            );
        }
    }
    match policy.and_then(|p| p.circuit_breakers.as_ref()) {
        None => {
            let _ = writeln!(out, "  Breakers:  none");
        }
        Some(c) => {
            let l = |v: Option<u32>| v.unwrap_or(DEFAULT_BREAKER_LIMIT);
            let _ = writeln!(
                out,
                "  Breakers:  {} requests, {} retries in flight (connections {}, pending {})",
                l(c.max_requests),
                l(c.max_retries),
                l(c.max_connections),
                l(c.max_pending_requests),
            );
        }
    }
    match policy.and_then(|p| p.health_check.as_ref()) {
        None => {
            let _ = writeln!(out, "  Checks:    no active health checks by callers");
        }
        Some(h) => {
            let what = match (&h.http, &h.grpc) {
                (Some(http), _) => {
                    let statuses = if http.expected_statuses.is_empty() {
                        "any 2xx".to_string()
                    } else {
                        let c: Vec<String> =
                            http.expected_statuses.iter().map(u16::to_string).collect();
                        c.join(", ")
                    };
                    format!("GET {} expecting {statuses}", http.path)
                }
                (None, Some(g)) if g.service.is_empty() => "gRPC health".to_string(),
                (None, Some(g)) => format!("gRPC health of {}", g.service),
                (None, None) => "TCP connect".to_string(),
            };
            let _ = writeln!(
                out,
                "  Checks:    {what} every {} (timeout {}); out after {} failures, back after {} passes",
                dur(h.interval.as_deref(), Some(DEFAULT_HC_INTERVAL)),
                dur(h.timeout.as_deref(), Some(DEFAULT_HC_TIMEOUT)),
                h.unhealthy_threshold
                    .unwrap_or(DEFAULT_HC_UNHEALTHY_THRESHOLD),
                h.healthy_threshold.unwrap_or(DEFAULT_HC_HEALTHY_THRESHOLD),
            );
        }
    }
    match policy.and_then(|p| p.load_balancer.locality_failover.as_ref()) {
        Some(l) if l.enabled => {
            let _ = writeln!(
                out,
                "  Locality:  the caller's zone first; spill below {}% available there",
                l.spillover_threshold.unwrap_or(DEFAULT_SPILLOVER_THRESHOLD)
            );
        }
        _ => {
            let _ = writeln!(out, "  Locality:  every zone alike");
        }
    }
    let _ = writeln!(
        out,
        "  Faults:    {}",
        policy
            .and_then(|p| p.faults.as_ref())
            .map_or_else(|| "none".to_string(), faults)
    );
    for r in routes {
        for (i, rule) in r.spec.rules.iter().enumerate() {
            let mut parts = Vec::new();
            if let Some(f) = &rule.faults {
                parts.push(format!("faults: {}", faults(f)));
            }
            if let Some(t) = &rule.timeouts {
                parts.push(format!(
                    "request {}, per try {}",
                    dur(t.request.as_deref(), None),
                    dur(t.backend_request.as_deref(), None)
                ));
            }
            if let Some(rt) = &rule.retry {
                let codes: Vec<String> = rt.codes.iter().map(u16::to_string).collect();
                parts.push(format!(
                    "retry up to {} on [{}]{}",
                    rt.attempts.unwrap_or(DEFAULT_RETRY_ATTEMPTS),
                    codes.join(", "),
                    rt.backoff
                        .as_deref()
                        .map(|b| format!(", backoff {b}"))
                        .unwrap_or_default()
                ));
            }
            if !parts.is_empty() {
                let _ = writeln!(
                    out,
                    "  {} rule {}: {}",
                    r.metadata.name,
                    i + 1,
                    parts.join("; ")
                );
            }
        }
    }
}
