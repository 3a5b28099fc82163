//! End-to-end: HTTPRoute traffic splitting and header matching through real sidecars.
//! Service `catalog` has one v1 and one v2 instance; a client sidecar sends the requests.

use anyhow::ensure;
use trellis_testkit::{
    Caller, Client, ControlPlane, DEADLINE, EchoServer, Instance, Req, Sidecar, SidecarOpts,
    TestLog, dump_endpoints, json_mentions, wait_for_proxy_config, wait_for_traffic_to,
};

const BIN: &str = env!("CARGO_BIN_EXE_trellis");

/// Requests with `x-canary: "true"` go to v2; the rest split 90/10 between v1 and v2.
const MESH: &str = r#"
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata:
  name: catalog
spec:
  subsets:
    - name: v1
      labels: { version: v1 }
    - name: v2
      labels: { version: v2 }
---
apiVersion: trellis.dev/v1alpha1
kind: HTTPRoute
metadata:
  name: catalog-canary
spec:
  parentRefs:
    - name: catalog
  rules:
    - matches:
        - headers:
            - { name: x-canary, value: "true" }
      backendRefs:
        - { name: catalog, subset: v2 }
    - backendRefs:
        - { name: catalog, subset: v1, weight: 90 }
        - { name: catalog, subset: v2, weight: 10 }
"#;

struct Mesh {
    _v1: Instance,
    _v2: Instance,
    _client_sidecar: Sidecar,
    _client_app: EchoServer,
    _control: ControlPlane,
    client: Client,
    log: TestLog,
}

async fn start(test: &str) -> anyhow::Result<Mesh> {
    let log = TestLog::new(test)?;
    let control = ControlPlane::start(BIN, &log, &log.dir().join("data")).await?;
    let url = control.url();
    let no_delay = std::time::Duration::ZERO;
    let v1 = Instance::start(
        BIN,
        &log,
        &url,
        "catalog",
        "catalog-v1",
        no_delay,
        SidecarOpts::default().label("version", "v1"),
    )
    .await?;
    let v2 = Instance::start(
        BIN,
        &log,
        &url,
        "catalog",
        "catalog-v2",
        no_delay,
        SidecarOpts::default().label("version", "v2"),
    )
    .await?;
    let Caller {
        sidecar: client_sidecar,
        client,
        app: client_app,
    } = Caller::start(BIN, &log, &url, SidecarOpts::default()).await?;
    wait_for_traffic_to(&client, "catalog", &["catalog-v1", "catalog-v2"], DEADLINE).await?;

    control.apply_yaml(MESH).await?;
    wait_for_proxy_config(
        client_sidecar.admin(),
        DEADLINE,
        "the client sidecar to have the catalog-canary route and both subset clusters",
        |dump| {
            json_mentions(dump, "x-canary")
                && dump_endpoints(dump, "catalog|v1").contains("catalog-v1")
                && dump_endpoints(dump, "catalog|v2").contains("catalog-v2")
                && dump_endpoints(dump, "catalog|v1").len() == 1
                && dump_endpoints(dump, "catalog|v2").len() == 1
        },
    )
    .await?;
    Ok(Mesh {
        _v1: v1,
        _v2: v2,
        _client_sidecar: client_sidecar,
        _client_app: client_app,
        _control: control,
        client,
        log,
    })
}

impl Mesh {
    fn finish(self) {
        let Mesh {
            _v1,
            _v2,
            _client_sidecar,
            _client_app,
            _control,
            log,
            ..
        } = self;
        drop((_v1, _v2, _client_sidecar, _client_app, _control));
        log.passed();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_is_90_10() -> anyhow::Result<()> {
    let mesh = start("routes-split").await?;
    const TOTAL: usize = 2000;
    let out = mesh
        .client
        .run(TOTAL, 4, |i| Req::get("catalog", &format!("/items/{i}")))
        .await;
    mesh.log.note(&out.summary());
    ensure!(
        out.failures().is_empty(),
        "requests failed: {}",
        out.summary()
    );
    let v2 = out.share("catalog-v2");
    let v1 = out.share("catalog-v1");
    ensure!(
        (0.07..=0.13).contains(&v2),
        "v2 got {v2:.4} of the traffic, want 0.10 ± 0.03: {}",
        out.summary()
    );
    ensure!(
        (0.87..=0.93).contains(&v1),
        "v1 got {v1:.4} of the traffic, want 0.90 ± 0.03: {}",
        out.summary()
    );
    mesh.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_match_goes_to_v2_only() -> anyhow::Result<()> {
    let mesh = start("routes-header").await?;
    let canary = mesh
        .client
        .run(200, 4, |i| {
            Req::get("catalog", &format!("/items/{i}")).header("x-canary", "true")
        })
        .await;
    mesh.log.note(&canary.summary());
    ensure!(
        canary.failures().is_empty(),
        "canary requests failed: {}",
        canary.summary()
    );
    let per = canary.per_instance();
    ensure!(
        per.get("catalog-v2") == Some(&200) && per.len() == 1,
        "requests with x-canary: true must all go to v2: {}",
        canary.summary()
    );
    // A different value does not match: those requests take the 90/10 rule, so v1 shows up.
    let other = mesh
        .client
        .run(200, 4, |i| {
            Req::get("catalog", &format!("/items/{i}")).header("x-canary", "false")
        })
        .await;
    ensure!(
        other.failures().is_empty(),
        "requests failed: {}",
        other.summary()
    );
    ensure!(
        other.share("catalog-v1") > 0.5,
        "x-canary: false must not match the canary rule: {}",
        other.summary()
    );
    mesh.finish();
    Ok(())
}
