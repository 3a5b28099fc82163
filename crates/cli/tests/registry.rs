//! End-to-end: the instance registry. A SIGKILLed sidecar stops getting traffic once its
//! heartbeat TTL runs out, a new instance starts getting traffic, and registrations survive a
//! control-plane SIGKILL and restart on the same data dir.

use std::time::Duration;

use anyhow::{Context, ensure};
use trellis_testkit::{
    Caller, ControlPlane, DEADLINE, Instance, Req, SidecarOpts, TestLog, dump_endpoints,
    wait_for_proxy_config, wait_for_traffic_to, wait_until,
};

const BIN: &str = env!("CARGO_BIN_EXE_trellis");
const SERVICE: &str = "echo";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_instance_leaves_and_new_instance_joins() -> anyhow::Result<()> {
    let log = TestLog::new("registry-ttl")?;
    let mut control = ControlPlane::start(BIN, &log, &log.dir().join("data")).await?;
    let url = control.url();
    let ttl = || SidecarOpts::default().ttl("1s");
    let mut b1 = Instance::start(BIN, &log, &url, SERVICE, "b1", Duration::ZERO, ttl()).await?;
    let mut b2 = Instance::start(BIN, &log, &url, SERVICE, "b2", Duration::ZERO, ttl()).await?;
    let Caller {
        sidecar: mut client_sidecar,
        client,
        app: client_app,
    } = Caller::start(BIN, &log, &url, SidecarOpts::default()).await?;
    wait_for_traffic_to(&client, SERVICE, &["b1", "b2"], DEADLINE).await?;
    let pids = (
        control.process().pid(),
        b1.sidecar.process().pid(),
        client_sidecar.process().pid(),
    );

    log.note("SIGKILL b2's sidecar");
    b2.sidecar.process().sigkill().await?;
    wait_for_proxy_config(
        client_sidecar.admin(),
        DEADLINE,
        "b2 to leave the client's endpoints after its 1s TTL",
        |dump| dump_endpoints(dump, SERVICE) == ["b1".to_string()].into(),
    )
    .await?;
    let instances = control
        .get_json(&format!("/v1/instances?service={SERVICE}"))
        .await?;
    let b2_health = instances
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|i| i.get("id").and_then(|v| v.as_str()) == Some("b2"))
        })
        .and_then(|i| i.get("health"))
        .and_then(|h| h.as_str())
        .map(str::to_string);
    ensure!(
        b2_health.as_deref() == Some("unhealthy"),
        "b2 should be listed as unhealthy, got {b2_health:?}: {instances}"
    );
    wait_for_traffic_to(&client, SERVICE, &["b1"], DEADLINE).await?;
    let b2_hits = b2.backend.hits();
    let out = client
        .run(100, 4, |i| Req::get(SERVICE, &format!("/after-kill/{i}")))
        .await;
    ensure!(
        out.failures().is_empty(),
        "requests after b2 left failed: {}",
        out.summary()
    );
    ensure!(
        b2.backend.hits() == b2_hits,
        "b2's app still received traffic after its sidecar was killed and its TTL ran out"
    );

    log.note("start b3");
    let b3 = Instance::start(BIN, &log, &url, SERVICE, "b3", Duration::ZERO, ttl()).await?;
    wait_for_traffic_to(&client, SERVICE, &["b1", "b3"], DEADLINE).await?;

    ensure!(
        control.process().try_status().is_none(),
        "the control plane exited"
    );
    ensure!(
        b1.sidecar.process().try_status().is_none(),
        "b1's sidecar exited"
    );
    ensure!(
        client_sidecar.process().try_status().is_none(),
        "the client sidecar exited"
    );
    let now = (
        control.process().pid(),
        b1.sidecar.process().pid(),
        client_sidecar.process().pid(),
    );
    ensure!(
        pids == now,
        "a process was restarted: pids {pids:?} became {now:?}"
    );

    drop((b1, b2, b3, client_sidecar, client_app, control));
    log.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_survive_a_control_plane_restart() -> anyhow::Result<()> {
    let log = TestLog::new("registry-durable")?;
    let mut control = ControlPlane::start(BIN, &log, &log.dir().join("data")).await?;
    for (id, zone) in [("s1", "z1"), ("s2", "z2")] {
        let body = serde_json::json!({
            "service": "stored", "id": id, "address": "127.0.0.1", "port": 4100,
            "labels": {"version": "v7"}, "zone": zone, "weight": 3, "ttl_ms": 3_600_000,
        });
        let (status, answer) = control
            .request(
                reqwest::Method::POST,
                "/v1/instances",
                Some(body.to_string()),
                Some("application/json"),
            )
            .await?;
        ensure!(
            status == 201,
            "POST /v1/instances {id}: status {status}: {answer}"
        );
    }

    log.note("SIGKILL the control plane");
    control.sigkill().await?;
    control.restart().await?;

    let listed = control.get_json("/v1/instances?service=stored").await?;
    let items = listed
        .as_array()
        .context("GET /v1/instances is not a list")?;
    for (id, zone) in [("s1", "z1"), ("s2", "z2")] {
        let inst = items
            .iter()
            .find(|i| i.get("id").and_then(|v| v.as_str()) == Some(id))
            .with_context(|| format!("instance {id} is gone after the restart: {listed}"))?;
        ensure!(
            inst.get("zone").and_then(|v| v.as_str()) == Some(zone),
            "{id}: zone lost: {inst}"
        );
        ensure!(
            inst.get("weight").and_then(|v| v.as_u64()) == Some(3),
            "{id}: weight lost: {inst}"
        );
        ensure!(
            inst.pointer("/labels/version").and_then(|v| v.as_str()) == Some("v7"),
            "{id}: labels lost: {inst}"
        );
        ensure!(
            inst.get("health").and_then(|v| v.as_str()) == Some("healthy"),
            "{id}: not healthy after restart: {inst}"
        );
    }
    // The restarted control plane serves services from the reloaded registry too.
    wait_until(DEADLINE, "GET /v1/services to list `stored`", || async {
        control
            .get_json("/v1/services")
            .await
            .is_ok_and(|v| v.to_string().contains("\"stored\""))
    })
    .await?;

    drop(control);
    log.passed();
    Ok(())
}

