//! Reading a workload's identity from its certificate: exactly one URI SAN, a `spiffe://` ID,
//! and not a CA. Deliberately small and dependent on x509-parser only, so the proxy can use
//! the same rules for the peer certificates it sees.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer as _, X509Certificate};

/// Why a certificate does not name a workload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("certificate does not parse: {0}")]
    Malformed(String),
    #[error("certificate is a CA (basicConstraints CA:TRUE); a workload certificate must not be")]
    IsCa,
    #[error("certificate has {0} URI SANs; a workload certificate has exactly one")]
    UriSanCount(usize),
    #[error("certificate's URI SAN `{0}` is not a SPIFFE ID (`spiffe://<trust-domain>/<path>`)")]
    NotSpiffe(String),
}

/// The SPIFFE ID of a workload certificate (DER).
pub fn spiffe_id_of(cert_der: &[u8]) -> Result<String, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(cert_der).map_err(|e| IdentityError::Malformed(e.to_string()))?;
    let bc = cert
        .basic_constraints()
        .map_err(|e| IdentityError::Malformed(format!("basicConstraints: {e}")))?;
    if bc.is_some_and(|b| b.value.ca) {
        return Err(IdentityError::IsCa);
    }
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::Malformed(format!("subjectAltName: {e}")))?;
    let uris: Vec<&str> = san
        .map(|s| {
            s.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let [uri] = uris.as_slice() else {
        return Err(IdentityError::UriSanCount(uris.len()));
    };
    if !is_spiffe_id(uri) {
        return Err(IdentityError::NotSpiffe((*uri).to_string()));
    }
    Ok((*uri).to_string())
}

/// `spiffe://<trust-domain>/<path>` with a non-empty trust domain and path, and no query,
/// fragment, port or user info.
pub fn is_spiffe_id(uri: &str) -> bool {
    let Some(rest) = uri.strip_prefix("spiffe://") else {
        return false;
    };
    let Some((td, path)) = rest.split_once('/') else {
        return false;
    };
    let td_ok = !td.is_empty()
        && td
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'));
    let path_ok = !path.is_empty()
        && !path.contains(['?', '#'])
        && path
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..");
    td_ok && path_ok
}
