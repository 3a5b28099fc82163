//! End-to-end: bad input is refused with a reason and changes nothing. `trellis apply` with
//! broken files exits non-zero naming the file, document, field and reason; the registry API
//! answers 400 to malformed registrations; a sidecar answers 404 `unknown_service` at once,
//! and `trellis describe reason` explains it.

use std::path::Path;

use anyhow::{Context, ensure};
use trellis_testkit::{Caller, Client, ControlPlane, Req, SidecarOpts, TestLog};

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
