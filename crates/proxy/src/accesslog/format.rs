//! One record → one JSON line. Field names follow Envoy's access log operators
//! (`start_time`, `response_flags`, `upstream_cluster`, ...); absent values are left out.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use serde::Serialize;

use super::Record;

#[derive(Serialize)]
struct Line<'a> {
    start_time: String,
    direction: &'static str,
    protocol: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    authority: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    grpc_status: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<Cow<'a, str>>,
    response_flags: &'static str,
    duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_service_time_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_received: Option<u64>,
    bytes_sent: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_cluster: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_host: Option<&'a str>,
    downstream_remote_address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    downstream_peer_uri_san: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_agent: Option<Cow<'a, str>>,
}

fn text(v: &Option<HeaderValue>) -> Option<Cow<'_, str>> {
    v.as_ref().map(|v| String::from_utf8_lossy(v.as_bytes()))
}

/// Milliseconds with microsecond precision.
fn ms(d: std::time::Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

/// Appends `r` as one JSON object and a newline.
pub(super) fn write_line(out: &mut Vec<u8>, r: &Record) {
    let reason = text(&r.reason);
    let line = Line {
        start_time: rfc3339(r.start),
        direction: r.direction.as_str(),
        protocol: r.protocol,
        method: r.method.as_ref().map(|m| m.as_str()),
        path: r.path.as_ref().map(|p| p.as_str()),
        authority: text(&r.authority),
        status: r.status,
        grpc_status: text(&r.grpc_status),
        response_flags: response_flags(reason.as_deref()),
        reason,
        duration_ms: ms(r.duration),
        upstream_service_time_ms: r.upstream_service_time.map(ms),
        bytes_received: r.bytes_received,
        bytes_sent: r.bytes_sent,
        upstream_cluster: r.upstream.as_ref().map(|u| &*u.cluster),
        upstream_host: r
            .upstream
            .as_ref()
            .and_then(|u| u.host.as_ref())
            .map(|h| h.as_str()),
        downstream_remote_address: r.downstream.to_string(),
        downstream_peer_uri_san: r.peer_id.as_deref(),
        request_id: text(&r.request_id),
        traceparent: text(&r.traceparent),
        user_agent: text(&r.user_agent),
    };
    if serde_json::to_writer(&mut *out, &line).is_ok() {
        out.push(b'\n');
    }
}

/// Envoy's response flag for a Trellis reason (`-`: none, as Envoy writes it).
pub(crate) fn response_flags(reason: Option<&str>) -> &'static str {
    match reason {
        None => "-",
        Some("no_healthy_endpoints" | "no_endpoints") => "UH",
        Some(
            "upstream_connect_failure"
            | "upstream_tls_failure"
            | "app_unavailable"
            | "connect_failed",
        ) => "UF",
        Some("circuit_open") => "UO",
        Some("no_route" | "unknown_service" | "no_authority") => "NR",
        Some("upstream_timeout") => "UT",
        Some("retry_budget_exhausted") => "URX",
        Some("rate_limited") => "RL",
        Some("upstream_error" | "app_error") => "UR",
        Some("idle_timeout") => "SI",
        Some("bad_path" | "bad_request") => "DPE",
        Some(_) => "-",
    }
}

/// `t` as RFC 3339 UTC with milliseconds, e.g. `2026-12-03T19:07:53.123Z`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}
