//! `trellis control`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Directory of the embedded store (created if missing).
    #[arg(long, default_value = "./trellis-data")]
    pub data_dir: PathBuf,
    /// Admin HTTP/JSON API (and /metrics).
    #[arg(long, default_value = "127.0.0.1:15080")]
    pub http_addr: SocketAddr,
    /// xDS (ADS) gRPC server.
    #[arg(long, default_value = "127.0.0.1:15010")]
    pub grpc_addr: SocketAddr,
    /// After a start, instances loaded from the store count as healthy for this long even
    /// without a heartbeat, so a restart never evicts live instances.
    #[arg(long, default_value = "10s", value_parser = trellis_model::parse_duration)]
    pub restart_grace: std::time::Duration,
    /// An unhealthy instance is removed from the registry after this long without a heartbeat.
    #[arg(long, default_value = "60s", value_parser = trellis_model::parse_duration)]
    pub remove_after: std::time::Duration,
    /// Changes are pushed to proxies after this quiet period (debounce).
    #[arg(long, default_value = "100ms", value_parser = trellis_model::parse_duration)]
    pub push_debounce: std::time::Duration,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let _ = args;
    anyhow::bail!("not yet wired")
}
