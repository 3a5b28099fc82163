//! The per-test log: one file in a per-test temporary directory that every process started by
//! the test writes its stdout and stderr lines into, prefixed with the process name. The
//! directory is removed only when the test calls [`TestLog::passed`]; a test that panics or
//! returns an error keeps it and prints its path.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;

/// Set this environment variable to keep every test's log directory, passed or not.
pub const KEEP_LOGS_ENV: &str = "TRELLIS_TEST_KEEP_LOGS";

/// Owns the test's temporary directory. Create one per test and keep it alive for the test.
pub struct TestLog {
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
    sink: LogSink,
    passed: bool,
}

/// A cheap handle that appends prefixed lines to the test's log file.
#[derive(Clone)]
pub struct LogSink {
    path: PathBuf,
    file: Arc<Mutex<File>>,
}

impl TestLog {
    /// Creates `trellis-<test>-XXXX/` under the system temp dir with `test.log` in it.
    pub fn new(test: &str) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("trellis-{test}-"))
            .tempdir()
            .context("cannot create the test's temporary directory")?;
        let dir_path = dir.path().to_path_buf();
        let path = dir_path.join("test.log");
        let file = File::create(&path)
            .with_context(|| format!("cannot create log file {}", path.display()))?;
        Ok(Self {
            dir: Some(dir),
            dir_path,
            sink: LogSink {
                path,
                file: Arc::new(Mutex::new(file)),
            },
            passed: false,
        })
    }

    /// The test's temporary directory (data dirs and YAML files go here too).
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.sink.path
    }

    /// Marks the test as passed: its directory is removed on drop. Call it last.
    pub fn passed(mut self) {
        self.passed = true;
    }

    pub fn sink(&self) -> LogSink {
        self.sink.clone()
    }

    /// Writes a line from the test itself (`[test] ...`), handy to mark phases in the log.
    pub fn note(&self, msg: &str) {
        self.sink.line("test", msg);
    }
}

impl Drop for TestLog {
    fn drop(&mut self) {
        let keep_always = std::env::var_os(KEEP_LOGS_ENV).is_some();
        if (!self.passed || keep_always)
            && let Some(dir) = self.dir.take()
        {
            let kept = dir.keep();
            eprintln!("process logs kept in {}", kept.join("test.log").display());
        }
    }
}

impl LogSink {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `[prefix] line`. Logging must never fail a test, so write errors are ignored.
    pub fn line(&self, prefix: &str, line: &str) {
        if let Ok(mut f) = self.file.lock() {
            let _ = writeln!(f, "[{prefix}] {line}");
        }
    }
}
