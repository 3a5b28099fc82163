//! `Cluster.health_checks` → the active check of a cluster's endpoints, and
//! `common_lb_config.healthy_panic_threshold` (docs/XDS.md, "Active health checks"). One
//! check per cluster: HTTP (path, `expected_statuses`, `codec_client_type`), TCP (connect
//! only) or gRPC (`service_name`). Anything else is NACKed naming the field.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::HealthCheck;
use envoy_types::pb::envoy::config::core::v3::health_check::HealthChecker;
use envoy_types::pb::envoy::r#type::v3::CodecClientType;

use super::resilience::duration;
use crate::health::{HealthCheckConfig, Probe, Thresholds};

/// Envoy's default `healthy_panic_threshold`.
pub(crate) const DEFAULT_PANIC_THRESHOLD: u32 = 50;

/// A cluster's active health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ActiveCheck {
    pub config: HealthCheckConfig,
    /// The first check of an endpoint waits a random time below this.
    pub initial_jitter: Duration,
    /// HTTP checks travel as HTTP/2 (`codec_client_type: HTTP2`; gRPC always does).
    pub h2: bool,
}

/// The cluster's health check; `None` without `health_checks`.
pub(crate) fn active_check(c: &Cluster) -> Result<Option<ActiveCheck>, String> {
    match c.health_checks.as_slice() {
        [] => Ok(None),
        [hc] => check(hc)
            .map(Some)
            .map_err(|e| format!("health_checks[0].{e}")),
        more => Err(format!(
            "health_checks has {} entries: only one check per cluster is supported",
            more.len()
        )),
    }
}

fn check(hc: &HealthCheck) -> Result<ActiveCheck, String> {
    let required = |field: &str, d: Option<&envoy_types::pb::google::protobuf::Duration>| {
        let d = d.ok_or_else(|| format!("{field} is required"))?;
        let d = duration(field, d)?;
        if d.is_zero() {
            return Err(format!("{field} must be positive"));
        }
        Ok(d)
    };
    let interval = required("interval", hc.interval.as_ref())?;
    let timeout = required("timeout", hc.timeout.as_ref())?;
    let threshold = |field: &str, v: Option<u32>| match v {
        None => Err(format!("{field} is required")),
        Some(n @ 1..=100) => Ok(n),
        Some(n) => Err(format!("{field} = {n}: must be within 1..=100")),
    };
    let thresholds = Thresholds {
        healthy: threshold(
            "healthy_threshold",
            hc.healthy_threshold.as_ref().map(|v| v.value),
        )?,
        unhealthy: threshold(
            "unhealthy_threshold",
            hc.unhealthy_threshold.as_ref().map(|v| v.value),
        )?,
    };
    let initial_jitter = match &hc.initial_jitter {
        Some(d) => duration("initial_jitter", d)?,
        None => Duration::ZERO,
    };
    let (probe, h2) = match &hc.health_checker {
        Some(HealthChecker::HttpHealthCheck(h)) => {
            let path_ok = h.path.starts_with('/')
                && h.path.len() <= 1024
                && http::uri::PathAndQuery::try_from(h.path.as_str()).is_ok();
            if !path_ok {
                return Err(format!(
                    "http_health_check.path = {:?}: must be a request path starting with `/`",
                    h.path.chars().take(100).collect::<String>()
                ));
            }
            if h.send.is_some() || !h.receive.is_empty() {
                return Err("http_health_check: send/receive payloads are not supported".into());
            }
            let mut expected = Vec::with_capacity(h.expected_statuses.len().max(1));
            for r in &h.expected_statuses {
                if !(100..600).contains(&r.start)
                    || !(101..=600).contains(&r.end)
                    || r.end <= r.start
                {
                    return Err(format!(
                        "http_health_check.expected_statuses: [{}, {}) is not a range of HTTP statuses (100..600)",
                        r.start, r.end
                    ));
                }
                expected.push((r.start as u16, (r.end - 1) as u16));
            }
            if expected.is_empty() {
                // Envoy's default: 200 only.
                expected.push((200, 200));
            }
            let h2 = match CodecClientType::try_from(h.codec_client_type) {
                Ok(CodecClientType::Http1) => false,
                Ok(CodecClientType::Http2) => true,
                _ => {
                    return Err(format!(
                        "http_health_check.codec_client_type = {}: only HTTP1 and HTTP2",
                        h.codec_client_type
                    ));
                }
            };
            (
                Probe::Http {
                    path: h.path.clone(),
                    expected: Some(expected),
                },
                h2,
            )
        }
        Some(HealthChecker::TcpHealthCheck(t)) => {
            if t.send.is_some() || !t.receive.is_empty() {
                return Err(
                    "tcp_health_check: send/receive payloads are not supported (connect only)"
                        .into(),
                );
            }
            (Probe::Tcp, false)
        }
        Some(HealthChecker::GrpcHealthCheck(g)) => {
            let ok = g.service_name.len() <= 256
                && g.service_name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !ok {
                return Err(format!(
                    "grpc_health_check.service_name = {:?}: not a gRPC service name",
                    g.service_name.chars().take(100).collect::<String>()
                ));
            }
            (
                Probe::Grpc {
                    service: g.service_name.clone(),
                },
                true,
            )
        }
        Some(HealthChecker::CustomHealthCheck(c)) => {
            return Err(format!(
                "custom_health_check `{}` is not supported (http, tcp or grpc)",
                c.name
            ));
        }
        None => return Err("health_checker is required (http, tcp or grpc)".into()),
    };
    Ok(ActiveCheck {
        config: HealthCheckConfig {
            probe,
            interval,
            timeout,
            thresholds,
        },
        initial_jitter,
        h2,
    })
}

/// `common_lb_config.healthy_panic_threshold` (percent), default 50.
pub(crate) fn panic_threshold(c: &Cluster) -> Result<u32, String> {
    match c
        .common_lb_config
        .as_ref()
        .and_then(|l| l.healthy_panic_threshold.as_ref())
    {
        None => Ok(DEFAULT_PANIC_THRESHOLD),
        Some(p) if (0.0..=100.0).contains(&p.value) => Ok(p.value.round() as u32),
        Some(p) => Err(format!(
            "common_lb_config.healthy_panic_threshold = {}: must be between 0 and 100",
            p.value
        )),
    }
}

#[cfg(test)]
mod tests;
