//! End-to-end: the control plane's own APIs over TLS (`trellis control --tls`). The CLI and
//! the sidecars verify it with the trust bundle it keeps in `<data-dir>/trust-bundle.pem`;
//! a client without it, or with other roots, is refused before a request is sent, and an
//! https:// control URL without roots is a startup error.

use std::time::Duration;

use anyhow::{Context, ensure};
use trellis_testkit::{
    Client, ControlOpts, ControlPlane, DEADLINE, EchoServer, Instance, Sidecar, SidecarOpts,
    TestLog, wait_for, wait_for_traffic_to,
};

const BIN: &str = env!("CARGO_BIN_EXE_trellis");

/// Runs the `trellis` CLI; returns (success, stdout, stderr).
async fn cli(args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let out = tokio::process::Command::new(BIN)
        .args(args)
        .env_remove("TRELLIS_CONTROL")
        .env_remove("TRELLIS_CONTROL_CA")
        .output()
        .await
        .context("cannot run trellis")?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

async fn tls_control(log: &TestLog) -> anyhow::Result<ControlPlane> {
    let opts = ControlOpts {
        tls: true,
        ..ControlOpts::default()
    };
    ControlPlane::start_with(BIN, log, &log.dir().join("data"), opts).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_and_the_cli_reach_a_tls_control_plane_with_its_bundle() -> anyhow::Result<()> {
    let log = TestLog::new("control-tls")?;
    let control = tls_control(&log).await?;
    let url = control.url();
    ensure!(url.starts_with("https://"), "{url}");
    let bundle = control.trust_bundle_path();
    let bundle_arg = bundle.display().to_string();

    // Sidecars with the bundle: certificate, registration and xDS all over TLS, and traffic.
    let ca = SidecarOpts::default().control_ca(&bundle);
    let _echo = Instance::start(BIN, &log, &url, "echo", "b1", Duration::ZERO, ca.clone()).await?;
    let app = EchoServer::start("client-app").await?;
    let client = Sidecar::start(BIN, &log, &url, "client", app.port(), ca.id("client-1")).await?;
    wait_for_traffic_to(&Client::new(client.outbound()), "echo", &["b1"], DEADLINE).await?;

    // The CLI with the bundle lists them; without it, it names the fix.
    let (ok, stdout, stderr) = cli(&[
        "get",
        "instances",
        "--control",
        &url,
        "--control-ca",
        &bundle_arg,
    ])
    .await?;
    ensure!(ok, "get instances with the bundle failed: {stderr}");
    ensure!(
        stdout.contains("b1") && stdout.contains("client-1"),
        "{stdout}"
    );
    let (ok, _, stderr) = cli(&["get", "instances", "--control", &url]).await?;
    ensure!(
        !ok,
        "a CLI without the bundle must not trust the control plane"
    );
    ensure!(
        stderr.contains("not trusted") && stderr.contains("--control-ca"),
        "{stderr}"
    );
    // Plaintext to the TLS listener gets no answer from the API.
    let plain = format!("http://{}", control.http_addr());
    let (ok, _, stderr) = cli(&["get", "services", "--control", &plain]).await?;
    ensure!(!ok, "plaintext to the TLS listener must fail: {stderr}");
    let (ok, stdout, stderr) = cli(&[
        "token",
        "create",
        "--service",
        "later",
        "--control",
        &url,
        "--control-ca",
        &bundle_arg,
    ])
    .await?;
    ensure!(ok && stdout.starts_with("tjt_"), "{stdout}{stderr}");
    log.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_refuse_a_control_plane_they_cannot_verify() -> anyhow::Result<()> {
    let log = TestLog::new("control-tls-refused")?;
    let control = tls_control(&log).await?;
    let url = control.url();

    // https:// without roots, and roots for a plaintext URL: startup errors (exit code 2).
    for (args, expect) in [
        (vec!["--control", url.as_str()], "needs --control-ca"),
        (
            vec![
                "--control",
                "http://127.0.0.1:1",
                "--control-ca",
                "/dev/null",
            ],
            "is plaintext",
        ),
        (
            vec![
                "--control",
                url.as_str(),
                "--control-ca",
                "/nonexistent/ca.pem",
            ],
            "cannot read it",
        ),
    ] {
        let mut all = vec!["proxy", "--service", "x", "--app-port", "1"];
        all.extend(args);
        let out = tokio::process::Command::new(BIN)
            .args(&all)
            .output()
            .await
            .context("run trellis proxy")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.code() == Some(2),
            "{all:?}: {:?} {stderr}",
            out.status
        );
        ensure!(stderr.contains(expect), "{all:?}: {stderr}");
    }

    // Roots of another CA: the sidecar runs but never registers, and says why.
    let stranger = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])?;
    let wrong = log.dir().join("wrong-ca.pem");
    std::fs::write(&wrong, stranger.cert.pem())?;
    let args: Vec<String> = [
        "proxy",
        "--service",
        "lost",
        "--app-port",
        "1",
        "--control",
        &url,
        "--control-ca",
        &wrong.display().to_string(),
        "--admin-addr",
        "127.0.0.1:0",
        "--outbound-addr",
        "127.0.0.1:0",
        "--inbound-addr",
        "127.0.0.1:0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let proxy =
        trellis_testkit::Process::spawn(BIN, &args, "proxy lost", log.sink(), DEADLINE).await?;
    let admin = proxy.ready_addr("admin")?;
    let http = trellis_testkit::control_client(None)?;
    let why = wait_for(
        DEADLINE,
        "the sidecar reports the untrusted control plane",
        || {
            let http = http.clone();
            async move {
                let resp = http
                    .get(format!("http://{admin}/ready"))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let body = resp.text().await.map_err(|e| e.to_string())?;
                if body.contains("UnknownIssuer") {
                    Ok(body)
                } else {
                    Err(body)
                }
            }
        },
    )
    .await?;
    ensure!(why.contains("not ready"), "{why}");
    let instances = control.get_json("/v1/instances").await?;
    ensure!(
        !instances.to_string().contains("\"lost\""),
        "a sidecar that cannot verify the control plane registered anyway: {instances}"
    );
    log.passed();
    Ok(())
}
