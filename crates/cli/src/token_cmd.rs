//! `trellis token create`: asks the control plane for a join token that lets one workload
//! (a service in a namespace) get its certificate (docs/API.md, "Workload identity").
//!
//! The token goes to stdout alone, so `TOKEN=$(trellis token create --service catalog)` works;
//! what it allows goes to stderr. `-o json` prints the API's answer instead.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Create a join token for one service's workload identity.
    Create(CreateArgs),
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// The service the token's holder may act as.
    #[arg(long)]
    pub service: String,
    /// The service's namespace.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// How long the token may be used (e.g. 10m, 24h).
    #[arg(long, default_value = "24h", value_parser = trellis_model::parse_duration)]
    pub ttl: Duration,
    /// Control plane admin API.
    #[arg(
        long,
        env = "TRELLIS_CONTROL",
        default_value = "http://127.0.0.1:15080"
    )]
    pub control: String,
    /// PEM roots that verify an https:// control plane.
    #[arg(long, env = "TRELLIS_CONTROL_CA", value_name = "FILE")]
    pub control_ca: Option<std::path::PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The token alone on stdout.
    Text,
    Json,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Create(a) => create(a).await,
    }
}

async fn create(args: CreateArgs) -> anyhow::Result<ExitCode> {
    let ttl_ms = u64::try_from(args.ttl.as_millis()).unwrap_or(u64::MAX);
    let url = format!("{}/v1/tokens", args.control.trim_end_matches('/'));
    let client = match crate::client::http_client(
        &args.control,
        args.control_ca.as_deref(),
        Duration::from_secs(10),
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let body = json!({ "service": args.service, "namespace": args.namespace, "ttl_ms": ttl_ms });
    let resp = match client.post(&url).json(&body).send().await {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "error: cannot reach the control plane at {} ({}); is `trellis control` \
                 running? (set --control or TRELLIS_CONTROL; an https:// one needs \
                 --control-ca)",
                args.control,
                trellis_proxy::control_tls::error_chain(&e)
            );
            return Ok(ExitCode::from(1));
        }
    };
    let status = resp.status();
    let text = resp
        .text()
        .await
        .with_context(|| format!("POST {url}: reading the answer"))?;
    let answer: Option<Value> = serde_json::from_str(&text).ok();
    if !status.is_success() {
        let reason = answer
            .as_ref()
            .and_then(|v| v.get("error"))
            .and_then(Value::as_str)
            .map_or_else(|| format!("{status}: {}", text.trim()), str::to_string);
        eprintln!("error: {reason}");
        return Ok(ExitCode::from(1));
    }
    let answer = answer.with_context(|| format!("POST {url}: the answer is not JSON: {text}"))?;
    if args.output == Format::Json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(ExitCode::SUCCESS);
    }
    let field = |k: &str| {
        answer
            .get(k)
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
    };
    let token = field("token").with_context(|| format!("POST {url}: no `token` in {text}"))?;
    println!("{token}");
    eprintln!(
        "join token for {} (valid {}, until unix ms {})",
        field("spiffe_id").unwrap_or_default(),
        trellis_model::format_duration(args.ttl),
        field("expires_at_ms").unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}
