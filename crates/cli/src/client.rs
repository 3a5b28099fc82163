//! The client commands: `apply`, `delete`, `get`, `describe`. They talk to the control plane's
//! HTTP API (docs/API.md) and print tables or JSON.
//!
//! This file holds the commands and the HTTP calls; [`table`] turns API answers into aligned
//! text. Every failure prints a message naming what went wrong and exits with code 1.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde_json::Value;
use trellis_model::{Kind, Resource};

mod resilience;
mod security;
mod table;
#[cfg(test)]
mod tests;

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
    /// PEM roots that verify an https:// control plane (`trellis control --tls` keeps them in
    /// `<data-dir>/trust-bundle.pem`); without it, the system's roots.
    #[arg(long, global = true, env = "TRELLIS_CONTROL_CA", value_name = "FILE")]
    pub control_ca: Option<std::path::PathBuf>,
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
    /// `service`, or `reason` (what an `x-trellis-reason` token means).
    pub kind: String,
    pub name: String,
    #[command(flatten)]
    pub target: Target,
}

/// A failed call, already worded for the user.
#[derive(Debug)]
enum CallError {
    /// Nothing answered at the address.
    Unreachable(String),
    /// Anything else (bad URL, unreadable answer...).
    Other(String),
}

/// An answer: its status and body text.
struct Answer {
    status: StatusCode,
    body: String,
}

impl Answer {
    fn json(&self) -> Result<Value, CallError> {
        serde_json::from_str(&self.body).map_err(|e| {
            CallError::Other(format!(
                "the control plane answered {} with something that is not JSON ({e}): {}",
                self.status,
                first_line(&self.body)
            ))
        })
    }

    /// The API's error sentences (`errors` when there are several, else `error`), or the body.
    fn error_lines(&self) -> Vec<String> {
        let parsed: Option<Value> = serde_json::from_str(&self.body).ok();
        if let Some(v) = parsed {
            if let Some(list) = v.get("errors").and_then(Value::as_array)
                && !list.is_empty()
            {
                return list.iter().map(table::text).collect();
            }
            if let Some(e) = v.get("error").and_then(Value::as_str) {
                return vec![e.to_string()];
            }
        }
        vec![format!("{}: {}", self.status, first_line(&self.body))]
    }
}

fn first_line(s: &str) -> &str {
    let line = s.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        "(empty body)"
    } else {
        line
    }
}

/// A client for the control plane at `control`: verified with the roots of `ca` when given
/// (and then only those), else plaintext or the system's roots.
pub fn http_client(
    control: &str,
    ca: Option<&std::path::Path>,
    timeout: Duration,
) -> Result<reqwest::Client, String> {
    let connect = Duration::from_secs(5);
    match ca {
        Some(_) => trellis_proxy::control_tls::ControlTrust::new(control, ca)?
            .http_client(connect, timeout),
        None => reqwest::Client::builder()
            .connect_timeout(connect)
            .timeout(timeout)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}")),
    }
}

/// The control plane's HTTP API.
struct Api {
    base: Url,
    http: reqwest::Client,
}

impl Api {
    fn new(target: &Target) -> Result<Api, CallError> {
        let mut raw = target.control.trim().to_string();
        if !raw.contains("://") {
            raw = format!("http://{raw}");
        }
        let base = Url::parse(&raw).map_err(|e| {
            CallError::Other(format!(
                "--control `{}` is not a URL ({e}): use e.g. http://127.0.0.1:15080",
                target.control
            ))
        })?;
        if base.scheme() != "http" && base.scheme() != "https" {
            return Err(CallError::Other(format!(
                "--control `{}`: expected an http:// or https:// URL",
                target.control
            )));
        }
        let http = http_client(
            base.as_str(),
            target.control_ca.as_deref(),
            Duration::from_secs(30),
        )
        .map_err(CallError::Other)?;
        Ok(Api { base, http })
    }

