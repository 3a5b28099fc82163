//! `trellis demo`: a whole mesh on one machine. It starts (as child processes of this same
//! binary) a control plane; the sample apps ratings v1, catalog v1, catalog v2 and frontend,
//! each with its sidecar (each given a join token, so calls between sidecars are mTLS); applies
//! `demo/mesh.yaml` (catalog split 90/10 between v1 and v2; frontend PERMISSIVE for the traffic);
//! sends a steady trickle of requests to the frontend and prints the v1/v2 split it sees.
//! Ctrl-C or SIGTERM stops every child by PID and exits 0.

mod children;
mod traffic;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

use children::Child;

/// The demo's resources; also usable with `trellis apply -f crates/cli/demo/mesh.yaml`.
pub const MESH_YAML: &str = include_str!("../demo/mesh.yaml");

const CONTROL_HTTP_PORT: u16 = 15080;
const CONTROL_GRPC_PORT: u16 = 15010;
/// How often the live status line is printed.
const STATUS_EVERY: Duration = Duration::from_secs(5);

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where the control plane's store and every component's log go (default: a temporary
    /// directory removed on exit).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Requests per second sent to the frontend.
    #[arg(long, default_value_t = 5.0)]
    pub rps: f64,
    /// `fixed`: well-known ports (control on 15080/15010, so `trellis get` needs no
    /// `--control`); `auto`: let the OS pick every port.
    #[arg(long, value_enum, default_value_t = Ports::Fixed)]
    pub ports: Ports,
    /// Stop by itself after this long (e.g. `30s`); default: run until Ctrl-C.
    #[arg(long, value_parser = trellis_model::parse_duration)]
    pub duration: Option<Duration>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ports {
    Fixed,
    Auto,
}

/// One sample app and its sidecar. With fixed ports: app `base`, sidecar admin `base+1`,
/// outbound `base+2`, inbound `base+3`.
struct AppSpec {
    instance: &'static str,
    service: &'static str,
    version: &'static str,
    call: Option<&'static str>,
    base: u16,
}

const APPS: [AppSpec; 4] = [
    AppSpec {
        instance: "ratings-v1",
        service: "ratings",
        version: "v1",
        call: None,
        base: 15110,
    },
    AppSpec {
        instance: "catalog-v1",
        service: "catalog",
        version: "v1",
        call: Some("http://ratings/ratings"),
        base: 15120,
    },
    AppSpec {
        instance: "catalog-v2",
        service: "catalog",
        version: "v2",
        call: Some("http://ratings/ratings"),
        base: 15130,
    },
    AppSpec {
        instance: "frontend",
        service: "frontend",
        version: "v1",
        call: Some("http://catalog/items"),
        base: 15140,
    },
];

/// A started app and its sidecar's addresses.
struct Running {
    spec: &'static AppSpec,
    app: String,
    admin: String,
    outbound: String,
    inbound: String,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.rps.is_nan() || args.rps <= 0.0 {
        bail!("--rps {}: must be greater than 0", args.rps);
    }
    let exe = std::env::current_exe().context("cannot find the trellis executable")?;
    let (_temp, data_dir) = match &args.data_dir {
        Some(d) => (None, d.clone()),
        None => {
            let t = tempfile::Builder::new()
                .prefix("trellis-demo-")
                .tempdir()
                .context("cannot create a temporary data directory")?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    let logs = data_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    if args.ports == Ports::Fixed {
        check_ports_free()?;
    }

    let mut children: Vec<Child> = Vec::new();
    let result = start_and_serve(&args, &exe, &data_dir, &logs, &mut children).await;
    children::stop_all(&mut children, Duration::from_secs(5)).await;
    match result {
        Ok(final_line) => {
            println!("\nstopped every component. {final_line}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(e.context(format!("the demo failed; logs are in {}", logs.display()))),
    }
}

/// Starts everything, then serves until a signal or `--duration`; returns the last tally.
async fn start_and_serve(
    args: &Args,
    exe: &Path,
    data_dir: &Path,
    logs: &Path,
    children: &mut Vec<Child>,
) -> anyhow::Result<String> {
    let fixed = args.ports == Ports::Fixed;
    let addr = |port: u16| {
        if fixed {
            format!("127.0.0.1:{port}")
        } else {
            "127.0.0.1:0".to_string()
        }
    };

    let control = Child::start(
        exe,
        &strings(&[
            "control",
            "--data-dir",
            &data_dir.join("store").display().to_string(),
            "--http-addr",
            &addr(CONTROL_HTTP_PORT),
            "--grpc-addr",
            &addr(CONTROL_GRPC_PORT),
        ]),
        "control",
        logs,
    )
    .await?;
    let control_http = control.field("http")?;
    let control_grpc = control.field("grpc")?;
    let control_url = format!("http://{control_http}");
    children.push(control);

    let applied = apply_mesh(&control_url).await?;

    let mut running = Vec::new();
    for spec in &APPS {
        let outbound = if fixed {
            addr(spec.base + 2)
        } else {
            reserve_port()?.to_string()
        };
        let mut app_args = strings(&[
            "sample-app",
            "--name",
            spec.service,
            "--version",
            spec.version,
            "--instance",
            spec.instance,
            "--listen",
            &addr(spec.base),
        ]);
        if let Some(call) = spec.call {
            app_args.extend(strings(&["--call", call, "--outbound", &outbound]));
        }
        let app = Child::start(exe, &app_args, &format!("{}-app", spec.instance), logs).await?;
        let app_addr = app.field("http")?;
        let app_port = app_addr
            .parse::<SocketAddr>()
            .with_context(|| format!("{}: bad app address {app_addr}", spec.instance))?
            .port();
        children.push(app);
        let token = join_token(&control_url, spec.service).await?;
        let proxy = Child::start(
            exe,
            &strings(&[
                "proxy",
                "--join-token",
                &token,
                "--service",
                spec.service,
                "--instance-id",
                spec.instance,
                "--app-port",
                &app_port.to_string(),
                "--control",
                &control_url,
                "--admin-addr",
                &addr(spec.base + 1),
                "--outbound-addr",
                &outbound,
                "--inbound-addr",
                &addr(spec.base + 3),
                "--label",
                &format!("version={}", spec.version),
            ]),
            &format!("{}-proxy", spec.instance),
            logs,
        )
        .await?;
        running.push(Running {
            spec,
            app: app_addr,
            admin: proxy.field("admin")?,
            outbound: proxy.field("outbound")?,
            inbound: proxy.field("inbound")?,
        });
        children.push(proxy);
    }
    for r in &running {
        wait_proxy_ready(&r.admin, r.spec.instance).await?;
    }

    print_banner(
        data_dir,
        &control_url,
        &control_grpc,
        fixed,
        &applied,
        &running,
    );

    let Some(frontend) = running.iter().find(|r| r.spec.service == "frontend") else {
        bail!("internal error: the frontend app is missing from the demo's app list");
    };
    let tally = Arc::new(traffic::Tally::default());
    let traffic_task = tokio::spawn(traffic::drive(
        format!("http://{}/", frontend.inbound),
        args.rps,
        tally.clone(),
    ));

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    let deadline = async {
        match args.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let mut status = tokio::time::interval(STATUS_EVERY);
    status.tick().await;
    let mut reported_exits = std::collections::BTreeSet::new();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
            _ = &mut deadline => break,
            _ = status.tick() => {
                println!("[demo] {}", tally.line());
                for c in children.iter_mut() {
                    if let Some(how) = c.exited()
                        && reported_exits.insert(c.pid)
                    {
                        println!("[demo] {} (pid {}) exited: {how}; see {}", c.name, c.pid, c.log.display());
                    }
                }
            }
        }
    }
    traffic_task.abort();
    Ok(tally.line())
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Fails with a clear message when a fixed port is taken.
fn check_ports_free() -> anyhow::Result<()> {
    let mut ports = vec![
        (CONTROL_HTTP_PORT, "control HTTP API".to_string()),
        (CONTROL_GRPC_PORT, "control xDS".to_string()),
    ];
    for a in &APPS {
        for (off, what) in [
            (0, "app"),
            (1, "sidecar admin"),
            (2, "sidecar outbound"),
            (3, "sidecar inbound"),
        ] {
            ports.push((a.base + off, format!("{} {what}", a.instance)));
        }
    }
    let taken: Vec<String> = ports
        .iter()
        .filter(|(p, _)| std::net::TcpListener::bind(("127.0.0.1", *p)).is_err())
        .map(|(p, what)| format!("{p} ({what})"))
        .collect();
    if !taken.is_empty() {
        bail!(
            "port(s) already in use on 127.0.0.1: {}. Stop whatever holds them (another `trellis demo`?) \
             or run `trellis demo --ports auto` to let the OS pick free ports",
            taken.join(", ")
        );
    }
    Ok(())
}

/// A free port for a sidecar's outbound listener in `--ports auto` mode: the app must know it
/// before the sidecar starts, so it is picked up front (bind to 0, read, release).
fn reserve_port() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    l.local_addr().context("cannot read a reserved port")
}

async fn apply_mesh(control_url: &str) -> anyhow::Result<Vec<String>> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?;
    let url = format!("{control_url}/v1/resources?source=mesh.yaml");
    let resp = client
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/yaml")
        .body(MESH_YAML)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!("applying demo/mesh.yaml failed ({status}): {body}");
    }
    Ok(body
        .get("applied")
        .and_then(|a| a.as_array())
        .map(|a| {
            a.iter()
                .map(|x| {
                    let f = |k: &str| x.get(k).and_then(|v| v.as_str()).unwrap_or("?").to_string();
                    format!("{} {} {}", f("kind"), f("name"), f("action"))
                })
                .collect()
        })
        .unwrap_or_default())
}

/// A join token for `service` (`POST /v1/tokens`), so every sidecar gets an mTLS certificate.
async fn join_token(control_url: &str, service: &str) -> anyhow::Result<String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?;
    let url = format!("{control_url}/v1/tokens");
    let resp = client
        .post(&url)
        .json(&serde_json::json!({ "service": service }))
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    match body.get("token").and_then(|t| t.as_str()) {
        Some(t) if status.is_success() => Ok(t.to_string()),
        _ => bail!("creating a join token for {service} failed ({status}): {body}"),
    }
}

/// Polls the sidecar's `/ready` (200 once it has its config).
async fn wait_proxy_ready(admin: &str, name: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()?;
    let url = format!("http://{admin}/ready");
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(&url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if tokio::time::Instant::now() >= until {
            bail!("{name}'s sidecar did not become ready within 30s (GET {url})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn print_banner(
    data_dir: &Path,
    control_url: &str,
    control_grpc: &str,
    fixed: bool,
    applied: &[String],
    running: &[Running],
) {
    let flag = if fixed {
        String::new()
    } else {
        format!(" --control {control_url}")
    };
    println!(
        "Trellis demo is running (data and logs in {}).",
        data_dir.display()
    );
    println!();
    println!("  control plane      API {control_url}   xDS {control_grpc}");
    for r in running {
        println!(
            "  {:<18} app {:<16} sidecar admin {:<16} inbound {:<16} outbound {}",
            format!("{} {}", r.spec.service, r.spec.version),
            r.app,
            r.admin,
            r.inbound,
            r.outbound
        );
    }
    println!();
    println!("  applied demo/mesh.yaml: {}", applied.join(", "));
    println!("  traffic: frontend -> catalog (90% v1, 10% v2) -> ratings");
    println!();
    println!("Try:");
    println!("  trellis get services{flag}");
    println!("  trellis get proxies{flag}");
    println!("  trellis describe service catalog{flag}");
    if let Some(c) = running.iter().find(|r| r.spec.instance == "catalog-v1") {
        println!("  curl http://{}/metrics", c.admin);
        println!("  curl http://{}/config_dump", c.admin);
    }
    if let Some(f) = running.iter().find(|r| r.spec.service == "frontend") {
        println!("  curl http://{}/", f.inbound);
    }
    println!(
        "  edit crates/cli/demo/mesh.yaml and `trellis apply -f crates/cli/demo/mesh.yaml{flag}`"
    );
    println!();
    println!("Ctrl-C stops everything.");
}
