//! A sidecar as a child process (`trellis proxy`, or the `trellis-proxy` binary), and waiting on its admin endpoints
//! (`/ready`, `/config_dump`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::DEADLINE;
use crate::log::TestLog;
use crate::process::Process;
use crate::wait::{wait_for, wait_until};

/// Optional `trellis proxy` flags.
#[derive(Debug, Clone, Default)]
pub struct SidecarOpts {
    pub instance_id: Option<String>,
    pub labels: Vec<(String, String)>,
    pub weight: Option<u32>,
    pub zone: Option<String>,
    /// e.g. `"1s"`.
    pub ttl: Option<String>,
    /// `http`, `http2` or `grpc`.
    pub app_protocol: Option<String>,
    /// Start without a join token: a plaintext-only sidecar (no mTLS identity).
    pub plaintext: bool,
    /// Use this join token instead of creating one for the service.
    pub join_token: Option<String>,
    /// `--control-ca`: the roots that verify an https:// control plane.
    pub control_ca: Option<std::path::PathBuf>,
    pub extra_args: Vec<String>,
}

impl SidecarOpts {
    pub fn id(mut self, id: &str) -> Self {
        self.instance_id = Some(id.to_string());
        self
    }

    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.push((k.to_string(), v.to_string()));
        self
    }

    pub fn weight(mut self, w: u32) -> Self {
        self.weight = Some(w);
        self
    }

    /// `--zone`: the instance's zone (and, for a caller, the zone it prefers).
    pub fn zone(mut self, zone: &str) -> Self {
        self.zone = Some(zone.to_string());
        self
    }

    pub fn ttl(mut self, ttl: &str) -> Self {
        self.ttl = Some(ttl.to_string());
        self
    }

    pub fn protocol(mut self, p: &str) -> Self {
        self.app_protocol = Some(p.to_string());
        self
    }

    /// No join token: the sidecar has no certificate (plaintext only; its STRICT inbound
    /// listener refuses every connection).
    pub fn plaintext(mut self) -> Self {
        self.plaintext = true;
        self
    }

    pub fn join_token(mut self, token: &str) -> Self {
        self.join_token = Some(token.to_string());
        self
    }

    /// `--upstream <service>=0`: a local port for TCP service `service`
    /// ([`Sidecar::upstream`] reads the bound address).
    pub fn upstream(mut self, service: &str) -> Self {
        self.extra_args
            .extend(["--upstream".to_string(), format!("{service}=0")]);
        self
    }
    pub fn control_ca(mut self, path: &Path) -> Self {
        self.control_ca = Some(path.to_path_buf());
        self
    }
}

/// A client for the control plane's API: plaintext, or trusting only the PEM roots in `ca`.
pub fn control_client(ca: Option<&Path>) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10));
    if let Some(path) = ca {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let roots = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("PEM roots in {}", path.display()))?;
        builder = builder.tls_certs_only(roots);
    }
    builder.build().context("cannot build the HTTP client")
}

/// Creates a join token for `service` in namespace `default` (`POST /v1/tokens`).
pub async fn create_join_token(control_url: &str, service: &str) -> anyhow::Result<String> {
    create_join_token_with(control_url, None, service).await
}

/// [`create_join_token`] from a control plane verified with the roots in `ca`.
pub async fn create_join_token_with(
    control_url: &str,
    ca: Option<&Path>,
    service: &str,
) -> anyhow::Result<String> {
    let url = format!("{}/v1/tokens", control_url.trim_end_matches('/'));
    let resp = control_client(ca)?
        .post(&url)
        .json(&serde_json::json!({ "service": service }))
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("POST {url} for `{service}`: status {status}: {text}");
    }
    let body: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("POST {url}: not JSON: {text}"))?;
    body.get("token")
        .and_then(|t| t.as_str())
        .map(str::to_string)
        .with_context(|| format!("POST {url}: no `token` in {text}"))
}

pub struct Sidecar {
    process: Process,
    service: String,
    instance_id: String,
    admin: SocketAddr,
    outbound: SocketAddr,
    inbound: SocketAddr,
}

