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
//! flowing until it ends too (half-close).

pub(crate) mod inbound;
pub(crate) mod outbound;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::metrics::{Direction, TcpMetrics};

/// ALPN of a raw stream between sidecars (bytes).
pub(crate) const ALPN_TCP: &[u8] = trellis_model::wire::MTLS_TCP_ALPN.as_bytes();

/// Endpoints tried per accepted outbound connection before it is closed.
pub(crate) const MAX_CONNECT_ATTEMPTS: usize = 3;

/// Copies both ways until both directions ended, then records the bytes.
pub(crate) async fn relay<D, U>(
    mut downstream: D,
    mut upstream: U,
    metrics: &TcpMetrics,
    direction: Direction,
    service: &Arc<str>,
) where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await {
        Ok((up, down)) => {
            metrics.copied(direction, service, up, down);
            tracing::trace!(%service, ?direction, up, down, "tcp connection done");
        }
        Err(e) => {
            tracing::debug!(%service, ?direction, error = %e, "tcp connection ended with an error");
        }
    }
}
