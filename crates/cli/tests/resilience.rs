//! End-to-end failure recovery on the outbound path: three echo backends behind their own
//! sidecars (service `echo`) and a client sidecar, with a TrafficPolicy for `echo`; then a
//! backend's sidecar is SIGKILLed, an app hangs, every app fails, or the backends are slow
//! under a circuit breaker. The assertions count requests and answers (at the client and at
//! the backends) and read the client sidecar's metrics; none times anything.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use trellis_testkit::{
    Client, ControlPlane, DEADLINE, EchoServer, Instance, Req, Sidecar, SidecarOpts, TestLog,
    dump_cluster, wait_for_proxy_config, wait_for_traffic_to, wait_until,
};

const BIN: &str = env!("CARGO_BIN_EXE_trellis");
const SERVICE: &str = "echo";
const IDS: [&str; 3] = ["echo-a", "echo-b", "echo-c"];

struct Mesh {
    instances: Vec<Instance>,
    client_sidecar: Sidecar,
    _client_app: EchoServer,
    control: ControlPlane,
    client: Client,
    log: TestLog,
}

impl Mesh {
    async fn start(test: &str, latency: Duration) -> anyhow::Result<Self> {
        let log = TestLog::new(test)?;
        let control = ControlPlane::start(BIN, &log, &log.dir().join("data")).await?;
        let mut instances = Vec::new();
        for id in IDS {
            // A long TTL: a dead sidecar stays registered, so only outlier detection can
            // take it out of the client's rotation during the test.
            let opts = SidecarOpts::default().ttl("10m");
            instances.push(
                Instance::start(BIN, &log, &control.url(), SERVICE, id, latency, opts).await?,
            );
        }
        let client_app = EchoServer::start("client-app").await?;
        let client_sidecar = Sidecar::start(
            BIN,
            &log,
            &control.url(),
            "client",
            client_app.port(),
            SidecarOpts::default().id("client-1"),
        )
        .await?;
        let client = Client::new(client_sidecar.outbound());
        wait_for_traffic_to(&client, SERVICE, &IDS, DEADLINE).await?;
        Ok(Self {
            instances,
            client_sidecar,
            _client_app: client_app,
            control,
            client,
            log,
        })
    }

    /// Applies `spec` (indented under `spec:`) for `echo` and waits until the client sidecar
    /// has the resilience policy on its cluster and its default route.
    async fn apply_policy(&self, spec: &str) -> anyhow::Result<()> {
        let yaml = format!(
            "apiVersion: trellis.dev/v1alpha1\nkind: TrafficPolicy\nmetadata:\n  name: {SERVICE}\n\
             spec:\n  targetRef: {{ name: {SERVICE} }}\n{spec}"
        );
        self.log.note(&format!("apply TrafficPolicy:\n{yaml}"));
        self.control.apply_yaml(&yaml).await?;
        let route_policy = spec.contains("retries") || spec.contains("timeouts");
        let cluster_policy = ["retries", "outlierDetection", "circuitBreakers"]
            .iter()
            .any(|f| spec.contains(f));
        wait_for_proxy_config(
            self.client_sidecar.admin(),
            DEADLINE,
            "the client sidecar to run the resilience policy of `echo`",
            |dump| {
                let cluster = dump_cluster(dump, SERVICE)
                    .and_then(|c| c.get("resilience"))
                    .is_some_and(|r| !r.is_null());
                let route = dump
                    .pointer("/routes")
                    .and_then(|r| r.as_array())
                    .into_iter()
                    .flatten()
                    .filter(|vh| vh.get("name").and_then(|n| n.as_str()) == Some(SERVICE))
                    .flat_map(|vh| {
                        vh.get("routes")
                            .and_then(|r| r.as_array())
                            .cloned()
                            .unwrap_or_default()
                    })
                    .any(|r| r.get("resilience").is_some_and(|p| !p.is_null()));
                (cluster || !cluster_policy) && (route || !route_policy)
            },
        )
        .await?;
        Ok(())
    }

    async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        self.client_sidecar
            .metric_sum(name, &[("destination_service", SERVICE)])
            .await
    }

    fn received(&self) -> usize {
        self.instances.iter().map(|i| i.backend.received()).sum()
    }
}

