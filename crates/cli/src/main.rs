//! `trellis`: one binary for the control plane, the sidecar, the CLI and the demo.
//! This file only parses flags, sets up logging and dispatches; the work lives in the crates.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod client;
mod control_cmd;
mod demo;
mod sample_app;
mod token_cmd;

use trellis_cli::{proxy_cmd, ready, startup};

#[derive(Parser, Debug)]
#[command(
    name = "trellis",
    version,
    about = "Trellis service mesh: control plane, sidecar proxy and CLI"
)]
struct Cli {
    #[command(flatten)]
    log: startup::LogArgs,
    #[command(subcommand)]
    command: Command,
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
    cli.log.init();
    startup::block_on(async move {
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
    })
}
