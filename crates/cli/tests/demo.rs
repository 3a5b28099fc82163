//! End-to-end: `trellis demo --ports auto` starts the whole sample mesh, reports traffic that
//! reached catalog, accepts `trellis apply -f demo/mesh.yaml` against its control plane, and
//! exits 0 on SIGTERM after stopping its children.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use tokio::io::{AsyncBufReadExt, BufReader};
use trellis_testkit::TestLog;

const BIN: &str = env!("CARGO_BIN_EXE_trellis");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_and_stops_cleanly() -> anyhow::Result<()> {
    let log = TestLog::new("demo")?;
    let mut demo = tokio::process::Command::new(BIN)
        .args(["demo", "--ports", "auto", "--rps", "20", "--data-dir"])
        .arg(log.dir().join("demo"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start trellis demo")?;
    let pid = demo.id().context("demo exited at once")?;
    // On failure, stop the demo with SIGTERM (not the SIGKILL of kill_on_drop) so it stops its
    // own children too.
    let _guard = TermOnDrop(pid);
    let mut lines = BufReader::new(demo.stdout.take().context("no stdout")?).lines();
    let sink = log.sink();

    // Wait for the banner's control URL, then for a status line with traffic that reached
    // catalog (either version).
    let mut control_url = None;
    let waited = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await? {
            sink.line("demo", &line);
            if let Some(rest) = line.trim().strip_prefix("control plane") {
                control_url = rest.split_whitespace().nth(1).map(str::to_string);
            }
            if line.starts_with("[demo] requests") && !line.contains("catalog v1 0 (0.0%)  v2 0 ") {
                return Ok::<_, anyhow::Error>(true);
            }
        }
        Ok(false)
    })
    .await;
    match waited {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => bail!(
            "the demo exited before reporting traffic; see {}",
            log.path().display()
        ),
        Ok(Err(e)) => return Err(e),
        Err(_) => bail!(
            "the demo reported no traffic reaching catalog within 120s; see {}",
            log.path().display()
        ),
    }

    let control_url =
        control_url.context("the banner did not show the control plane's API address")?;
    let mesh = concat!(env!("CARGO_MANIFEST_DIR"), "/demo/mesh.yaml");
    let out = tokio::process::Command::new(BIN)
        .args(["apply", "-f", mesh, "--control", &control_url])
        .output()
        .await
        .context("cannot run trellis apply")?;
    ensure!(
        out.status.success(),
        "trellis apply -f demo/mesh.yaml failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let status = tokio::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await?;
    ensure!(status.success(), "kill -TERM {pid} failed");
    let rest = tokio::time::timeout(Duration::from_secs(60), async {
        let mut rest = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            sink.line("demo", &line);
            rest.push(line);
        }
        rest
    })
    .await
    .context("the demo did not close its output within 60s of SIGTERM")?;
    let exit = tokio::time::timeout(Duration::from_secs(30), demo.wait())
        .await
        .context("the demo did not exit within 30s of SIGTERM")??;
    ensure!(exit.success(), "the demo exited with {exit}");
    ensure!(
        rest.iter().any(|l| l.contains("stopped every component")),
        "no final summary after SIGTERM: {rest:?}"
    );
    log.passed();
    Ok(())
}

/// Sends SIGTERM to a pid when dropped (harmless if it has already exited).
struct TermOnDrop(u32);

impl Drop for TermOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.0.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}