/// `(unhealthy, held)` ids of `service` in the control plane's instance list.
async fn registry_view(
    control: &ControlPlane,
    service: &str,
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let list = control
        .get_json(&format!("/v1/instances?service={service}"))
        .await?;
    let (mut unhealthy, mut held) = (Vec::new(), Vec::new());
    for i in list.as_array().context("instances")? {
        let id = i
            .get("id")
            .and_then(|v| v.as_str())
            .unwrap_or("?")
            .to_string();
        if i.get("health").and_then(|v| v.as_str()) == Some("unhealthy") {
            unhealthy.push(id.clone());
        }
        if i.get("held").and_then(|v| v.as_bool()) == Some(true) {
            held.push(id);
        }
    }
    unhealthy.sort();
    held.sort();
    Ok((unhealthy, held))
}

/// Mass heartbeat loss: four of the five registered instances stop at once (SIGSTOP, as if
/// the control plane were cut off from them). With the default limit of half the instances,
/// two are marked unhealthy (the longest silent) and two are held as endpoints, so the caller
/// keeps a non-empty endpoint set; the metric shows it. Once the heartbeats return, nothing
/// is held any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mass_heartbeat_loss_triggers_self_preservation() -> anyhow::Result<()> {
    let log = TestLog::new("registry-self-preservation")?;
    let control = ControlPlane::start(BIN, &log, &log.dir().join("data")).await?;
    let url = control.url();
    let ttl = || SidecarOpts::default().ttl("1s");
    let mut instances = Vec::new();
    for id in ["b1", "b2", "b3", "b4"] {
        instances.push(Instance::start(BIN, &log, &url, SERVICE, id, Duration::ZERO, ttl()).await?);
    }
    let Caller {
        sidecar: client_sidecar,
        client,
        app: _client_app,
    } = Caller::start(BIN, &log, &url, SidecarOpts::default()).await?;
    wait_for_traffic_to(&client, SERVICE, &["b1", "b2", "b3", "b4"], DEADLINE).await?;

    for i in &mut instances {
        i.sidecar.process().signal("STOP").await?;
    }
    wait_until(DEADLINE, "two evicted and two held", || async {
        matches!(registry_view(&control, SERVICE).await,
            Ok((unhealthy, held)) if unhealthy.len() == 2 && held.len() == 2)
    })
    .await?;
    let (unhealthy, held) = registry_view(&control, SERVICE).await?;
    log.note(&format!("unhealthy {unhealthy:?}, held {held:?}"));
    let want: std::collections::BTreeSet<String> = held.iter().cloned().collect();
    wait_for_proxy_config(
        client_sidecar.admin(),
        DEADLINE,
        "the caller to keep exactly the held instances as endpoints",
        |dump| dump_endpoints(dump, SERVICE) == want,
    )
    .await?;
    // The listing counts an instance whose heartbeat just lapsed as held before the reaper's
    // next pass does; the gauge follows within a reap interval.
    wait_until(DEADLINE, "trellis_control_instances_held = 2", || async {
        control
            .request(reqwest::Method::GET, "/metrics", None, None)
            .await
            .is_ok_and(|(_, m)| {
                trellis_testkit::metric_sum(&m, "trellis_control_instances_held", &[]) == 2.0
            })
    })
    .await?;

    for i in &mut instances {
        i.sidecar.process().signal("CONT").await?;
    }
    wait_until(
        DEADLINE,
        "every instance healthy again, none held",
        || async {
            matches!(registry_view(&control, SERVICE).await,
            Ok((unhealthy, held)) if unhealthy.is_empty() && held.is_empty())
        },
    )
    .await?;
    wait_for_traffic_to(&client, SERVICE, &["b1", "b2", "b3", "b4"], DEADLINE).await?;
    log.passed();
    Ok(())
}
