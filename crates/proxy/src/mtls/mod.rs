//! Mutual TLS on the data path between sidecars (docs/XDS.md, "Security").
//!
//! - [`lifecycle`]: with a join token, obtain the workload certificate before registering
//!   (retrying with backoff), then keep it renewed; [`Tls`] is published in `Shared::tls`.
//! - [`accept`]: the inbound listener peeks at each connection: TLS → handshake (client
//!   certificate required) and the caller's SPIFFE ID; plaintext → only in PERMISSIVE mode.
//! - [`connect`]: outbound connections to endpoints that serve mTLS: TLS 1.3, the cluster's
//!   expected server IDs and SNI, ALPN h2, one pooled HTTP/2 connection per endpoint (an
//!   HTTP/1.1 pool if the peer answers `http/1.1`).
//!
//! HTTP/1.1 from the app travels as HTTP/2 between sidecars; the sending side marks such a
//! request with [`ORIG_PROTO`] and the receiving side turns it back into HTTP/1.1 before the
//! app sees it (linkerd's `l5d-orig-proto`).

pub(crate) mod accept;
pub(crate) mod connect;
pub(crate) mod lifecycle;

#[cfg(test)]
mod tests;

use std::io;
use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Version};
use rustls::{CertificateError, Error as TlsError};
use tokio_rustls::TlsAcceptor;

use crate::identity::{ClientAuth, Identity, IdentityError, server_config};
use crate::metrics::TlsMetrics;

/// Marks a request the sending sidecar upgraded from HTTP/1.x to HTTP/2; its value is the
/// original version (`HTTP/1.1` or `HTTP/1.0`).
pub(crate) const ORIG_PROTO: HeaderName = HeaderName::from_static("x-trellis-orig-proto");

/// How long a TLS handshake may take (either side).
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// This sidecar's identity with what the data path needs from it.
pub(crate) struct Tls {
    pub identity: Identity,
    /// Inbound: TLS 1.3, client certificate required and verified against the bundle.
    pub acceptor: TlsAcceptor,
    pub metrics: TlsMetrics,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Tls {
    pub fn new(identity: Identity, metrics: TlsMetrics) -> Result<Self, IdentityError> {
        // HTTP (h2, http/1.1) and raw TCP streams (`trellis-tcp`, crate::tcp) on one listener.
        let mut config = (*server_config(&identity, ClientAuth::Required)?).clone();
        config.alpn_protocols.push(crate::tcp::ALPN_TCP.to_vec());
        let acceptor = TlsAcceptor::from(std::sync::Arc::new(config));
        Ok(Tls {
            identity,
            acceptor,
            metrics,
        })
    }
}

/// A short, bounded label for why a handshake failed (a metric label and a log field).
pub(crate) fn handshake_failure_reason(e: &io::Error) -> &'static str {
    if e.kind() == io::ErrorKind::TimedOut {
        return "timeout";
    }
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<TlsError>()) else {
        return match e.kind() {
            io::ErrorKind::UnexpectedEof => "eof",
            io::ErrorKind::ConnectionReset => "reset",
            _ => "io",
        };
    };
    match tls {
        TlsError::NoCertificatesPresented => "no_client_certificate",
        TlsError::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => "untrusted_ca",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_yet_valid"
            }
            // Our verifiers' SPIFFE rules: wrong or missing ID, CA:TRUE, other trust domain.
            CertificateError::Other(_) => "bad_identity",
            _ => "bad_certificate",
        },
        TlsError::AlertReceived(_) => "alert_received",
        TlsError::PeerIncompatible(_) => "incompatible",
        TlsError::NoApplicationProtocol => "no_alpn",
        _ => "protocol",
    }
}

/// Marks an HTTP/1.x request that is about to travel as HTTP/2.
pub(crate) fn mark_upgrade<B>(req: &mut Request<B>) {
    let v = match req.version() {
        Version::HTTP_10 => HeaderValue::from_static("HTTP/1.0"),
        _ => HeaderValue::from_static("HTTP/1.1"),
    };
    req.headers_mut().insert(ORIG_PROTO, v);
}

/// Turns a request marked with [`ORIG_PROTO`] back into HTTP/1.x (the `Host` header restored
/// from `:authority` when missing). Unmarked requests are left alone. Only HTTP/2 requests are
/// looked at, so the inbound HTTP/1.1 path does no header lookup.
pub(crate) fn restore_orig_proto<B>(req: &mut Request<B>) {
    if req.version() != Version::HTTP_2 {
        return;
    }
    let Some(orig) = req.headers_mut().remove(ORIG_PROTO) else {
        return;
    };
    *req.version_mut() = if orig.as_bytes() == b"HTTP/1.0" {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    if !req.headers().contains_key(header::HOST)
        && let Some(a) = req.uri().authority()
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        req.headers_mut().insert(header::HOST, v);
    }
}
