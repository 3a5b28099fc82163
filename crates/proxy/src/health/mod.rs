//! The sidecar's health check of its own app (`--health-check`): an HTTP GET, a TCP connect
//! or the gRPC Health Checking Protocol, every `interval`, each bounded by `timeout`. Results
//! go through a threshold state machine ([`state`]) so the control plane only hears about a
//! change after `healthy_threshold` / `unhealthy_threshold` consecutive results, which keeps a
//! flapping app from flapping the endpoint set. The current verdict is published on a watch
//! channel that the registrar sends with every heartbeat (and at once when it changes).

mod probe;
mod state;
pub(crate) mod upstream;

#[cfg(test)]
mod tests;

use std::time::Duration;

use tokio::sync::watch;
use trellis_model::{CheckReport, CheckStatus, Protocol};

pub(crate) use state::CheckState;
pub use state::Thresholds;

/// What is probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// `GET <path>`: without `expected`, 2xx/3xx passing, 429 warning, anything else
    /// critical (the app check); with it, a status in one of its inclusive ranges passing,
    /// anything else critical (Envoy's `expected_statuses`, for upstream checks).
    Http {
        path: String,
        expected: Option<Vec<(u16, u16)>>,
    },
    /// A TCP connect to the app port.
    Tcp,
    /// `grpc.health.v1.Health/Check` for `service` (empty: the server as a whole).
    Grpc { service: String },
}

impl std::str::FromStr for Probe {
    type Err = String;

    /// `http:/healthz`, `tcp`, `grpc` or `grpc:my.pkg.Service`.
    fn from_str(s: &str) -> Result<Self, String> {
        let hint = "expected `http:/PATH` (e.g. `http:/healthz`), `tcp`, `grpc` or `grpc:SERVICE`";
        let (kind, arg) = match s.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (s, None),
        };
        match (kind, arg) {
            ("tcp", None) => Ok(Probe::Tcp),
            ("http", Some(path)) => {
                let ok = path.starts_with('/')
                    && path.len() <= 1024
                    && http::uri::PathAndQuery::try_from(path).is_ok();
                if !ok {
                    return Err(format!(
                        "`{s}`: the path `{path}` must start with `/` and be a valid request path; {hint}"
                    ));
                }
                Ok(Probe::Http {
                    path: path.to_string(),
                    expected: None,
                })
            }
            ("http", None) => Err(format!("`{s}`: the HTTP check needs a path; {hint}")),
            ("grpc", arg) => {
                let service = arg.unwrap_or_default();
                let ok = service.len() <= 256
                    && service
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
                if !ok {
                    return Err(format!(
                        "`{s}`: `{service}` is not a gRPC service name (letters, digits, `.`, `_`, `-`); {hint}"
                    ));
                }
                Ok(Probe::Grpc {
                    service: service.to_string(),
                })
            }
            ("tcp", Some(_)) => Err(format!("`{s}`: the TCP check takes no argument; {hint}")),
            _ => Err(format!("`{s}`: unknown check kind `{kind}`; {hint}")),
        }
    }
}

/// `--health-check` and its timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    pub thresholds: Thresholds,
}

impl HealthCheckConfig {
    /// Every problem, each naming its flag.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let ms = |d: Duration| d.as_millis();
        if !(10..=3_600_000).contains(&ms(self.interval)) {
            out.push(format!(
                "--health-interval = {:?}: must be within 10ms..=1h",
                self.interval
            ));
        }
        if ms(self.timeout) < 1 {
            out.push(format!(
                "--health-timeout = {:?}: must be at least 1ms",
                self.timeout
            ));
        } else if self.timeout > self.interval {
            out.push(format!(
                "--health-timeout = {:?} is longer than --health-interval = {:?}: a check must end before the next one starts",
                self.timeout, self.interval
            ));
        }
        for (flag, n) in [
            ("--healthy-threshold", self.thresholds.healthy),
            ("--unhealthy-threshold", self.thresholds.unhealthy),
        ] {
            if !(1..=100).contains(&n) {
                out.push(format!("{flag} = {n}: must be within 1..=100"));
            }
        }
        out
    }

    /// `http /healthz every 1s (2/3)`: shown with the instance.
    pub fn describe(&self) -> String {
        let what = match &self.probe {
            Probe::Http { path, .. } => format!("http {path}"),
            Probe::Tcp => "tcp".to_string(),
            Probe::Grpc { service } if service.is_empty() => "grpc".to_string(),
            Probe::Grpc { service } => format!("grpc {service}"),
        };
        format!(
            "{what} every {} (healthy after {}, unhealthy after {})",
            trellis_model::format_duration(self.interval),
            self.thresholds.healthy,
            self.thresholds.unhealthy
        )
    }
}

/// One probe's result, before thresholds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub status: CheckStatus,
    pub output: String,
}

/// The report before the first check has run: critical (as Consul and Envoy start hosts).
pub(crate) fn initial_report(config: &HealthCheckConfig) -> CheckReport {
    CheckReport {
        status: CheckStatus::Critical,
        output: "no check has run yet".to_string(),
        kind: config.describe(),
    }
}

/// The check's outcome, or critical when it takes longer than `timeout`.
pub(crate) async fn within(
    timeout: Duration,
    check: impl std::future::Future<Output = Outcome>,
) -> Outcome {
    tokio::time::timeout(timeout, check)
        .await
        .unwrap_or_else(|_| Outcome {
            status: CheckStatus::Critical,
            output: format!(
                "timed out after {}",
                trellis_model::format_duration(timeout)
            ),
        })
}

/// Checks the app every interval forever, publishing the thresholded verdict on `tx`.
pub(crate) async fn run(
    config: HealthCheckConfig,
    app_port: u16,
    app_protocol: Protocol,
    tx: watch::Sender<CheckReport>,
) {
    let mut state = CheckState::new(config.thresholds);
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let kind = config.describe();
    loop {
        tick.tick().await;
        let outcome = within(
            config.timeout,
            probe::probe(&config.probe, app_port, app_protocol),
        )
        .await;
        let output = trellis_model::sanitize_output(&outcome.output);
        if let Some(status) = state.observe(outcome.status) {
            tracing::info!(%status, output = %output, "app health check changed");
        }
        let Some(status) = state.status() else {
            continue;
        };
        tx.send_if_modified(|r| {
            let changed = r.status != status;
            r.status = status;
            r.output.clone_from(&output);
            r.kind.clone_from(&kind);
            changed
        });
    }
}
