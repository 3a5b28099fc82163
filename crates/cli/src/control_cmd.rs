//! `trellis control`: runs the control plane until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use trellis_control::ca::{CaConfig, OperatorRoot};
use trellis_control::{BoundAddrs, ControlConfig, StartupError};

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
    /// SPIFFE trust domain: workloads get `spiffe://<trust-domain>/ns/<namespace>/svc/<service>`.
    #[arg(long, default_value = trellis_control::ca::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Lifetime of issued workload certificates (at least 1m).
    #[arg(long, default_value = "24h", value_parser = trellis_model::parse_duration)]
    pub cert_ttl: std::time::Duration,
    /// Sign with this operator root CA certificate (PEM) instead of the stored or generated
    /// root; the certificate joins the stored trust bundle. Needs --ca-key.
    #[arg(long, requires = "ca_key", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// The PKCS#8 PEM private key of --ca-cert.
    #[arg(long, requires = "ca_cert", value_name = "FILE")]
    pub ca_key: Option<PathBuf>,
}

/// Exit code for a startup configuration the operator must fix (unusable data dir, busy port,
/// unusable CA files).
const EXIT_BAD_CONFIG: u8 = 2;

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = ControlConfig {
        data_dir: args.data_dir,
        http_addr: args.http_addr,
        grpc_addr: args.grpc_addr,
        restart_grace: args.restart_grace,
        remove_after: args.remove_after,
        push_debounce: args.push_debounce,
        ca: CaConfig {
            trust_domain: args.trust_domain,
            cert_ttl: args.cert_ttl,
            operator_root: args
                .ca_cert
                .zip(args.ca_key)
                .map(|(cert, key)| OperatorRoot { cert, key }),
        },
    };
    let ready = |bound: BoundAddrs| {
        let mut fields = serde_json::Map::new();
        fields.insert("http".into(), bound.http.to_string().into());
        fields.insert("grpc".into(), bound.grpc.to_string().into());
        crate::ready::announce("control", fields);
    };
    match trellis_control::run(config, ready, shutdown_signal()).await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.downcast_ref::<StartupError>().is_some() => {
            // A StartupError's message already includes its cause.
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
