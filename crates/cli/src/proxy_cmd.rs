//! `trellis proxy`.

use std::net::SocketAddr;
use std::process::ExitCode;

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
    /// Protocol the app speaks.
    #[arg(long, value_enum, default_value_t = AppProtocol::Http)]
    pub app_protocol: AppProtocol,
    /// Control plane admin API, e.g. `http://127.0.0.1:15080`. The xDS address is read from its
    /// `/v1/bootstrap`.
    #[arg(long, default_value = "http://127.0.0.1:15080")]
    pub control: String,
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
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppProtocol {
    Http,
    Http2,
    Grpc,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{s}`: expected KEY=VALUE")),
    }
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let _ = args;
    anyhow::bail!("not yet wired")
}
