//! The demo's child processes: `trellis` itself started with a subcommand, its ready line
//! read from stdout (with a deadline), stdout and stderr kept in `<data-dir>/logs/<name>.log`,
//! and stopped by PID (SIGTERM, then SIGKILL after a grace period).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// How long a component may take to bind and print its ready line.
const READY_DEADLINE: Duration = Duration::from_secs(30);

pub struct Child {
    pub name: String,
    pub pid: u32,
    pub ready: serde_json::Value,
    pub log: PathBuf,
    child: tokio::process::Child,
}

impl Child {
    /// Starts `exe args...` and waits for its ready line.
    pub async fn start(
        exe: &Path,
        args: &[String],
        name: &str,
        logs: &Path,
    ) -> anyhow::Result<Self> {
        let log = logs.join(format!("{name}.log"));
        let err_file = File::create(&log)
            .with_context(|| format!("cannot create log file {}", log.display()))?;
        let mut out_file = err_file
            .try_clone()
            .with_context(|| format!("cannot reopen log file {}", log.display()))?;
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err_file))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("{name}: cannot start {}", exe.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("{name}: exited at once (see {})", log.display()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("{name}: stdout not captured"))?;
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(READY_DEADLINE, async {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = writeln!(out_file, "{line}");
                if line.contains("\"ready\"")
                    && let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                {
                    return Some(v);
                }
            }
            None
        })
        .await;
        let ready = match first {
            Ok(Some(v)) => v,
            Ok(None) => {
                let _ = child.wait().await;
                bail!("{name} exited during startup:\n{}", tail(&log))
            }
            Err(_) => {
                let _ = child.start_kill();
                bail!(
                    "{name} did not report ready within {READY_DEADLINE:?}:\n{}",
                    tail(&log)
                )
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = writeln!(out_file, "{line}");
            }
        });
        Ok(Self {
            name: name.to_string(),
            pid,
            ready,
            log,
            child,
        })
    }

    /// A string field of the ready line (an address).
    pub fn field(&self, key: &str) -> anyhow::Result<String> {
        self.ready
            .get(key)
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .ok_or_else(|| anyhow!("{}: ready line has no `{key}`: {}", self.name, self.ready))
    }

    /// `Some(description)` once the child has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }
}

/// Stops every child: SIGTERM to each PID, then waits up to `grace`, then SIGKILL.
pub async fn stop_all(children: &mut [Child], grace: Duration) {
    for c in children.iter().rev() {
        let _ = Command::new("kill")
            .args(["-TERM", &c.pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }
    for c in children.iter_mut().rev() {
        if tokio::time::timeout(grace, c.child.wait()).await.is_err() {
            eprintln!("{} (pid {}) ignored SIGTERM; killing it", c.name, c.pid);
            let _ = c.child.start_kill();
            let _ = c.child.wait().await;
        }
    }
}

/// The last lines of a log file, for startup errors.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(20);
    format!(
        "{}\n(full log: {})",
        lines[start..].join("\n"),
        path.display()
    )
}
