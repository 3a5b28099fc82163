//! Idle timeouts on connections: [`Metered`] wraps a stream and counts the bytes read from and
//! written to it into an [`Activity`] (one relaxed atomic add per I/O call), and [`quiet`]
//! completes once no byte moved either way for the idle time. Used by the inbound listener's
//! HTTP connections (HttpConnectionManager `common_http_protocol_options.idle_timeout`), raw
//! TCP relays (tcp_proxy `idle_timeout`) and pooled mTLS HTTP/2 connections to other sidecars
//! (the cluster's `common_http_protocol_options.idle_timeout`).
//!
//! `quiet` looks at the counters every eighth of the idle time, so a connection is closed
//! between `idle` and `1.125 × idle` after its last byte; nothing is done per byte but the add.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Envoy's default idle timeout for downstream HTTP connections and tcp_proxy (1 hour).
pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Shortest interval between two looks at the counters.
const MIN_TICK: Duration = Duration::from_millis(5);

/// Bytes moved through one [`Metered`] stream.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    read: AtomicU64,
    written: AtomicU64,
}

impl Activity {
    /// Bytes read from the stream so far (for a downstream stream: received).
    pub fn read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// Bytes written to the stream so far (for a downstream stream: sent).
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    fn total(&self) -> u64 {
        self.read().wrapping_add(self.written())
    }
}

/// Completes once nothing was read or written for `timeout` (checked every `timeout / 8`).
pub(crate) async fn quiet(activity: &Activity, timeout: Duration) {
    let tick = (timeout / 8).max(MIN_TICK);
    let mut seen = activity.total();
    let mut since = Instant::now();
    loop {
        let due = since + timeout;
        let now = Instant::now();
        if now >= due {
            return;
        }
        tokio::time::sleep_until((now + tick).min(due)).await;
        let total = activity.total();
        if total != seen {
            seen = total;
            since = Instant::now();
        }
    }
}

/// The idle timeout in force for `configured` (`None`: Envoy's default of one hour; zero:
/// disabled, as in Envoy).
pub(crate) fn effective(configured: Option<Duration>) -> Option<Duration> {
    match configured {
        None => Some(DEFAULT_IDLE_TIMEOUT),
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
    }
}

/// A stream whose traffic is counted in an [`Activity`] (`None`: a plain pass-through, for
/// listeners without an idle timeout).
#[derive(Debug)]
pub(crate) struct Metered<S> {
    inner: S,
    activity: Option<Arc<Activity>>,
}

impl<S> Metered<S> {
    pub fn new(inner: S, activity: Option<Arc<Activity>>) -> Self {
        Metered { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0
            && let Some(a) = &self.activity
        {
            a.read.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.count_written(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.count_written(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S> Metered<S> {
    fn count_written(&self, polled: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = polled
            && *n > 0
            && let Some(a) = &self.activity
        {
            a.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests;
