//! The access log (`trellis proxy --access-log PATH|-`): one JSON object per line for every
//! inbound and outbound HTTP request and every raw TCP connection, with fields named after
//! Envoy's default format (docs/API.md, "Access log").
//!
//! Off by default, and then it costs one `Option` check per connection (the listener picks
//! the unlogged service) and one empty-extensions check where a handler notes its upstream.
//! When on, the request task fills a small [`Record`] (cheap clones of the head's parts) and
//! hands it to a dedicated writer thread through a bounded channel; it never waits: when the
//! channel is full the record is dropped and counted (`trellis_access_log_dropped_total`).
//! The writer formats, writes and flushes whenever the channel runs empty.

mod format;
mod request;
mod tcp;

#[cfg(test)]
mod tests;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Method, Request};
use prometheus_client::metrics::counter::Counter;

use crate::metrics::Direction;

pub(crate) use request::Pending;
pub(crate) use tcp::ConnLog;

/// Records waiting for the writer; beyond this they are dropped.
const QUEUE: usize = 8192;

/// Where the access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    /// Appended to (created when missing).
    File(PathBuf),
}

impl std::str::FromStr for AccessLogTarget {
    type Err = String;

    /// `-` is stdout; anything else a file path.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" => Err("expected a file path, or `-` for stdout".to_string()),
            "-" => Ok(AccessLogTarget::Stdout),
            path => Ok(AccessLogTarget::File(PathBuf::from(path))),
        }
    }
}

/// The running access log: a handle to the writer thread.
#[derive(Debug)]
pub(crate) struct AccessLog {
    tx: SyncSender<Record>,
    dropped: Counter,
}

impl AccessLog {
    /// Opens `target` and starts the writer thread; the error names the path and the cause.
    pub fn open(target: &AccessLogTarget, dropped: Counter) -> Result<Self, String> {
        let out: Box<dyn Write + Send> = match target {
            AccessLogTarget::Stdout => Box::new(std::io::stdout()),
            AccessLogTarget::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        format!(
                            "--access-log {}: cannot open it for appending: {e} (give a \
                             writable file path, or `-` for stdout)",
                            path.display()
                        )
                    })?,
            ),
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_all(rx, out))
            .map_err(|e| format!("--access-log: cannot start the writer thread: {e}"))?;
        Ok(AccessLog { tx, dropped })
    }

    /// Hands `record` to the writer, or drops and counts it when the writer is behind.
    pub fn log(&self, record: Record) {
        match self.tx.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.inc();
            }
        }
    }
}

/// The writer thread: one line per record, flushed whenever no record is waiting.
fn write_all(rx: Receiver<Record>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut line = Vec::with_capacity(1024);
    let mut failing = false;
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(r) = next {
            line.clear();
            format::write_line(&mut line, &r);
            if let Err(e) = out.write_all(&line) {
                warn_once(&mut failing, &e);
            }
            next = rx.try_recv().ok();
        }
        match out.flush() {
            Ok(()) => failing = false,
            Err(e) => warn_once(&mut failing, &e),
        }
    }
    let _ = out.flush();
}

fn warn_once(failing: &mut bool, e: &std::io::Error) {
    if !*failing {
        tracing::warn!(error = %e, "access log: write failed; records are lost until it works again");
        *failing = true;
    }
}

/// One access log entry (HTTP request or TCP connection). Filled on the request task with
/// cheap clones; formatted by the writer.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub start: SystemTime,
    pub direction: Direction,
    /// `HTTP/1.1`, `HTTP/2`, ... or `tcp`.
    pub protocol: &'static str,
    pub method: Option<Method>,
    pub path: Option<PathAndQuery>,
    pub authority: Option<HeaderValue>,
    pub status: Option<u16>,
    pub grpc_status: Option<HeaderValue>,
    /// Why Trellis answered (or closed the connection) itself; `None` when proxied normally.
    pub reason: Option<HeaderValue>,
    pub duration: Duration,
    /// From the start until the upstream's response head (proxied responses only).
    pub upstream_service_time: Option<Duration>,
    /// HTTP: the request's declared `content-length` (absent when it declares none).
    pub bytes_received: Option<u64>,
    pub bytes_sent: u64,
    pub upstream: Option<Upstream>,
    pub downstream: SocketAddr,
    pub peer_id: Option<Arc<str>>,
    pub request_id: Option<HeaderValue>,
    pub traceparent: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
}

impl Record {
    /// A record for a connection or request from `downstream` starting now.
    pub fn new(direction: Direction, protocol: &'static str, downstream: SocketAddr) -> Self {
        Record {
            start: SystemTime::now(),
            direction,
            protocol,
            method: None,
            path: None,
            authority: None,
            status: None,
            grpc_status: None,
            reason: None,
            duration: Duration::ZERO,
            upstream_service_time: None,
            bytes_received: None,
            bytes_sent: 0,
            upstream: None,
            downstream,
            peer_id: None,
            request_id: None,
            traceparent: None,
            user_agent: None,
        }
    }
}

/// The cluster and endpoint a request or connection went to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Upstream {
    pub cluster: Arc<str>,
    pub host: Option<Authority>,
}

/// Where a handler notes its upstream for the access log: put in the request's extensions by
/// the listener only when the log is on.
#[derive(Debug, Default)]
pub(crate) struct UpstreamSlot(Mutex<Option<Upstream>>);

impl UpstreamSlot {
    fn take(&self) -> Option<Upstream> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Notes that `req` goes to `cluster` (and endpoint `host`, once picked), when it is logged.
/// Without the access log this is one check of the request's (empty) extensions.
pub(crate) fn note<B>(req: &Request<B>, cluster: &Arc<str>, host: Option<&Authority>) {
    note_in(req.extensions(), cluster, host)
}

/// [`note`] for a request's head, by its extensions.
pub(crate) fn note_in(extensions: &http::Extensions, cluster: &Arc<str>, host: Option<&Authority>) {
    if let Some(slot) = extensions.get::<Arc<UpstreamSlot>>() {
        *slot.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(Upstream {
            cluster: cluster.clone(),
            host: host.cloned(),
        });
    }
}

/// Copies the access log slot of `from` (if any) to a request rebuilt from its parts.
pub(crate) fn carry_slot(from: &http::Extensions, to: &mut http::Extensions) {
    if let Some(slot) = from.get::<Arc<UpstreamSlot>>() {
        to.insert(slot.clone());
    }
}
