//! rustls configurations for mTLS between sidecars that follow the [`Identity`] as it rotates.
//!
//! Both sides: TLS 1.3 only (AEAD suites of aws-lc-rs), ALPN `h2` then `http/1.1`, our
//! certificate read from the identity at each handshake, no session resumption (a resumed
//! session would skip the certificate checks against the current bundle and expected IDs).
//!
//! **Server** ([`server_config`]): client certificates are verified by a [`WebPkiClientVerifier`]
//! over the current trust bundle (rebuilt when the bundle changes, cached in an ArcSwap), then
//! must name exactly one SPIFFE ID in our trust domain and not be a CA.
//!
//! **Client** ([`client_config`]): one config per destination service. Its [`ExpectedIds`]
//! is the set of SPIFFE IDs the control plane says serve that destination (shared and
//! updatable in place). The server's chain is checked against the current bundle; its leaf must
//! then have exactly one URI SAN, a SPIFFE ID in the expected set, and CA:FALSE. The
//! `ServerName` given to `connect` is used for SNI only (any DNS name or the peer's IP).

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    ClientHello, NoServerSessionStorage, ParsedCertificate, ResolvesServerCert,
    WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::{Identity, IdentityError, TrustBundle, spiffe};

pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Whether the server demands a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// mTLS: a client without a valid workload certificate fails the handshake.
    Required,
    /// A client may connect without a certificate (then [`super::peer_spiffe_id`] is `None`);
    /// a certificate it does send must still be valid.
    Optional,
}

/// The SPIFFE IDs allowed to serve one destination. Cheap to clone; clones share the set, so
/// the owner can update it (from xDS) without rebuilding the [`ClientConfig`].
#[derive(Clone, Default)]
pub struct ExpectedIds(Arc<ArcSwap<BTreeSet<String>>>);

impl fmt::Debug for ExpectedIds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.load().iter()).finish()
    }
}

impl ExpectedIds {
    pub fn new<I, S>(ids: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ExpectedIds(Arc::new(ArcSwap::from_pointee(
            ids.into_iter().map(Into::into).collect(),
        )))
    }

    /// Replaces the set (seen by the next handshake of every config sharing it).
    pub fn set<I, S>(&self, ids: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.0
            .store(Arc::new(ids.into_iter().map(Into::into).collect()));
    }

    pub fn get(&self) -> Arc<BTreeSet<String>> {
        self.0.load_full()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.0.load().contains(id)
    }
}

/// A server config for this sidecar's mTLS listener. See the module doc.
pub fn server_config(
    identity: &Identity,
    mode: ClientAuth,
) -> Result<Arc<ServerConfig>, IdentityError> {
    let provider = identity.crypto_provider().clone();
    let verifier = Arc::new(BundleClientVerifier {
        identity: identity.clone(),
        mode,
        cache: ArcSwapOption::empty(),
    });
    // Fail now rather than at the first handshake if the bundle cannot make a verifier.
    verifier.delegate().map_err(|e| match e {
        rustls::Error::General(m) => IdentityError::Material(m),
        other => IdentityError::Tls(other),
    })?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(CurrentCert(identity.clone())));
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// A client config for connections to one destination service, whose servers must present one
/// of `expected_server_ids`. See the module doc.
pub fn client_config(
    identity: &Identity,
    expected_server_ids: ExpectedIds,
) -> Result<Arc<ClientConfig>, IdentityError> {
    let provider = identity.crypto_provider().clone();
    let verifier = Arc::new(SpiffeServerVerifier {
        identity: identity.clone(),
        expected: expected_server_ids,
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(CurrentCert(identity.clone())));
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

fn reject(reason: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(PeerRejected(
        reason,
    )))))
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct PeerRejected(String);

/// Our certificate, as the identity holds it at this handshake (both sides).
#[derive(Debug)]
struct CurrentCert(Identity);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }
}

impl ResolvesClientCert for CurrentCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

struct CachedVerifier {
    bundle: Arc<TrustBundle>,
    verifier: Arc<dyn ClientCertVerifier>,
}

/// Client-certificate verifier over the identity's current bundle.
struct BundleClientVerifier {
    identity: Identity,
    mode: ClientAuth,
    cache: ArcSwapOption<CachedVerifier>,
}

impl fmt::Debug for BundleClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BundleClientVerifier")
            .field("identity", &self.identity.spiffe_id())
            .field("mode", &self.mode)
            .finish()
    }
}

impl BundleClientVerifier {
    /// The webpki verifier for the current bundle, rebuilt when the bundle changed.
    fn delegate(&self) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        let bundle = self.identity.trust_bundle();
        if let Some(cached) = &*self.cache.load()
            && Arc::ptr_eq(&cached.bundle, &bundle)
        {
            return Ok(cached.verifier.clone());
        }
        let mut builder = WebPkiClientVerifier::builder_with_provider(
            bundle.root_store().clone(),
            self.identity.crypto_provider().clone(),
        );
        if self.mode == ClientAuth::Optional {
            builder = builder.allow_unauthenticated();
        }
        let verifier = builder.build().map_err(|e| {
            rustls::Error::General(format!(
                "trust bundle: cannot verify client certificates with it: {e}"
            ))
        })?;
        self.cache.store(Some(Arc::new(CachedVerifier {
            bundle,
            verifier: verifier.clone(),
        })));
        Ok(verifier)
    }
}

impl ClientCertVerifier for BundleClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mode == ClientAuth::Required
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: our clients always send their one certificate.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .delegate()?
            .verify_client_cert(end_entity, intermediates, now)?;
        let id =
            spiffe::workload_id(end_entity.as_ref()).map_err(|e| reject(format!("client {e}")))?;
        if spiffe::trust_domain_of(&id) != Some(self.identity.trust_domain()) {
            return Err(reject(format!(
                "client identity `{id}` is not in this mesh's trust domain `{}`",
                self.identity.trust_domain()
            )));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self
            .identity
            .crypto_provider()
            .signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self
            .identity
            .crypto_provider()
            .signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        supported_schemes(self.identity.crypto_provider())
    }
}

fn supported_schemes(provider: &CryptoProvider) -> Vec<SignatureScheme> {
    provider
        .signature_verification_algorithms
        .supported_schemes()
}

/// Server-certificate verifier: chain to the current bundle, then a SPIFFE ID from the
/// expected set.
struct SpiffeServerVerifier {
    identity: Identity,
    expected: ExpectedIds,
}

impl fmt::Debug for SpiffeServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeServerVerifier")
            .field("expected", &self.expected)
            .finish()
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let bundle = self.identity.trust_bundle();
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            bundle.root_store(),
            intermediates,
            now,
            self.identity
                .crypto_provider()
                .signature_verification_algorithms
                .all,
        )?;
        let id =
            spiffe::workload_id(end_entity.as_ref()).map_err(|e| reject(format!("server {e}")))?;
        if !self.expected.contains(&id) {
            return Err(reject(format!(
                "server identity `{id}` is not one of those serving this destination: {:?}",
                self.expected
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self
            .identity
            .crypto_provider()
            .signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self
            .identity
            .crypto_provider()
            .signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        supported_schemes(self.identity.crypto_provider())
    }
}
