//! End-to-end fault injection: an echo backend behind its sidecar (service `echo`) and a
//! client sidecar that injects the faults of `echo`'s TrafficPolicy and HTTPRoute rules. The
//! assertions count answers at the client, requests at the backend and the client sidecar's
//! fault metric; injected percentages must fall within ±5 binomial standard deviations.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use trellis_testkit::grpc::{GrpcEchoServer, client_via, pb::EchoRequest};
use trellis_testkit::{
    Client, ControlPlane, DEADLINE, Instance, Req, Sidecar, SidecarOpts, TestLog,
    wait_for_proxy_config, wait_for_traffic_to, wait_until,
};

const BIN: &str = env!("CARGO_BIN_EXE_trellis");
const SERVICE: &str = "echo";
const ID: &str = "echo-1";

struct Mesh {
    backend: Instance,
    caller: Instance,
    control: ControlPlane,
    client: Client,
    log: TestLog,
}

impl Mesh {
    async fn start(test: &str) -> anyhow::Result<Self> {
        let log = TestLog::new(test)?;
        let control = ControlPlane::start(BIN, &log, &log.dir().join("data")).await?;
        let backend = Instance::start(
            BIN,
            &log,
            &control.url(),
            SERVICE,
            ID,
            Duration::ZERO,
            SidecarOpts::default(),
        )
        .await?;
        let caller = client_side(&log, &control).await?;
        let client = Client::new(caller.sidecar.outbound());
        wait_for_traffic_to(&client, SERVICE, &[ID], DEADLINE).await?;
        Ok(Self {
            backend,
            caller,
            control,
            client,
            log,
        })
    }

    /// Applies `yaml` and waits until the client sidecar's route `route` of `echo` (a prefix
    /// of its name: `default`, `echo-faults/1`) shows `needle` in its policy.
    async fn apply(&self, yaml: &str, route: &str, needle: &str) -> anyhow::Result<()> {
        self.log.note(&format!("apply:\n{yaml}"));
        self.control.apply_yaml(yaml).await?;
        wait_for_route_policy(&self.caller.sidecar, SERVICE, route, needle).await
    }

    async fn faults(&self, service: &str, kind: &str) -> anyhow::Result<f64> {
        self.caller
            .sidecar
            .metric_sum(
                "trellis_faults_injected_total",
                &[("destination_service", service), ("kind", kind)],
            )
            .await
    }
}

/// The calling side: an app and its sidecar (service `client`, instance `client-1`).
async fn client_side(log: &TestLog, control: &ControlPlane) -> anyhow::Result<Instance> {
    let opts = SidecarOpts::default();
    Instance::start(
        BIN,
        log,
        &control.url(),
        "client",
        "client-1",
        Duration::ZERO,
        opts,
    )
    .await
}

/// Waits until a route of `service` whose name starts with `route` has `needle` in the
/// policy the client sidecar's config dump shows.
async fn wait_for_route_policy(
    sidecar: &Sidecar,
    service: &str,
    route: &str,
    needle: &str,
) -> anyhow::Result<()> {
    wait_for_proxy_config(
        sidecar.admin(),
        DEADLINE,
        &format!("route `{route}` of `{service}` to carry `{needle}`"),
        |dump| {
            dump.pointer("/routes")
                .and_then(|r| r.as_array())
                .into_iter()
                .flatten()
                .filter(|vh| vh.get("name").and_then(|n| n.as_str()) == Some(service))
                .flat_map(|vh| {
                    vh.get("routes")
                        .and_then(|r| r.as_array())
                        .cloned()
                        .unwrap_or_default()
                })
                .any(|r| {
                    r.get("name")
                        .and_then(|n| n.as_str())
                        .is_some_and(|n| n.starts_with(route))
                        && r.get("resilience")
                            .and_then(|p| p.as_str())
                            .is_some_and(|p| p.contains(needle))
                })
        },
    )
    .await?;
    Ok(())
}

