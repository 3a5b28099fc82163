//! End-to-end: every load-balancing algorithm of a TrafficPolicy, measured through real
//! sidecars. A control plane, three echo backends each behind its own sidecar (service
//! `echo`), and a client sidecar whose outbound listener the test sends requests to.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, ensure};
use trellis_testkit::{
    Caller, Client, ControlPlane, DEADLINE, EchoServer, Instance, Req, Sidecar, SidecarOpts,
    TestLog, dump_algorithm, dump_endpoints, wait_for_proxy_config, wait_for_traffic_to,
};

const BIN: &str = env!("CARGO_BIN_EXE_trellis");
const SERVICE: &str = "echo";

/// One backend: id, weight, added latency in ms.
type Spec = (&'static str, u32, u64);

struct Mesh {
    instances: Vec<Instance>,
    client_sidecar: Sidecar,
    _client_app: EchoServer,
    control: ControlPlane,
    client: Client,
    log: TestLog,
}

impl Mesh {
    async fn start(test: &str, specs: &[Spec]) -> anyhow::Result<Self> {
        let log = TestLog::new(test)?;
        let control = ControlPlane::start(BIN, &log, &log.dir().join("data")).await?;
        let mut instances = Vec::new();
        for (id, weight, latency_ms) in specs {
            let opts = SidecarOpts::default().weight(*weight);
            let latency = Duration::from_millis(*latency_ms);
            instances.push(
                Instance::start(BIN, &log, &control.url(), SERVICE, id, latency, opts).await?,
            );
        }
        let Caller {
            sidecar: client_sidecar,
            client,
            app: client_app,
        } = Caller::start(BIN, &log, &control.url(), SidecarOpts::default()).await?;
        let ids: Vec<&str> = specs.iter().map(|s| s.0).collect();
        wait_for_traffic_to(&client, SERVICE, &ids, DEADLINE).await?;
        Ok(Self {
            instances,
            client_sidecar,
            _client_app: client_app,
            control,
            client,
            log,
        })
    }

    /// Applies a TrafficPolicy for `echo` and waits until the client's sidecar runs the
    /// algorithm (its config dump names it).
    async fn apply_policy(&self, load_balancer: &str, algorithm: &str) -> anyhow::Result<()> {
        let yaml = format!(
            "apiVersion: trellis.dev/v1alpha1\nkind: TrafficPolicy\nmetadata:\n  name: {SERVICE}\n\
             spec:\n  targetRef: {{ name: {SERVICE} }}\n  loadBalancer:\n{load_balancer}"
        );
        self.log.note(&format!("apply TrafficPolicy {algorithm}"));
        self.control.apply_yaml(&yaml).await?;
        wait_for_proxy_config(
            self.client_sidecar.admin(),
            DEADLINE,
            &format!("the client sidecar to balance `{SERVICE}` with {algorithm}"),
            |dump| dump_algorithm(dump, SERVICE).is_some_and(|a| a.starts_with(algorithm)),
        )
        .await?;
        Ok(())
    }

    /// `total` requests with `concurrency` workers; fails on any failed request.
    async fn shares(
        &self,
        total: usize,
        concurrency: usize,
    ) -> anyhow::Result<BTreeMap<String, f64>> {
        let out = self
            .client
            .run(total, concurrency, |i| {
                Req::get(SERVICE, &format!("/n/{i}"))
            })
            .await;
        self.log.note(&out.summary());
        ensure!(
            out.failures().is_empty(),
            "requests failed: {}",
            out.summary()
        );
        Ok(out
            .per_instance()
            .into_iter()
            .map(|(k, n)| (k, n as f64 / total as f64))
            .collect())
    }

    /// Which instance answers each of `keys` users (header `x-user`).
    async fn key_map(&self, keys: usize) -> anyhow::Result<Vec<String>> {
        let out = self
            .client
            .run(keys, 6, |i| {
                Req::get(SERVICE, "/k").header("x-user", &format!("user-{i}"))
            })
            .await;
        ensure!(
            out.failures().is_empty(),
            "keyed requests failed: {}",
            out.summary()
        );
        (0..keys)
            .map(|i| {
                out.instance_of(i)
                    .with_context(|| format!("request for user-{i} has no x-instance"))
            })
            .collect()
    }

    fn finish(self) {
        let Mesh {
            instances,
            client_sidecar,
            _client_app,
            control,
            log,
            ..
        } = self;
        drop((instances, client_sidecar, _client_app, control));
        log.passed();
    }
}

fn share(shares: &BTreeMap<String, f64>, id: &str) -> f64 {
    shares.get(id).copied().unwrap_or(0.0)
}

const EVEN: [Spec; 3] = [("b1", 1, 0), ("b2", 1, 0), ("b3", 1, 0)];
/// b3 adds 50 ms to every answer.
const ONE_SLOW: [Spec; 3] = [("b1", 1, 0), ("b2", 1, 0), ("b3", 1, 50)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_is_even() -> anyhow::Result<()> {
    let mesh = Mesh::start("lb-round-robin", &EVEN).await?;
    mesh.apply_policy("    algorithm: RoundRobin\n", "RoundRobin")
        .await?;
    let shares = mesh.shares(3000, 4).await?;
    for (id, ..) in EVEN {
        let s = share(&shares, id);
        ensure!(
            (s - 1.0 / 3.0).abs() < 0.01,
            "round robin: {id} got {s:.4}, want 1/3 ± 0.01: {shares:?}"
        );
    }
    mesh.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_spreads_over_all() -> anyhow::Result<()> {
    let mesh = Mesh::start("lb-random", &EVEN).await?;
    mesh.apply_policy("    algorithm: Random\n", "Random")
        .await?;
    let shares = mesh.shares(3000, 4).await?;
    for (id, ..) in EVEN {
        let s = share(&shares, id);
        ensure!(
            (0.25..=0.42).contains(&s),
            "random: {id} got {s:.4}, want 0.25..=0.42: {shares:?}"
        );
    }
    mesh.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_follows_instance_weights() -> anyhow::Result<()> {
    let specs = [("b1", 1, 0), ("b2", 2, 0), ("b3", 3, 0)];
    let mesh = Mesh::start("lb-weighted", &specs).await?;
    mesh.apply_policy("    algorithm: Weighted\n", "Weighted")
        .await?;
    let shares = mesh.shares(3000, 4).await?;
    for (id, weight, _) in specs {
        let (s, want) = (share(&shares, id), f64::from(weight) / 6.0);
        ensure!(
            (s - want).abs() < 0.03,
            "weighted: {id} (weight {weight}) got {s:.4}, want {want:.4} ± 0.03: {shares:?}"
        );
    }
    mesh.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_avoids_the_slow_instance() -> anyhow::Result<()> {
    let mesh = Mesh::start("lb-least-request", &ONE_SLOW).await?;
    mesh.apply_policy("    algorithm: LeastRequest\n", "LeastRequest")
        .await?;
    let shares = mesh.shares(1500, 12).await?;
    let slow = share(&shares, "b3");
    ensure!(
        slow < 0.25,
        "least request: the slow instance got {slow:.4} of the requests, want < 0.25: {shares:?}"
    );
    mesh.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_ewma_avoids_the_slow_instance() -> anyhow::Result<()> {
    let mesh = Mesh::start("lb-peak-ewma", &ONE_SLOW).await?;
    mesh.apply_policy("    algorithm: PeakEwma\n", "PeakEwma")
        .await?;
    let shares = mesh.shares(1500, 12).await?;
    let slow = share(&shares, "b3");
    ensure!(
        slow < 0.20,
        "peak EWMA: the slow instance got {slow:.4} of the requests, want < 0.20: {shares:?}"
    );
    mesh.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_is_sticky_and_stable() -> anyhow::Result<()> {
    let mesh = Mesh::start("lb-ring-hash", &EVEN).await?;
    mesh.apply_policy(
        "    algorithm: RingHash\n    hashKey: { header: x-user }\n",
        "RingHash",
    )
    .await?;
    hash_stability(mesh, 1.0).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maglev_is_sticky_and_stable() -> anyhow::Result<()> {
    let mesh = Mesh::start("lb-maglev", &EVEN).await?;
    mesh.apply_policy(
        "    algorithm: Maglev\n    hashKey: { header: x-user }\n",
        "Maglev",
    )
    .await?;
    // Maglev trades a little disruption for its even table: a few keys of surviving
    // instances may move.
    hash_stability(mesh, 0.95).await
}

/// Keys stick to one instance; removing one of three instances (SIGTERM on its sidecar) moves
/// its keys and, of the others, keeps at least `min_kept` on their instance.
async fn hash_stability(mut mesh: Mesh, min_kept: f64) -> anyhow::Result<()> {
    const KEYS: usize = 300;
    let before = mesh.key_map(KEYS).await?;
    let again = mesh.key_map(KEYS).await?;
    let flapped = (0..KEYS).filter(|&i| before[i] != again[i]).count();
    ensure!(
        flapped == 0,
        "{flapped} of {KEYS} keys changed instance without any membership change"
    );
    for (id, ..) in EVEN {
        let n = before.iter().filter(|x| *x == id).count();
        ensure!(
            n >= KEYS / 10,
            "only {n} of {KEYS} keys hash to {id}: the hash does not spread keys"
        );
    }

    let removed = mesh.instances.pop().context("no instance to remove")?;
    let removed_id = removed.id().to_string();
    let mut removed_sidecar = removed.sidecar;
    mesh.log
        .note(&format!("SIGTERM the sidecar of {removed_id}"));
    removed_sidecar.process().sigterm(DEADLINE).await?;
    wait_for_proxy_config(
        mesh.client_sidecar.admin(),
        DEADLINE,
        &format!("{removed_id} to leave the client's `{SERVICE}` endpoints"),
        |dump| {
            let eps = dump_endpoints(dump, SERVICE);
            eps.len() == 2 && !eps.contains(&removed_id)
        },
    )
    .await?;

    let after = mesh.key_map(KEYS).await?;
    let moved = (0..KEYS).filter(|&i| before[i] != after[i]).count();
    ensure!(
        (moved as f64) < 0.5 * KEYS as f64,
        "removing one of three instances moved {moved} of {KEYS} keys (want < 50%)"
    );
    let survivors: Vec<usize> = (0..KEYS).filter(|&i| before[i] != removed_id).collect();
    let kept = survivors.iter().filter(|&&i| before[i] == after[i]).count();
    let kept_share = kept as f64 / survivors.len().max(1) as f64;
    mesh.log.note(&format!(
        "removing {removed_id} moved {moved} of {KEYS} keys; {kept} of {} keys of survivors stayed",
        survivors.len()
    ));
    ensure!(
        kept_share >= min_kept,
        "only {kept} of {} keys of surviving instances stayed on their instance (want >= {:.0}%)",
        survivors.len(),
        min_kept * 100.0
    );
    ensure!(
        after.iter().all(|x| *x != removed_id),
        "keys still reach the removed instance {removed_id}"
    );
    drop(removed.backend);
    mesh.finish();
    Ok(())
}
