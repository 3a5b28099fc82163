//! Raw TCP through the mesh, for services with `protocol: tcp` (docs/RESOURCES.md).
//!
//! - [`outbound`]: the app reaches a TCP service on a local port (`--upstream db=5432`, like
//!   Consul's upstreams). Each accepted connection picks an endpoint with the cluster's
//!   balancer, connects to that peer sidecar's inbound listener — mTLS with ALPN
//!   `trellis-tcp` and the server's SPIFFE ID checked when the endpoint serves mTLS,
//!   plaintext otherwise — trying another endpoint when a connect fails (at most
//!   [`MAX_CONNECT_ATTEMPTS`]), then copies bytes both ways.
//! - [`inbound`]: after the inbound listener's mTLS handshake (crate::mtls::accept), a
//!   connection to a TCP service is authorized once, from the caller's SPIFFE ID, and denied
//!   connections are closed before anything reaches the app; allowed ones are copied to
//!   127.0.0.1:<app-port>.
//!
//! Copies are [`tokio::io::copy_bidirectional`]: when one side ends its writes (EOF), the
//! other side's write half is shut down (TLS: `close_notify`) and the other direction keeps
//! flowing until it ends too (half-close). On the inbound side a connection with no byte in
//! either direction for the service's idle timeout (tcp_proxy `idle_timeout`, default 1h) is
//! shut down and closed on both sides ([`crate::idle`]).

pub(crate) mod inbound;
pub(crate) mod outbound;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::idle::{Activity, Metered};
use crate::metrics::{Direction, Metrics};

/// ALPN of a raw stream between sidecars (bytes).
pub(crate) const ALPN_TCP: &[u8] = trellis_model::wire::MTLS_TCP_ALPN.as_bytes();

/// The access log's reason for a connection the idle timeout closed.
pub(crate) const IDLE_TIMEOUT_REASON: &str = "idle_timeout";

/// Endpoints tried per accepted outbound connection before it is closed.
pub(crate) const MAX_CONNECT_ATTEMPTS: usize = 3;

/// How a relayed connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Relayed {
    /// Bytes from the downstream side to the upstream.
    pub up: u64,
    /// Bytes from the upstream side to the downstream.
    pub down: u64,
    /// Closed by the idle timeout (no byte either way for that long).
    pub idle: bool,
}

/// Copies both ways until both directions ended, or until no byte moved either way for
/// `idle` (then both sides are shut down and closed), and records the bytes.
pub(crate) async fn relay<D, U>(
    downstream: D,
    mut upstream: U,
    idle: Option<Duration>,
    metrics: &Metrics,
    direction: Direction,
    service: &Arc<str>,
) -> Relayed
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Arc::new(Activity::default());
    let mut downstream = Metered::new(downstream, Some(activity.clone()));
    let copy = tokio::io::copy_bidirectional(&mut downstream, &mut upstream);
    let quiet = async {
        match idle {
            Some(timeout) => crate::idle::quiet(&activity, timeout).await,
            None => std::future::pending().await,
        }
    };
    let timed_out = tokio::select! {
        copied = copy => {
            if let Err(e) = copied {
                tracing::debug!(%service, ?direction, error = %e, "tcp connection ended with an error");
            }
            false
        }
        () = quiet => true,
    };
    if timed_out {
        metrics.conn.idle_timeout(direction, "tcp");
        tracing::debug!(%service, ?direction, ?idle, "tcp connection idle: closing both sides");
        let _ = tokio::join!(downstream.shutdown(), upstream.shutdown());
    }
    let relayed = Relayed {
        up: activity.read(),
        down: activity.written(),
        idle: timed_out,
    };
    metrics
        .tcp
        .copied(direction, service, relayed.up, relayed.down);
    tracing::trace!(%service, ?direction, up = relayed.up, down = relayed.down, "tcp connection done");
    relayed
}
