//! End-to-end active health checks and locality failover, both in the calling sidecar.
//!
//! Backends are echo apps behind their own sidecars, which run no app health check of their
//! own (no `--health-check`): the registry keeps every instance passing, so the endpoint
//! stays in EDS and only the caller's active check can take it out. An app is made to fail
//! only `GET /healthz` while it keeps serving other requests; the assertions count which
//! instances answer and read the caller's config dump and metrics. Nothing is timed.

use anyhow::ensure;
use trellis_testkit::{
    Caller, Client, ControlPlane, DEADLINE, EchoServer, Instance, Req, Sidecar, SidecarOpts,
    TestLog, dump_cluster, dump_endpoints, traffic_policy, wait_for_proxy_config,
    wait_for_traffic_to,
};

const BIN: &str = env!("CARGO_BIN_EXE_trellis");
const SERVICE: &str = "echo";

struct Mesh {
    instances: Vec<Instance>,
    caller: Sidecar,
    _caller_app: EchoServer,
    control: ControlPlane,
    client: Client,
    log: TestLog,
}

impl Mesh {
    /// Backends `(id, zone)`, and a caller in `caller_zone`.
    async fn start(
        test: &str,
        backends: &[(&str, &str)],
        caller_zone: &str,
    ) -> anyhow::Result<Self> {
        let log = TestLog::new(test)?;
        let control = ControlPlane::start(BIN, &log, &log.dir().join("data")).await?;
        let mut instances = Vec::new();
        for (id, zone) in backends {
            let opts = SidecarOpts::default().zone(zone);
            instances.push(
                Instance::start(
                    BIN,
                    &log,
                    &control.url(),
                    SERVICE,
                    id,
                    Default::default(),
                    opts,
                )
                .await?,
            );
        }
        let Caller {
            sidecar: caller,
            client,
            app: caller_app,
        } = Caller::of(
            BIN,
            &log,
            &control.url(),
            "caller",
            SidecarOpts::default().zone(caller_zone),
        )
        .await?;
        let ids: Vec<&str> = backends.iter().map(|(id, _)| *id).collect();
        wait_for_traffic_to(&client, SERVICE, &ids, DEADLINE).await?;
        Ok(Mesh {
            instances,
            caller,
            _caller_app: caller_app,
            control,
            client,
            log,
        })
    }

    fn backend(&self, id: &str) -> &EchoServer {
        &self
            .instances
            .iter()
            .find(|i| i.id() == id)
            .expect("a started instance")
            .backend
    }

    async fn apply_policy(&self, spec: &str) -> anyhow::Result<()> {
        let yaml = traffic_policy(SERVICE, spec);
        self.log.note(&format!("apply TrafficPolicy:\n{yaml}"));
        self.control.apply_yaml(&yaml).await?;
        Ok(())
    }

    /// Waits until the caller's config dump shows every endpoint of `echo` with `health`
    /// as `expected` says (by instance id), and returns the dump.
    async fn wait_for_health(
        &self,
        what: &str,
        expected: impl Fn(&str) -> &'static str,
    ) -> anyhow::Result<serde_json::Value> {
        wait_for_proxy_config(self.caller.admin(), DEADLINE, what, |dump| {
            let eps = dump_cluster(dump, SERVICE)
                .and_then(|c| c.get("endpoints")?.as_array().cloned())
                .unwrap_or_default();
            eps.len() == self.instances.len()
                && eps.iter().all(|e| {
                    let id = e.get("instance_id").and_then(|v| v.as_str()).unwrap_or("");
                    e.get("health").and_then(|v| v.as_str()) == Some(expected(id))
                })
        })
        .await
    }

    /// Sends `n` requests; all must succeed and none reach `unhealthy`. Returns the
    /// answers per instance.
    async fn run_avoiding(
        &self,
        n: usize,
        what: &str,
        unhealthy: &str,
    ) -> anyhow::Result<std::collections::BTreeMap<String, usize>> {
        let prefix = format!("/{what}/");
        let out = self
            .client
            .run(n, 4, move |i| Req::get(SERVICE, &format!("{prefix}{i}")))
            .await;
        ensure!(
            out.failures().is_empty(),
            "requests failed: {}",
            out.summary()
        );
        let per = out.per_instance();
        self.log
            .note(&format!("{what}, {unhealthy} unhealthy: {per:?}"));
        ensure!(
            !per.contains_key(unhealthy),
            "the unhealthy endpoint got traffic: {per:?}"
        );
        Ok(per)
    }

    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
        self.caller.metric_sum(name, labels).await
    }
}

const CHECK: &str = "  healthCheck:
    http: { path: /healthz, expectedStatuses: [200] }
    interval: 200ms
    timeout: 150ms
    healthyThreshold: 2
    unhealthyThreshold: 2
";

