//! The client commands: `apply`, `delete`, `get`, `describe`. They talk to the control plane's
//! HTTP API (docs/API.md) and print tables or JSON.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Target {
    /// Control plane admin API.
    #[arg(
        long,
        global = true,
        env = "TRELLIS_CONTROL",
        default_value = "http://127.0.0.1:15080"
    )]
    pub control: String,
    /// Print JSON instead of a table.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct ApplyArgs {
    /// YAML file (`-` for stdin).
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
    #[command(flatten)]
    pub target: Target,
}

#[derive(clap::Args, Debug)]
pub struct DeleteArgs {
    /// Resource kind (service, trafficpolicy, httproute).
    pub kind: String,
    pub name: String,
    #[command(flatten)]
    pub target: Target,
}

#[derive(clap::Args, Debug)]
pub struct GetArgs {
    /// What to list: services, instances, proxies, or a resource kind (httproutes, trafficpolicies, ...).
    pub what: String,
    #[command(flatten)]
    pub target: Target,
}

#[derive(clap::Args, Debug)]
pub struct DescribeArgs {
    /// Only `service` for now.
    pub kind: String,
    pub name: String,
    #[command(flatten)]
    pub target: Target,
}

pub async fn apply(args: ApplyArgs) -> anyhow::Result<ExitCode> {
    let _ = args;
    anyhow::bail!("not yet wired")
}

pub async fn delete(args: DeleteArgs) -> anyhow::Result<ExitCode> {
    let _ = args;
    anyhow::bail!("not yet wired")
}

pub async fn get(args: GetArgs) -> anyhow::Result<ExitCode> {
    let _ = args;
    anyhow::bail!("not yet wired")
}

pub async fn describe(args: DescribeArgs) -> anyhow::Result<ExitCode> {
    let _ = args;
    anyhow::bail!("not yet wired")
}
