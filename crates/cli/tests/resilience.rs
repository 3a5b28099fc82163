//! End-to-end failure recovery on the outbound path: three echo backends behind their own
//! sidecars (service `echo`) and a client sidecar, with a TrafficPolicy for `echo`; then a
//! backend's sidecar is SIGKILLed or SIGSTOPped, an app hangs, every app fails, or the backends are slow
//! under a circuit breaker. The assertions count requests and answers (at the client and at
//! the backends) and read the client sidecar's metrics; none times anything.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use trellis_testkit::{
    Caller, Client, ControlPlane, DEADLINE, EchoServer, Instance, Outcomes, Req, Sidecar,
    SidecarOpts, TestLog, dump_cluster, traffic_policy, wait_for_proxy_config, wait_for_traffic_to,
    wait_until,
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
    /// The three backends and the client, with mTLS (HTTP/2 between the sidecars).
    async fn start(test: &str, latency: Duration) -> anyhow::Result<Self> {
        Self::start_with(test, latency, &IDS, false).await
    }

    /// `ids` backends; `plaintext`: no sidecar has an identity (a PERMISSIVE `echo`), so the
    /// client sidecar pools HTTP/1.1 connections to the backends' sidecars.
    async fn start_with(
        test: &str,
        latency: Duration,
        ids: &[&str],
        plaintext: bool,
    ) -> anyhow::Result<Self> {
        let log = TestLog::new(test)?;
        let control = ControlPlane::start(BIN, &log, &log.dir().join("data")).await?;
        let opts = |o: SidecarOpts| if plaintext { o.plaintext() } else { o };
        if plaintext {
            control
                .apply_yaml(&format!(
                    "apiVersion: trellis.dev/v1alpha1\nkind: Service\nmetadata:\n  name: {SERVICE}\n\
                     spec:\n  mtls: {{ mode: PERMISSIVE }}\n"
                ))
                .await?;
        }
        let mut instances = Vec::new();
        for id in ids {
            // A long TTL: a dead sidecar stays registered, so only outlier detection can
            // take it out of the client's rotation during the test.
            let o = opts(SidecarOpts::default().ttl("10m"));
            instances
                .push(Instance::start(BIN, &log, &control.url(), SERVICE, id, latency, o).await?);
        }
        let Caller {
            sidecar: client_sidecar,
            client,
            app: client_app,
        } = Caller::start(BIN, &log, &control.url(), opts(SidecarOpts::default())).await?;
        wait_for_traffic_to(&client, SERVICE, ids, DEADLINE).await?;
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
        let yaml = traffic_policy(SERVICE, spec);
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

    /// 200 requests while instance `victim` is out of order (`what`): none fails, the victim
    /// is ejected.
    async fn all_served_and_ejected(&self, victim: usize, what: &str) -> anyhow::Result<()> {
        let prefix = format!("/{what}");
        let out = self
            .client
            .run(200, 4, move |i| Req::get(SERVICE, &format!("{prefix}/{i}")))
            .await;
        self.log.note(&format!("{what}: {:?}", out.tally()));
        ensure!(
            out.failures().is_empty(),
            "requests failed: {:?}",
            out.tally()
        );
        ensure!(
            self.metric("trellis_outlier_ejections_total").await? >= 1.0,
            "{} was not ejected",
            self.instances[victim].id()
        );
        Ok(())
    }

    /// Waits until instance `victim`, in order again, receives requests and none fails.
    async fn readmitted(&self, victim: usize) -> anyhow::Result<()> {
        let backend = &self.instances[victim].backend;
        let seen = backend.received();
        wait_until(
            DEADLINE,
            "the readmitted endpoint to receive requests again",
            || async {
                let out = self
                    .client
                    .run(30, 3, |i| Req::get(SERVICE, &format!("/back/{i}")))
                    .await;
                out.failures().is_empty() && backend.received() > seen
            },
        )
        .await
    }

    /// A circuit breaker's contract: `within` concurrent requests are all served; sixteen get
    /// only answers from the backends and immediate `503 circuit_open` refusals, some of each.
    /// Returns the second run and its number of refusals.
    async fn refuses_only_over_the_limit(
        &self,
        within: usize,
    ) -> anyhow::Result<(Outcomes, usize)> {
        let out = self
            .client
            .run(24, within, |i| Req::get(SERVICE, &format!("/within/{i}")))
            .await;
        self.log
            .note(&format!("{within} concurrent: {:?}", out.tally()));
        ensure!(
            out.failures().is_empty(),
            "refused within the limit: {:?}",
            out.tally()
        );
        let out = self
            .client
            .run(48, 16, |i| Req::get(SERVICE, &format!("/over/{i}")))
            .await;
        let t = out.tally();
        self.log.note(&format!("16 concurrent: {t:?}"));
        let open = t.get("503 circuit_open").copied().unwrap_or(0);
        let ok = t.get("200 ").copied().unwrap_or(0);
        ensure!(open > 0, "nothing refused over the limit: {t:?}");
        ensure!(
            ok > 0 && ok + open == 48,
            "only circuit_open refusals expected: {t:?}"
        );
        Ok((out, open))
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

/// An app that dies mid-response: a 200 head and half its body came, then the connection
/// broke. While a retry is still possible, the client sidecar reads a small body of known
/// length whole before passing the head on, so the break is retried on another instance
/// instead of reaching the caller as a truncated answer (the SIGKILL test above can land
/// between a head and its body too).
#[tokio::test]
async fn an_answer_broken_off_mid_body_is_retried_not_truncated() -> anyhow::Result<()> {
    let mesh = Mesh::start("resilience_broken_body", Duration::ZERO).await?;
    mesh.apply_policy(RETRY_TO_OTHERS).await?;
    let victim = &mesh.instances[0].backend;
    mesh.log
        .note("the victim's app breaks off every answer halfway");
    let before = victim.received();
    victim.break_bodies(true);
    let out = mesh
        .client
        .run(90, 3, |i| Req::get(SERVICE, &format!("/broken/{i}")))
        .await;
    mesh.log.note(&format!("answers: {:?}", out.per_instance()));
    ensure!(
        out.failures().is_empty(),
        "requests failed: {:?}",
        out.tally()
    );
    let broken = victim.received() - before;
    ensure!(broken > 0, "the breaking app was never tried");
    let per = out.per_instance();
    ensure!(
        !per.contains_key(IDS[0]) && per.values().sum::<usize>() == 90,
        "every answer is whole and from a live instance: {per:?}"
    );
    // Each broken try was retried once, on an instance not tried yet.
    let retries = mesh.metric("trellis_upstream_retries_total").await?;
    ensure!(
        retries == broken as f64,
        "{broken} broken answers but {retries} retries"
    );
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
    mesh.all_served_and_ejected(2, "hanging").await?;
    ensure!(victim.received() > 0, "the hanging app was never tried");
    // Released, it gets requests again once its ejection time is over.
    victim.hang(false);
    mesh.readmitted(2).await?;
    mesh.log.passed();
    Ok(())
}

/// The whole host hangs: the victim's sidecar is SIGSTOPped, so its kernel still accepts
/// connections but nothing answers, neither on pooled connections nor in new handshakes.
#[tokio::test]
async fn a_sigstopped_host_times_out_per_try_is_ejected_and_readmitted_after_sigcont()
-> anyhow::Result<()> {
    let mut mesh = Mesh::start("resilience_sigstop", Duration::ZERO).await?;
    mesh.apply_policy(&format!(
        "  timeouts: {{ connect: 300ms, backendRequest: 300ms }}\n{RETRY_TO_OTHERS}  outlierDetection: {{ consecutiveGatewayErrors: 2, baseEjectionTime: 2s, maxEjectionPercent: 34 }}\n"
    ))
    .await?;
    mesh.log.note("SIGSTOP the victim's sidecar");
    mesh.instances[2].sidecar.process().signal("STOP").await?;
    let stopped_at = mesh.instances[2].backend.received();
    mesh.all_served_and_ejected(2, "stopped").await?;
    ensure!(
        mesh.instances[2].backend.received() == stopped_at,
        "a stopped sidecar forwarded requests"
    );
    ensure!(
        mesh.metric("trellis_upstream_retries_total").await? >= 1.0,
        "no try to the stopped host timed out and was retried"
    );
    let live: usize = mesh.instances[..2]
        .iter()
        .map(|i| i.backend.received())
        .sum();
    ensure!(live >= 200, "the live hosts answered only {live} of 200");
    mesh.log.note("SIGCONT the victim's sidecar");
    mesh.instances[2].sidecar.process().signal("CONT").await?;
    mesh.readmitted(2).await?;
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
    let (_, open) = mesh.refuses_only_over_the_limit(3).await?;
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

/// HTTP/1.1 between the sidecars: a request needs a connection of its own. With two
/// connections and two pending requests allowed, four concurrent requests are all served;
/// sixteen overflow the pending queue, and the overflow is refused at once.
#[tokio::test]
async fn connection_and_pending_limits_queue_then_refuse_http1_requests() -> anyhow::Result<()> {
    let mesh = Mesh::start_with(
        "resilience_connections",
        Duration::from_millis(200),
        &IDS[..1],
        true,
    )
    .await?;
    // Retries and a hair-trigger outlier detector: an overflow counted as an upstream
    // failure would be retried and would eject the only endpoint.
    mesh.apply_policy(&format!(
        "  circuitBreakers: {{ maxConnections: 2, maxPendingRequests: 2 }}\n{RETRY_TO_OTHERS}  outlierDetection: {{ consecutiveGatewayErrors: 1, consecutive5xx: 1 }}\n"
    ))
    .await?;
    let (out, _) = mesh.refuses_only_over_the_limit(4).await?;
    let refusal = out
        .results
        .iter()
        .flatten()
        .find(|r| r.reason() == Some("circuit_open".into()))
        .context("a refusal")?;
    let text = String::from_utf8_lossy(&refusal.body);
    ensure!(
        text.contains("maxPendingRequests"),
        "the refusal names the limit: {text}"
    );
    ensure!(
        mesh.metric("trellis_outlier_ejections_total").await? == 0.0
            && mesh.metric("trellis_upstream_retries_total").await? == 0.0,
        "a local refusal is neither an upstream failure nor retried"
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
