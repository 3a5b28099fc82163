//! The sidecar's configuration: everything `trellis proxy` needs, decided once at start.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use trellis_model::Protocol;

/// What one sidecar needs to run. Built by the CLI from flags; no other configuration source.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The service this sidecar's app belongs to.
    pub service: String,
    /// This instance's id (unique within the service).
    pub instance_id: String,
    /// The local app's port on 127.0.0.1.
    pub app_port: u16,
    /// Protocol the app speaks; `Http2`/`Grpc` make the inbound side talk h2c to the app.
    pub app_protocol: Protocol,
    /// Control plane HTTP API base URL, e.g. `http://127.0.0.1:15080`.
    pub control_url: String,
    /// PEM roots that verify an `https://` control plane (its `<data-dir>/trust-bundle.pem`).
    pub control_ca: Option<std::path::PathBuf>,
    pub admin_addr: SocketAddr,
    pub outbound_addr: SocketAddr,
    pub inbound_addr: SocketAddr,
    /// Address registered for this instance (other sidecars connect to it).
    pub advertise_ip: IpAddr,
    pub labels: BTreeMap<String, String>,
    pub zone: Option<String>,
    pub weight: u32,
    /// Heartbeat TTL; heartbeats are sent every `ttl / 3`.
    pub ttl: Duration,
    /// How long in-flight requests may take to finish on shutdown.
    pub drain_timeout: Duration,
    /// An HTTP/1.1 connection that goes this long with no request in progress and no complete
    /// new request head is closed (slowloris protection; idle keep-alive connections too).
    /// Zero: never.
    pub request_head_timeout: Duration,
    /// Join token for this workload's mTLS certificate (`trellis token create`). `None`: a
    /// plaintext-only sidecar, whose STRICT inbound listener refuses every connection.
    pub join_token: Option<JoinToken>,
    /// How often the trust bundle is re-read from the control plane.
    pub trust_bundle_refresh: Duration,
    /// Local ports for TCP services (`--upstream db=5432`): each connection accepted on one is
    /// forwarded as a byte stream to an endpoint of that service (crate::tcp::outbound).
    pub upstreams: Vec<Upstream>,
    /// The sidecar's check of its app (`--health-check`); `None`: passing while heartbeating.
    pub health_check: Option<crate::health::HealthCheckConfig>,
    /// Where the JSON access log goes (`--access-log`); `None`: no access log.
    pub access_log: Option<crate::accesslog::AccessLogTarget>,
}

/// One `--upstream <service>=<port>`: a TCP service the app reaches on a local port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// The destination service (its cluster).
    pub service: String,
    /// Where the app connects (127.0.0.1:<port>; port 0 picks one, reported when ready).
    pub addr: SocketAddr,
}

impl std::str::FromStr for Upstream {
    type Err = String;

    /// `<service>=<port>` (bound on 127.0.0.1) or `<service>=<ip>:<port>`.
    fn from_str(s: &str) -> Result<Self, String> {
        let hint =
            "expected SERVICE=PORT, e.g. `db=5432` (or SERVICE=IP:PORT; port 0 picks a free one)";
        let Some((service, target)) = s.split_once('=') else {
            return Err(format!("`{s}`: {hint}"));
        };
        if let Err(e) = trellis_model::check_dns_label(service) {
            return Err(format!("`{s}`: the service name {e}; {hint}"));
        }
        let addr = match target.parse::<u16>() {
            Ok(port) => SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port)),
            Err(_) => target.parse::<SocketAddr>().map_err(|_| {
                format!("`{s}`: `{target}` is not a port (0-65535) or IP:PORT; {hint}")
            })?,
        };
        Ok(Upstream {
            service: service.to_string(),
            addr,
        })
    }
}

/// A join token; never printed (its `Debug` is redacted).
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken(String);

impl JoinToken {
    /// A token as given by the operator (surrounding whitespace, e.g. a file's newline, removed).
    pub fn new(token: &str) -> Self {
        JoinToken(token.trim().to_string())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JoinToken(<redacted>)")
    }
}

impl ProxyConfig {
    /// The xDS node id: `<service>~<instance-id>` (docs/XDS.md).
    pub fn node_id(&self) -> String {
        format!("{}~{}", self.service, self.instance_id)
    }

    /// Checks what the control plane would reject anyway, so a bad flag fails at start.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut errors = Vec::new();
        if self.service.is_empty() {
            errors.push("service: must not be empty".to_string());
        }
        if self.instance_id.is_empty() {
            errors.push("instance_id: must not be empty".to_string());
        }
        if !(1..=128).contains(&self.weight) {
            errors.push(format!("weight = {}: must be within 1..=128", self.weight));
        }
        let ttl_ms = self.ttl.as_millis();
        if !(100..=3_600_000).contains(&ttl_ms) {
            errors.push(format!(
                "ttl = {ttl_ms}ms: must be within 100ms..=1h (the control plane's limits)"
            ));
        }
        if !(self.control_url.starts_with("http://") || self.control_url.starts_with("https://")) {
            errors.push(format!(
                "control = `{}`: expected a URL such as http://127.0.0.1:15080",
                self.control_url
            ));
        }
        if self.trust_bundle_refresh < Duration::from_millis(100) {
            errors.push(format!(
                "trust_bundle_refresh = {:?}: must be at least 100ms",
                self.trust_bundle_refresh
            ));
        }
        if self.join_token.as_ref().is_some_and(|t| t.0.is_empty()) {
            errors.push(
                "join token: empty; create one with `trellis token create --service <name>`"
                    .to_string(),
            );
        }
        if let Some(h) = &self.health_check {
            errors.extend(h.problems());
            if self.app_protocol == Protocol::Tcp && !matches!(h.probe, crate::health::Probe::Tcp) {
                errors.push(
                    "--health-check: the app speaks raw TCP (--app-protocol tcp): use `--health-check tcp`"
                        .to_string(),
                );
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for u in &self.upstreams {
            if !seen.insert(u.service.as_str()) {
                errors.push(format!(
                    "upstream `{}` is given twice: one local port per service",
                    u.service
                ));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("invalid proxy configuration: {}", errors.join("; "))
        }
    }
}

/// The addresses the listeners actually bound (ports resolved when configured as 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundAddrs {
    pub admin: SocketAddr,
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    /// Each `--upstream`'s service and the address it bound, in flag order.
    pub upstreams: Vec<(String, SocketAddr)>,
}