const RETRY_TO_OTHERS: &str = "  retries:
    attempts: 2
    retryOn: [connect-failure, reset, gateway-error]
    backoff: { baseInterval: 5ms, maxInterval: 20ms }
    budget: { percent: 100, minRetriesPerSecond: 100 }
";

#[tokio::test]
async fn a_killed_backend_costs_no_request_and_is_ejected() -> anyhow::Result<()> {
    let mut mesh = Mesh::start("resilience_sigkill", Duration::ZERO).await?;
    mesh.apply_policy(&format!(
        "{RETRY_TO_OTHERS}  outlierDetection: {{ consecutiveGatewayErrors: 2, baseEjectionTime: 5m, maxEjectionPercent: 34 }}\n"
    ))
    .await?;
    let client = mesh.client;
    let load = tokio::spawn(async move {
        client
            .run(600, 4, |i| Req::get(SERVICE, &format!("/steady/{i}")))
            .await
    });
    // Mid-run: once the victim has served part of the load, kill its sidecar.
    let victim = 1;
    let backend_hits = || mesh.instances[victim].backend.hits();
    wait_until(DEADLINE, "the victim to serve part of the load", || {
        let n = backend_hits();
        async move { n >= 30 }
    })
    .await?;
    mesh.log.note("SIGKILL the victim's sidecar");
    mesh.instances[victim].sidecar.process().sigkill().await?;
    let out = load.await.context("load task")?;
    mesh.log.note(&format!("steady load: {:?}", out.tally()));
    ensure!(
        out.failures().is_empty(),
        "requests failed: {:?}",
        out.tally()
    );

    // Outlier detection has ejected the dead endpoint: from then on no try goes to it, so
    // nothing fails to connect and nothing is retried.
    wait_until(DEADLINE, "the dead endpoint to be ejected", || async {
        mesh.metric("trellis_outlier_ejections_total")
            .await
            .unwrap_or(0.0)
            >= 1.0
    })
    .await?;
    let retries = mesh.metric("trellis_upstream_retries_total").await?;
    let connect_errors = mesh.metric("trellis_upstream_connect_errors_total").await?;
    let out = mesh
        .client
        .run(300, 4, |i| Req::get(SERVICE, &format!("/after/{i}")))
        .await;
    ensure!(
        out.failures().is_empty(),
        "requests failed: {:?}",
        out.tally()
    );
    let per = out.per_instance();
    mesh.log.note(&format!("after the ejection: {per:?}"));
    ensure!(
        !per.contains_key(IDS[victim]),
        "the dead instance answered: {per:?}"
    );
    ensure!(
        mesh.metric("trellis_upstream_retries_total").await? == retries
            && mesh.metric("trellis_upstream_connect_errors_total").await? == connect_errors,
        "tries still went to the ejected endpoint (retries or connect errors grew)"
    );
    ensure!(per.len() == 2, "both live instances keep serving: {per:?}");
    mesh.log.passed();
    Ok(())
}

#[tokio::test]
async fn a_hanging_app_times_out_per_try_is_ejected_and_readmitted() -> anyhow::Result<()> {
    let mesh = Mesh::start("resilience_hang", Duration::ZERO).await?;
    mesh.apply_policy(&format!(
        "  timeouts: {{ backendRequest: 300ms }}\n{RETRY_TO_OTHERS}  outlierDetection: {{ consecutiveGatewayErrors: 2, baseEjectionTime: 2s, maxEjectionPercent: 34 }}\n"
    ))
    .await?;
    let victim = &mesh.instances[2].backend;
    mesh.log.note("hang the victim's app");
    victim.hang(true);
    let out = mesh
        .client
        .run(200, 4, |i| Req::get(SERVICE, &format!("/hang/{i}")))
        .await;
    mesh.log
        .note(&format!("with a hanging app: {:?}", out.tally()));
    ensure!(
        out.failures().is_empty(),
        "requests failed: {:?}",
        out.tally()
    );
    ensure!(victim.received() > 0, "the hanging app was never tried");
    ensure!(
        mesh.metric("trellis_outlier_ejections_total").await? >= 1.0,
        "the hanging endpoint was not ejected"
    );
    // Released, it gets requests again once its ejection time is over.
    victim.hang(false);
    let seen = victim.received();
    wait_until(
        DEADLINE,
        "the readmitted endpoint to receive requests again",
        || async {
            let out = mesh
                .client
                .run(30, 3, |i| Req::get(SERVICE, &format!("/back/{i}")))
                .await;
            out.failures().is_empty() && victim.received() > seen
        },
    )
    .await?;
    mesh.log.passed();
    Ok(())
}

