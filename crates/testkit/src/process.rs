//! A spawned `trellis` child process: waits for its JSON ready line (with a deadline), drains
//! its stdout and stderr into the test log, keeps the last stderr lines for error messages,
//! and is killed with SIGKILL when dropped.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::log::LogSink;

/// How many stderr lines an error message quotes.
const TAIL_LINES: usize = 40;

/// A running child. Dropping it sends SIGKILL.
pub struct Process {
    name: String,
    child: Child,
    pid: u32,
    ready: serde_json::Value,
    log: LogSink,
    tail: Arc<Mutex<VecDeque<String>>>,
    stderr_task: Option<JoinHandle<()>>,
}

impl Process {
    /// Spawns `bin args...`, then waits up to `deadline` for a stdout line that is a JSON object
    /// with a `"ready"` field. Fails with the child's stderr tail if it exits or times out.
    pub async fn spawn(
        bin: impl AsRef<Path>,
        args: &[String],
        name: &str,
        log: LogSink,
        deadline: Duration,
    ) -> anyhow::Result<Self> {
        let bin = bin.as_ref();
        log.line(
            name,
            &format!("spawn: {} {}", bin.display(), args.join(" ")),
        );
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("{name}: cannot spawn {}", bin.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("{name}: child exited before its pid could be read"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("{name}: stdout not captured"))?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| anyhow!("{name}: stderr not captured"))?;

        let (ready_tx, ready_rx) = oneshot::channel::<String>();
        let out_log = log.clone();
        let out_name = format!("{name} stdout");
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut ready_tx = Some(ready_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                out_log.line(&out_name, &line);
                if line.trim_start().starts_with('{')
                    && line.contains("\"ready\"")
                    && let Some(tx) = ready_tx.take()
                {
                    let _ = tx.send(line);
                }
            }
        });
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        let err_log = log.clone();
        let err_name = name.to_string();
        let err_tail = tail.clone();
        let stderr_task = tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                err_log.line(&err_name, &line);
                if let Ok(mut t) = err_tail.lock() {
                    if t.len() == TAIL_LINES {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            }
        });

        let mut process = Self {
            name: name.to_string(),
            child,
            pid,
            ready: serde_json::Value::Null,
            log,
            tail,
            stderr_task: Some(stderr_task),
        };
        match tokio::time::timeout(deadline, ready_rx).await {
            Ok(Ok(line)) => {
                process.ready = serde_json::from_str(&line)
                    .with_context(|| format!("{name}: ready line is not valid JSON: {line}"))?;
                Ok(process)
            }
            Ok(Err(_)) => {
                let status = tokio::time::timeout(Duration::from_secs(5), process.child.wait())
                    .await
                    .map(|s| s.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()))
                    .unwrap_or_else(|_| "still running with stdout closed".to_string());
                let tail = process.drained_tail().await;
                bail!(
                    "{name} exited before printing its ready line ({status}).\n\
                     last stderr lines:\n{tail}\nfull log: {}",
                    process.log.path().display()
                )
            }
            Err(_) => {
                let _ = process.child.start_kill();
                let _ = process.child.wait().await;
                let tail = process.drained_tail().await;
                bail!(
                    "{name} did not print its ready line within {deadline:?}.\n\
                     last stderr lines:\n{tail}\nfull log: {}",
                    process.log.path().display()
                )
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The parsed ready line.
    pub fn ready(&self) -> &serde_json::Value {
        &self.ready
    }

    /// An address field of the ready line, e.g. `ready_addr("http")`.
    pub fn ready_addr(&self, field: &str) -> anyhow::Result<SocketAddr> {
        let s = self
            .ready
            .get(field)
            .and_then(|v| v.as_str())
            .ok_or_else(|| {
                anyhow!(
                    "{}: ready line has no string field `{field}`: {}",
                    self.name,
                    self.ready
                )
            })?;
        s.parse().with_context(|| {
            format!(
                "{}: ready line field `{field}` = `{s}` is not an address",
                self.name
            )
        })
    }

    /// The last stderr lines seen so far.
    pub fn stderr_tail(&self) -> String {
        self.tail
            .lock()
            .map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }

    /// Sends SIGKILL and reaps the child.
    pub async fn sigkill(&mut self) -> anyhow::Result<ExitStatus> {
        self.log.line(&self.name, "test: SIGKILL");
        self.child
            .start_kill()
            .with_context(|| format!("{}: cannot send SIGKILL", self.name))?;
        self.child
            .wait()
            .await
            .with_context(|| format!("{}: cannot reap after SIGKILL", self.name))
    }

    /// Sends SIGTERM and waits up to `deadline` for the exit; sends SIGKILL and fails if the
    /// child outlives the deadline.
    pub async fn sigterm(&mut self, deadline: Duration) -> anyhow::Result<ExitStatus> {
        self.signal("TERM").await?;
        match tokio::time::timeout(deadline, self.child.wait()).await {
            Ok(s) => s.with_context(|| format!("{}: cannot reap after SIGTERM", self.name)),
            Err(_) => {
                let _ = self.sigkill().await;
                bail!(
                    "{} did not exit within {deadline:?} of SIGTERM.\nlast stderr lines:\n{}",
                    self.name,
                    self.stderr_tail()
                )
            }
        }
    }

    /// Sends `SIG<name>` (`TERM`, `STOP`, `CONT`, ...) without waiting for any effect.
    pub async fn signal(&self, name: &str) -> anyhow::Result<()> {
        self.log.line(&self.name, &format!("test: SIG{name}"));
        let status = tokio::process::Command::new("kill")
            .args([&format!("-{name}"), &self.pid.to_string()])
            .status()
            .await
            .with_context(|| format!("{}: cannot run `kill -{name} {}`", self.name, self.pid))?;
        if !status.success() {
            bail!(
                "{}: `kill -{name} {}` failed: {status}",
                self.name,
                self.pid
            );
        }
        Ok(())
    }

    /// `Some(status)` once the child has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The stderr tail after giving the drain task a moment to read what the child left.
    async fn drained_tail(&mut self) -> String {
        if let Some(task) = self.stderr_task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
        self.stderr_tail()
    }
}
