//! Workload identity and mTLS between sidecars.
//!
//! - [`Identity`] holds this sidecar's certificate, key and the mesh's trust bundle, swapped
//!   atomically (ArcSwap). It is obtained from the control plane's CA ([`Identity::request`] /
//!   [`Identity::bootstrap`] with a [`CaClient`]): the ECDSA P-256 key is generated here and
//!   never leaves the process; only a CSR is sent. [`Identity::spawn_rotation`] renews at about
//!   2/3 of the certificate's lifetime (new key each time) and re-reads the trust bundle.
//!   [`Identity::from_parts`] builds one from PEMs (tests, static configuration).
//! - [`server_config`] / [`client_config`] are rustls configs (TLS 1.3 only, ALPN `h2` then
//!   `http/1.1`, aws-lc-rs) that read the identity at every handshake, so rotation needs no
//!   restart. The server verifies client certificates against the current bundle; the client
//!   verifies the server's chain against the current bundle and requires its SPIFFE ID to be in
//!   the destination's [`ExpectedIds`].
//! - [`peer_spiffe_id`] reads the verified peer's identity from a connection.

mod bundle;
mod ca_client;
mod rotation;
mod spiffe;
mod tls;

#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::ParsedCertificate;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use tokio::sync::watch;

pub use bundle::TrustBundle;
pub use ca_client::{CaClient, SignedCert};
pub use rotation::{RotationOptions, renew_at};
pub use spiffe::{is_spiffe_id, looks_like_tls, peer_spiffe_id, trust_domain_of, workload_id};
pub use tls::{ALPN_H2, ALPN_HTTP11, ClientAuth, ExpectedIds, client_config, server_config};

/// Why an identity could not be built, obtained or renewed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A certificate, key, bundle or setting is unusable (the message names which and why).
    #[error("{0}")]
    Material(String),
    /// The control plane could not be reached or gave an unexpected answer (retried).
    #[error("control plane {url}: {reason}")]
    Control { url: String, reason: String },
    /// The control plane refused the join token.
    #[error(
        "control plane {url}: the join token was refused (401: {message}); create a new one with \
         `trellis token create --service <name>`"
    )]
    Unauthorized { url: String, message: String },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// One issued certificate with its key.
#[derive(Debug)]
pub struct Credentials {
    pub certified: Arc<CertifiedKey>,
    pub spiffe_id: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The leaf's serial number (hex, colon separated).
    pub serial: String,
}

/// Counters bumped at each change, as published by [`Identity::watch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Version {
    /// Bumped when the certificate (and key) is replaced.
    pub cert: u64,
    /// Bumped when the trust bundle changes.
    pub bundle: u64,
}

struct Inner {
    provider: Arc<CryptoProvider>,
    spiffe_id: String,
    trust_domain: String,
    creds: ArcSwap<Credentials>,
    bundle: ArcSwap<TrustBundle>,
    changes: watch::Sender<Version>,
}

/// This sidecar's workload identity. Cheap to clone; all clones share the same state.
#[derive(Clone)]
pub struct Identity {
    inner: Arc<Inner>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let creds = self.credentials();
        f.debug_struct("Identity")
            .field("spiffe_id", &self.inner.spiffe_id)
            .field("serial", &creds.serial)
            .field("not_after", &creds.not_after)
            .field("roots", &self.trust_bundle().roots().len())
            .finish()
    }
}

