//! `trellis-proxy`: the sidecar alone — the same flags and behaviour as `trellis proxy`, in a
//! binary that links only the data plane (the one to put in a sidecar image).

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use trellis_cli::{proxy_cmd, startup};

#[derive(Parser, Debug)]
#[command(
    name = "trellis-proxy",
    version,
    about = "Trellis sidecar proxy (the same as `trellis proxy`)"
)]
struct Cli {
    #[command(flatten)]
    log: startup::LogArgs,
    #[command(flatten)]
    proxy: proxy_cmd::Args,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.log.init();
    startup::block_on(proxy_cmd::run(cli.proxy))
}