#[tokio::test]
async fn when_every_backend_fails_retries_stay_within_the_budget() -> anyhow::Result<()> {
    let mesh = Mesh::start("resilience_budget", Duration::ZERO).await?;
    mesh.apply_policy(
        "  retries:
    attempts: 3
    retryOn: [5xx]
    backoff: { baseInterval: 1ms, maxInterval: 2ms }
    budget: { percent: 20, minRetriesPerSecond: 3 }
",
    )
    .await?;
    for i in &mesh.instances {
        i.backend.fail_with(503);
    }
    let before = mesh.received();
    let requests = 300;
    let started = Instant::now();
    let out = mesh
        .client
        .run(requests, 4, |i| Req::get(SERVICE, &format!("/down/{i}")))
        .await;
    // Only to size the floor's share of the bound (retries per second), not asserted.
    let windows = started.elapsed().as_secs() as usize + 2;
    let attempts = mesh.received() - before;
    let t = out.tally();
    mesh.log.note(&format!(
        "all failing: {t:?}, {attempts} attempts in {windows} windows"
    ));
    // Each request gets the last upstream answer (a 503 from an app, not a local reply).
    ensure!(t.get("503 ").copied() == Some(requests), "answers: {t:?}");
    let bound = requests + requests * 20 / 100 + 3 * windows;
    ensure!(
        attempts > requests,
        "no retry happened at all ({attempts} attempts)"
    );
    ensure!(
        attempts <= bound,
        "retry storm: {attempts} attempts for {requests} requests (bound {bound})"
    );
    mesh.log.passed();
    Ok(())
}

#[tokio::test]
async fn the_circuit_breaker_refuses_only_over_its_limit() -> anyhow::Result<()> {
    let mesh = Mesh::start("resilience_breaker", Duration::from_millis(200)).await?;
    mesh.apply_policy("  circuitBreakers: { maxRequests: 4 }\n")
        .await?;
    // Below the limit: nothing is refused.
    let out = mesh
        .client
        .run(24, 3, |i| Req::get(SERVICE, &format!("/below/{i}")))
        .await;
    mesh.log.note(&format!("3 in flight: {:?}", out.tally()));
    ensure!(
        out.failures().is_empty(),
        "refused below the limit: {:?}",
        out.tally()
    );
    // Far above it: the overflow is answered at once with 503 circuit_open, the rest served.
    let out = mesh
        .client
        .run(48, 16, |i| Req::get(SERVICE, &format!("/above/{i}")))
        .await;
    let t = out.tally();
    mesh.log.note(&format!("16 in flight: {t:?}"));
    let open = t.get("503 circuit_open").copied().unwrap_or(0);
    let ok = t.get("200 ").copied().unwrap_or(0);
    ensure!(open > 0, "nothing refused above the limit: {t:?}");
    ensure!(
        ok > 0 && ok + open == 48,
        "only circuit_open refusals expected: {t:?}"
    );
    ensure!(
        mesh.client_sidecar
            .metric_sum(
                "trellis_requests_total",
                &[("destination_service", SERVICE), ("reason", "circuit_open")]
            )
            .await?
            == open as f64,
        "the request metric counts the refusals under reason=circuit_open"
    );
    mesh.log.passed();
    Ok(())
}