#[tokio::test]
async fn the_caller_stops_sending_to_an_endpoint_that_fails_its_check_and_readmits_it()
-> anyhow::Result<()> {
    let ids = ["hc-a", "hc-b", "hc-c"];
    let mesh = Mesh::start(
        "active_health_http",
        &[("hc-a", "z1"), ("hc-b", "z1"), ("hc-c", "z1")],
        "z1",
    )
    .await?;
    mesh.apply_policy(CHECK).await?;
    mesh.wait_for_health("every endpoint checked healthy", |_| "healthy")
        .await?;
    let victim = "hc-b";
    // Checks reach the apps through their sidecars (over mTLS, as the caller's identity).
    ensure!(
        mesh.backend(victim).health_checks() > 0,
        "the victim was never checked"
    );

    mesh.log
        .note("the victim's app fails /healthz (and serves everything else)");
    mesh.backend(victim).set_health(503);
    let dump = mesh
        .wait_for_health("the victim to be unhealthy", |id| {
            if id == victim { "unhealthy" } else { "healthy" }
        })
        .await?;
    // Still registered and in EDS: the registry did not take it out, the caller's check did.
    ensure!(
        dump_endpoints(&dump, SERVICE).contains(victim),
        "the victim left EDS: {dump}"
    );
    ensure!(
        mesh.metric(
            "trellis_upstream_unhealthy_endpoints",
            &[("cluster", SERVICE)]
        )
        .await?
            == 1.0,
        "the unhealthy gauge does not say 1"
    );
    ensure!(
        mesh.metric(
            "trellis_upstream_health_checks_total",
            &[("cluster", SERVICE), ("result", "failure")]
        )
        .await?
            >= 2.0,
        "no failed check counted"
    );
    let before = mesh.backend(victim).received();
    let per = mesh.run_avoiding(150, "while-unhealthy", victim).await?;
    ensure!(per.len() == 2, "both healthy endpoints serve: {per:?}");
    ensure!(
        mesh.backend(victim).received() == before,
        "a request reached the unhealthy endpoint"
    );

    mesh.log.note("the victim recovers");
    mesh.backend(victim).set_health(200);
    mesh.wait_for_health("the victim to be healthy again", |_| "healthy")
        .await?;
    wait_for_traffic_to(&mesh.client, SERVICE, &ids, DEADLINE).await?;
    ensure!(
        mesh.metric(
            "trellis_upstream_unhealthy_endpoints",
            &[("cluster", SERVICE)]
        )
        .await?
            == 0.0,
        "the unhealthy gauge does not say 0"
    );
    mesh.log.passed();
    Ok(())
}

#[tokio::test]
async fn traffic_stays_in_the_callers_zone_and_spills_when_too_few_are_healthy()
-> anyhow::Result<()> {
    let mesh = Mesh::start(
        "active_health_locality",
        &[
            ("za-1", "zone-a"),
            ("za-2", "zone-a"),
            ("zb-1", "zone-b"),
            ("zb-2", "zone-b"),
        ],
        "zone-a",
    )
    .await?;
    mesh.apply_policy(&format!(
        "  loadBalancer: {{ localityFailover: {{ spilloverThreshold: 70 }} }}\n{CHECK}"
    ))
    .await?;
    wait_for_proxy_config(
        mesh.caller.admin(),
        DEADLINE,
        "the caller to have zone-a at priority 0 and zone-b at priority 1",
        |dump| {
            let Some(c) = dump_cluster(dump, SERVICE) else {
                return false;
            };
            let prio = |zone: &str| -> Vec<u64> {
                c.get("endpoints")
                    .and_then(|e| e.as_array())
                    .into_iter()
                    .flatten()
                    .filter(|e| e.get("zone").and_then(|z| z.as_str()) == Some(zone))
                    .filter_map(|e| e.get("priority")?.as_u64())
                    .collect()
            };
            prio("zone-a") == [0, 0]
                && prio("zone-b") == [1, 1]
                && c.get("overprovisioning_factor").and_then(|f| f.as_u64()) == Some(143)
        },
    )
    .await?;
    mesh.wait_for_health("every endpoint checked healthy", |_| "healthy")
        .await?;
    wait_for_traffic_to(&mesh.client, SERVICE, &["za-1", "za-2"], DEADLINE).await?;

    // One of two local endpoints down: 50% healthy < 70% → 50 × 1.43 = 71.5% stays local.
    mesh.backend("za-1").set_health(503);
    mesh.wait_for_health("za-1 to be unhealthy", |id| {
        if id == "za-1" { "unhealthy" } else { "healthy" }
    })
    .await?;
    let n = 600;
    let per = mesh.run_avoiding(n, "spill", "za-1").await?;
    let remote = per.get("zb-1").copied().unwrap_or(0) + per.get("zb-2").copied().unwrap_or(0);
    let share = remote as f64 / n as f64;
    // Expected 28.5%; binomial spread at n = 600 is about ±2%, so ±8% is a wide margin.
    ensure!(
        (0.205..=0.365).contains(&share),
        "zone-b got {:.1}% of the traffic, expected about 28.5%: {per:?}",
        share * 100.0
    );

    // Restored: back to the local zone only.
    mesh.backend("za-1").set_health(200);
    mesh.wait_for_health("za-1 to be healthy again", |_| "healthy")
        .await?;
    wait_for_traffic_to(&mesh.client, SERVICE, &["za-1", "za-2"], DEADLINE).await?;
    mesh.log.passed();
    Ok(())
}
