//! End-to-end: sidecars check their apps (HTTP, TCP, gRPC) and the control plane keeps only
//! passing instances as endpoints; thresholds stop a flapping app from flapping the endpoint
//! set; apps hold TTL checks through the API; bad flags exit 2 naming the flag.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, ensure};
use reqwest::Method;
use tokio::net::TcpListener;
use trellis_testkit::{
    Caller, ControlPlane, DEADLINE, EchoServer, GrpcHealthServer, Instance, ServingStatus, Sidecar,
    SidecarOpts, TestLog, dump_endpoints, wait_for_proxy_config, wait_until,
};

const BIN: &str = env!("CARGO_BIN_EXE_trellis");
const SERVICE: &str = "echo";

/// `--health-check CHECK` every 200 ms with thresholds `healthy`/`unhealthy`.
fn checked(check: &str, healthy: u32, unhealthy: u32) -> SidecarOpts {
    let mut o = SidecarOpts::default();
    o.extra_args.extend(
        [
            "--health-check",
            check,
            "--health-interval",
            "200ms",
            "--health-timeout",
            "200ms",
            "--healthy-threshold",
            &healthy.to_string(),
            "--unhealthy-threshold",
            &unhealthy.to_string(),
        ]
        .map(str::to_string),
    );
    o
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

/// The instance `id` as `GET /v1/instances` lists it.
async fn instance(control: &ControlPlane, id: &str) -> anyhow::Result<serde_json::Value> {
    let all = control.get_json("/v1/instances").await?;
    all.as_array()
        .and_then(|a| {
            a.iter()
                .find(|i| i.get("id").and_then(|v| v.as_str()) == Some(id))
        })
        .cloned()
        .with_context(|| format!("instance {id} not listed: {all}"))
}

async fn wait_status(control: &ControlPlane, id: &str, want: &str) -> anyhow::Result<()> {
    wait_until(DEADLINE, &format!("{id} to be {want}"), || async {
        instance(control, id)
            .await
            .is_ok_and(|i| i.get("status").and_then(|s| s.as_str()) == Some(want))
    })
    .await
}

struct Mesh {
    log: TestLog,
    control: ControlPlane,
    client: Sidecar,
    _client_app: EchoServer,
}

async fn mesh(name: &str) -> anyhow::Result<Mesh> {
    let log = TestLog::new(name)?;
    let control = ControlPlane::start(BIN, &log, &log.dir().join("data")).await?;
    let Caller {
        sidecar: client,
        app: client_app,
        ..
    } = Caller::start(BIN, &log, &control.url(), SidecarOpts::default()).await?;
    Ok(Mesh {
        log,
        control,
        client,
        _client_app: client_app,
    })
}

impl Mesh {
    async fn wait_endpoints(&self, want: &[&str], what: &str) -> anyhow::Result<()> {
        let want = set(want);
        wait_for_proxy_config(self.client.admin(), DEADLINE, what, |dump| {
            dump_endpoints(dump, SERVICE) == want
        })
        .await
        .map(|_| ())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_check_takes_a_failing_app_out_and_back_after_the_thresholds() -> anyhow::Result<()> {
    let m = mesh("health-http").await?;
    let url = m.control.url();
    let b1 = Instance::start(
        BIN,
        &m.log,
        &url,
        SERVICE,
        "b1",
        Duration::ZERO,
        checked("http:/healthz", 2, 3),
    )
    .await?;
    let _b2 = Instance::start(
        BIN,
        &m.log,
        &url,
        SERVICE,
        "b2",
        Duration::ZERO,
        SidecarOpts::default(),
    )
    .await?;
    m.wait_endpoints(&["b1", "b2"], "both instances as endpoints")
        .await?;

    m.log.note("b1's /healthz answers 503");
    let before = b1.backend.health_checks();
    b1.backend.set_health(503);
    m.wait_endpoints(&["b2"], "b1 to leave after failing its checks")
        .await?;
    let failed = b1.backend.health_checks() - before;
    ensure!(
        failed >= 3,
        "b1 left after {failed} failed checks; the unhealthy threshold is 3"
    );
    let view = instance(&m.control, "b1").await?;
    ensure!(
        view["status"] == "critical",
        "b1 should be critical: {view}"
    );
    let output = view["status_output"].as_str().unwrap_or_default();
    ensure!(
        output.contains("/healthz") && output.contains("503"),
        "the output should say what failed: {view}"
    );

    m.log.note("b1 recovers");
    let before = b1.backend.health_checks();
    b1.backend.set_health(200);
    m.wait_endpoints(&["b1", "b2"], "b1 to return after passing its checks")
        .await?;
    let passed = b1.backend.health_checks() - before;
    ensure!(
        passed >= 2,
        "b1 returned after {passed} checks; the healthy threshold is 2"
    );
    wait_status(&m.control, "b1", "passing").await?;

    m.log.note("429: warning, not an endpoint");
    b1.backend.set_health(429);
    wait_status(&m.control, "b1", "warning").await?;
    m.wait_endpoints(&["b2"], "a warning instance to leave the endpoints")
        .await?;
    Ok(())
}

/// A TCP acceptor the test can close and reopen on the same port.
async fn acceptor(port: u16) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("bind 127.0.0.1:{port}"))?;
    Ok(tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            drop(s);
        }
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_grpc_checks_follow_the_app() -> anyhow::Result<()> {
    let m = mesh("health-tcp-grpc").await?;
    let url = m.control.url();

    // TCP: the app port stops accepting.
    let port = TcpListener::bind("127.0.0.1:0").await?.local_addr()?.port();
    let mut app = acceptor(port).await?;
    let _t1 = Sidecar::start(
        BIN,
        &m.log,
        &url,
        SERVICE,
        port,
        checked("tcp", 1, 2).id("t1"),
    )
    .await?;
    wait_status(&m.control, "t1", "passing").await?;
    m.wait_endpoints(&["t1"], "t1 as an endpoint").await?;
    m.log.note("t1's app stops listening");
    app.abort();
    let _ = app.await;
    wait_status(&m.control, "t1", "critical").await?;
    m.wait_endpoints(&[], "t1 to leave").await?;
    let view = instance(&m.control, "t1").await?;
    ensure!(
        view["status_output"]
            .as_str()
            .unwrap_or_default()
            .contains("connect"),
        "{view}"
    );
    app = acceptor(port).await?;
    wait_status(&m.control, "t1", "passing").await?;
    m.wait_endpoints(&["t1"], "t1 back").await?;
    app.abort();

    // gRPC: the Health service says NOT_SERVING.
    let grpc = GrpcHealthServer::start("g1", "trellis.test.echo.Echo").await?;
    let _g1 = Sidecar::start(
        BIN,
        &m.log,
        &url,
        "echo-grpc",
        grpc.port(),
        checked("grpc:trellis.test.echo.Echo", 1, 2)
            .id("g1")
            .protocol("grpc"),
    )
    .await?;
    wait_status(&m.control, "g1", "passing").await?;
    let in_dump = |want: bool| {
        let admin = m.client.admin();
        async move {
            wait_for_proxy_config(admin, DEADLINE, "g1's endpoint", |dump| {
                dump_endpoints(dump, "echo-grpc").contains("g1") == want
            })
            .await
            .map(|_| ())
        }
    };
    in_dump(true).await?;
    m.log.note("g1 NOT_SERVING");
    grpc.set_status(ServingStatus::NotServing);
    wait_status(&m.control, "g1", "critical").await?;
    in_dump(false).await?;
    let view = instance(&m.control, "g1").await?;
    ensure!(
        view["status_output"]
            .as_str()
            .unwrap_or_default()
            .contains("NOT_SERVING"),
        "{view}"
    );
    grpc.set_status(ServingStatus::Serving);
    wait_status(&m.control, "g1", "passing").await?;
    in_dump(true).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_app_never_changes_the_endpoint_set_with_thresholds_of_three()
-> anyhow::Result<()> {
    let m = mesh("health-flapping").await?;
    let url = m.control.url();
    let b1 = Instance::start(
        BIN,
        &m.log,
        &url,
        SERVICE,
        "b1",
        Duration::ZERO,
        checked("http:/healthz", 3, 3),
    )
    .await?;
    m.wait_endpoints(&["b1"], "b1 as an endpoint").await?;
    m.log.note("b1's /healthz alternates 200/503");
    let start = b1.backend.health_checks();
    b1.backend.set_flapping();
    let mut samples = 0;
    while b1.backend.health_checks() < start + 40 {
        let dump = m.client.config_dump().await?;
        ensure!(
            dump_endpoints(&dump, SERVICE) == set(&["b1"]),
            "the endpoint set changed while b1 flapped: {:?}",
            dump_endpoints(&dump, SERVICE)
        );
        let view = instance(&m.control, "b1").await?;
        ensure!(
            view["status"] == "passing",
            "b1 left passing while flapping: {view}"
        );
        samples += 1;
    }
    ensure!(samples > 0, "no sample taken");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_checks_held_by_the_app() -> anyhow::Result<()> {
    let m = mesh("health-ttl").await?;
    let url = m.control.url();
    let _b1 = Instance::start(
        BIN,
        &m.log,
        &url,
        SERVICE,
        "b1",
        Duration::ZERO,
        SidecarOpts::default(),
    )
    .await?;
    m.wait_endpoints(&["b1"], "b1 as an endpoint").await?;
    let check = format!("/v1/instances/{SERVICE}/b1/checks/db");
    let call = |method: Method, path: String, body: Option<&'static str>| {
        let c = &m.control;
        async move {
            c.request(
                method,
                &path,
                body.map(str::to_string),
                Some("application/json"),
            )
            .await
        }
    };

    let (status, body) = call(Method::PUT, check.clone(), Some(r#"{"ttl_ms": 4000}"#)).await?;
    ensure!(
        status == 201 && body.contains("critical"),
        "register: {status} {body}"
    );
    m.wait_endpoints(&[], "b1 to leave until its check first passes")
        .await?;

    let (status, body) = call(
        Method::PUT,
        format!("{check}/pass"),
        Some(r#"{"note": "db reachable"}"#),
    )
    .await?;
    ensure!(
        status == 200 && body.contains("passing"),
        "pass: {status} {body}"
    );
    m.wait_endpoints(&["b1"], "b1 back once its check passes")
        .await?;

    m.log.note("renewed within the TTL: stays passing");
    for _ in 0..5 {
        // Renewed first, then read: a busy machine's slow wait above cannot have let it lapse.
        let (status, body) =
            call(Method::PUT, format!("{check}/pass?note=still%20ok"), None).await?;
        ensure!(
            status == 200 && body.contains("passing"),
            "renew: {status} {body}"
        );
        let view = instance(&m.control, "b1").await?;
        ensure!(view["status"] == "passing", "renewed check lapsed: {view}");
        // Pacing the renewals well inside the 4 s TTL, as an app would; not synchronisation.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    m.log.note("not renewed: critical");
    wait_status(&m.control, "b1", "critical").await?;
    m.wait_endpoints(&[], "b1 to leave after its TTL check lapsed")
        .await?;
    let view = instance(&m.control, "b1").await?;
    ensure!(
        view["status_output"]
            .as_str()
            .unwrap_or_default()
            .contains("TTL expired"),
        "{view}"
    );

    let long_note = format!(r#"{{"note": "{}"}}"#, "x".repeat(5000));
    let cases: Vec<(Method, String, Option<String>, u16, &str)> = vec![
        (
            Method::PUT,
            format!("/v1/instances/{SERVICE}/b1/checks/Bad%20Name"),
            Some(r#"{"ttl_ms": 1000}"#.into()),
            400,
            "name:",
        ),
        (
            Method::PUT,
            check.clone(),
            Some(r#"{"ttl_ms": 5}"#.into()),
            400,
            "ttl_ms:",
        ),
        (Method::PUT, check.clone(), None, 400, "ttl_ms"),
        (
            Method::PUT,
            check.clone(),
            Some(r#"{"ttl_ms": 1000, "bogus": 1}"#.into()),
            400,
            "bogus",
        ),
        (
            Method::PUT,
            format!("{check}/pass"),
            Some(long_note),
            400,
            "note:",
        ),
        (
            Method::PUT,
            format!("{check}/pass"),
            Some(r#"{"note": "a\nb"}"#.into()),
            400,
            "note:",
        ),
        (
            Method::PUT,
            format!("{check}/pass"),
            Some("{not json".into()),
            400,
            "check update",
        ),
        (
            Method::PUT,
            format!("{check}/pass"),
            Some("x".repeat(100_000)),
            413,
            "limit",
        ),
        (
            Method::PUT,
            format!("{check}/explode"),
            None,
            404,
            "pass, warn or fail",
        ),
        (
            Method::PUT,
            format!("/v1/instances/{SERVICE}/b1/checks/nope/pass"),
            None,
            404,
            "not registered",
        ),
        (
            Method::PUT,
            format!("/v1/instances/{SERVICE}/zz/checks/db"),
            Some(r#"{"ttl_ms": 1000}"#.into()),
            404,
            "not registered",
        ),
        (
            Method::PUT,
            format!("/v1/instances/{SERVICE}/b1/heartbeat"),
            Some(r#"{"check": {"status": "sick"}}"#.into()),
            400,
            "heartbeat",
        ),
    ];
    for (method, path, body, want, says) in cases {
        let (status, text) = m
            .control
            .request(method.clone(), &path, body, Some("application/json"))
            .await?;
        ensure!(
            status == want && text.contains(says),
            "{method} {path}: {status} {text}; want {want} saying {says:?}"
        );
    }
    let (status, _) = call(Method::DELETE, check.clone(), None).await?;
    ensure!(status == 204, "delete: {status}");
    m.wait_endpoints(&["b1"], "b1 back once the lapsed check is removed")
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_health_flags_exit_2_naming_the_flag() -> anyhow::Result<()> {
    let cases: &[(&[&str], &str)] = &[
        (&["--health-check", "udp"], "unknown check kind"),
        (&["--health-check", "http:healthz"], "must start with `/`"),
        (&["--health-check", "http"], "needs a path"),
        (
            &[
                "--health-check",
                "tcp",
                "--health-interval",
                "1s",
                "--health-timeout",
                "5s",
            ],
            "--health-timeout",
        ),
        (
            &["--health-check", "tcp", "--healthy-threshold", "0"],
            "--healthy-threshold = 0",
        ),
        (
            &["--health-check", "tcp", "--unhealthy-threshold", "1000"],
            "--unhealthy-threshold = 1000",
        ),
        (
            &["--health-check", "tcp", "--health-interval", "0s"],
            "--health-interval",
        ),
        (&["--healthy-threshold", "3"], "--health-check"),
        (
            &["--health-check", "http:/h", "--app-protocol", "tcp"],
            "--health-check tcp",
        ),
    ];
    for (args, expect) in cases {
        let stderr = trellis_testkit::proxy_startup_error(BIN, args).await?;
        ensure!(
            stderr.contains(expect),
            "{args:?}: stderr should say {expect:?}: {stderr}"
        );
    }
    Ok(())
}