/// The HTTPRoute `echo-faults` on `echo` with `rules` (YAML list items, indented by 4).
fn route(rules: &str) -> String {
    format!(
        "apiVersion: trellis.dev/v1alpha1\nkind: HTTPRoute\nmetadata: {{ name: echo-faults }}\n\
         spec:\n  parentRefs: [ {{ name: {SERVICE} }} ]\n  rules:\n{rules}"
    )
}

/// A rule for requests under `prefix` to `echo`, with `faults`.
fn rule(prefix: &str, faults: Option<&str>) -> String {
    let faults = faults
        .map(|f| format!("      faults: {f}\n"))
        .unwrap_or_default();
    format!(
        "    - matches: [ {{ path: {{ type: PathPrefix, value: {prefix} }} }} ]\n      \
         backendRefs: [ {{ name: {SERVICE} }} ]\n{faults}"
    )
}

fn policy(service: &str, faults: &str) -> String {
    format!(
        "apiVersion: trellis.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{ name: {service} }}\n\
         spec:\n  targetRef: {{ name: {service} }}\n  faults: {faults}\n"
    )
}

/// `observed` is within 5 standard deviations of `n` Bernoulli(`p`) trials' mean.
fn within_binomial(observed: usize, n: usize, p: f64) -> Result<(), String> {
    let mean = n as f64 * p;
    let sigma = (n as f64 * p * (1.0 - p)).sqrt();
    let off = (observed as f64 - mean).abs();
    if off <= 5.0 * sigma {
        Ok(())
    } else {
        Err(format!(
            "{observed} of {n} is {off:.0} from the expected {mean:.0} (5σ = {:.0})",
            5.0 * sigma
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborts_hit_their_percentage_and_the_backend_sees_only_the_rest() -> anyhow::Result<()> {
    let mesh = Mesh::start("faults_abort").await?;
    mesh.apply(
        &policy(SERVICE, "{ abort: { httpStatus: 503, percentage: 20 } }"),
        "default",
        "per_million: 200000",
    )
    .await?;
    const N: usize = 2000;
    let before = mesh.backend.backend.received();
    let out = mesh
        .client
        .run(N, 8, |i| Req::get(SERVICE, &format!("/abort/{i}")))
        .await;
    let t = out.tally();
    mesh.log.note(&format!("{N} requests at 20% abort: {t:?}"));
    let aborted = t.get("503 fault_abort").copied().unwrap_or(0);
    let ok = t.get("200 ").copied().unwrap_or(0);
    ensure!(
        aborted + ok == N,
        "only 200s and 503 fault_abort expected: {t:?}"
    );
    within_binomial(aborted, N, 0.2).map_err(anyhow::Error::msg)?;
    let reached = mesh.backend.backend.received() - before;
    ensure!(
        reached == ok,
        "the backend must see exactly the {ok} requests not aborted, saw {reached}"
    );
    ensure!(
        mesh.faults(SERVICE, "abort").await? == aborted as f64,
        "trellis_faults_injected_total{{kind=abort}} counts every abort"
    );
    ensure!(
        mesh.caller
            .sidecar
            .metric_sum(
                "trellis_requests_total",
                &[("destination_service", SERVICE), ("reason", "fault_abort")]
            )
            .await?
            == aborted as f64,
        "the request metric counts the aborts under reason=fault_abort"
    );
    mesh.log.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_requests_whose_headers_match_are_faulted() -> anyhow::Result<()> {
    let mesh = Mesh::start("faults_headers").await?;
    mesh.apply(
        &policy(
            SERVICE,
            "{ abort: { httpStatus: 418 }, headers: [ { name: x-chaos, value: \"on|yes\", type: RegularExpression } ] }",
        ),
        "default",
        "418",
    )
    .await?;
    let before = mesh.backend.backend.received();
    let out = mesh
        .client
        .run(100, 4, |i| {
            let req = Req::get(SERVICE, &format!("/h/{i}"));
            match i % 4 {
                0 => req.header("x-chaos", "on"),
                1 => req.header("x-chaos", "yes"),
                2 => req.header("x-chaos", "off"),
                _ => req,
            }
        })
        .await;
    for (i, r) in out.results.iter().enumerate() {
        let r = r
            .as_ref()
            .map_err(|e| anyhow::anyhow!("request {i}: {e}"))?;
        let (status, reason) = (r.status, r.reason());
        if i % 4 < 2 {
            ensure!(
                status == 418 && reason.as_deref() == Some("fault_abort"),
                "request {i} carries the header: want 418 fault_abort, got {status} {reason:?}"
            );
        } else {
            ensure!(
                status == 200 && r.instance().as_deref() == Some(ID),
                "request {i} does not match: want the backend's 200, got {status} {reason:?}"
            );
        }
    }
    ensure!(
        mesh.backend.backend.received() - before == 50,
        "the backend must see exactly the 50 requests without the header"
    );
    mesh.log.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delays_hit_their_percentage_and_hold_a_request_at_least_the_delay() -> anyhow::Result<()> {
    let mesh = Mesh::start("faults_delay").await?;
    let slow = Duration::from_millis(300);
    let yaml = format!(
        "{}---\n{}",
        policy(SERVICE, "{ delay: { fixedDelay: 2ms, percentage: 30 } }"),
        route(&rule("/slow", Some("{ delay: { fixedDelay: 300ms } }")))
    );
    mesh.apply(&yaml, "default", "per_million: 300000").await?;
    wait_for_route_policy(&mesh.caller.sidecar, SERVICE, "echo-faults/0", "300ms").await?;
    const N: usize = 1000;
    let before = mesh.backend.backend.received();
    let out = mesh
        .client
        .run(N, 8, |i| Req::get(SERVICE, &format!("/d/{i}")))
        .await;
    ensure!(
        out.failures().is_empty(),
        "delayed requests are still served: {}",
        out.summary()
    );
    ensure!(mesh.backend.backend.received() - before == N);
    let delayed = mesh.faults(SERVICE, "delay").await?;
    mesh.log
        .note(&format!("{N} requests at 30% delay: {delayed} delayed"));
    within_binomial(delayed as usize, N, 0.3).map_err(anyhow::Error::msg)?;
    ensure!(mesh.faults(SERVICE, "abort").await? == 0.0);

    // The rule's 100% delay replaces the service's 30%: every /slow request is delayed and
    // takes at least the delay (a lower bound only).
    for i in 0..5 {
        let sent = Instant::now();
        let reply = mesh
            .client
            .send(&Req::get(SERVICE, &format!("/slow/{i}")))
            .await?;
        let took = sent.elapsed();
        ensure!(reply.status == 200, "/slow/{i}: {}", reply.status);
        ensure!(
            took >= slow,
            "/slow/{i} answered after {took:?}, before its {slow:?} delay"
        );
    }
    ensure!(
        mesh.faults(SERVICE, "delay").await? == delayed + 5.0,
        "each /slow request is counted as delayed"
    );
    mesh.log.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rules_faults_replace_the_services() -> anyhow::Result<()> {
    let mesh = Mesh::start("faults_override").await?;
    let rules = [
        rule("/calm", Some("{}")),
        rule(
            "/teapot",
            Some("{ abort: { httpStatus: 418, percentage: 100 } }"),
        ),
        rule("/plain", None),
    ];
    let yaml = format!(
        "{}---\n{}",
        policy(SERVICE, "{ abort: { httpStatus: 503 } }"),
        route(&rules.concat())
    );
    mesh.apply(&yaml, "echo-faults/1", "418").await?;
    wait_for_route_policy(&mesh.caller.sidecar, SERVICE, "default", "503").await?;
    let want: [(&str, u16, Option<&str>); 4] = [
        ("/calm/x", 200, None),
        ("/teapot/x", 418, Some("fault_abort")),
        ("/plain/x", 503, Some("fault_abort")),
        ("/other", 503, Some("fault_abort")),
    ];
    for (path, status, reason) in want {
        let reply = mesh.client.send(&Req::get(SERVICE, path)).await?;
        ensure!(
            reply.status == status && reply.reason().as_deref() == reason,
            "{path}: want {status} {reason:?}, got {} {:?}",
            reply.status,
            reply.reason()
        );
    }
    mesh.log.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_callers_get_the_injected_grpc_status() -> anyhow::Result<()> {
    let log = TestLog::new("faults_grpc")?;
    let control = ControlPlane::start(BIN, &log, &log.dir().join("data")).await?;
    let server = GrpcEchoServer::start("grpc-1").await?;
    let _server_sidecar = Sidecar::start(
        BIN,
        &log,
        &control.url(),
        "greeter",
        server.port(),
        SidecarOpts::default().id("grpc-1").protocol("grpc"),
    )
    .await?;
    control
        .apply_yaml(
            "apiVersion: trellis.dev/v1alpha1\nkind: Service\nmetadata: { name: greeter }\nspec: { protocol: grpc }\n",
        )
        .await?;
    let caller = client_side(&log, &control).await?;
    let client_sidecar = &caller.sidecar;
    let mut client = client_via(client_sidecar.outbound(), "greeter").await?;
    let call = |message: &str| EchoRequest {
        message: message.into(),
        ..Default::default()
    };
    wait_until(
        DEADLINE,
        "a gRPC call through the sidecars to succeed",
        || {
            let mut c = client.clone();
            async move { c.unary(call("ping")).await.is_ok() }
        },
    )
    .await?;

    control
        .apply_yaml(&policy(
            "greeter",
            "{ abort: { grpcStatus: RESOURCE_EXHAUSTED, percentage: 100 } }",
        ))
        .await?;
    wait_for_route_policy(client_sidecar, "greeter", "default", "Grpc(8)").await?;
    let status = match client.unary(call("hello")).await {
        Ok(r) => anyhow::bail!("an aborted call succeeded: {:?}", r.into_inner()),
        Err(s) => s,
    };
    ensure!(
        status.code() == tonic::Code::ResourceExhausted,
        "want RESOURCE_EXHAUSTED, got {status:?}"
    );
    ensure!(
        status
            .metadata()
            .get("x-trellis-reason")
            .and_then(|v| v.to_str().ok())
            == Some("fault_abort"),
        "the abort names its reason: {:?}",
        status.metadata()
    );
    ensure!(
        status.message().contains("fault"),
        "grpc-message: {status:?}"
    );

    // An HTTP-status abort reaches a gRPC caller as the matching gRPC status (503 →
    // UNAVAILABLE), as Envoy maps it.
    control
        .apply_yaml(&policy("greeter", "{ abort: { httpStatus: 503 } }"))
        .await?;
    wait_for_route_policy(client_sidecar, "greeter", "default", "Http(503)").await?;
    let status = client
        .unary(call("again"))
        .await
        .err()
        .context("an aborted call succeeded")?;
    ensure!(
        status.code() == tonic::Code::Unavailable,
        "want UNAVAILABLE, got {status:?}"
    );
    log.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_faults_block_is_rejected_naming_the_field() -> anyhow::Result<()> {
    let log = TestLog::new("faults_bad")?;
    let control = ControlPlane::start(BIN, &log, &log.dir().join("data")).await?;
    let cases = [
        (
            policy(SERVICE, "{ abort: { httpStatus: 503, percentage: 120 } }"),
            "spec.faults.abort.percentage: 120 is out of range",
        ),
        (
            policy(SERVICE, "{ abort: { httpStatus: 503, grpcStatus: 14 } }"),
            "spec.faults.abort: sets both `httpStatus` and `grpcStatus`",
        ),
        (
            policy(SERVICE, "{ delay: { fixedDelay: 1 } }"),
            "spec.faults.delay.fixedDelay",
        ),
    ];
    for (yaml, want) in cases {
        let err = control
            .apply_yaml(&yaml)
            .await
            .err()
            .with_context(|| format!("{yaml} was accepted"))?;
        let text = format!("{err:#}");
        ensure!(text.contains("status 400"), "{text}");
        ensure!(text.contains(want), "want {want:?} in {text}");
    }
    let stored = control.get_json("/v1/resources").await?;
    ensure!(
        !stored.to_string().contains("faults"),
        "nothing was stored: {stored}"
    );
    log.passed();
    Ok(())
}
