//! End-to-end: `trellis-proxy`, the sidecar alone, on both sides of an mTLS call (STRICT,
//! certificates from the control plane's CA), and its flags behave as `trellis proxy`'s.

use anyhow::ensure;
use trellis_testkit::{
    Caller, ControlPlane, DEADLINE, Instance, Req, SidecarOpts, TestLog, wait_for_traffic_to,
};

const BIN: &str = env!("CARGO_BIN_EXE_trellis");
const PROXY_BIN: &str = env!("CARGO_BIN_EXE_trellis-proxy");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trellis_proxy_binary_carries_mesh_traffic() -> anyhow::Result<()> {
    let log = TestLog::new("sidecar-binary-mesh")?;
    let control = ControlPlane::start(BIN, &log, &log.dir().join("data")).await?;
    let url = control.url();
    let server = Instance::start(
        PROXY_BIN,
        &log,
        &url,
        "catalog",
        "catalog-1",
        std::time::Duration::ZERO,
        SidecarOpts::default(),
    )
    .await?;
    let caller = Caller::start(PROXY_BIN, &log, &url, SidecarOpts::default()).await?;
    wait_for_traffic_to(&caller.client, "catalog", &["catalog-1"], DEADLINE).await?;

    let reply = caller
        .client
        .send(&Req::post("catalog", "/orders", "one order"))
        .await?;
    ensure!(
        reply.status == 200,
        "status {}: {}",
        reply.status,
        String::from_utf8_lossy(&reply.body)
    );
    ensure!(
        reply.instance().as_deref() == Some("catalog-1"),
        "answered by {:?}",
        reply.instance()
    );
    ensure!(
        server.backend.received() > 0,
        "the backend behind the trellis-proxy sidecar saw no request"
    );
    drop((caller, server, control));
    log.passed();
    Ok(())
}

#[test]
fn trellis_proxy_flags_are_the_proxy_commands() -> anyhow::Result<()> {
    let version = std::process::Command::new(PROXY_BIN)
        .arg("--version")
        .output()?;
    let text = String::from_utf8_lossy(&version.stdout);
    ensure!(
        version.status.success() && text.starts_with("trellis-proxy "),
        "--version: {:?} {text}",
        version.status
    );

    // A required flag missing: a usage error naming it, exit code 2, nothing started.
    let missing = std::process::Command::new(PROXY_BIN)
        .args(["--service", "catalog"])
        .output()?;
    let err = String::from_utf8_lossy(&missing.stderr);
    ensure!(
        missing.status.code() == Some(2) && err.contains("--app-port"),
        "missing --app-port: {:?} {err}",
        missing.status
    );

    // The control plane is not in this binary.
    let control = std::process::Command::new(PROXY_BIN)
        .args(["control", "--data-dir", "/nonexistent"])
        .output()?;
    ensure!(
        control.status.code() == Some(2),
        "`trellis-proxy control` should be a usage error: {:?}",
        control.status
    );
    Ok(())
}

/// Wake-ups (voluntary context switches) of every thread of process `pid` so far.
fn wakeups(pid: u32) -> anyhow::Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        // A thread that exits between the listing and the read is skipped.
        let Ok(status) = std::fs::read_to_string(task?.path().join("status")) else {
            continue;
        };
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}

/// A sidecar with its config, its certificate and no traffic sleeps, and so does its control
/// plane: no background task polls on a timer (a 50 ms poll would wake a process at least 10
/// times in each half second). The registry TTL is long so that no heartbeat, and no reaper
/// deadline, falls inside the windows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_sidecar_and_control_plane_do_not_wake_up() -> anyhow::Result<()> {
    let log = TestLog::new("sidecar-binary-idle")?;
    let mut control = ControlPlane::start(BIN, &log, &log.dir().join("data")).await?;
    let url = control.url();
    let mut server = Instance::start(
        PROXY_BIN,
        &log,
        &url,
        "catalog",
        "catalog-1",
        std::time::Duration::ZERO,
        SidecarOpts::default().ttl("1h"),
    )
    .await?;
    let pids = [
        ("sidecar", server.sidecar.process().pid()),
        ("control plane", control.process().pid()),
    ];
    // The quietest of four half-second windows, so that start-up work still finishing (the
    // registration, the first xDS acknowledgements, the first snapshot's push) cannot count
    // against it.
    let mut quietest = [u64::MAX; 2];
    for _ in 0..4 {
        let before = [wakeups(pids[0].1)?, wakeups(pids[1].1)?];
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        for (q, (b, (_, pid))) in quietest.iter_mut().zip(before.iter().zip(pids)) {
            *q = (*q).min(wakeups(pid)?.saturating_sub(*b));
        }
    }
    for (woke, (who, _)) in quietest.iter().zip(pids) {
        ensure!(
            *woke < 4,
            "an idle {who} woke {woke} times in its quietest half second \
             (a background task polling on a timer?)"
        );
    }
    drop((server, control));
    log.passed();
    Ok(())
}
