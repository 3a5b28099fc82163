//! End-to-end: a global RateLimitPolicy rule shared by three sidecars of one service through
//! leases from the control plane (`POST /v1/ratelimit/lease`): together they accept the
//! rule's rate within 5%, measured on each limiter's own clock and counters (/config_dump).

use anyhow::{Context, ensure};
use trellis_testkit::{
    Caller, ControlPlane, DEADLINE, Instance, Req, SidecarOpts, TestLog, wait_for_proxy_config,
    wait_for_traffic_to,
};

const BIN: &str = env!("CARGO_BIN_EXE_trellis");
const RATE: f64 = 60.0;

const POLICY: &str = "apiVersion: trellis.dev/v1alpha1
kind: RateLimitPolicy
metadata:
  name: catalog-global
spec:
  targetRef: { name: catalog }
  rules:
    - match: { path: { value: /global } }
      requestsPerUnit: 60
      unit: second
      burst: 30
      global: true
";

fn rule(dump: &serde_json::Value) -> Option<&serde_json::Value> {
    dump.get("rate_limits")?.as_array()?.first()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sidecars_share_one_global_limit() -> anyhow::Result<()> {
    let log = TestLog::new("ratelimit-global")?;
    let control = ControlPlane::start(BIN, &log, &log.dir().join("data")).await?;
    let url = control.url();
    let mut catalogs = Vec::new();
    for id in ["c1", "c2", "c3"] {
        catalogs.push(
            Instance::start(
                BIN,
                &log,
                &url,
                "catalog",
                id,
                std::time::Duration::ZERO,
                SidecarOpts::default(),
            )
            .await?,
        );
    }
    let Caller {
        sidecar: _web,
        client,
        app: _web_app,
    } = Caller::of(BIN, &log, &url, "web", SidecarOpts::default()).await?;
    wait_for_traffic_to(&client, "catalog", &["c1", "c2", "c3"], DEADLINE).await?;
    control.apply_yaml(POLICY).await?;
    for c in &catalogs {
        wait_for_proxy_config(
            c.sidecar.admin(),
            DEADLINE,
            "a leased share of the global rule",
            |dump| {
                rule(dump)
                    .and_then(|r| r["share"]["tokens_per_second"].as_f64())
                    .is_some_and(|t| t > 0.0)
            },
        )
        .await?;
    }

    log.note("offered load well above 60/s, spread over the three, until each limiter saw 4 s");
    let mut ok = 0u64;
    loop {
        let out = client
            .run(300, 4, |i| Req::get("catalog", &format!("/global/{i}")))
            .await;
        for r in &out.results {
            match r.as_ref() {
                Ok(reply) if reply.status == 200 => ok += 1,
                Ok(reply) if reply.status == 429 => {}
                Ok(reply) => anyhow::bail!("unexpected status {}", reply.status),
                Err(e) => anyhow::bail!("request failed: {e}"),
            }
        }
        let mut min_window = f64::MAX;
        for c in &catalogs {
            let dump = c.sidecar.config_dump().await?;
            let w = rule(&dump).context("the global rule")?["window_ms"]
                .as_f64()
                .unwrap_or_default();
            min_window = min_window.min(w);
        }
        if min_window >= 4000.0 {
            break;
        }
    }
    let (mut allowed, mut initial, mut windows) = (0u64, 0.0, Vec::new());
    for c in &catalogs {
        let dump = c.sidecar.config_dump().await?;
        let r = rule(&dump).context("the global rule")?;
        allowed += r["allowed"].as_u64().unwrap_or_default();
        initial += r["initial_tokens"].as_f64().unwrap_or_default();
        windows.push(r["window_ms"].as_f64().unwrap_or_default() / 1000.0);
    }
    ensure!(
        allowed == ok,
        "the limiters allowed {allowed}, the client saw {ok} answered 200"
    );
    let window = windows.iter().sum::<f64>() / windows.len() as f64;
    // What the buckets held when the load began (at most the burst, 30: 10 per sidecar, enough
    // to cover the pauses between the test's batches) is spent once; beyond it, the shared rate.
    let rate = (allowed as f64 - initial) / window;
    ensure!(
        (rate - RATE).abs() <= RATE * 0.05,
        "together the three accepted {rate:.1}/s over {window:.2}s ({allowed} allowed, {initial:.1} in the buckets at the start; windows {windows:?}): not within 5% of {RATE}/s"
    );
    Ok(())
}
