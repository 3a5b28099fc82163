//! End-to-end: the JSON access log (`trellis proxy --access-log`). Real sidecars log every
//! request and TCP connection, one JSON object per line: a request proxied normally (no
//! reason, the upstream cluster and host, the caller's SPIFFE ID on the server side, request
//! id, traceparent and user agent), a 503 for a service without endpoints (`UH`), a 429 from a
//! rate limit (`RL`, on the server's inbound log and the caller's outbound log), and a raw TCP
//! connection with its bytes. An access log path that cannot be opened exits 2 naming it.

use std::path::Path;

use anyhow::{Context, ensure};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use trellis_testkit::{
    Caller, ControlPlane, DEADLINE, Instance, Req, Sidecar, SidecarOpts, TcpEchoServer, TestLog,
    wait_for, wait_for_traffic_to,
};

const BIN: &str = env!("CARGO_BIN_EXE_trellis");
const WEB_ID: &str = "spiffe://cluster.local/ns/default/svc/web";

const RESOURCES: &str = "apiVersion: trellis.dev/v1alpha1
kind: Service
metadata:
  name: catalog
---
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata:
  name: empty
---
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata:
  name: db
spec:
  protocol: tcp
---
apiVersion: trellis.dev/v1alpha1
kind: RateLimitPolicy
metadata:
  name: catalog-limits
spec:
  targetRef: { name: catalog }
  rules:
    - match: { path: { type: Exact, value: /limited } }
      requestsPerUnit: 1
      unit: hour
      burst: 1
";

fn with_log(mut opts: SidecarOpts, path: &Path) -> SidecarOpts {
    opts.extra_args
        .extend(["--access-log".to_string(), path.display().to_string()]);
    opts
}

/// Every line of the log at `path`, each parsed as JSON (a line that is not JSON fails).
fn lines(path: &Path) -> Result<Vec<Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .map(|l| serde_json::from_str(l).map_err(|e| format!("not JSON ({e}): {l}")))
        .collect()
}

/// Waits for a line of the log at `path` for which `pred` holds, and returns it.
async fn logged(path: &Path, what: &str, pred: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
    let pred = &pred;
    wait_for(DEADLINE, what, || async move {
        let all = lines(path)?;
        all.iter()
            .find(|l| pred(l))
            .cloned()
            .ok_or_else(|| format!("{} lines, none matching; last: {:?}", all.len(), all.last()))
    })
    .await
}