    /// The URL of `segments` under the base, each segment percent-encoded.
    fn url(&self, segments: &[&str]) -> Result<Url, CallError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| {
                CallError::Other(format!("--control `{}` cannot be a base URL", self.base))
            })?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    async fn call(
        &self,
        method: Method,
        url: Url,
        body: Option<String>,
    ) -> Result<Answer, CallError> {
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            req = req.header("content-type", "application/yaml").body(b);
        }
        let resp = req.send().await.map_err(|e| self.transport_error(&e))?;
        let status = resp.status();
        let body = resp.text().await.map_err(|e| self.transport_error(&e))?;
        Ok(Answer { status, body })
    }

    async fn get(&self, segments: &[&str]) -> Result<Answer, CallError> {
        let url = self.url(segments)?;
        self.call(Method::GET, url, None).await
    }

    /// GETs a JSON document that must answer 200.
    async fn get_ok(&self, segments: &[&str]) -> Result<Value, CallError> {
        let answer = self.get(segments).await?;
        if answer.status != StatusCode::OK {
            return Err(CallError::Other(answer.error_lines().join("\n")));
        }
        answer.json()
    }

    fn transport_error(&self, e: &reqwest::Error) -> CallError {
        let msg = trellis_proxy::control_tls::error_chain(e);
        if msg.contains("certificate") || msg.contains("UnknownIssuer") {
            CallError::Other(format!(
                "the control plane at {} is not trusted: {msg}\nhint: pass --control-ca (or TRELLIS_CONTROL_CA) with its trust bundle, `<data-dir>/trust-bundle.pem` of `trellis control --tls`",
                self.base
            ))
        } else if e.is_connect() || e.is_timeout() {
            CallError::Unreachable(format!(
                "cannot reach the control plane at {}: {msg}\nhint: is `trellis control` running? Point --control (or TRELLIS_CONTROL) at its HTTP address",
                self.base
            ))
        } else {
            CallError::Other(format!(
                "talking to the control plane at {}: {msg}",
                self.base
            ))
        }
    }
}

/// Prints the error and gives exit code 1.
fn fail(e: CallError) -> ExitCode {
    match e {
        CallError::Unreachable(m) | CallError::Other(m) => eprintln!("error: {m}"),
    }
    ExitCode::from(1)
}

fn print_json(v: &Value) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(_) => println!("{v}"),
    }
}