/// The crypto provider of every config built here: aws-lc-rs, never the process default.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl Identity {
    /// Builds an identity from PEMs: the certificate chain (leaf first), its private key
    /// (PKCS#8, SEC1 or PKCS#1) and the trust bundle. The leaf must name exactly one SPIFFE ID,
    /// not be a CA, match the key and chain to the bundle.
    pub fn from_parts(
        cert_chain_pem: &str,
        key_pem: &str,
        trust_bundle_pem: &str,
    ) -> Result<Self, IdentityError> {
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
            IdentityError::Material(format!("private key: not a readable PEM private key: {e}"))
        })?;
        let bundle = TrustBundle::from_pem(trust_bundle_pem)?;
        Self::build(cert_chain_pem, key, bundle)
    }

    fn build(
        cert_chain_pem: &str,
        key: PrivateKeyDer<'static>,
        bundle: TrustBundle,
    ) -> Result<Self, IdentityError> {
        let provider = provider();
        let creds = credentials(&provider, cert_chain_pem, key, &bundle)?;
        let spiffe_id = creds.spiffe_id.clone();
        let trust_domain = trust_domain_of(&spiffe_id).unwrap_or_default().to_string();
        Ok(Identity {
            inner: Arc::new(Inner {
                provider,
                spiffe_id,
                trust_domain,
                creds: ArcSwap::from_pointee(creds),
                bundle: ArcSwap::from_pointee(bundle),
                changes: watch::Sender::new(Version::default()),
            }),
        })
    }

    /// One attempt at obtaining an identity from the control plane: a new key, a CSR, the
    /// signed certificate and the trust bundle of the answer.
    pub async fn request(client: &CaClient) -> Result<Self, IdentityError> {
        let (key, csr) = new_key_and_csr()?;
        let signed = client.sign(&csr).await?;
        let bundle = TrustBundle::from_pem(&signed.trust_bundle)?;
        let identity = Self::build(&signed.certificate_chain, key, bundle)?;
        if identity.spiffe_id() != signed.spiffe_id {
            return Err(IdentityError::Control {
                url: client.base_url().to_string(),
                reason: format!(
                    "answer says `{}` but the certificate names `{}`",
                    signed.spiffe_id,
                    identity.spiffe_id()
                ),
            });
        }
        Ok(identity)
    }

    /// The current certificate and key, for TLS handshakes.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.inner.creds.load().certified.clone()
    }

    /// The current certificate with its details.
    pub fn credentials(&self) -> Arc<Credentials> {
        self.inner.creds.load_full()
    }

    /// This workload's SPIFFE ID (fixed for the life of the identity).
    pub fn spiffe_id(&self) -> &str {
        &self.inner.spiffe_id
    }

    pub fn trust_domain(&self) -> &str {
        &self.inner.trust_domain
    }

    /// The current trust bundle.
    pub fn trust_bundle(&self) -> Arc<TrustBundle> {
        self.inner.bundle.load_full()
    }

    /// Changes of the certificate or bundle.
    pub fn watch(&self) -> watch::Receiver<Version> {
        self.inner.changes.subscribe()
    }

    /// The crypto provider (aws-lc-rs) used by this identity's configs.
    pub fn crypto_provider(&self) -> &Arc<CryptoProvider> {
        &self.inner.provider
    }

    /// Replaces the certificate and key (and the bundle, if given) from PEMs. The new leaf
    /// must name the same SPIFFE ID and chain to the (new) bundle. Handshakes in progress keep
    /// what they started with; established connections are not affected.
    pub fn replace(
        &self,
        cert_chain_pem: &str,
        key_pem: &str,
        trust_bundle_pem: Option<&str>,
    ) -> Result<(), IdentityError> {
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
            IdentityError::Material(format!("private key: not a readable PEM private key: {e}"))
        })?;
        let bundle = trust_bundle_pem.map(TrustBundle::from_pem).transpose()?;
        self.install(cert_chain_pem, key, bundle)
    }

    fn install(
        &self,
        cert_chain_pem: &str,
        key: PrivateKeyDer<'static>,
        bundle: Option<TrustBundle>,
    ) -> Result<(), IdentityError> {
        let check_bundle = bundle
            .as_ref()
            .map_or_else(|| self.trust_bundle(), |b| Arc::new(b.clone()));
        let creds = credentials(&self.inner.provider, cert_chain_pem, key, &check_bundle)?;
        if creds.spiffe_id != self.inner.spiffe_id {
            return Err(IdentityError::Material(format!(
                "certificate names `{}` but this identity is `{}`",
                creds.spiffe_id, self.inner.spiffe_id
            )));
        }
        // The bundle first, so peers with certificates from a new root are trusted before our
        // own certificate from that root is shown to anyone.
        if let Some(bundle) = bundle {
            self.set_bundle(bundle);
        }
        self.inner.creds.store(Arc::new(creds));
        self.inner.changes.send_modify(|v| v.cert += 1);
        Ok(())
    }

    /// Replaces the trust bundle (PEM). Returns whether the roots changed. The current
    /// certificate must still chain to the new bundle.
    pub fn set_trust_bundle(&self, pem: &str) -> Result<bool, IdentityError> {
        let bundle = TrustBundle::from_pem(pem)?;
        let creds = self.credentials();
        check_chain(
            &self.inner.provider,
            &creds.certified.cert,
            &bundle,
            creds.not_before,
        )
        .map_err(|e| {
            IdentityError::Material(format!(
                "trust bundle: the current certificate ({}) does not chain to it: {e}",
                creds.spiffe_id
            ))
        })?;
        Ok(self.set_bundle(bundle))
    }

    fn set_bundle(&self, bundle: TrustBundle) -> bool {
        if self.inner.bundle.load().same_roots(&bundle) {
            return false;
        }
        self.inner.bundle.store(Arc::new(bundle));
        self.inner.changes.send_modify(|v| v.bundle += 1);
        true
    }

    /// Renews now: a new key and CSR, signed with the client's join token; the answer's
    /// certificate and bundle are swapped in. On error nothing changes.
    pub async fn renew(&self, client: &CaClient) -> Result<(), IdentityError> {
        let (key, csr) = new_key_and_csr()?;
        let signed = client.sign(&csr).await?;
        if signed.spiffe_id != self.inner.spiffe_id {
            return Err(IdentityError::Control {
                url: client.base_url().to_string(),
                reason: format!(
                    "signed `{}` but this sidecar is `{}` (was the join token replaced by one for \
                     another service?)",
                    signed.spiffe_id, self.inner.spiffe_id
                ),
            });
        }
        let bundle = TrustBundle::from_pem(&signed.trust_bundle)?;
        self.install(&signed.certificate_chain, key, Some(bundle))
    }

    /// Re-reads the trust bundle from the control plane. Returns whether it changed.
    pub async fn refresh_trust_bundle(&self, client: &CaClient) -> Result<bool, IdentityError> {
        let pem = client.trust_bundle().await?;
        self.set_trust_bundle(&pem)
    }
}

