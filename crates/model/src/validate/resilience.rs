//! Rules for the failure-recovery fields of TrafficPolicy and of HTTPRoute rules: durations
//! that parse and make sense together, retry conditions that can fire. Number ranges are the
//! schema's (repeated here with the same wording for resources that did not come from YAML).

use std::time::Duration;

use crate::{
    ActiveHealthCheck, CircuitBreakers, HttpRouteRule, OutlierDetection, RETRY_ON, RetryPolicy,
    Timeouts, TrafficPolicySpec, parse_duration,
};

use super::Issue;

/// Longest accepted timeout or ejection time: a day. Longer is a typo, not a policy.
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
/// Longest accepted backoff interval.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Parses an optional duration field: positive and at most `max`.
pub(super) fn duration(
    field: &str,
    value: Option<&str>,
    max: Duration,
    out: &mut Vec<Issue>,
) -> Option<Duration> {
    let value = value?;
    match parse_duration(value) {
        Err(e) => {
            out.push(Issue::new(field, e));
            None
        }
        Ok(d) if d.is_zero() => {
            out.push(Issue::new(
                field,
                format!("`{value}` must be positive: leave the field out for no limit"),
            ));
            None
        }
        Ok(d) if d > max => {
            out.push(Issue::new(
                field,
                format!(
                    "`{value}` is too long: at most {}",
                    crate::format_duration(max)
                ),
            ));
            None
        }
        Ok(d) => Some(d),
    }
}

fn range(field: &str, n: Option<u32>, min: u64, max: u64, out: &mut Vec<Issue>) {
    if let Some(n) = n.map(u64::from)
        && (n < min || n > max)
    {
        out.push(Issue::new(
            field,
            format!("{n} is out of range: must be between {min} and {max}"),
        ));
    }
}

fn status_codes(field: &str, codes: &[u16], out: &mut Vec<Issue>) {
    for (i, c) in codes.iter().enumerate() {
        if !(100..=599).contains(c) {
            out.push(Issue::new(
                &format!("{field}[{i}]"),
                format!("{c} is out of range: must be between 100 and 599"),
            ));
        }
    }
}

/// `request` and `backendRequest` together: one try longer than the whole request never fires.
fn request_vs_try(
    at: &str,
    request: Option<Duration>,
    per_try: Option<Duration>,
    out: &mut Vec<Issue>,
) {
    if let (Some(r), Some(t)) = (request, per_try)
        && t > r
    {
        out.push(Issue::new(
            &format!("{at}.backendRequest"),
            format!(
                "{} is longer than timeouts.request ({}): one try cannot outlast the whole \
                 request; make it shorter or remove it",
                crate::format_duration(t),
                crate::format_duration(r)
            ),
        ));
    }
}

pub(super) fn check_policy(spec: &TrafficPolicySpec, out: &mut Vec<Issue>) {
    if let Some(t) = &spec.timeouts {
        check_timeouts(t, out);
    }
    if let Some(r) = &spec.retries {
        check_retries(r, out);
    }
    if let Some(o) = &spec.outlier_detection {
        check_outlier(o, out);
    }
    if let Some(c) = &spec.circuit_breakers {
        check_breakers(c, out);
    }
    if let Some(f) = &spec.faults {
        super::faults::check("spec.faults", f, false, out);
    }
    if let Some(h) = &spec.health_check {
        check_health_check(h, out);
    }
    if let Some(l) = &spec.load_balancer.locality_failover {
        range(
            "spec.loadBalancer.localityFailover.spilloverThreshold",
            l.spillover_threshold,
            1,
            100,
            out,
        );
    }
}

/// Shortest accepted health-check interval.
const MIN_HC_INTERVAL: Duration = Duration::from_millis(10);

