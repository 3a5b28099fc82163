//! End-to-end: bad input is refused with a reason and changes nothing. `trellis apply` with
//! broken files exits non-zero naming the file, document, field and reason; the registry API
//! answers 400 to malformed registrations; a sidecar answers 404 `unknown_service` at once,
//! and `trellis describe reason` explains it; a client that sends its request head too slowly
//! (or nothing at all) is disconnected, while a slow answer is not cut.

use std::path::Path;

use anyhow::{Context, ensure};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trellis_testkit::{
    Caller, Client, ControlPlane, DEADLINE, Instance, Req, SidecarOpts, TestLog, wait_until,
};

const BIN: &str = env!("CARGO_BIN_EXE_trellis");

const CATALOG: &str = "apiVersion: trellis.dev/v1alpha1
kind: Service
metadata:
  name: catalog
spec:
  subsets:
    - name: v1
      labels: { version: v1 }
";

/// Runs `trellis ARGS`; returns (success, stdout, stderr).
async fn trellis(args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let out = tokio::process::Command::new(BIN)
        .args(args)
        .output()
        .await
        .with_context(|| format!("cannot run trellis {}", args.join(" ")))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Runs `trellis apply -f file --control url`; returns (success, stderr).
async fn apply(control: &ControlPlane, file: &Path) -> anyhow::Result<(bool, String)> {
    let file = file.to_string_lossy();
    let (ok, _, stderr) = trellis(&["apply", "-f", &file, "--control", &control.url()]).await?;
    Ok((ok, stderr))
}

/// Runs `trellis describe reason TOKEN` (offline).
async fn describe_reason(token: &str) -> anyhow::Result<(bool, String, String)> {
    trellis(&["describe", "reason", token]).await
}

/// Writes `yaml` to `<dir>/<name>`, applies it, and checks it is refused with a message that
/// names the file and contains every one of `expect` (case-insensitively).
async fn refused(
    control: &ControlPlane,
    dir: &Path,
    name: &str,
    yaml: &str,
    expect: &[&str],
) -> anyhow::Result<()> {
    let file = dir.join(name);
    std::fs::write(&file, yaml).with_context(|| format!("write {}", file.display()))?;
    let (ok, stderr) = apply(control, &file).await?;
    ensure!(
        !ok,
        "{name}: `trellis apply` succeeded, want a non-zero exit; stderr: {stderr}"
    );
    let lower = stderr.to_lowercase();
    ensure!(
        lower.contains(&name.to_lowercase()),
        "{name}: stderr does not name the file: {stderr}"
    );
    for e in expect {
        ensure!(
            lower.contains(&e.to_lowercase()),
            "{name}: stderr does not mention `{e}`: {stderr}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_refuses_bad_files_and_stores_nothing() -> anyhow::Result<()> {
    let log = TestLog::new("bad-apply")?;
    let control = ControlPlane::start(BIN, &log, &log.dir().join("data")).await?;
    let dir = log.dir();

    refused(
        &control,
        dir,
        "malformed.yaml",
        "apiVersion: trellis.dev/v1alpha1\nkind: Service\nmetadata: [unclosed\n",
        &[],
    )
    .await?;
    refused(
        &control,
        dir,
        "unknown-kind.yaml",
        "apiVersion: trellis.dev/v1alpha1\nkind: Gateway\nmetadata:\n  name: gw\nspec: {}\n",
        &["document 1", "kind", "Gateway"],
    )
    .await?;
    refused(
        &control,
        dir,
        "unknown-field.yaml",
        &format!("{CATALOG}  colour: blue\n"),
        &["document 1", "colour"],
    )
    .await?;
    let bad_weight = format!(
        "{CATALOG}---
apiVersion: trellis.dev/v1alpha1
kind: HTTPRoute
metadata:
  name: catalog-canary
spec:
  parentRefs: [ {{ name: catalog }} ]
  rules:
    - backendRefs:
        - {{ name: catalog, subset: v1, weight: 2000000 }}
"
    );
    refused(
        &control,
        dir,
        "bad-weight.yaml",
        &bad_weight,
        &["document 2", "catalog-canary", "weight", "2000000"],
    )
    .await?;
    refused(
        &control,
        dir,
        "no-such-service.yaml",
        "apiVersion: trellis.dev/v1alpha1
kind: HTTPRoute
metadata:
  name: ghost-route
spec:
  parentRefs: [ { name: ghost } ]
  rules:
    - backendRefs: [ { name: ghost } ]
",
        &["document 1", "ghost"],
    )
    .await?;

    // The valid Service in bad-weight.yaml must not have been applied either.
    let stored = control.get_json("/v1/resources").await?;
    ensure!(
        stored.as_array().is_some_and(|a| a.is_empty()),
        "refused files changed the store: {stored}"
    );

    // And a good file does apply, so the refusals above were about the content.
    let good = dir.join("good.yaml");
    std::fs::write(&good, CATALOG)?;
    let (ok, stderr) = apply(&control, &good).await?;
    ensure!(ok, "a valid file was refused: {stderr}");
    let stored = control.get_json("/v1/resources").await?;
    ensure!(
        stored.as_array().is_some_and(|a| a.len() == 1),
        "want exactly the catalog Service stored: {stored}"
    );

    drop(control);
    log.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_rejects_malformed_registrations() -> anyhow::Result<()> {
    let log = TestLog::new("bad-registration")?;
    let control = ControlPlane::start(BIN, &log, &log.dir().join("data")).await?;
    let cases = [
        (
            "malformed JSON",
            r#"{"service": "a", "id": "#.to_string(),
            None,
        ),
        (
            "unknown field",
            r#"{"service":"a","id":"a-1","address":"127.0.0.1","port":80,"colour":"blue"}"#
                .to_string(),
            Some("colour"),
        ),
        (
            "weight out of range",
            r#"{"service":"a","id":"a-1","address":"127.0.0.1","port":80,"weight":500}"#
                .to_string(),
            Some("weight"),
        ),
    ];
    for (what, body, field) in cases {
        let (status, answer) = control
            .request(
                reqwest::Method::POST,
                "/v1/instances",
                Some(body),
                Some("application/json"),
            )
            .await?;
        ensure!(status == 400, "{what}: want 400, got {status}: {answer}");
        let json: serde_json::Value = serde_json::from_str(&answer)
            .with_context(|| format!("{what}: error body is not JSON: {answer}"))?;
        let reason = json
            .get("error")
            .and_then(|e| e.as_str())
            .unwrap_or_default();
        ensure!(!reason.is_empty(), "{what}: no `error` reason in {answer}");
        if let Some(field) = field {
            ensure!(
                reason.contains(field),
                "{what}: the reason does not name `{field}`: {reason}"
            );
        }
    }
    let listed = control.get_json("/v1/instances").await?;
    ensure!(
        listed.as_array().is_some_and(|a| a.is_empty()),
        "a rejected registration was stored: {listed}"
    );
    drop(control);
    log.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_service_is_404_with_reason() -> anyhow::Result<()> {
    let log = TestLog::new("bad-unknown-service")?;
    let control = ControlPlane::start(BIN, &log, &log.dir().join("data")).await?;
    let Caller { sidecar, app, .. } =
        Caller::start(BIN, &log, &control.url(), SidecarOpts::default()).await?;
    for addressing in [
        trellis_testkit::Addressing::Proxy,
        trellis_testkit::Addressing::Host,
    ] {
        let reply = Client::new(sidecar.outbound())
            .with_addressing(addressing)
            .send(&Req::get("no-such-service", "/x"))
            .await?;
        ensure!(
            reply.status == 404,
            "{addressing:?}: want 404, got {} {:?}",
            reply.status,
            reply.body
        );
        ensure!(
            reply.reason().as_deref() == Some("unknown_service"),
            "{addressing:?}: want x-trellis-reason unknown_service, got {:?}",
            reply.reason()
        );
        // The CLI says what the reason means and what to do.
        let reason = reply.reason().unwrap_or_default();
        let (ok, stdout, _) = describe_reason(&reason).await?;
        ensure!(
            ok && stdout.contains("(HTTP 404)") && stdout.contains("trellis get services"),
            "describe reason {reason}: {stdout}"
        );
    }
    let (ok, _, stderr) = describe_reason("made_up").await?;
    ensure!(
        !ok && stderr.contains("not a reason") && stderr.contains("circuit_open"),
        "an unknown reason is refused with the list of reasons: {stderr}"
    );
    drop((sidecar, app, control));
    log.passed();
    Ok(())
}

/// Waits (at most [`DEADLINE`]) for the peer to close `stream`: reads return end of file or a
/// reset. Bytes that arrive first are returned.
async fn closed_by_peer(stream: &mut TcpStream) -> anyhow::Result<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(DEADLINE, stream.read(&mut buf)).await {
            Err(_) => anyhow::bail!(
                "the sidecar kept the connection open for {DEADLINE:?} (read so far: {:?})",
                String::from_utf8_lossy(&got)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one HTTP/1.1 response (head, then a `Content-Length` or chunked body) from `stream`.
async fn read_response(stream: &mut TcpStream) -> anyhow::Result<(u16, String)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
            let status: u16 = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .context("no status in the response head")?;
            let body = &got[end + 4..];
            let complete = match head.lines().find_map(|l| l.strip_prefix("content-length:")) {
                Some(n) => body.len() >= n.trim().parse::<usize>()?,
                None => body.ends_with(b"0\r\n\r\n"),
            };
            if complete {
                return Ok((status, String::from_utf8_lossy(body).into_owned()));
            }
        }
        let n = tokio::time::timeout(DEADLINE, stream.read(&mut buf))
            .await
            .context("no response in time")??;
        ensure!(n > 0, "the connection closed before a whole response came");
        got.extend_from_slice(&buf[..n]);
    }
}

/// `--request-head-timeout 1s`: a connection that sends half a head, or nothing, is closed; a
/// request whose answer takes longer than the timeout is answered, and its keep-alive
/// connection serves the next request before being closed once idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_heads_are_cut_off_and_slow_answers_are_not() -> anyhow::Result<()> {
    let log = TestLog::new("bad-slow-head")?;
    let control = ControlPlane::start(BIN, &log, &log.dir().join("data")).await?;
    // Every answer of `slow` takes 2.5 s: more than the caller's head timeout and its slack.
    let _slow = Instance::start(
        BIN,
        &log,
        &control.url(),
        "slow",
        "slow-1",
        Duration::from_millis(2500),
        SidecarOpts::default(),
    )
    .await?;
    let mut opts = SidecarOpts::default();
    opts.extra_args
        .extend(["--request-head-timeout".to_string(), "1s".to_string()]);
    let Caller {
        sidecar, client, ..
    } = Caller::start(BIN, &log, &control.url(), opts).await?;
    wait_until(DEADLINE, "the caller to reach `slow`", || async {
        client
            .send(&Req::get("slow", "/warm"))
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await?;

    log.note("half a request head, then nothing");
    let mut half = TcpStream::connect(sidecar.outbound()).await?;
    half.write_all(b"GET /half HTTP/1.1\r\nHost: slow\r\nX-Slow: ")
        .await?;
    let got = closed_by_peer(&mut half).await?;
    ensure!(got.is_empty(), "a half head got an answer: {got:?}");

    log.note("a connection that sends nothing");
    let mut silent = TcpStream::connect(sidecar.outbound()).await?;
    closed_by_peer(&mut silent).await?;

    log.note("two slow requests on one keep-alive connection, then idle");
    let mut conn = TcpStream::connect(sidecar.outbound()).await?;
    for i in 0..2 {
        conn.write_all(format!("GET /slow/{i} HTTP/1.1\r\nHost: slow\r\n\r\n").as_bytes())
            .await?;
        let (status, body) = read_response(&mut conn).await?;
        ensure!(
            status == 200 && body.contains("slow-1"),
            "slow request {i}: {status} {body}"
        );
    }
    let got = closed_by_peer(&mut conn).await?;
    ensure!(got.is_empty(), "bytes after the last answer: {got:?}");
    log.passed();
    Ok(())
}
