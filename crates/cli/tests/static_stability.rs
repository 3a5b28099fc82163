//! End-to-end: static stability. While traffic flows from a client sidecar to two instances,
//! the control plane is SIGKILLed: no request fails during the outage. After a restart on the
//! same data dir the proxies resubscribe (`/v1/proxies` lists them) and a newly applied route
//! takes effect.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::ensure;
use trellis_testkit::{
    Caller, Client, ControlPlane, DEADLINE, Instance, Req, SidecarOpts, TestLog,
    wait_for_traffic_to, wait_until,
};

const BIN: &str = env!("CARGO_BIN_EXE_trellis");
const SERVICE: &str = "echo";

/// Everything to v2.
const ROUTE: &str = r#"
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata:
  name: echo
spec:
  subsets:
    - { name: v1, labels: { version: v1 } }
    - { name: v2, labels: { version: v2 } }
---
apiVersion: trellis.dev/v1alpha1
kind: HTTPRoute
metadata:
  name: echo-to-v2
spec:
  parentRefs: [ { name: echo } ]
  rules:
    - backendRefs: [ { name: echo, subset: v2 } ]
"#;

/// Traffic sent in the background until stopped.
#[derive(Default)]
struct Traffic {
    stop: AtomicBool,
    ok: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

impl Traffic {
    fn spawn(client: Client) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let t = Arc::new(Self::default());
        let bg = t.clone();
        let task = tokio::spawn(async move {
            let mut round = 0usize;
            while !bg.stop.load(Ordering::Relaxed) {
                round += 1;
                let out = client
                    .run(20, 2, move |i| Req::get(SERVICE, &format!("/r{round}/{i}")))
                    .await;
                let failures = out.failures();
                bg.ok.fetch_add(20 - failures.len(), Ordering::Relaxed);
                if let Ok(mut f) = bg.failures.lock() {
                    f.extend(
                        failures
                            .into_iter()
                            .map(|(i, e)| format!("round {round} #{i}: {e}")),
                    );
                }
            }
        });
        (t, task)
    }

    fn ok(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    /// Waits until `more` further requests have succeeded.
    async fn wait_more(&self, more: usize, when: &str) -> anyhow::Result<()> {
        let target = self.ok() + more;
        wait_until(
            Duration::from_secs(60),
            &format!("{more} more successful requests {when}"),
            || async { self.ok() >= target },
        )
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_survives_a_control_plane_outage() -> anyhow::Result<()> {
    let log = TestLog::new("static-stability")?;
    let mut control = ControlPlane::start(BIN, &log, &log.dir().join("data")).await?;
    let url = control.url();
    let b1 = Instance::start(
        BIN,
        &log,
        &url,
        SERVICE,
        "b1",
        Duration::ZERO,
        SidecarOpts::default().label("version", "v1"),
    )
    .await?;
    let b2 = Instance::start(
        BIN,
        &log,
        &url,
        SERVICE,
        "b2",
        Duration::ZERO,
        SidecarOpts::default().label("version", "v2"),
    )
    .await?;
    let Caller {
        sidecar: client_sidecar,
        client,
        app: client_app,
    } = Caller::start(BIN, &log, &url, SidecarOpts::default()).await?;
    wait_for_traffic_to(&client, SERVICE, &["b1", "b2"], DEADLINE).await?;

    let (traffic, task) = Traffic::spawn(client);
    traffic.wait_more(100, "before the outage").await?;
    log.note("SIGKILL the control plane");
    control.sigkill().await?;
    traffic
        .wait_more(500, "while the control plane is down")
        .await?;
    log.note("restart the control plane");
    control.restart().await?;
    wait_until(
        DEADLINE,
        "GET /v1/proxies to list all three proxies again",
        || async {
            control.get_json("/v1/proxies").await.is_ok_and(|p| {
                let ids: Vec<&str> = p
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.get("instance_id")?.as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                ["client-1", "b1", "b2"].iter().all(|id| ids.contains(id))
            })
        },
    )
    .await?;
    traffic.wait_more(100, "after the restart").await?;
    traffic.stop.store(true, Ordering::Relaxed);
    let _ = task.await;
    let failures = traffic
        .failures
        .lock()
        .map(|f| f.clone())
        .unwrap_or_default();
    ensure!(
        failures.is_empty(),
        "{} of {} requests failed around the outage; first: {:?}",
        failures.len(),
        traffic.ok() + failures.len(),
        failures.iter().take(5).collect::<Vec<_>>()
    );

    log.note("apply a route after the restart");
    control.apply_yaml(ROUTE).await?;
    wait_for_traffic_to(&client, SERVICE, &["b2"], DEADLINE).await?;

    drop((b1, b2, client_sidecar, client_app, control));
    log.passed();
    Ok(())
}