impl Sidecar {
    /// Starts `trellis proxy` (or `trellis-proxy`, when `bin` is that binary) for `service` in front of 127.0.0.1:`app_port`, all listeners on
    /// port 0, and waits until its admin `/ready` answers 200 (it has its config, and its mTLS
    /// certificate: unless `opts.plaintext`, a join token is created for it first).
    pub async fn start(
        bin: impl AsRef<Path>,
        log: &TestLog,
        control_url: &str,
        service: &str,
        app_port: u16,
        opts: SidecarOpts,
    ) -> anyhow::Result<Self> {
        // `trellis-proxy` is the sidecar alone: the same flags without the subcommand.
        let sidecar_only = bin
            .as_ref()
            .file_name()
            .is_some_and(|n| n == "trellis-proxy");
        let mut args: Vec<String> = [
            "proxy",
            "--service",
            service,
            "--app-port",
            &app_port.to_string(),
            "--control",
            control_url,
            "--admin-addr",
            "127.0.0.1:0",
            "--outbound-addr",
            "127.0.0.1:0",
            "--inbound-addr",
            "127.0.0.1:0",
        ]
        .iter()
        .skip(usize::from(sidecar_only))
        .map(|s| s.to_string())
        .collect();
        if let Some(id) = &opts.instance_id {
            args.extend(["--instance-id".to_string(), id.clone()]);
        }
        for (k, v) in &opts.labels {
            args.extend(["--label".to_string(), format!("{k}={v}")]);
        }
        if let Some(w) = opts.weight {
            args.extend(["--weight".to_string(), w.to_string()]);
        }
        if let Some(z) = &opts.zone {
            args.extend(["--zone".to_string(), z.clone()]);
        }
        if let Some(t) = &opts.ttl {
            args.extend(["--ttl".to_string(), t.clone()]);
        }
        if let Some(p) = &opts.app_protocol {
            args.extend(["--app-protocol".to_string(), p.clone()]);
        }
        if !opts.plaintext {
            let token = match &opts.join_token {
                Some(t) => t.clone(),
                None => {
                    create_join_token_with(control_url, opts.control_ca.as_deref(), service).await?
                }
            };
            args.extend(["--join-token".to_string(), token]);
        }
        if let Some(ca) = &opts.control_ca {
            args.extend(["--control-ca".to_string(), ca.display().to_string()]);
        }
        args.extend(opts.extra_args.iter().cloned());
        let name = format!("proxy {}", opts.instance_id.as_deref().unwrap_or(service));
        let process = Process::spawn(bin, &args, &name, log.sink(), DEADLINE).await?;
        let instance_id = process
            .ready()
            .get("instance_id")
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .or(opts.instance_id.clone())
            .unwrap_or_default();
        let sidecar = Self {
            admin: process.ready_addr("admin")?,
            outbound: process.ready_addr("outbound")?,
            inbound: process.ready_addr("inbound")?,
            process,
            service: service.to_string(),
            instance_id,
        };
        sidecar.wait_ready(DEADLINE).await?;
        Ok(sidecar)
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    pub fn outbound(&self) -> SocketAddr {
        self.outbound
    }

    pub fn inbound(&self) -> SocketAddr {
        self.inbound
    }

    /// The local address of the `--upstream <service>=...` listener, from the ready line's
    /// `"upstreams":{"<service>":"127.0.0.1:PORT"}`.
    pub fn upstream(&self, service: &str) -> anyhow::Result<SocketAddr> {
        let ready = self.process.ready();
        let s = ready
            .pointer(&format!("/upstreams/{service}"))
            .and_then(|v| v.as_str())
            .with_context(|| {
                format!(
                    "{}: no upstream `{service}` in the ready line: {ready}",
                    self.process.name()
                )
            })?;
        s.parse()
            .with_context(|| format!("upstream `{service}` = `{s}` is not an address"))
    }

    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    /// Waits until `/ready` answers 200.
    pub async fn wait_ready(&self, deadline: Duration) -> anyhow::Result<()> {
        let url = format!("http://{}/ready", self.admin);
        let what = format!("{} admin /ready to answer 200", self.process.name());
        wait_until(deadline, &what, || async {
            matches!(admin_get(&url).await, Ok((200, _)))
        })
        .await
        .with_context(|| format!("last stderr lines:\n{}", self.process.stderr_tail()))
    }

    /// The admin `/config_dump` JSON.
    pub async fn config_dump(&self) -> anyhow::Result<serde_json::Value> {
        config_dump(self.admin).await
    }

    /// The sum of the samples of metric `name` (e.g. `trellis_tls_handshakes_total`) whose
    /// labels contain every `label="value"` pair of `labels`; 0 when there is none.
    pub async fn metric_sum(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
        Ok(metric_sum(&self.metrics().await?, name, labels))
    }

    /// This sidecar's certificate serial (from `/config_dump`), if it has one.
    pub async fn certificate_serial(&self) -> anyhow::Result<Option<String>> {
        Self::certificate_serial_at(self.admin).await
    }

    /// [`Self::certificate_serial`] of the sidecar whose admin listener is `admin`.
    pub async fn certificate_serial_at(admin: SocketAddr) -> anyhow::Result<Option<String>> {
        let dump = config_dump(admin).await?;
        Ok(dump
            .pointer("/identity/certificate/serial")
            .and_then(|v| v.as_str())
            .map(str::to_string))
    }

    /// The admin `/metrics` text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        Self::metrics_at(self.admin).await
    }

