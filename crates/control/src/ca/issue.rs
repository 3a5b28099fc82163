//! Signing a workload's CSR. Only the CSR's public key is used: its subject, SANs and
//! extensions are ignored, and the certificate carries exactly one URI SAN, the SPIFFE ID the
//! join token allows.

use std::time::Duration;

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, ExtendedKeyUsagePurpose,
    IsCa, KeyPair, KeyUsagePurpose, PublicKey, SanType,
};
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::root::{CLOCK_SKEW_S, Root, pem_of, random_serial, set_validity};

/// Largest CSR accepted (PEM text).
pub const MAX_CSR_LEN: usize = 16 * 1024;

/// An issued workload certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    /// Unix seconds.
    pub not_after_s: i64,
}

/// Why a CSR was refused (the caller's fault: HTTP 400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("csr: {0}")]
pub struct CsrError(pub String);

/// A CSR that parsed and whose self-signature verified.
pub struct CheckedCsr {
    public_key: PublicKey,
    /// DER of the CSR's SubjectPublicKeyInfo, compared with the issued certificate's.
    spki_der: Vec<u8>,
}

/// Parses a PEM PKCS#10 request and verifies its self-signature (proof that the requester
/// holds the private key).
pub fn check_csr(csr_pem: &str) -> Result<CheckedCsr, CsrError> {
    if csr_pem.len() > MAX_CSR_LEN {
        return Err(CsrError(format!(
            "{} bytes is larger than the {MAX_CSR_LEN}-byte limit",
            csr_pem.len()
        )));
    }
    if !csr_pem.contains("-----BEGIN CERTIFICATE REQUEST-----") {
        return Err(CsrError(
            "no `-----BEGIN CERTIFICATE REQUEST-----` block found: send a PEM PKCS#10 request"
                .to_string(),
        ));
    }
    let parsed = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
        CsrError(match e {
            rcgen::Error::CouldNotParseCertificationRequest => {
                "not a readable PEM PKCS#10 certificate request".to_string()
            }
            rcgen::Error::InvalidCertificationRequestSignature => {
                "the request's signature does not verify with the public key it carries".to_string()
            }
            rcgen::Error::UnsupportedSignatureAlgorithm => {
                "unsupported key or signature algorithm: use ECDSA P-256/P-384, Ed25519 or RSA"
                    .to_string()
            }
            rcgen::Error::UnsupportedExtension => {
                "requests an extension this CA does not read; send a request with no \
                 extensions (the identity comes from the join token)"
                    .to_string()
            }
            other => format!("cannot be read: {other}"),
        })
    })?;
    let spki_der = spki_of_csr(csr_pem)?;
    Ok(CheckedCsr {
        public_key: parsed.public_key,
        spki_der,
    })
}

fn spki_of_csr(csr_pem: &str) -> Result<Vec<u8>, CsrError> {
    use rustls_pki_types::CertificateSigningRequestDer;
    use rustls_pki_types::pem::PemObject as _;
    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|e| CsrError(format!("not readable PEM: {e}")))?;
    let (_, req) =
        x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
            .map_err(|e| CsrError(format!("not a PKCS#10 request: {e}")))?;
    Ok(req.certification_request_info.subject_pki.raw.to_vec())
}

/// Signs a certificate for `spiffe_id` over the CSR's key with `root`, valid from a minute
/// ago for `ttl`, and never past the root's own expiry.
pub fn issue(
    root: &Root,
    csr: &CheckedCsr,
    spiffe_id: &str,
    ttl: Duration,
    now_s: i64,
) -> Result<Issued, IssueError> {
    let params = leaf_params(root, spiffe_id, Vec::new(), ttl, now_s)?;
    let not_after_s = now_s.saturating_add(ttl_s(ttl)).min(root.not_after_s);
    let cert = params
        .signed_by(&csr.public_key, root.issuer())
        .map_err(|e| IssueError::Internal(format!("signing failed: {e}")))?;
    let der = cert.der().to_vec();
    // rcgen rebuilds the key's SubjectPublicKeyInfo from the CSR's signature algorithm; refuse
    // the rare combinations where that would not be the key the requester holds.
    let (_, leaf) = X509Certificate::from_der(&der)
        .map_err(|e| IssueError::Internal(format!("issued certificate does not parse: {e}")))?;
    if leaf.public_key().raw != csr.spki_der.as_slice() {
        return Err(IssueError::Csr(CsrError(
            "its key type and signature algorithm do not match (e.g. a P-384 key signed with \
             SHA-256); sign P-256 keys with ecdsa-with-SHA256 and P-384 with SHA-384"
                .to_string(),
        )));
    }
    Ok(Issued {
        cert_pem: pem_of(&der),
        cert_der: der,
        not_after_s,
    })
}

/// A serving certificate of the control plane itself: a fresh key made here, the SPIFFE ID
/// plus the DNS names and IP addresses clients connect to, signed by `root`.
pub struct Serving {
    pub issued: Issued,
    /// PKCS#8 DER of the certificate's private key.
    pub key_der: Vec<u8>,
}

/// Issues a [`Serving`] certificate (see [`leaf_params`] for its shape).
pub fn issue_serving(
    root: &Root,
    spiffe_id: &str,
    names: &[String],
    ttl: Duration,
    now_s: i64,
) -> Result<Serving, IssueError> {
    let mut sans = Vec::with_capacity(names.len());
    for name in names {
        sans.push(match name.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => {
                SanType::DnsName(rcgen::string::Ia5String::try_from(name.as_str()).map_err(
                    |e| IssueError::Csr(CsrError(format!("serving name `{name}`: {e}"))),
                )?)
            }
        });
    }
    let params = leaf_params(root, spiffe_id, sans, ttl, now_s)?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| IssueError::Internal(format!("key generation failed: {e}")))?;
    let cert = params
        .signed_by(&key, root.issuer())
        .map_err(|e| IssueError::Internal(format!("signing failed: {e}")))?;
    let der = cert.der().to_vec();
    Ok(Serving {
        issued: Issued {
            cert_pem: pem_of(&der),
            cert_der: der,
            not_after_s: now_s.saturating_add(ttl_s(ttl)).min(root.not_after_s),
        },
        key_der: key.serialize_der(),
    })
}

fn ttl_s(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2)
}

/// A leaf for `spiffe_id` (its first SAN; `extra_sans` follow): not a CA, signature and key
/// encipherment, server and client auth, valid from a minute ago for `ttl` and never past the
/// root's own expiry.
fn leaf_params(
    root: &Root,
    spiffe_id: &str,
    extra_sans: Vec<SanType>,
    ttl: Duration,
    now_s: i64,
) -> Result<CertificateParams, IssueError> {
    let uri = rcgen::string::Ia5String::try_from(spiffe_id)
        .map_err(|e| IssueError::Internal(format!("SPIFFE ID `{spiffe_id}`: {e}")))?;
    let mut params = CertificateParams::default();
    // An empty subject: the identity is the URI SAN alone (rcgen then marks it critical).
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.subject_alt_names.extend(extra_sans);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial().map_err(IssueError::Internal)?);
    let not_before = (now_s - CLOCK_SKEW_S).max(root.not_before_s);
    let not_after = now_s.saturating_add(ttl_s(ttl)).min(root.not_after_s);
    set_validity(&mut params, not_before, not_after).map_err(IssueError::Internal)?;
    Ok(params)
}

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error(transparent)]
    Csr(#[from] CsrError),
    #[error("certificate authority: {0}")]
    Internal(String),
}