/// A new ECDSA P-256 key (PKCS#8) and a CSR for it with an empty subject and no extensions
/// (the CA takes the identity from the join token).
fn new_key_and_csr() -> Result<(PrivateKeyDer<'static>, String), IdentityError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| IdentityError::Material(format!("generating the P-256 key: {e}")))?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .map_err(|e| IdentityError::Material(format!("building the CSR: {e}")))?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((der, csr))
}

fn credentials(
    provider: &CryptoProvider,
    cert_chain_pem: &str,
    key: PrivateKeyDer<'static>,
    bundle: &TrustBundle,
) -> Result<Credentials, IdentityError> {
    let chain = CertificateDer::pem_slice_iter(cert_chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            IdentityError::Material(format!(
                "certificate chain: not readable PEM certificates: {e}"
            ))
        })?;
    let Some(leaf) = chain.first() else {
        return Err(IdentityError::Material(
            "certificate chain: no `-----BEGIN CERTIFICATE-----` block found".to_string(),
        ));
    };
    let info = spiffe::leaf_info(leaf.as_ref())
        .map_err(|e| IdentityError::Material(format!("certificate chain: leaf: {e}")))?;
    check_chain(provider, &chain, bundle, info.not_before).map_err(|e| {
        IdentityError::Material(format!(
            "certificate chain ({}): does not chain to the trust bundle: {e}",
            info.spiffe_id
        ))
    })?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        IdentityError::Material(format!(
            "private key: unusable or does not match the certificate ({}): {e}",
            info.spiffe_id
        ))
    })?;
    Ok(Credentials {
        certified: Arc::new(certified),
        spiffe_id: info.spiffe_id,
        not_before: info.not_before,
        not_after: info.not_after,
        serial: info.serial,
    })
}

/// Checks that `chain` (leaf first) is signed by a root of `bundle`, at a moment inside the
/// leaf's validity, so that clock skew with the CA does not refuse a fresh certificate (peers
/// check validity at handshake time).
fn check_chain(
    provider: &CryptoProvider,
    chain: &[CertificateDer<'static>],
    bundle: &TrustBundle,
    leaf_not_before: SystemTime,
) -> Result<(), rustls::Error> {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err(rustls::Error::General(
            "empty certificate chain".to_string(),
        ));
    };
    let parsed = ParsedCertificate::try_from(leaf)?;
    let at = UnixTime::since_unix_epoch(
        leaf_not_before
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            + Duration::from_secs(1),
    );
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        bundle.root_store(),
        intermediates,
        at,
        provider.signature_verification_algorithms.all,
    )
}
