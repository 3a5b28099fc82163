//! The trust bundle: the mesh's root certificates, kept as PEM (as served by the control
//! plane) and as a rustls [`RootCertStore`] for chain checks.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

use super::IdentityError;

/// An immutable set of trusted roots; a new bundle replaces the old one as a whole.
#[derive(Debug, Clone)]
pub struct TrustBundle {
    pem: String,
    roots: Vec<CertificateDer<'static>>,
    store: Arc<RootCertStore>,
}

impl TrustBundle {
    /// Parses a PEM list of root certificates (at least one; each must be a usable trust
    /// anchor).
    pub fn from_pem(pem: &str) -> Result<Self, IdentityError> {
        let roots = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                IdentityError::Material(format!("trust bundle: not readable PEM certificates: {e}"))
            })?;
        if roots.is_empty() {
            return Err(IdentityError::Material(
                "trust bundle: no `-----BEGIN CERTIFICATE-----` block found; give the mesh's \
                 root certificates as PEM"
                    .to_string(),
            ));
        }
        let mut store = RootCertStore::empty();
        for (i, root) in roots.iter().enumerate() {
            store.add(root.clone()).map_err(|e| {
                IdentityError::Material(format!(
                    "trust bundle: certificate {} is not a usable root: {e}",
                    i + 1
                ))
            })?;
        }
        Ok(TrustBundle {
            pem: pem.to_string(),
            roots,
            store: Arc::new(store),
        })
    }

    /// The bundle as PEM, as it was given.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The root certificates (DER), in the given order.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    pub fn root_store(&self) -> &Arc<RootCertStore> {
        &self.store
    }

    /// Whether both bundles hold the same roots in the same order.
    pub fn same_roots(&self, other: &TrustBundle) -> bool {
        self.roots == other.roots
    }
}
