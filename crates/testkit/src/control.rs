//! The control plane as a child process (`trellis control`), plus small helpers for its
//! HTTP API (docs/API.md).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::time::Instant;

use crate::log::TestLog;
use crate::process::Process;
use crate::{DEADLINE, log::LogSink};

/// Control-plane timing flags; `None` keeps the binary's default.
#[derive(Debug, Clone, Default)]
pub struct ControlOpts {
    pub restart_grace: Option<String>,
    pub remove_after: Option<String>,
    pub push_debounce: Option<String>,
    /// Lifetime of issued workload certificates, e.g. `"1m"`.
    pub cert_ttl: Option<String>,
    /// `--tls`: the API and xDS over TLS with a mesh-issued certificate.
    pub tls: bool,
}

pub struct ControlPlane {
    process: Process,
    bin: PathBuf,
    data_dir: PathBuf,
    opts: ControlOpts,
    log: LogSink,
    http: SocketAddr,
    grpc: SocketAddr,
    http_client: reqwest::Client,
}

impl ControlPlane {
    /// Starts `trellis control` on 127.0.0.1:0 with its store in `data_dir`.
    pub async fn start(
        bin: impl AsRef<Path>,
        log: &TestLog,
        data_dir: &Path,
    ) -> anyhow::Result<Self> {
        Self::start_with(bin, log, data_dir, ControlOpts::default()).await
    }

    pub async fn start_with(
        bin: impl AsRef<Path>,
        log: &TestLog,
        data_dir: &Path,
        opts: ControlOpts,
    ) -> anyhow::Result<Self> {
        let bin = bin.as_ref().to_path_buf();
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        let process = spawn(&bin, log.sink(), data_dir, &opts, any, any).await?;
        let http = process.ready_addr("http")?;
        let grpc = process.ready_addr("grpc")?;
        Ok(Self {
            process,
            bin,
            data_dir: data_dir.to_path_buf(),
            log: log.sink(),
            http,
            grpc,
            http_client: crate::sidecar::control_client(
                opts.tls
                    .then(|| data_dir.join("trust-bundle.pem"))
                    .as_deref(),
            )?,
            opts,
        })
    }

    /// `http://127.0.0.1:PORT` (`https://` with TLS), what sidecars and the CLI take as
    /// `--control`.
    pub fn url(&self) -> String {
        let scheme = if self.opts.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.http)
    }

    /// The trust bundle file the control plane keeps (`--control-ca` for its clients).
    pub fn trust_bundle_path(&self) -> PathBuf {
        self.data_dir.join("trust-bundle.pem")
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
    }

    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    pub async fn sigkill(&mut self) -> anyhow::Result<()> {
        self.process.sigkill().await.map(|_| ())
    }

    /// Starts a new control plane on the same data dir and the same two addresses (sidecars
    /// keep their `--control` URL). The old process must be dead. Retries while the ports are
    /// still held by the old process' sockets.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let until = Instant::now() + DEADLINE;
        loop {
            match spawn(
                &self.bin,
                self.log.clone(),
                &self.data_dir,
                &self.opts,
                self.http,
                self.grpc,
            )
            .await
            {
                Ok(p) => {
                    self.process = p;
                    return Ok(());
                }
                Err(e) if Instant::now() < until => {
                    self.log
                        .line("test", &format!("control restart failed, retrying: {e:#}"));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e.context("restarting the control plane on the same ports")),
            }
        }
    }

    /// GET a JSON document from the API; fails on a non-2xx status.
    pub async fn get_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let (status, body) = self.request(reqwest::Method::GET, path, None, None).await?;
        if !(200..300).contains(&status) {
            bail!("GET {path}: status {status}: {body}");
        }
        serde_json::from_str(&body).with_context(|| format!("GET {path}: not JSON: {body}"))
    }

    /// POSTs YAML to `/v1/resources`; fails on a non-2xx status (the message has the errors).
    pub async fn apply_yaml(&self, yaml: &str) -> anyhow::Result<serde_json::Value> {
        let (status, body) = self
            .request(
                reqwest::Method::POST,
                "/v1/resources?source=test.yaml",
                Some(yaml.to_string()),
                Some("application/yaml"),
            )
            .await?;
        if !(200..300).contains(&status) {
            bail!("apply: status {status}: {body}\n--- yaml ---\n{yaml}");
        }
        serde_json::from_str(&body).with_context(|| format!("apply: answer is not JSON: {body}"))
    }

    /// Any API call: `(status, body text)`.
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
        content_type: Option<&str>,
    ) -> anyhow::Result<(u16, String)> {
        let url = format!("{}{path}", self.url());
        let mut req = self.http_client.request(method.clone(), &url);
        if let Some(ct) = content_type {
            req = req.header(reqwest::header::CONTENT_TYPE, ct);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .with_context(|| format!("{method} {url}: body"))?;
        Ok((status, text))
    }
}

async fn spawn(
    bin: &Path,
    log: LogSink,
    data_dir: &Path,
    opts: &ControlOpts,
    http: SocketAddr,
    grpc: SocketAddr,
) -> anyhow::Result<Process> {
    let mut args = vec![
        "control".to_string(),
        "--data-dir".to_string(),
        data_dir.display().to_string(),
        "--http-addr".to_string(),
        http.to_string(),
        "--grpc-addr".to_string(),
        grpc.to_string(),
    ];
    for (flag, v) in [
        ("--restart-grace", &opts.restart_grace),
        ("--remove-after", &opts.remove_after),
        ("--push-debounce", &opts.push_debounce),
        ("--cert-ttl", &opts.cert_ttl),
    ] {
        if let Some(v) = v {
            args.push(flag.to_string());
            args.push(v.clone());
        }
    }
    if opts.tls {
        args.push("--tls".to_string());
    }
    Process::spawn(bin, &args, "control", log, DEADLINE).await
}

/// A TrafficPolicy for `service` whose spec holds `spec` (lines indented under `spec:`)
/// besides its `targetRef`.
pub fn traffic_policy(service: &str, spec: &str) -> String {
    format!(
        "apiVersion: trellis.dev/v1alpha1\nkind: TrafficPolicy\nmetadata:\n  name: {service}\n\
         spec:\n  targetRef: {{ name: {service} }}\n{spec}"
    )
}
