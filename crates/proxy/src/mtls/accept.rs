//! The inbound listener's first decision about a connection, before any HTTP: peek at the
//! first bytes; a TLS ClientHello gets the mTLS handshake (client certificate required and
//! verified against the trust bundle; the caller's SPIFFE ID read from it), anything else is
//! plaintext and is served only while this service's inbound mode is PERMISSIVE. Refused
//! connections are closed before a byte is read, so nothing reaches the app.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::server::TlsStream;

use super::{HANDSHAKE_TIMEOUT, handshake_failure_reason};
use crate::identity::{looks_like_tls, peer_spiffe_id};
use crate::metrics::Direction;
use crate::security::InboundMode;
use crate::shared::Shared;

/// A connection the inbound listener will serve.
pub(crate) enum Accepted {
    Tls {
        stream: Box<TlsStream<TcpStream>>,
        /// The caller's SPIFFE ID (always present: client certificates are required).
        peer_id: Option<Arc<str>>,
    },
    /// Plaintext, accepted because the inbound mode is PERMISSIVE.
    Plain(TcpStream),
}

/// Decides about one inbound connection; `None`: it was refused (and is closed on drop).
pub(crate) async fn accept(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
) -> Option<Accepted> {
    let mut first = [0u8; 2];
    let n = match timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "inbound connection failed before its first byte");
            return None;
        }
        Err(_) => {
            tracing::debug!(%peer, timeout = ?HANDSHAKE_TIMEOUT, "inbound connection sent nothing; closing");
            return None;
        }
    };
    if n == 0 {
        return None;
    }
    // A lone first byte 0x16 (TLS handshake record) is enough: HTTP starts with a letter.
    let tls_like = if n >= 2 {
        looks_like_tls(&first)
    } else {
        first[0] == 0x16
    };
    if !tls_like {
        let permissive = shared
            .live
            .load()
            .inbound
            .as_ref()
            .is_some_and(|s| s.mode == InboundMode::Permissive);
        shared.metrics.tls.plaintext(permissive);
        if !permissive {
            tracing::debug!(%peer, "refused a plaintext inbound connection: the inbound mode is STRICT \
                (or not configured yet); peers must use mTLS");
            return None;
        }
        return Some(Accepted::Plain(stream));
    }
    let Some(tls) = shared.tls.get() else {
        shared
            .metrics
            .tls
            .handshake_error(Direction::Inbound, "no_identity");
        tracing::debug!(%peer, "refused a TLS inbound connection: this sidecar has no workload \
            certificate (yet)");
        return None;
    };
    match timeout(HANDSHAKE_TIMEOUT, tls.acceptor.accept(stream)).await {
        Ok(Ok(stream)) => {
            tls.metrics.handshake(Direction::Inbound);
            let peer_id = peer_spiffe_id(stream.get_ref().1).map(Arc::from);
            tracing::trace!(%peer, peer_id = ?peer_id, "inbound mTLS handshake done");
            Some(Accepted::Tls {
                stream: Box::new(stream),
                peer_id,
            })
        }
        Ok(Err(e)) => {
            let reason = handshake_failure_reason(&e);
            tls.metrics.handshake_error(Direction::Inbound, reason);
            tracing::debug!(%peer, reason, error = %e, "inbound mTLS handshake failed");
            None
        }
        Err(_) => {
            tls.metrics.handshake_error(Direction::Inbound, "timeout");
            tracing::debug!(%peer, "inbound mTLS handshake timed out");
            None
        }
    }
}
