//! End-to-end: AuthorizationPolicy enforced by a real sidecar over mTLS. A `web` sidecar calls
//! `catalog`; `trellis apply` first installs a policy that only lets `orders` in (web gets 403
//! `rbac_denied`, the catalog app sees nothing), then one that lets web GET `/api/*` — judged
//! on the normalized path, so `/api/../admin` stays denied — and the change takes effect
//! without restarting anything.

use std::path::Path;

use anyhow::{Context, ensure};
use trellis_testkit::{
    Caller, Client, ControlPlane, DEADLINE, Instance, Req, SidecarOpts, TestLog, wait_for,
    wait_for_traffic_to,
};

const BIN: &str = env!("CARGO_BIN_EXE_trellis");

const ONLY_ORDERS: &str = "apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: catalog-callers
spec:
  targetRef: { name: catalog }
  rules:
    - from:
        - principals: [\"*/ns/default/svc/orders\"]
";

const WEB_READS_API: &str = "apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: catalog-callers
spec:
  targetRef: { name: catalog }
  rules:
    - from:
        - principals: [\"*/ns/default/svc/orders\"]
    - from:
        - principals: [\"*/ns/default/svc/web\"]
          namespaces: [default]
      to:
        - methods: [GET]
          paths: [\"/api/*\"]
";

/// Writes `yaml` to `<dir>/<name>` and runs `trellis apply -f` on it.
async fn apply(control: &ControlPlane, dir: &Path, name: &str, yaml: &str) -> anyhow::Result<()> {
    let file = dir.join(name);
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
        "trellis apply -f {name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Waits until `GET path` from the client answers `status` (and, when given, `reason`).
async fn wait_for_answer(
    client: &Client,
    path: &str,
    status: u16,
    reason: Option<&str>,
) -> anyhow::Result<()> {
    let what = format!("GET catalog{path} to answer {status} {reason:?}");
    wait_for(DEADLINE, &what, || async {
        match client.send(&Req::get("catalog", path)).await {
            Ok(r)
                if r.status == status
                    && reason.is_none_or(|w| r.reason().as_deref() == Some(w)) =>
            {
                Ok(())
            }
            Ok(r) => Err(format!(
                "got {} {:?}: {}",
                r.status,
                r.reason(),
                String::from_utf8_lossy(&r.body)
            )),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_applied_with_the_cli_are_enforced_and_updated() -> anyhow::Result<()> {
    let log = TestLog::new("authz")?;
    let control = ControlPlane::start(BIN, &log, &log.dir().join("data")).await?;
    let url = control.url();
    let catalog = Instance::start(
        BIN,
        &log,
        &url,
        "catalog",
        "catalog-1",
        std::time::Duration::ZERO,
        SidecarOpts::default(),
    )
    .await?;
    let Caller {
        sidecar: _web,
        client,
        app: _web_app,
    } = Caller::of(BIN, &log, &url, "web", SidecarOpts::default()).await?;

    log.note("no policy: web reaches catalog over mTLS");
    wait_for_traffic_to(&client, "catalog", &["catalog-1"], DEADLINE).await?;

    log.note("only orders may call catalog: web is denied");
    apply(&control, log.dir(), "only-orders.yaml", ONLY_ORDERS).await?;
    wait_for_answer(&client, "/api/items", 403, Some("rbac_denied")).await?;
    let hits = catalog.backend.hits();
    for path in ["/api/items", "/", "/admin"] {
        let r = client.send(&Req::get("catalog", path)).await?;
        ensure!(
            r.status == 403 && r.reason().as_deref() == Some("rbac_denied"),
            "GET {path}: expected 403 rbac_denied, got {} {:?}",
            r.status,
            r.reason()
        );
    }
    ensure!(
        catalog.backend.hits() == hits,
        "the catalog app saw a denied request"
    );

    log.note("web may GET /api/*: allowed there, denied elsewhere, on normalized paths");
    apply(&control, log.dir(), "web-reads-api.yaml", WEB_READS_API).await?;
    wait_for_answer(&client, "/api/items", 200, None).await?;
    let r = client.send(&Req::get("catalog", "/api//items/./x")).await?;
    ensure!(r.status == 200, "GET /api//items/./x: {}", r.status);
    let path = r
        .json()?
        .get("path")
        .and_then(|p| p.as_str())
        .map(str::to_string);
    ensure!(
        path.as_deref() == Some("/api/items/x"),
        "the app should see the normalized path, saw {path:?}"
    );
    for path in ["/admin", "/api/../admin", "/api/%2e%2e/admin"] {
        let hits = catalog.backend.hits();
        let r = client.send(&Req::get("catalog", path)).await?;
        ensure!(
            r.status == 403 && r.reason().as_deref() == Some("rbac_denied"),
            "GET {path}: expected 403 rbac_denied, got {} {:?}",
            r.status,
            r.reason()
        );
        ensure!(catalog.backend.hits() == hits, "the app saw GET {path}");
    }
    let r = client.send(&Req::get("catalog", "/api/a%2Fb")).await?;
    ensure!(
        r.status == 400 && r.reason().as_deref() == Some("bad_path"),
        "GET /api/a%2Fb: expected 400 bad_path, got {} {:?}",
        r.status,
        r.reason()
    );
    log.passed();
    Ok(())
}