#[tokio::test]
async fn timeouts_answer_504_and_grpc_callers_deadline_exceeded() -> anyhow::Result<()> {
    let mesh = Mesh::start("resilience_timeouts", Duration::ZERO).await?;
    for i in &mesh.instances {
        i.backend.hang(true);
    }
    // No policy at all: a gRPC caller's grpc-timeout is still honoured.
    let h2 = mesh
        .client
        .with_addressing(trellis_testkit::Addressing::H2c);
    let grpc_req = |timeout: &str| {
        Req::get(SERVICE, "/pkg.Svc/Call")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-timeout", timeout)
    };
    let reply = h2.send(&grpc_req("300m")).await?;
    let grpc_status = |r: &trellis_testkit::Reply| {
        r.headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    ensure!(
        reply.status == 200
            && grpc_status(&reply).as_deref() == Some("4")
            && reply.reason().as_deref() == Some("upstream_timeout"),
        "a gRPC caller past its deadline gets DEADLINE_EXCEEDED: {} {:?} {:?}",
        reply.status,
        reply.headers,
        reply.body
    );
    // The route's timeout for everyone else, and for a malformed grpc-timeout (ignored).
    mesh.apply_policy("  timeouts: { request: 300ms }\n")
        .await?;
    let reply = mesh.client.send(&Req::get(SERVICE, "/slow")).await?;
    ensure!(
        reply.status == 504 && reply.reason().as_deref() == Some("upstream_timeout"),
        "a timed-out request gets 504 upstream_timeout: {} {:?}",
        reply.status,
        reply.reason()
    );
    let reply = h2.send(&grpc_req("1x")).await?;
    ensure!(
        grpc_status(&reply).as_deref() == Some("4"),
        "a malformed grpc-timeout is ignored, the route's applies: {:?}",
        reply.headers
    );
    ensure!(
        mesh.client_sidecar
            .metric_sum(
                "trellis_requests_total",
                &[
                    ("destination_service", SERVICE),
                    ("reason", "upstream_timeout")
                ]
            )
            .await?
            == 3.0,
        "the request metric counts the timeouts under reason=upstream_timeout"
    );
    for i in &mesh.instances {
        i.backend.hang(false);
    }
    mesh.log.passed();
    Ok(())
}

#[tokio::test]
async fn bodies_are_replayed_up_to_the_buffer_limit_and_larger_ones_are_not_retried()
-> anyhow::Result<()> {
    let mesh = Mesh::start("resilience_bodies", Duration::ZERO).await?;
    mesh.apply_policy(
        "  retries:
    attempts: 2
    retryOn: [5xx]
    retryNonIdempotent: true
    maxBufferBytes: 1024
    backoff: { baseInterval: 1ms, maxInterval: 2ms }
    budget: { percent: 100, minRetriesPerSecond: 1000 }
",
    )
    .await?;
    let victim = &mesh.instances[0].backend;
    victim.fail_with(503);
    // Small bodies: a POST that meets the failing app is replayed, whole, to another one.
    let small = vec![b'x'; 100];
    let out = mesh
        .client
        .run(30, 1, move |i| {
            Req::post(SERVICE, &format!("/small/{i}"), small.clone())
        })
        .await;
    mesh.log.note(&format!("small bodies: {:?}", out.tally()));
    ensure!(
        out.failures().is_empty(),
        "small POSTs failed: {:?}",
        out.tally()
    );
    ensure!(victim.received() > 0, "the failing app was never tried");
    for r in out.results.iter().flatten() {
        let len = r.json()?.get("body_len").and_then(|v| v.as_u64());
        ensure!(
            len == Some(100),
            "a replayed body arrived with {len:?} bytes"
        );
    }
    // Bodies over the limit are streamed once: whoever meets the failing app gets its 503.
    let before = victim.received();
    let large = vec![b'y'; 4096];
    let out = mesh
        .client
        .run(30, 1, move |i| {
            Req::post(SERVICE, &format!("/large/{i}"), large.clone())
        })
        .await;
    let t = out.tally();
    mesh.log.note(&format!("large bodies: {t:?}"));
    let refused = t.get("503 ").copied().unwrap_or(0);
    ensure!(refused > 0, "no large POST met the failing app: {t:?}");
    ensure!(
        refused == victim.received() - before
            && refused + t.get("200 ").copied().unwrap_or(0) == 30,
        "large POSTs must not be retried: {t:?}, the failing app received {}",
        victim.received() - before
    );
    mesh.log.passed();
    Ok(())
}
