//! `trellis proxy`: runs a sidecar until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::process::ExitCode;

use trellis_proxy::{BoundAddrs, JoinToken, ProxyConfig, StartupError, Upstream};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The service this sidecar's app belongs to.
    #[arg(long)]
    pub service: String,
    /// Instance id (default: `<service>-<random>`).
    #[arg(long)]
    pub instance_id: Option<String>,
    /// The local app's port (on 127.0.0.1), where inbound traffic is forwarded.
    #[arg(long)]
    pub app_port: u16,
    /// Protocol the app speaks (`tcp`: raw byte streams, see docs/RESOURCES.md).
    #[arg(long, value_enum, default_value_t = AppProtocol::Http)]
    pub app_protocol: AppProtocol,
    /// A TCP service the app reaches on a local port, repeatable: `--upstream db=5432`
    /// (127.0.0.1; `db=IP:PORT` to bind elsewhere; port 0 picks one, shown in the ready line).
    #[arg(long = "upstream", value_name = "SERVICE=PORT", value_parser = parse_upstream)]
    pub upstreams: Vec<Upstream>,
    /// Control plane admin API, e.g. `http://127.0.0.1:15080`. The xDS address is read from its
    /// `/v1/bootstrap`.
    #[arg(long, default_value = "http://127.0.0.1:15080")]
    pub control: String,
    /// PEM roots that verify an https:// control plane (with `trellis control --tls`, its
    /// `<data-dir>/trust-bundle.pem`); read again on every reconnect.
    #[arg(long, env = "TRELLIS_CONTROL_CA", value_name = "FILE")]
    pub control_ca: Option<std::path::PathBuf>,
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
    /// Outbound listener: the app sends its calls here (as an HTTP proxy, or with Host naming the service).
    #[arg(long, default_value = "127.0.0.1:15001")]
    pub outbound_addr: SocketAddr,
    /// Inbound listener: other sidecars send this app's traffic here.
    #[arg(long, default_value = "0.0.0.0:15006")]
    pub inbound_addr: SocketAddr,
    /// Address registered for this instance (what other sidecars connect to).
    #[arg(long, default_value = "127.0.0.1")]
    pub advertise_ip: std::net::IpAddr,
    /// Instance label, repeatable: `--label version=v1`.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    #[arg(long)]
    pub zone: Option<String>,
    /// Instance weight for the Weighted algorithm, 1..=128.
    #[arg(long, default_value_t = 1)]
    pub weight: u32,
    /// Heartbeat TTL: the instance turns unhealthy after this long without a heartbeat.
    #[arg(long, default_value = "10s", value_parser = trellis_model::parse_duration)]
    pub ttl: std::time::Duration,
    /// On SIGTERM, wait at most this long for in-flight requests.
    #[arg(long, default_value = "10s", value_parser = trellis_model::parse_duration)]
    pub drain_timeout: std::time::Duration,
    /// Close an HTTP/1.1 connection that goes this long with no request in progress and no
    /// complete new request head (a client sending its head too slowly, or an idle keep-alive
    /// connection). `0s`: never.
    #[arg(long, default_value = "30s", value_parser = trellis_model::parse_duration)]
    pub request_head_timeout: std::time::Duration,
    /// Join token (from `trellis token create --service <name>`): the sidecar obtains its mTLS
    /// workload certificate with it before registering. Without a token (or --join-token-file)
    /// the sidecar is plaintext-only and its inbound listener refuses connections unless the
    /// service is PERMISSIVE.
    #[arg(long, env = "TRELLIS_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// Re-read the mesh trust bundle this often; a new signing root in it makes the sidecar
    /// renew its certificate at once (root rotation).
    #[arg(long, default_value = "60s", value_parser = trellis_model::parse_duration)]
    pub trust_bundle_refresh: std::time::Duration,
    /// Check the app: `http:/PATH` (2xx/3xx passing, 429 warning, else critical), `tcp`
    /// (connect), `grpc` or `grpc:SERVICE` (grpc.health.v1.Health/Check; SERVING passing).
    /// The verdict rides on every heartbeat; only passing instances are endpoints.
    #[arg(long, value_name = "KIND[:ARG]", value_parser = parse_probe)]
    pub health_check: Option<trellis_proxy::health::Probe>,
    /// How often the app is checked.
    #[arg(long, default_value = "5s", value_parser = trellis_model::parse_duration, requires = "health_check")]
    pub health_interval: std::time::Duration,
    /// How long one check may take (at most the interval).
    #[arg(long, default_value = "1s", value_parser = trellis_model::parse_duration, requires = "health_check")]
    pub health_timeout: std::time::Duration,
    /// Consecutive passes before a failing app is passing again (1..=100).
    #[arg(long, default_value_t = 2, requires = "health_check")]
    pub healthy_threshold: u32,
    /// Consecutive failures before a passing app is critical (1..=100).
    #[arg(long, default_value_t = 3, requires = "health_check")]
    pub unhealthy_threshold: u32,
    /// Write an access log: one JSON object per line for every inbound and outbound HTTP
    /// request and every TCP connection, appended to FILE, or `-` for stdout (docs/API.md,
    /// "Access log"). Off by default.
    #[arg(long, env = "TRELLIS_ACCESS_LOG", value_name = "FILE|-", value_parser = parse_access_log)]
    pub access_log: Option<trellis_proxy::AccessLogTarget>,
    /// Read the join token from this file (e.g. a mounted secret) instead.
    #[arg(long, value_name = "FILE", conflicts_with = "join_token")]
    pub join_token_file: Option<std::path::PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppProtocol {
    Http,
    Http2,
    Grpc,
    Tcp,
}