fn check_health_check(h: &ActiveHealthCheck, out: &mut Vec<Issue>) {
    let at = "spec.healthCheck";
    let kinds = [h.http.is_some(), h.tcp.is_some(), h.grpc.is_some()];
    match kinds.iter().filter(|k| **k).count() {
        1 => {}
        0 => out.push(Issue::new(
            at,
            "says nothing to check: give one of `http: {path: /healthz}`, `tcp: {}` or              `grpc: {}`"
                .into(),
        )),
        _ => out.push(Issue::new(
            at,
            "gives several of `http`, `tcp`, `grpc`: an endpoint is checked one way; keep one"
                .into(),
        )),
    }
    if let Some(http) = &h.http {
        let path = &http.path;
        let ok = path.starts_with('/')
            && path.len() <= 1024
            && path
                .chars()
                .all(|c| c.is_ascii_graphic() && !matches!(c, '#' | '"' | '<' | '>' | '\\'));
        if !ok {
            out.push(Issue::new(
                &format!("{at}.http.path"),
                format!(
                    "`{}` is not a request path: it must start with `/` and hold no spaces                      or control characters (e.g. `/healthz`)",
                    super::schema::shorten(path)
                ),
            ));
        }
        status_codes(
            &format!("{at}.http.expectedStatuses"),
            &http.expected_statuses,
            out,
        );
    }
    if let Some(g) = &h.grpc {
        let ok = g.service.len() <= 256
            && g.service
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !ok {
            out.push(Issue::new(
                &format!("{at}.grpc.service"),
                format!(
                    "`{}` is not a gRPC service name: letters, digits, `.`, `_`, `-`                      (e.g. `my.pkg.Service`)",
                    super::schema::shorten(&g.service)
                ),
            ));
        }
    }
    let interval = duration(
        &format!("{at}.interval"),
        h.interval.as_deref(),
        Duration::from_secs(3600),
        out,
    );
    if let Some(i) = interval
        && i < MIN_HC_INTERVAL
    {
        out.push(Issue::new(
            &format!("{at}.interval"),
            format!(
                "{} is too short: at least {} (every calling sidecar checks every endpoint)",
                crate::format_duration(i),
                crate::format_duration(MIN_HC_INTERVAL)
            ),
        ));
    }
    let timeout = duration(
        &format!("{at}.timeout"),
        h.timeout.as_deref(),
        Duration::from_secs(3600),
        out,
    );
    let interval_eff = interval.unwrap_or(crate::DEFAULT_HC_INTERVAL);
    let timeout_eff = timeout.unwrap_or(crate::DEFAULT_HC_TIMEOUT);
    if (interval.is_some() || timeout.is_some()) && timeout_eff > interval_eff {
        out.push(Issue::new(
            &format!("{at}.timeout"),
            format!(
                "{} is longer than the interval ({}): a check must end before the next one                  starts; shorten the timeout or lengthen the interval",
                crate::format_duration(timeout_eff),
                crate::format_duration(interval_eff)
            ),
        ));
    }
    range(
        &format!("{at}.healthyThreshold"),
        h.healthy_threshold,
        1,
        100,
        out,
    );
    range(
        &format!("{at}.unhealthyThreshold"),
        h.unhealthy_threshold,
        1,
        100,
        out,
    );
}

fn check_timeouts(t: &Timeouts, out: &mut Vec<Issue>) {
    let at = "spec.timeouts";
    duration(
        &format!("{at}.connect"),
        t.connect.as_deref(),
        Duration::from_secs(60),
        out,
    );
    let request = duration(
        &format!("{at}.request"),
        t.request.as_deref(),
        MAX_DURATION,
        out,
    );
    let per_try = duration(
        &format!("{at}.backendRequest"),
        t.backend_request.as_deref(),
        MAX_DURATION,
        out,
    );
    request_vs_try(at, request, per_try, out);
    duration(&format!("{at}.idle"), t.idle.as_deref(), MAX_DURATION, out);
}

fn check_retries(r: &RetryPolicy, out: &mut Vec<Issue>) {
    let at = "spec.retries";
    range(&format!("{at}.attempts"), r.attempts, 0, 10, out);
    for (i, cond) in r.retry_on.iter().enumerate() {
        if !RETRY_ON.contains(&cond.as_str()) {
            out.push(Issue::new(
                &format!("{at}.retryOn[{i}]"),
                format!(
                    "unknown value `{}`: expected one of {}",
                    super::schema::shorten(cond),
                    RETRY_ON.join(", ")
                ),
            ));
        }
    }
    status_codes(
        &format!("{at}.retriableStatusCodes"),
        &r.retriable_status_codes,
        out,
    );
    if r.retry_on.iter().any(|c| c == "retriable-status-codes")
        && r.retriable_status_codes.is_empty()
    {
        out.push(Issue::new(
            &format!("{at}.retryOn"),
            "`retriable-status-codes` needs `retriableStatusCodes`: list the statuses to retry, \
             e.g. [409, 429]"
                .into(),
        ));
    }
    if let Some(b) = &r.backoff {
        let base = duration(
            &format!("{at}.backoff.baseInterval"),
            b.base_interval.as_deref(),
            MAX_BACKOFF,
            out,
        );
        let max = duration(
            &format!("{at}.backoff.maxInterval"),
            b.max_interval.as_deref(),
            MAX_BACKOFF,
            out,
        );
        let base_eff = base.unwrap_or(crate::DEFAULT_BACKOFF_BASE);
        if let Some(m) = max
            && m < base_eff
        {
            out.push(Issue::new(
                &format!("{at}.backoff.maxInterval"),
                format!(
                    "{} is shorter than baseInterval ({}): the cap must be at least the base",
                    crate::format_duration(m),
                    crate::format_duration(base_eff)
                ),
            ));
        }
    }
    if let Some(b) = &r.budget {
        range(&format!("{at}.budget.percent"), b.percent, 0, 100, out);
        range(
            &format!("{at}.budget.minRetriesPerSecond"),
            b.min_retries_per_second,
            0,
            10_000,
            out,
        );
    }
    range(
        &format!("{at}.maxBufferBytes"),
        r.max_buffer_bytes,
        0,
        16 * 1024 * 1024,
        out,
    );
}

