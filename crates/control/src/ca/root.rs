//! A root of the trust bundle: its certificate, its key and the rcgen [`Issuer`] that signs
//! with it. Roots are either generated here or given by the operator (PEM files, the
//! `POST /v1/ca/roots` API); both go through [`Root::from_pem`], which checks them.
//!
//! The layout is a single self-signed root per trust-bundle entry (ECDSA P-256, 10 years,
//! CA:TRUE pathlen 1) that signs workload certificates directly: the chain a workload presents
//! is its leaf alone. pathlen 1 leaves room for an intermediate later without a new root.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use x509_parser::prelude::{FromDer as _, X509Certificate};
use x509_parser::time::ASN1Time;

use super::token::hex;
use crate::store::StoredRoot;

/// Validity of a generated root.
pub const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Clock skew allowed for a certificate's start ("not before").
pub const CLOCK_SKEW_S: i64 = 60;

/// Why a certificate and key cannot be a root. The caller prefixes the source (flag and
/// file, or API field).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RootError {
    #[error("certificate: {0}")]
    Cert(String),
    #[error("key: {0}")]
    Key(String),
    #[error(
        "the private key does not match the certificate's public key; give the key the \
         certificate was issued for"
    )]
    Mismatch,
    #[error("certificate `{subject}` is not a CA: {reason}")]
    NotCa { subject: String, reason: String },
    #[error("certificate `{subject}` expired at {not_after}; give a current root")]
    Expired { subject: String, not_after: String },
    #[error("certificate `{subject}` is not valid before {not_before}; check the clock")]
    NotYetValid { subject: String, not_before: String },
}

/// A usable root.
pub struct Root {
    /// Lowercase hex SHA-256 of the certificate's DER.
    pub fingerprint: String,
    pub subject: String,
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    /// Unix seconds.
    pub not_before_s: i64,
    /// Unix seconds.
    pub not_after_s: i64,
    pub added_at_ms: u64,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Root {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Root")
            .field("fingerprint", &self.fingerprint)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl Root {
    /// Creates a new self-signed root `Trellis mesh CA <trust_domain>`.
    pub fn generate(trust_domain: &str, now_s: i64, added_at_ms: u64) -> Result<Root, String> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| format!("cannot generate the CA key: {e}"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Trellis");
        dn.push(
            DnType::CommonName,
            format!("Trellis mesh CA {trust_domain}"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let validity = i64::try_from(ROOT_VALIDITY.as_secs()).unwrap_or(i64::MAX / 2);
        set_validity(
            &mut params,
            now_s - CLOCK_SKEW_S,
            now_s.saturating_add(validity),
        )?;
        params.serial_number = Some(random_serial()?);
        let cert = params
            .self_signed(&key)
            .map_err(|e| format!("cannot self-sign the CA certificate: {e}"))?;
        Root::from_pem(&cert.pem(), &key.serialize_pem(), now_s, added_at_ms)
            .map_err(|e| format!("the generated root is unusable (a bug): {e}"))
    }

    /// Checks and loads a root: exactly one PEM certificate that is a CA (basicConstraints
    /// CA:TRUE, keyCertSign if key usage is present), valid at `now_s`, and its PKCS#8 key.
    pub fn from_pem(
        cert_pem: &str,
        key_pem: &str,
        now_s: i64,
        added_at_ms: u64,
    ) -> Result<Root, RootError> {
        let mut certs = Vec::new();
        for c in CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
            certs.push(c.map_err(|e| RootError::Cert(format!("not readable PEM: {e}")))?);
        }
        let der = match certs.as_slice() {
            [one] => one.to_vec(),
            [] => {
                return Err(RootError::Cert(
                    "no `-----BEGIN CERTIFICATE-----` block found".to_string(),
                ));
            }
            more => {
                return Err(RootError::Cert(format!(
                    "{} certificates found; give only the root certificate",
                    more.len()
                )));
            }
        };
        let (_, cert) = X509Certificate::from_der(&der)
            .map_err(|e| RootError::Cert(format!("not a valid X.509 certificate: {e}")))?;
        let subject = cert.subject().to_string();
        check_is_ca(&cert, &subject)?;
        let validity = cert.validity();
        let (not_before_s, not_after_s) = (
            validity.not_before.timestamp(),
            validity.not_after.timestamp(),
        );
        if not_after_s <= now_s {
            return Err(RootError::Expired {
                subject,
                not_after: validity.not_after.to_string(),
            });
        }
        if not_before_s > now_s + CLOCK_SKEW_S {
            return Err(RootError::NotYetValid {
                subject,
                not_before: validity.not_before.to_string(),
            });
        }
        let key = KeyPair::from_pem(key_pem).map_err(|e| {
            RootError::Key(format!(
                "not a PKCS#8 `-----BEGIN PRIVATE KEY-----` (ECDSA P-256/P-384, Ed25519 or \
                 RSA) ({e}); convert with `openssl pkcs8 -topk8 -nocrypt`"
            ))
        })?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(RootError::Mismatch);
        }
        let fingerprint = hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der).as_ref());
        let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(der.as_slice()), key)
            .map_err(|e| RootError::Cert(format!("cannot sign with it: {e}")))?;
        Ok(Root {
            fingerprint,
            subject,
            cert_pem: pem_of(&der),
            cert_der: der,
            not_before_s,
            not_after_s,
            added_at_ms,
            key_pem: key_pem.to_string(),
            issuer,
        })
    }

    pub fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    pub fn to_stored(&self) -> StoredRoot {
        StoredRoot {
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
            added_at_ms: self.added_at_ms,
        }
    }
}

fn check_is_ca(cert: &X509Certificate<'_>, subject: &str) -> Result<(), RootError> {
    let not_ca = |reason: &str| RootError::NotCa {
        subject: subject.to_string(),
        reason: reason.to_string(),
    };
    let bc = cert
        .basic_constraints()
        .map_err(|e| not_ca(&format!("its basicConstraints cannot be read: {e}")))?;
    if !bc.is_some_and(|b| b.value.ca) {
        return Err(not_ca("basicConstraints CA:TRUE is missing"));
    }
    let ku = cert
        .key_usage()
        .map_err(|e| not_ca(&format!("its keyUsage cannot be read: {e}")))?;
    if let Some(ku) = ku
        && !ku.value.key_cert_sign()
    {
        return Err(not_ca("its keyUsage does not allow keyCertSign"));
    }
    Ok(())
}

/// PEM text of one certificate.
pub fn pem_of(der: &[u8]) -> String {
    let b64 = std_base64(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Standard padded base64 (for PEM bodies).
fn std_base64(bytes: &[u8]) -> String {
    let mut s = super::token::base64url(bytes)
        .replace('-', "+")
        .replace('_', "/");
    while !s.len().is_multiple_of(4) {
        s.push('=');
    }
    s
}

/// A positive random 128-bit serial number.
pub fn random_serial() -> Result<SerialNumber, String> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| "the system RNG failed".to_string())?;
    // Positive (top bit clear) and without a leading zero byte, so DER keeps all 16 bytes.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// Sets `params`' validity to `[from_s, to_s]` (Unix seconds).
pub fn set_validity(params: &mut CertificateParams, from_s: i64, to_s: i64) -> Result<(), String> {
    let time = |secs: i64| {
        ASN1Time::from_timestamp(secs)
            .map(|t| t.to_datetime())
            .map_err(|e| format!("time {secs} is out of range: {e}"))
    };
    params.not_before = time(from_s)?;
    params.not_after = time(to_s)?;
    Ok(())
}
