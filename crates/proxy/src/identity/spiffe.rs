//! Reading workload identities out of X.509 certificates: a workload certificate has exactly
//! one URI SAN, a `spiffe://<trust-domain>/<path>` ID, and is not a CA (the same rules as the
//! control plane's `ca::verify::spiffe_id_of`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::CommonState;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer as _, X509Certificate};

/// What the proxy needs from a workload certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeafInfo {
    pub spiffe_id: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Hex, colon separated.
    pub serial: String,
}

/// The SPIFFE ID of a workload certificate (DER); the error says why it does not name one.
pub fn workload_id(cert_der: &[u8]) -> Result<String, String> {
    leaf_info(cert_der).map(|l| l.spiffe_id)
}

pub(crate) fn leaf_info(cert_der: &[u8]) -> Result<LeafInfo, String> {
    let (_, cert) = X509Certificate::from_der(cert_der)
        .map_err(|e| format!("certificate does not parse: {e}"))?;
    let bc = cert
        .basic_constraints()
        .map_err(|e| format!("certificate's basicConstraints do not parse: {e}"))?;
    if bc.is_some_and(|b| b.value.ca) {
        return Err(
            "certificate is a CA (basicConstraints CA:TRUE); a workload certificate must not be"
                .to_string(),
        );
    }
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("certificate's subjectAltName does not parse: {e}"))?;
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
        return Err(format!(
            "certificate has {} URI SANs; a workload certificate has exactly one",
            uris.len()
        ));
    };
    if !is_spiffe_id(uri) {
        return Err(format!(
            "certificate's URI SAN `{uri}` is not a SPIFFE ID (`spiffe://<trust-domain>/<path>`)"
        ));
    }
    let time = |t: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
    Ok(LeafInfo {
        spiffe_id: (*uri).to_string(),
        not_before: time(cert.validity().not_before.timestamp()),
        not_after: time(cert.validity().not_after.timestamp()),
        serial: cert.raw_serial_as_string(),
    })
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

/// The trust domain of a SPIFFE ID (`cluster.local` in `spiffe://cluster.local/ns/a/svc/b`).
pub fn trust_domain_of(spiffe_id: &str) -> Option<&str> {
    spiffe_id
        .strip_prefix("spiffe://")
        .and_then(|rest| rest.split_once('/'))
        .map(|(td, _)| td)
}

/// The SPIFFE ID of the peer of an established TLS connection, read from the certificate the
/// handshake verified. `None` if the peer sent no certificate (or it names no workload, which
/// the verifiers of this module never accept). Works for both sides:
/// `peer_spiffe_id(tls_stream.get_ref().1)`.
pub fn peer_spiffe_id(conn: &CommonState) -> Option<String> {
    let leaf = conn.peer_certificates()?.first()?;
    workload_id(leaf.as_ref()).ok()
}

/// Whether the first bytes a client sent look like a TLS handshake record (content type 22,
/// version major 3), for a listener that must tell mTLS from plaintext (permissive mode).
/// Needs at least 2 bytes; fewer return `false`.
pub fn looks_like_tls(first_bytes: &[u8]) -> bool {
    matches!(first_bytes, [0x16, 0x03, ..])
}