    /// The `/metrics` text of the sidecar whose admin listener is `admin`.
    pub async fn metrics_at(admin: SocketAddr) -> anyhow::Result<String> {
        let (status, body) = admin_get(&format!("http://{admin}/metrics")).await?;
        if status != 200 {
            bail!("GET /metrics on {admin}: status {status}");
        }
        Ok(body)
    }
}

async fn admin_get(url: &str) -> anyhow::Result<(u16, String)> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()?;
    let resp = client
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await.unwrap_or_default()))
}

async fn config_dump(admin: SocketAddr) -> anyhow::Result<serde_json::Value> {
    let url = format!("http://{admin}/config_dump");
    let (status, body) = admin_get(&url).await?;
    if status != 200 {
        bail!("GET {url}: status {status}: {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("GET {url}: not JSON"))
}

/// Polls a proxy's `/config_dump` until `predicate` holds; returns that dump. On timeout the
/// error quotes the start of the last dump seen.
pub async fn wait_for_proxy_config<P>(
    admin: SocketAddr,
    deadline: Duration,
    what: &str,
    predicate: P,
) -> anyhow::Result<serde_json::Value>
where
    P: Fn(&serde_json::Value) -> bool,
{
    let predicate = &predicate;
    wait_for(deadline, what, || async move {
        match config_dump(admin).await {
            Ok(dump) if predicate(&dump) => Ok(dump),
            Ok(dump) => {
                let text = dump.to_string();
                Err(text.chars().take(2000).collect())
            }
            Err(e) => Err(format!("{e:#}")),
        }
    })
    .await
}

/// The sum of the samples of `name` in a Prometheus text exposition whose labels contain every
/// `label="value"` of `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, label_part) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| label_part.contains(&format!("{k}=\"{v}\"")));
            if !all {
                return None;
            }
            value.parse::<f64>().ok()
        })
        .sum()
}

/// True when some string (or key) anywhere in `v` contains `needle`, comparing
/// case-insensitively and ignoring `_` and `-` (so `ringhash` matches `RING_HASH` and
/// `RingHash`). For predicates on a config dump whose exact layout a test should not pin.
pub fn json_mentions(v: &serde_json::Value, needle: &str) -> bool {
    fn norm(s: &str) -> String {
        s.chars()
            .filter(|c| *c != '_' && *c != '-')
            .flat_map(char::to_lowercase)
            .collect()
    }
    fn walk(v: &serde_json::Value, needle: &str) -> bool {
        match v {
            serde_json::Value::String(s) => norm(s).contains(needle),
            serde_json::Value::Array(a) => a.iter().any(|x| walk(x, needle)),
            serde_json::Value::Object(o) => o
                .iter()
                .any(|(k, x)| norm(k).contains(needle) || walk(x, needle)),
            _ => false,
        }
    }
    walk(v, &norm(needle))
}

/// Runs `trellis proxy` for service `web` (control plane unreachable, listeners on port 0) with
/// the extra `args`, expects it to refuse to start with exit code 2 and returns its stderr.
pub async fn proxy_startup_error(bin: impl AsRef<Path>, args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(bin.as_ref())
        .args(["proxy", "--service", "web", "--app-port", "8080"])
        .args(["--control", "http://127.0.0.1:1"])
        .args([
            "--admin-addr",
            "127.0.0.1:0",
            "--outbound-addr",
            "127.0.0.1:0",
        ])
        .args(["--inbound-addr", "127.0.0.1:0"])
        .args(args)
        .output()
        .await
        .context("cannot run trellis proxy")?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.code() != Some(2) {
        bail!(
            "{args:?}: exit {:?}, want 2; stderr: {stderr}",
            out.status.code()
        );
    }
    Ok(stderr)
}
