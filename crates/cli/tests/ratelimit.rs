//! End-to-end: RateLimitPolicy enforced by a real sidecar on its inbound side. `web` and
//! `orders` call `catalog` over mTLS; a rule on `/limited` holds the accepted rate to its limit
//! (measured on the limiter's own clock, from its counters in /config_dump), a per-source rule
//! gives each caller its own bucket, and a refused request is 429 with `Retry-After` and
//! `x-trellis-reason: rate_limited`, counted in `trellis_rate_limited_total`.

use std::path::Path;

use anyhow::{Context, ensure};
use trellis_testkit::{
    Client, ControlPlane, DEADLINE, EchoServer, Instance, Req, Sidecar, SidecarOpts, TestLog,
    wait_for_proxy_config, wait_for_traffic_to,
};

const BIN: &str = env!("CARGO_BIN_EXE_trellis");

/// The `/limited` rule: 100 per second, burst 10.
const RATE: f64 = 100.0;
const BURST: f64 = 10.0;

const POLICY: &str = "apiVersion: trellis.dev/v1alpha1
kind: RateLimitPolicy
metadata:
  name: catalog-limits
spec:
  targetRef: { name: catalog }
  rules:
    - match: { path: { value: /limited } }
      requestsPerUnit: 100
      unit: second
      burst: 10
    - match: { path: { type: Exact, value: /per-source } }
      requestsPerUnit: 1
      unit: hour
      burst: 3
      perSource: true
";

async fn apply(control: &ControlPlane, dir: &Path, yaml: &str) -> anyhow::Result<()> {
    let file = dir.join("limits.yaml");
    std::fs::write(&file, yaml).with_context(|| format!("write {}", file.display()))?;
    let out = tokio::process::Command::new(BIN)
        .args(["apply", "-f"])
        .arg(&file)
        .args(["--control", &control.url()])
        .output()
        .await
        .context("cannot run trellis apply")?;
    ensure!(
        out.status.success(),
        "trellis apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The `/config_dump` counters of rule `name` on the catalog sidecar.
fn rule<'a>(dump: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    dump.get("rate_limits")?
        .as_array()?
        .iter()
        .find(|r| r.get("name").and_then(|n| n.as_str()) == Some(name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_rate_limits_hold_the_rate_and_separate_sources() -> anyhow::Result<()> {
    let log = TestLog::new("ratelimit")?;
    let control = ControlPlane::start(BIN, &log, &log.dir().join("data")).await?;
    let url = control.url();
    let catalog = Instance::start(
        BIN,
        &log,
        &url,
        "catalog",
        "c1",
        std::time::Duration::ZERO,
        SidecarOpts::default(),
    )
    .await?;
    let mut callers = Vec::new();
    for name in ["web", "orders"] {
        let app = EchoServer::start(&format!("{name}-app")).await?;
        let sidecar = Sidecar::start(
            BIN,
            &log,
            &url,
            name,
            app.port(),
            SidecarOpts::default().id(&format!("{name}-1")),
        )
        .await?;
        callers.push((app, sidecar));
    }
    let web = Client::new(callers[0].1.outbound());
    let orders = Client::new(callers[1].1.outbound());
    wait_for_traffic_to(&web, "catalog", &["c1"], DEADLINE).await?;
    wait_for_traffic_to(&orders, "catalog", &["c1"], DEADLINE).await?;

    apply(&control, log.dir(), POLICY).await?;
    wait_for_proxy_config(
        catalog.sidecar.admin(),
        DEADLINE,
        "the rate limits",
        |dump| rule(dump, "ratelimit-1").is_some(),
    )
    .await?;

    log.note("offered load well above 100/s on /limited until the limiter saw 2 s");
    let (mut ok, mut limited, mut total) = (0u64, 0u64, 0u64);
    let mut retry_after_seen = None;
    loop {
        let out = web
            .run(400, 4, |i| Req::get("catalog", &format!("/limited/{i}")))
            .await;
        for r in &out.results {
            total += 1;
            match r.as_ref() {
                Ok(reply) if reply.status == 200 => ok += 1,
                Ok(reply) if reply.status == 429 => {
                    limited += 1;
                    ensure!(
                        reply.reason().as_deref() == Some("rate_limited"),
                        "429 without x-trellis-reason: rate_limited: {:?}",
                        reply.headers
                    );
                    retry_after_seen = reply
                        .headers
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok());
                    ensure!(
                        retry_after_seen.is_some(),
                        "429 without Retry-After: {:?}",
                        reply.headers
                    );
                }
                Ok(reply) => anyhow::bail!("unexpected status {}: {:?}", reply.status, reply.body),
                Err(e) => anyhow::bail!("request failed: {e}"),
            }
        }
        let dump = catalog.sidecar.config_dump().await?;
        let r = rule(&dump, "ratelimit-0").context("the /limited rule in /config_dump")?;
        if r["window_ms"].as_f64().unwrap_or_default() >= 2000.0 {
            break;
        }
    }
    let dump = catalog.sidecar.config_dump().await?;
    let r = rule(&dump, "ratelimit-0").context("the /limited rule")?;
    let allowed = r["allowed"].as_u64().unwrap_or_default();
    let refused = r["limited"].as_u64().unwrap_or_default();
    let window_s = r["window_ms"].as_f64().unwrap_or_default() / 1000.0;
    ensure!(
        allowed == ok && refused == limited && ok + limited == total,
        "the limiter's counts ({allowed} allowed, {refused} limited) differ from the client's ({ok} ok, {limited} 429 of {total})"
    );
    ensure!(
        limited > ok,
        "the offered load did not exceed the limit: {ok} ok, {limited} limited"
    );
    let rate = (allowed as f64 - BURST) / window_s;
    ensure!(
        (rate - RATE).abs() <= RATE * 0.05,
        "accepted {rate:.1}/s over {window_s:.2}s ({allowed} allowed, burst {BURST}): not within 5% of {RATE}/s"
    );
    ensure!(
        retry_after_seen == Some(1),
        "Retry-After should be 1s at 100/s: {retry_after_seen:?}"
    );
    let counted = catalog
        .sidecar
        .metric_sum("trellis_rate_limited_total", &[("rule", "ratelimit-0")])
        .await?;
    ensure!(
        counted as u64 == limited,
        "trellis_rate_limited_total = {counted}, want {limited}"
    );

    log.note("per source: three each for web and orders");
    for (name, client) in [("web", &web), ("orders", &orders)] {
        let out = client
            .run(5, 1, |_| Req::get("catalog", "/per-source"))
            .await;
        let statuses: Vec<u16> = out
            .results
            .iter()
            .map(|r| r.as_ref().map_or(0, |r| r.status))
            .collect();
        ensure!(
            statuses == [200, 200, 200, 429, 429],
            "{name}: per-source bucket of 3: got {statuses:?}"
        );
        let retry = out.results[4]
            .as_ref()
            .ok()
            .and_then(|r| r.headers.get("retry-after"))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_default();
        ensure!(
            (1..=3600).contains(&retry),
            "{name}: Retry-After {retry}, want up to an hour"
        );
    }
    // Paths no rule matches are not limited.
    let out = web
        .run(200, 4, |i| Req::get("catalog", &format!("/free/{i}")))
        .await;
    ensure!(
        out.failures().is_empty(),
        "unlimited path refused: {}",
        out.summary()
    );
    Ok(())
}