/// Reads the file (or stdin for `-`) and names it as errors will show it.
fn read_source(path: &std::path::Path) -> Result<(String, String), String> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read stdin: {e}"))?;
        return Ok(("-".to_string(), text));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text =
        String::from_utf8(bytes).map_err(|e| format!("{}: not UTF-8 text: {e}", path.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    Ok((name, text))
}

pub async fn apply(args: ApplyArgs) -> anyhow::Result<ExitCode> {
    let (source, text) = match read_source(&args.file) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    // Syntax, shape and field errors show without a server; cross-references need one.
    if let Err(e) = trellis_model::parse_documents(&source, &text) {
        eprintln!("{e}");
        return Ok(ExitCode::from(1));
    }
    let api = match Api::new(&args.target) {
        Ok(a) => a,
        Err(e) => return Ok(fail(e)),
    };
    let mut url = match api.url(&["v1", "resources"]) {
        Ok(u) => u,
        Err(e) => return Ok(fail(e)),
    };
    url.query_pairs_mut().append_pair("source", &source);
    let answer = match api.call(Method::POST, url, Some(text)).await {
        Ok(a) => a,
        Err(e) => return Ok(fail(e)),
    };
    if answer.status != StatusCode::OK {
        let lines = answer.error_lines();
        for line in &lines {
            eprintln!("{line}");
        }
        if answer.status == StatusCode::BAD_REQUEST {
            eprintln!("{} error(s); nothing was applied", lines.len());
        }
        return Ok(ExitCode::from(1));
    }
    let body = match answer.json() {
        Ok(v) => v,
        Err(e) => return Ok(fail(e)),
    };
    if args.target.output == Output::Json {
        print_json(&body);
        return Ok(ExitCode::SUCCESS);
    }
    for line in table::applied_lines(&body) {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn delete(args: DeleteArgs) -> anyhow::Result<ExitCode> {
    let Some(kind) = Kind::parse(&args.kind) else {
        eprintln!(
            "error: unknown kind `{}`: expected service, trafficpolicy, httproute, authorizationpolicy or requestauthentication",
            args.kind
        );
        return Ok(ExitCode::from(1));
    };
    let api = match Api::new(&args.target) {
        Ok(a) => a,
        Err(e) => return Ok(fail(e)),
    };
    let url = match api.url(&["v1", "resources", kind.as_str(), &args.name]) {
        Ok(u) => u,
        Err(e) => return Ok(fail(e)),
    };
    let answer = match api.call(Method::DELETE, url, None).await {
        Ok(a) => a,
        Err(e) => return Ok(fail(e)),
    };
    let subject = format!("{}/{}", kind.as_str().to_ascii_lowercase(), args.name);
    match answer.status {
        StatusCode::OK | StatusCode::NO_CONTENT => {
            println!("{subject} deleted");
            Ok(ExitCode::SUCCESS)
        }
        StatusCode::NOT_FOUND => {
            eprintln!("error: {subject} not found");
            Ok(ExitCode::from(1))
        }
        _ => {
            for line in answer.error_lines() {
                eprintln!("error: {line}");
            }
            Ok(ExitCode::from(1))
        }
    }
}

/// What `trellis get` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listing {
    Services,
    Instances,
    Proxies,
    Resources(Option<Kind>),
}

fn parse_listing(what: &str) -> Option<Listing> {
    match what.to_ascii_lowercase().as_str() {
        "services" | "service" | "svc" => Some(Listing::Services),
        "instances" | "instance" | "inst" => Some(Listing::Instances),
        "proxies" | "proxy" => Some(Listing::Proxies),
        "resources" | "resource" | "all" => Some(Listing::Resources(None)),
        other => Kind::parse(other).map(|k| Listing::Resources(Some(k))),
    }
}

pub async fn get(args: GetArgs) -> anyhow::Result<ExitCode> {
    let Some(listing) = parse_listing(&args.what) else {
        eprintln!(
            "error: cannot list `{}`: expected services, instances, proxies, resources, trafficpolicies, httproutes, authorizationpolicies or requestauthentications",
            args.what
        );
        return Ok(ExitCode::from(1));
    };
    let api = match Api::new(&args.target) {
        Ok(a) => a,
        Err(e) => return Ok(fail(e)),
    };
    let kind_segment;
    let segments: Vec<&str> = match listing {
        Listing::Services => vec!["v1", "services"],
        Listing::Instances => vec!["v1", "instances"],
        Listing::Proxies => vec!["v1", "proxies"],
        Listing::Resources(None) => vec!["v1", "resources"],
        Listing::Resources(Some(k)) => {
            kind_segment = k.as_str();
            vec!["v1", "resources", kind_segment]
        }
    };
    let body = match api.get_ok(&segments).await {
        Ok(v) => v,
        Err(e) => return Ok(fail(e)),
    };
    if args.target.output == Output::Json {
        print_json(&body);
        return Ok(ExitCode::SUCCESS);
    }
    let items = body.as_array().cloned().unwrap_or_default();
    let out = match listing {
        Listing::Services => table::services(&items),
        Listing::Instances => table::instances(&items, table::now_ms()),
        Listing::Proxies => table::proxies(&items),
        Listing::Resources(kind) => {
            let resources: Vec<Resource> = items
                .iter()
                .filter_map(|v| serde_json::from_value(v.clone()).ok())
                .collect();
            table::resources(&resources, kind)
        }
    };
    if items.is_empty() {
        eprintln!("no {} found", args.what.to_ascii_lowercase());
    } else {
        print!("{out}");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn describe(args: DescribeArgs) -> anyhow::Result<ExitCode> {
    if matches!(args.kind.as_str(), "reason" | "reasons") {
        return Ok(describe_reason(&args.name, args.target.output));
    }
    if Kind::parse(&args.kind) != Some(Kind::Service) {
        eprintln!(
            "error: cannot describe `{}`: only a `service` or a `reason` can be described (e.g. trellis describe service catalog, trellis describe reason circuit_open)",
            args.kind
        );
        return Ok(ExitCode::from(1));
    }
    let api = match Api::new(&args.target) {
        Ok(a) => a,
        Err(e) => return Ok(fail(e)),
    };
    let answer = match api.get(&["v1", "services", &args.name]).await {
        Ok(a) => a,
        Err(e) => return Ok(fail(e)),
    };
    if answer.status == StatusCode::NOT_FOUND {
        eprintln!(
            "error: service `{}` is not declared and has no instances (see `trellis get services`)",
            args.name
        );
        return Ok(ExitCode::from(1));
    }
    if answer.status != StatusCode::OK {
        for line in answer.error_lines() {
            eprintln!("error: {line}");
        }
        return Ok(ExitCode::from(1));
    }
    let body = match answer.json() {
        Ok(v) => v,
        Err(e) => return Ok(fail(e)),
    };
    if args.target.output == Output::Json {
        print_json(&body);
    } else {
        print!("{}", table::describe_service(&body, table::now_ms()));
    }
    Ok(ExitCode::SUCCESS)
}

/// `trellis describe reason TOKEN`: what an `x-trellis-reason` means and what to do (offline).
fn describe_reason(token: &str, output: Output) -> ExitCode {
    let Some(r) = trellis_model::reason::explain(token) else {
        let known: Vec<&str> = trellis_model::reason::ALL.iter().map(|r| r.token).collect();
        eprintln!(
            "error: `{token}` is not a reason Trellis answers with; the reasons are: {}",
            known.join(", ")
        );
        return ExitCode::from(1);
    };
    if output == Output::Json {
        print_json(&serde_json::json!({
            "reason": r.token, "status": r.status, "what": r.what, "fix": r.fix,
        }));
    } else {
        print!("{}", table::describe_reason(r));
    }
    ExitCode::SUCCESS
}
