//! End-to-end: TCP services through the mesh. A `db` service declared `protocol: tcp` runs a
//! TCP echo backend behind its sidecar; a `web` sidecar gives its app `--upstream db=0`.
//! Bytes echo through mTLS (half-close included); an AuthorizationPolicy DENY for web closes
//! the next connection with nothing reaching the backend, an ALLOW for web reopens it, and an
//! ALLOW for another principal closes it again. An upstream naming an unknown service closes
//! its connections with a log line; a malformed `--upstream` exits 2 with a clear error.

use std::net::SocketAddr;

use anyhow::{Context, ensure};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use trellis_testkit::{
    Caller, ControlPlane, DEADLINE, EchoServer, Sidecar, SidecarOpts, TcpEchoServer, TestLog,
    wait_for, wait_until,
};

const BIN: &str = env!("CARGO_BIN_EXE_trellis");
const WEB_ID: &str = "spiffe://cluster.local/ns/default/svc/web";

const DB: &str = "apiVersion: trellis.dev/v1alpha1
kind: Service
metadata:
  name: db
spec:
  protocol: tcp
";

/// An AuthorizationPolicy `db-callers` on `db`: `action` for callers with `principal`.
fn policy(action: &str, principal: &str) -> String {
    format!(
        "apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: db-callers
spec:
  targetRef: {{ name: db }}
  action: {action}
  rules:
    - from:
        - principals: [\"{principal}\"]
"
    )
}

/// Connects to `addr`, sends `payload`, ends its writes, and returns every byte read until
/// the other side closed (a reset counts as closed).
async fn exchange(addr: SocketAddr, payload: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    // The sidecar may close before the write completes; what matters is what comes back.
    let _ = s.write_all(payload).await;
    let _ = s.shutdown().await;
    let mut buf = Vec::new();
    match tokio::time::timeout(DEADLINE, s.read_to_end(&mut buf)).await {
        Ok(_) => Ok(buf),
        Err(_) => anyhow::bail!("{addr} neither echoed nor closed the connection"),
    }
}

/// Waits until a connection through `addr` echoes (`true`) or is closed empty (`false`).
async fn wait_for_echo(addr: SocketAddr, echoes: bool, what: &str) -> anyhow::Result<()> {
    let payload = b"ping through the mesh";
    wait_for(DEADLINE, what, || async {
        match exchange(addr, payload).await {
            Ok(got) if echoes && got == payload => Ok(()),
            Ok(got) if !echoes && got.is_empty() => Ok(()),
            Ok(got) => Err(format!("got {:?}", String::from_utf8_lossy(&got))),
            Err(e) => Err(format!("{e:#}")),
        }
    })
    .await
}

/// A TCP echo backend behind `db`'s sidecar, and a `web` sidecar with `--upstream db` (plus
/// what `web_opts` adds).
async fn db_and_web(
    log: &TestLog,
    url: &str,
    web_opts: impl FnOnce(SidecarOpts) -> SidecarOpts,
) -> anyhow::Result<(TcpEchoServer, Sidecar, EchoServer, Sidecar)> {
    let backend = TcpEchoServer::start().await?;
    let db = Sidecar::start(
        BIN,
        log,
        url,
        "db",
        backend.port(),
        SidecarOpts::default().id("db-1").protocol("tcp"),
    )
    .await?;
    let Caller {
        sidecar: web,
        app: web_app,
        ..
    } = Caller::of(
        BIN,
        log,
        url,
        "web",
        web_opts(SidecarOpts::default().upstream("db")),
    )
    .await?;
    Ok((backend, db, web_app, web))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_streams_cross_the_mesh_over_mtls_and_policies_close_them() -> anyhow::Result<()> {
    let log = TestLog::new("tcp")?;
    let control = ControlPlane::start(BIN, &log, &log.dir().join("data")).await?;
    let url = control.url();
    control.apply_yaml(DB).await?;
    let (backend, db, _web_app, mut web) = db_and_web(&log, &url, |o| o.upstream("nope")).await?;
    let upstream = web.upstream("db")?;
    ensure!(upstream.ip().is_loopback(), "upstream bound on {upstream}");

    log.note("no policy: bytes echo through both sidecars over mTLS");
    wait_for_echo(upstream, true, "bytes to echo through the db upstream").await?;
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let got = exchange(upstream, &big).await?;
    ensure!(
        got == big,
        "a 200 kB stream came back as {} bytes",
        got.len()
    );
    ensure!(
        web.metric_sum("trellis_tls_handshakes_total", &[("direction", "outbound")])
            .await?
            >= 1.0,
        "web made no mTLS handshake"
    );
    ensure!(
        db.metric_sum(
            "trellis_tcp_connections_total",
            &[("direction", "inbound"), ("result", "forwarded")]
        )
        .await?
            >= 2.0,
        "db's sidecar counted no forwarded connection"
    );

    log.note("DENY web: the next connection is closed and the backend sees nothing");
    control.apply_yaml(&policy("DENY", WEB_ID)).await?;
    wait_for_echo(upstream, false, "the DENY policy to close connections").await?;
    let (conns, bytes) = (backend.connections(), backend.bytes());
    let got = exchange(upstream, b"denied bytes").await?;
    ensure!(got.is_empty(), "a denied connection echoed {got:?}");
    ensure!(
        backend.connections() == conns && backend.bytes() == bytes,
        "a denied connection reached the backend ({} -> {} connections, {} -> {} bytes)",
        conns,
        backend.connections(),
        bytes,
        backend.bytes()
    );
    ensure!(
        db.metric_sum(
            "trellis_tcp_connections_total",
            &[("direction", "inbound"), ("result", "denied")]
        )
        .await?
            >= 1.0,
        "db's sidecar counted no denied connection"
    );

    log.note("ALLOW web: open again");
    control.apply_yaml(&policy("ALLOW", WEB_ID)).await?;
    wait_for_echo(
        upstream,
        true,
        "the ALLOW policy for web to let bytes through",
    )
    .await?;

    log.note("ALLOW only orders: web's connections are closed");
    control
        .apply_yaml(&policy(
            "ALLOW",
            "spiffe://cluster.local/ns/default/svc/orders",
        ))
        .await?;
    wait_for_echo(
        upstream,
        false,
        "an ALLOW for another principal to close connections",
    )
    .await?;
    let conns = backend.connections();
    ensure!(exchange(upstream, b"x").await?.is_empty(), "not closed");
    ensure!(
        backend.connections() == conns,
        "the backend saw a refused connection"
    );

    log.note("an upstream for an unknown service closes its connections with a log line");
    let nope = web.upstream("nope")?;
    ensure!(
        exchange(nope, b"hello").await?.is_empty(),
        "unknown upstream echoed"
    );
    let process = web.process();
    wait_until(DEADLINE, "the unknown-service log line", || async {
        process.stderr_tail().contains("no service named \"nope\"")
    })
    .await
    .with_context(|| format!("web's stderr:\n{}", process.stderr_tail()))?;
    log.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_upstream_flag_exits_2_naming_the_flag() -> anyhow::Result<()> {
    for (value, expect) in [
        ("db", "expected SERVICE=PORT"),
        ("db=99999", "is not a port"),
        ("DB=5432", "the service name"),
        ("=5432", "the service name"),
    ] {
        let stderr = trellis_testkit::proxy_startup_error(BIN, &["--upstream", value]).await?;
        ensure!(
            stderr.contains("--upstream") && stderr.contains(expect),
            "--upstream {value}: stderr should name the flag and say {expect:?}: {stderr}"
        );
    }
    Ok(())
}

const DB_IDLE: &str = "apiVersion: trellis.dev/v1alpha1
kind: TrafficPolicy
metadata:
  name: db
spec:
  targetRef: { name: db }
  timeouts: { idle: 1s }
";

/// Reads from `s` until EOF (or a reset); fails if the proxy keeps it open past the deadline.
async fn until_closed(s: &mut TcpStream) -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::new();
    match tokio::time::timeout(DEADLINE, s.read_to_end(&mut buf)).await {
        Ok(_) => Ok(buf),
        Err(_) => anyhow::bail!("the idle connection was not closed"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_idle_timeout_closes_quiet_connections_and_keeps_busy_ones() -> anyhow::Result<()> {
    let log = TestLog::new("tcp_idle")?;
    let control = ControlPlane::start(BIN, &log, &log.dir().join("data")).await?;
    let url = control.url();
    control.apply_yaml(DB).await?;
    control.apply_yaml(DB_IDLE).await?;
    let (_backend, db, _web_app, web) = db_and_web(&log, &url, |o| o).await?;
    trellis_testkit::wait_for_proxy_config(
        db.admin(),
        DEADLINE,
        "db's sidecar to take the 1s idle timeout (tcp_proxy idle_timeout)",
        |d| d["inbound_idle_timeout_ms"] == 1000,
    )
    .await?;
    let upstream = web.upstream("db")?;
    wait_for_echo(upstream, true, "bytes to echo through the db upstream").await?;

    log.note("a connection that goes quiet is closed by db's sidecar: the app sees EOF");
    let mut quiet = TcpStream::connect(upstream).await?;
    quiet.write_all(b"hello").await?;
    let mut echoed = [0u8; 5];
    tokio::time::timeout(DEADLINE, quiet.read_exact(&mut echoed))
        .await
        .context("no echo")??;
    ensure!(&echoed == b"hello", "echoed {echoed:?}");
    let rest = until_closed(&mut quiet).await?;
    ensure!(rest.is_empty(), "more bytes before the close: {rest:?}");
    ensure!(
        db.metric_sum(
            "trellis_idle_timeouts_total",
            &[("direction", "inbound"), ("protocol", "tcp")]
        )
        .await?
            >= 1.0,
        "db's sidecar counted no idle timeout"
    );

    log.note("a connection with a byte every 100 ms (well under 1s) stays open for 3 s");
    let mut busy = TcpStream::connect(upstream).await?;
    for i in 0..30u8 {
        busy.write_all(&[i]).await?;
        let mut b = [0u8; 1];
        tokio::time::timeout(DEADLINE, busy.read_exact(&mut b))
            .await
            .with_context(|| format!("byte {i}: no echo"))?
            .with_context(|| format!("byte {i}: the busy connection was closed"))?;
        ensure!(b[0] == i, "byte {i} echoed as {}", b[0]);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    log.note("... and once it stops, it is closed too");
    let rest = until_closed(&mut busy).await?;
    ensure!(rest.is_empty(), "unexpected bytes: {rest:?}");
    log.passed();
    Ok(())
}