fn is(l: &Value, direction: &str, path: &str) -> bool {
    l["direction"] == direction && l["path"] == path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_and_connection_is_one_json_line_with_its_reason() -> anyhow::Result<()> {
    let log = TestLog::new("accesslog")?;
    let (web_log, catalog_log, db_log) = (
        log.dir().join("web.access.log"),
        log.dir().join("catalog.access.log"),
        log.dir().join("db.access.log"),
    );
    let control = ControlPlane::start(BIN, &log, &log.dir().join("data")).await?;
    let url = control.url();
    control.apply_yaml(RESOURCES).await?;
    let catalog = Instance::start(
        BIN,
        &log,
        &url,
        "catalog",
        "c1",
        std::time::Duration::ZERO,
        with_log(SidecarOpts::default(), &catalog_log),
    )
    .await?;
    let backend = TcpEchoServer::start().await?;
    let _db = Sidecar::start(
        BIN,
        &log,
        &url,
        "db",
        backend.port(),
        with_log(SidecarOpts::default().id("db-1").protocol("tcp"), &db_log),
    )
    .await?;
    let Caller {
        sidecar: web,
        client: c,
        app: _web_app,
    } = Caller::of(
        BIN,
        &log,
        &url,
        "web",
        with_log(SidecarOpts::default().upstream("db"), &web_log),
    )
    .await?;
    wait_for_traffic_to(&c, "catalog", &["c1"], DEADLINE).await?;

    log.note("a request proxied normally");
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let reply = c
        .send(
            &Req::get("catalog", "/hello?x=1")
                .header("x-request-id", "req-42")
                .header("traceparent", traceparent)
                .header("user-agent", "accesslog-test/1"),
        )
        .await?;
    ensure!(reply.status == 200, "{}", reply.status);
    let out = logged(&web_log, "web's outbound line for /hello", |l| {
        is(l, "outbound", "/hello?x=1")
    })
    .await?;
    ensure!(out["status"] == 200 && out["method"] == "GET", "{out}");
    ensure!(
        out["protocol"] == "HTTP/1.1" && out["authority"] == "catalog",
        "{out}"
    );
    ensure!(
        out.get("reason").is_none() && out["response_flags"] == "-",
        "{out}"
    );
    ensure!(out["upstream_cluster"] == "catalog", "{out}");
    ensure!(
        out["upstream_host"] == catalog.sidecar.inbound().to_string(),
        "upstream_host should be c1's inbound listener {}: {out}",
        catalog.sidecar.inbound()
    );
    ensure!(
        out["request_id"] == "req-42"
            && out["traceparent"] == traceparent
            && out["user_agent"] == "accesslog-test/1",
        "{out}"
    );
    ensure!(
        out["bytes_sent"].as_u64() == Some(reply.body.len() as u64),
        "bytes_sent vs a {}-byte body: {out}",
        reply.body.len()
    );
    ensure!(
        out["duration_ms"].as_f64().is_some() && out["upstream_service_time_ms"].as_f64().is_some(),
        "{out}"
    );
    let start = out["start_time"].as_str().context("no start_time")?;
    ensure!(
        start.len() == 24 && start.ends_with('Z') && start.as_bytes()[10] == b'T',
        "start_time {start} is not RFC 3339 UTC with milliseconds"
    );
    let inb = logged(&catalog_log, "catalog's inbound line for /hello", |l| {
        is(l, "inbound", "/hello?x=1")
    })
    .await?;
    ensure!(inb["status"] == 200 && inb.get("reason").is_none(), "{inb}");
    ensure!(inb["downstream_peer_uri_san"] == WEB_ID, "{inb}");
    ensure!(
        inb["upstream_cluster"]
            .as_str()
            .is_some_and(|c| c.starts_with("inbound|")),
        "{inb}"
    );
    ensure!(inb["request_id"] == "req-42", "{inb}");

    log.note("a service without endpoints: 503 no_healthy_endpoints (UH)");
    let reply = c.send(&Req::get("empty", "/nobody")).await?;
    ensure!(reply.status == 503, "{}", reply.status);
    let uh = logged(&web_log, "web's line for /nobody", |l| {
        is(l, "outbound", "/nobody")
    })
    .await?;
    ensure!(
        uh["status"] == 503
            && uh["reason"] == "no_healthy_endpoints"
            && uh["response_flags"] == "UH"
            && uh["upstream_cluster"] == "empty",
        "{uh}"
    );
    ensure!(
        uh.get("upstream_host").is_none() && uh.get("upstream_service_time_ms").is_none(),
        "{uh}"
    );

    log.note("a rate-limited request: 429 rate_limited (RL) on both sides");
    let mut limited = None;
    for _ in 0..3 {
        let reply = c.send(&Req::get("catalog", "/limited")).await?;
        if reply.status == 429 {
            limited = Some(reply);
            break;
        }
    }
    let limited = limited.context("three requests to a burst-1 rule: none was limited")?;
    ensure!(
        limited.reason().as_deref() == Some("rate_limited"),
        "{}",
        limited.status
    );
    let rl = logged(&catalog_log, "catalog's 429 line", |l| {
        is(l, "inbound", "/limited") && l["status"] == 429
    })
    .await?;
    ensure!(
        rl["reason"] == "rate_limited" && rl["response_flags"] == "RL",
        "{rl}"
    );
    ensure!(rl["downstream_peer_uri_san"] == WEB_ID, "{rl}");
    let rl_out = logged(&web_log, "web's 429 line", |l| {
        is(l, "outbound", "/limited") && l["status"] == 429
    })
    .await?;
    ensure!(
        rl_out["reason"] == "rate_limited" && rl_out["upstream_cluster"] == "catalog",
        "{rl_out}"
    );

    log.note("a TCP connection: one line per side, with its bytes");
    let upstream = web.upstream("db")?;
    let payload = b"twelve bytes";
    wait_for(
        DEADLINE,
        "bytes to echo through the db upstream",
        || async {
            let mut s = TcpStream::connect(upstream)
                .await
                .map_err(|e| e.to_string())?;
            s.write_all(payload).await.map_err(|e| e.to_string())?;
            s.shutdown().await.map_err(|e| e.to_string())?;
            let mut got = Vec::new();
            let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut got)).await;
            if got == payload {
                Ok(())
            } else {
                Err(format!("got {got:?}"))
            }
        },
    )
    .await?;
    let tcp_out = logged(&web_log, "web's tcp line", |l| {
        l["protocol"] == "tcp" && l["direction"] == "outbound" && l.get("reason").is_none()
    })
    .await?;
    ensure!(
        tcp_out["upstream_cluster"] == "db"
            && tcp_out["bytes_received"] == 12
            && tcp_out["bytes_sent"] == 12,
        "{tcp_out}"
    );
    let tcp_in = logged(&db_log, "db's tcp line", |l| {
        l["protocol"] == "tcp" && l["direction"] == "inbound" && l.get("reason").is_none()
    })
    .await?;
    ensure!(
        tcp_in["downstream_peer_uri_san"] == WEB_ID
            && tcp_in["bytes_received"] == 12
            && tcp_in["bytes_sent"] == 12,
        "{tcp_in}"
    );

    log.note("every line of every log is JSON");
    for path in [&web_log, &catalog_log, &db_log] {
        lines(path).map_err(anyhow::Error::msg)?;
    }
    ensure!(
        web.metric_sum("trellis_access_log_dropped_total", &[])
            .await?
            == 0.0,
        "records were dropped"
    );
    log.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_log_that_cannot_be_opened_exits_2_naming_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("no/such/dir/access.log");
    let bad = bad.display().to_string();
    let stderr = trellis_testkit::proxy_startup_error(BIN, &["--access-log", &bad]).await?;
    ensure!(
        stderr.contains("--access-log") && stderr.contains("no/such/dir"),
        "stderr should name the flag and the path: {stderr}"
    );
    Ok(())
}
