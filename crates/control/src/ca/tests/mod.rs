//! The mesh CA: issuance, hostile CSRs, join tokens, root persistence, operator roots and
//! rotation. Certificates are checked by decoding them with x509-parser and by rustls' webpki
//! verifiers, never by comparing with rcgen's own view.

use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

use super::root::set_validity;
use super::*;
use crate::store::RedbStore;

mod identity;
mod issuance;
mod roots;
mod tokens;

async fn open(
    dir: &std::path::Path,
    config: CaConfig,
) -> Result<(Ca, Arc<RedbStore>), CaInitError> {
    std::fs::create_dir_all(dir).expect("data dir");
    let store = Arc::new(RedbStore::open(dir).expect("open store"));
    let ca = Ca::init(store.clone(), config).await?;
    Ok((ca, store))
}

async fn fresh() -> (Ca, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, _) = open(dir.path(), CaConfig::default()).await.expect("ca");
    (ca, dir)
}

fn token_req(service: &str) -> TokenRequest {
    TokenRequest {
        service: service.to_string(),
        namespace: None,
        ttl_ms: None,
    }
}

/// A PEM CSR for `key` asking for `sans` and a subject CN.
fn csr_asking(key: &KeyPair, sans: Vec<SanType>) -> String {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "admin");
    params.subject_alt_names = sans;
    params
        .serialize_request(key)
        .expect("serialize csr")
        .pem()
        .expect("csr pem")
}

fn csr(key: &KeyPair) -> String {
    csr_asking(key, Vec::new())
}

fn p256() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key")
}

fn der_of(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("one PEM certificate")
        .to_vec()
}

fn all_ders(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("PEM certificates")
}

/// A self-signed certificate with the given CA flag and validity: `(cert_pem, key_pem)`.
fn make_cert(cn: &str, is_ca: bool, from_s: i64, to_s: i64) -> (String, String) {
    let key = p256();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    if is_ca {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    } else {
        params.is_ca = IsCa::ExplicitNoCa;
    }
    set_validity(&mut params, from_s, to_s).expect("validity");
    let cert = params.self_signed(&key).expect("self-signed");
    (cert.pem(), key.serialize_pem())
}

fn now_s() -> i64 {
    i64::try_from(unix_ms() / 1000).expect("now")
}

/// A current operator CA `(cert_pem, key_pem)`, valid for `hours`.
fn operator_ca(cn: &str, hours: i64) -> (String, String) {
    let now = now_s();
    make_cert(cn, true, now - 3600, now + hours * 3600)
}