fn check_outlier(o: &OutlierDetection, out: &mut Vec<Issue>) {
    let at = "spec.outlierDetection";
    range(
        &format!("{at}.consecutive5xx"),
        o.consecutive_5xx,
        0,
        10_000,
        out,
    );
    range(
        &format!("{at}.consecutiveGatewayErrors"),
        o.consecutive_gateway_errors,
        0,
        10_000,
        out,
    );
    duration(
        &format!("{at}.interval"),
        o.interval.as_deref(),
        MAX_DURATION,
        out,
    );
    let base = duration(
        &format!("{at}.baseEjectionTime"),
        o.base_ejection_time.as_deref(),
        MAX_DURATION,
        out,
    );
    let max = duration(
        &format!("{at}.maxEjectionTime"),
        o.max_ejection_time.as_deref(),
        MAX_DURATION,
        out,
    );
    if let (Some(b), Some(m)) = (base, max)
        && m < b
    {
        out.push(Issue::new(
            &format!("{at}.maxEjectionTime"),
            format!(
                "{} is shorter than baseEjectionTime ({}): the cap must be at least the base",
                crate::format_duration(m),
                crate::format_duration(b)
            ),
        ));
    }
    range(
        &format!("{at}.maxEjectionPercent"),
        o.max_ejection_percent,
        0,
        100,
        out,
    );
    range(
        &format!("{at}.panicThreshold"),
        o.panic_threshold,
        0,
        100,
        out,
    );
    if let Some(s) = &o.success_rate {
        range(
            &format!("{at}.successRate.minimumHosts"),
            s.minimum_hosts,
            1,
            10_000,
            out,
        );
        range(
            &format!("{at}.successRate.requestVolume"),
            s.request_volume,
            1,
            1_000_000,
            out,
        );
        range(
            &format!("{at}.successRate.stdevFactor"),
            s.stdev_factor,
            1,
            100_000,
            out,
        );
    }
}

fn check_breakers(c: &CircuitBreakers, out: &mut Vec<Issue>) {
    let at = "spec.circuitBreakers";
    for (name, v) in [
        ("maxConnections", c.max_connections),
        ("maxPendingRequests", c.max_pending_requests),
        ("maxRequests", c.max_requests),
        ("maxRetries", c.max_retries),
    ] {
        range(&format!("{at}.{name}"), v, 1, 1_000_000_000, out);
    }
}

/// `timeouts` and `retry` of one HTTPRoute rule (`here` = `spec.rules[i]`).
pub(super) fn check_rule(here: &str, rule: &HttpRouteRule, out: &mut Vec<Issue>) {
    if let Some(t) = &rule.timeouts {
        let at = format!("{here}.timeouts");
        let request = duration(
            &format!("{at}.request"),
            t.request.as_deref(),
            MAX_DURATION,
            out,
        );
        let per_try = duration(
            &format!("{at}.backendRequest"),
            t.backend_request.as_deref(),
            MAX_DURATION,
            out,
        );
        request_vs_try(&at, request, per_try, out);
    }
    if let Some(r) = &rule.retry {
        let at = format!("{here}.retry");
        range(&format!("{at}.attempts"), r.attempts, 0, 10, out);
        status_codes(&format!("{at}.codes"), &r.codes, out);
        duration(
            &format!("{at}.backoff"),
            r.backoff.as_deref(),
            MAX_BACKOFF,
            out,
        );
    }
    if let Some(f) = &rule.faults {
        super::faults::check(&format!("{here}.faults"), f, true, out);
    }
}
