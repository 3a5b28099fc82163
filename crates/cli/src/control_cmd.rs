//! `trellis control`: runs the control plane until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use trellis_control::ca::{CaConfig, OperatorRoot};
use trellis_control::tls::ServingTls;
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
    /// Self-preservation: when many instances miss their heartbeats at once (the control plane
    /// cut off from them), at most this fraction of all instances is marked unhealthy; the rest
    /// stay endpoints until their heartbeats return. 1 turns it off. Meshes of fewer than 3
    /// instances are exempt.
    #[arg(long, default_value_t = 0.5, value_parser = parse_fraction)]
    pub max_eviction_fraction: f64,
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
    /// Serve the admin API and xDS over TLS 1.3 with a certificate from the mesh CA (renewed
    /// by itself, also when the signing root changes). Clients verify it with the trust bundle
    /// in `<data-dir>/trust-bundle.pem` (`trellis --control https://... --control-ca FILE`).
    #[arg(long, conflicts_with = "tls_cert")]
    pub tls: bool,
    /// A name or address the mesh-issued certificate covers, repeatable (default: localhost,
    /// 127.0.0.1, ::1 and the listen addresses).
    #[arg(long = "tls-san", requires = "tls", value_name = "NAME")]
    pub tls_sans: Vec<String>,
    /// Serve TLS with the operator's certificate chain (PEM) instead. Needs --tls-key.
    #[arg(long, requires = "tls_key", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("`{s}`: expected a fraction from 0 to 1, e.g. 0.5")),
    }
}

/// Exit code for a startup configuration the operator must fix (unusable data dir, busy port,
/// unusable CA files).
const EXIT_BAD_CONFIG: u8 = 2;

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let tls = match (args.tls, args.tls_cert, args.tls_key) {
        (_, Some(cert), Some(key)) => ServingTls::Files { cert, key },
        (true, _, _) => ServingTls::Mesh {
            names: args.tls_sans,
        },
        _ => ServingTls::Off,
    };
    let scheme = if tls == ServingTls::Off {
        "http"
    } else {
        "https"
    };
    let bundle = args.data_dir.join(trellis_control::tls::TRUST_BUNDLE_FILE);
    let config = ControlConfig {
        data_dir: args.data_dir,
        http_addr: args.http_addr,
        grpc_addr: args.grpc_addr,
        restart_grace: args.restart_grace,
        remove_after: args.remove_after,
        push_debounce: args.push_debounce,
        max_eviction_fraction: args.max_eviction_fraction,
        ca: CaConfig {
            trust_domain: args.trust_domain,
            cert_ttl: args.cert_ttl,
            operator_root: args
                .ca_cert
                .zip(args.ca_key)
                .map(|(cert, key)| OperatorRoot { cert, key }),
        },
        tls,
    };
    let ready = |bound: BoundAddrs| {
        let mut fields = serde_json::Map::new();
        fields.insert("http".into(), bound.http.to_string().into());
        fields.insert("grpc".into(), bound.grpc.to_string().into());
        fields.insert("url".into(), format!("{scheme}://{}", bound.http).into());
        fields.insert("trust_bundle".into(), bundle.display().to_string().into());
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