fn parse_upstream(s: &str) -> Result<Upstream, String> {
    s.parse()
}

fn parse_access_log(s: &str) -> Result<trellis_proxy::AccessLogTarget, String> {
    s.parse()
}

fn parse_probe(s: &str) -> Result<trellis_proxy::health::Probe, String> {
    s.parse()
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{s}`: expected KEY=VALUE")),
    }
}

/// Exit code for a startup configuration the operator must fix (bad flag, busy port).
const EXIT_BAD_CONFIG: u8 = 2;

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let join_token = match (&args.join_token, &args.join_token_file) {
        (Some(t), _) => Some(JoinToken::new(t)),
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(t) => Some(JoinToken::new(&t)),
            Err(e) => {
                eprintln!(
                    "error: --join-token-file {}: cannot read it: {e} (the file should hold the \
                     token printed by `trellis token create`)",
                    path.display()
                );
                return Ok(ExitCode::from(EXIT_BAD_CONFIG));
            }
        },
        (None, None) => None,
    };
    let instance_id = args
        .instance_id
        .unwrap_or_else(|| format!("{}-{:08x}", args.service, rand::random::<u32>()));
    let config = ProxyConfig {
        service: args.service,
        instance_id: instance_id.clone(),
        app_port: args.app_port,
        app_protocol: match args.app_protocol {
            AppProtocol::Http => trellis_model::Protocol::Http,
            AppProtocol::Http2 => trellis_model::Protocol::Http2,
            AppProtocol::Grpc => trellis_model::Protocol::Grpc,
            AppProtocol::Tcp => trellis_model::Protocol::Tcp,
        },
        control_url: args.control,
        control_ca: args.control_ca,
        admin_addr: args.admin_addr,
        outbound_addr: args.outbound_addr,
        inbound_addr: args.inbound_addr,
        advertise_ip: args.advertise_ip,
        labels: args.labels.into_iter().collect(),
        zone: args.zone,
        weight: args.weight,
        ttl: args.ttl,
        drain_timeout: args.drain_timeout,
        request_head_timeout: args.request_head_timeout,
        join_token,
        trust_bundle_refresh: args.trust_bundle_refresh,
        upstreams: args.upstreams,
        health_check: args
            .health_check
            .map(|probe| trellis_proxy::health::HealthCheckConfig {
                probe,
                interval: args.health_interval,
                timeout: args.health_timeout,
                thresholds: trellis_proxy::health::Thresholds {
                    healthy: args.healthy_threshold,
                    unhealthy: args.unhealthy_threshold,
                },
            }),
        access_log: args.access_log,
    };
    let ready = move |bound: BoundAddrs| {
        let mut fields = serde_json::Map::new();
        fields.insert("admin".into(), bound.admin.to_string().into());
        fields.insert("outbound".into(), bound.outbound.to_string().into());
        fields.insert("inbound".into(), bound.inbound.to_string().into());
        fields.insert("instance_id".into(), instance_id.into());
        if !bound.upstreams.is_empty() {
            let upstreams: serde_json::Map<_, _> = bound
                .upstreams
                .iter()
                .map(|(service, addr)| (service.clone(), addr.to_string().into()))
                .collect();
            fields.insert("upstreams".into(), upstreams.into());
        }
        crate::ready::announce("proxy", fields);
    };
    match trellis_proxy::run(config, ready, shutdown_signal()).await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.downcast_ref::<StartupError>().is_some() => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(EXIT_BAD_CONFIG))
        }
        Err(e) => Err(e),
    }
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; stopping on Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
