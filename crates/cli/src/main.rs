//! `trellis`: one binary for the control plane, the sidecar, the CLI and the demo.
//! This file only parses flags, sets up logging and dispatches; the work lives in the crates.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod client;
mod control_cmd;
mod demo;
mod proxy_cmd;
mod ready;
mod sample_app;
mod token_cmd;

#[derive(Parser, Debug)]
#[command(
    name = "trellis",
    version,
    about = "Trellis service mesh: control plane, sidecar proxy and CLI"
)]
struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info`, `trellis_proxy=debug`.
    #[arg(long, global = true, env = "TRELLIS_LOG", default_value = "info")]
    log: String,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the control plane (registry, config store, xDS server, admin API).
    Control(control_cmd::Args),
    /// Run a sidecar proxy next to an application.
    Proxy(proxy_cmd::Args),
    /// Apply resources from a YAML file (several documents allowed).
    Apply(client::ApplyArgs),
    /// Delete a resource.
    Delete(client::DeleteArgs),
    /// List resources, services, instances or proxies.
    Get(client::GetArgs),
    /// Show everything about one service.
    Describe(client::DescribeArgs),
    /// Manage join tokens for workload identity.
    Token(token_cmd::Args),
    /// Start a control plane, a sample application of three services with sidecars, and traffic.
    Demo(demo::Args),
    /// The demo's sample application (one HTTP service).
    #[command(hide = true)]
    SampleApp(sample_app::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log, cli.log_format);
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Control(a) => control_cmd::run(a).await,
            Command::Proxy(a) => proxy_cmd::run(a).await,
            Command::Apply(a) => client::apply(a).await,
            Command::Delete(a) => client::delete(a).await,
            Command::Get(a) => client::get(a).await,
            Command::Describe(a) => client::describe(a).await,
            Command::Token(a) => token_cmd::run(a).await,
            Command::Demo(a) => demo::run(a).await,
            Command::SampleApp(a) => sample_app::run(a).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// One worker thread per core the process may run on (taskset/cgroup limits included). With a
/// single core, a current-thread runtime: the same one thread, without cross-thread wake-ups
/// between the I/O driver and a worker (measured in docs/PERFORMANCE-NOTES.md).
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cores)
            .enable_all()
            .build()
    }
}

fn init_logging(filter: &str, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
