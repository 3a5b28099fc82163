//! Issued certificates: exactly the token's identity, the right extensions and validity, and a
//! chain that webpki accepts for both TLS directions.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls_pki_types::UnixTime;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::*;

#[tokio::test]
async fn issued_certificate_carries_only_the_tokens_identity() {
    let (ca, _dir) = fresh().await;
    let grant = ca.create_token(token_req("catalog")).await.expect("token");
    assert_eq!(
        grant.spiffe_id,
        "spiffe://cluster.local/ns/default/svc/catalog"
    );
    let key = p256();
    // The CSR asks for another identity, a DNS name and a subject: all must be ignored.
    let asking = csr_asking(
        &key,
        vec![
            SanType::URI(
                "spiffe://cluster.local/ns/default/svc/admin"
                    .try_into()
                    .expect("uri"),
            ),
            SanType::DnsName("admin.example".try_into().expect("dns")),
        ],
    );
    let before_s = now_s();
    let signed = ca.sign(&grant.token, &asking).await.expect("signed");
    let after_s = now_s();
    assert_eq!(signed.spiffe_id, grant.spiffe_id);

    let der = der_of(&signed.certificate_chain);
    let (_, leaf) = X509Certificate::from_der(&der).expect("leaf parses");
    let names = &leaf
        .subject_alternative_name()
        .expect("san readable")
        .expect("san present")
        .value
        .general_names;
    assert_eq!(names.len(), 1, "exactly one SAN: {names:?}");
    assert!(matches!(names[0], GeneralName::URI(u) if u == grant.spiffe_id));
    assert_eq!(
        leaf.subject().iter_attributes().count(),
        0,
        "subject must be empty"
    );
    let bc = leaf.basic_constraints().expect("bc").expect("bc present");
    assert!(!bc.value.ca);
    let eku = leaf
        .extended_key_usage()
        .expect("eku")
        .expect("eku present");
    assert!(eku.value.server_auth && eku.value.client_auth);
    let ku = leaf.key_usage().expect("ku").expect("ku present");
    assert!(ku.value.digital_signature() && !ku.value.key_cert_sign());
    assert_eq!(
        leaf.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw(),
        "the certificate is for the CSR's key"
    );
    let v = leaf.validity();
    let ttl = i64::try_from(DEFAULT_CERT_TTL.as_secs()).expect("ttl");
    assert!(v.not_before.timestamp() <= before_s - 60 + 1);
    assert!(v.not_after.timestamp() >= before_s + ttl && v.not_after.timestamp() <= after_s + ttl);
    assert_eq!(
        u64::try_from(v.not_after.timestamp()).expect("ts") * 1000,
        signed.not_after_ms
    );
    // Signed by the trust bundle's root.
    let roots = all_ders(&signed.trust_bundle);
    assert_eq!(roots.len(), 1);
    let (_, root) = X509Certificate::from_der(&roots[0]).expect("root parses");
    leaf.verify_signature(Some(root.public_key()))
        .expect("leaf signature verifies with the root key");
    assert_eq!(verify::spiffe_id_of(&der), Ok(grant.spiffe_id));
}

#[tokio::test]
async fn webpki_accepts_the_leaf_as_client_and_server_certificate() {
    let (ca, _dir) = fresh().await;
    let grant = ca.create_token(token_req("orders")).await.expect("token");
    let signed = ca.sign(&grant.token, &csr(&p256())).await.expect("signed");
    let leaf = CertificateDer::from(der_of(&signed.certificate_chain));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = RootCertStore::empty();
    for r in all_ders(&ca.trust_bundle()) {
        roots.add(r).expect("root accepted as trust anchor");
    }
    let roots = Arc::new(roots);
    let now = UnixTime::now();
    let client = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .expect("client verifier");
    client
        .verify_client_cert(&leaf, &[], now)
        .expect("accepted as a client certificate");
    let parsed = ParsedCertificate::try_from(&leaf).expect("parsed");
    verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &roots,
        &[],
        now,
        provider.signature_verification_algorithms.all,
    )
    .expect("accepted as a server certificate");

    // A leaf of another CA is refused by the same verifier.
    let (other, _d2) = fresh().await;
    let g2 = other
        .create_token(token_req("orders"))
        .await
        .expect("token");
    let foreign = other.sign(&g2.token, &csr(&p256())).await.expect("signed");
    let foreign = CertificateDer::from(der_of(&foreign.certificate_chain));
    assert!(client.verify_client_cert(&foreign, &[], now).is_err());
}

#[tokio::test]
async fn validity_never_outlives_the_signing_root() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = operator_ca("short-lived root", 2);
    std::fs::write(dir.path().join("ca.pem"), &cert).expect("write");
    std::fs::write(dir.path().join("ca.key"), &key).expect("write");
    let config = CaConfig {
        operator_root: Some(OperatorRoot {
            cert: dir.path().join("ca.pem"),
            key: dir.path().join("ca.key"),
        }),
        ..CaConfig::default()
    };
    let (ca, _) = open(&dir.path().join("data"), config).await.expect("ca");
    let grant = ca.create_token(token_req("catalog")).await.expect("token");
    let signed = ca.sign(&grant.token, &csr(&p256())).await.expect("signed");
    let root_not_after = ca.roots()[0].not_after_ms;
    assert_eq!(signed.not_after_ms, root_not_after);
    let leaf_der = der_of(&signed.certificate_chain);
    let (_, leaf) = X509Certificate::from_der(&leaf_der).expect("leaf");
    let root_der = der_of(&cert);
    let (_, root) = X509Certificate::from_der(&root_der).expect("root");
    leaf.verify_signature(Some(root.public_key()))
        .expect("signed by the operator's key");
}

#[tokio::test]
async fn hostile_csrs_are_refused_with_a_reason() {
    let (ca, _dir) = fresh().await;
    let grant = ca.create_token(token_req("catalog")).await.expect("token");
    let valid = csr(&p256());
    let der = CertificateSigningRequestDer::from_pem_slice(valid.as_bytes())
        .expect("csr der")
        .to_vec();
    let mut forged = der.clone();
    let last = forged.len() - 1;
    forged[last] ^= 0x01;
    let mut truncated = der.clone();
    truncated.truncate(der.len() / 2);
    let (a_cert, _) = operator_ca("not a request", 1);
    let cases: Vec<(&str, String, &str)> = vec![
        ("empty", String::new(), "CERTIFICATE REQUEST"),
        ("garbage", "hello, CA".to_string(), "CERTIFICATE REQUEST"),
        (
            "bad base64",
            pem("CERTIFICATE REQUEST", b"\xff\xfe not der"),
            "PKCS#10",
        ),
        (
            "truncated",
            pem("CERTIFICATE REQUEST", &truncated),
            "PKCS#10",
        ),
        (
            "forged signature",
            pem("CERTIFICATE REQUEST", &forged),
            "signature does not verify",
        ),
        (
            "a certificate",
            a_cert.replace("CERTIFICATE", "CERTIFICATE REQUEST"),
            "PKCS#10",
        ),
        (
            "huge",
            "-----BEGIN CERTIFICATE REQUEST-----\n".repeat(1000),
            "limit",
        ),
    ];
    for (name, input, needle) in cases {
        match ca.sign(&grant.token, &input).await {
            Err(CaError::Invalid(m)) => assert!(
                m.starts_with("csr: ") && m.contains(needle),
                "{name}: `{m}` should mention `{needle}`"
            ),
            other => panic!("{name}: expected a 400-class refusal, got {other:?}"),
        }
    }
    // The token still works after all that.
    ca.sign(&grant.token, &valid)
        .await
        .expect("a valid CSR is signed");
}

use rustls_pki_types::CertificateSigningRequestDer;

fn pem(label: &str, der: &[u8]) -> String {
    let body = super::super::root::pem_of(der);
    body.replace("CERTIFICATE", label)
}

#[tokio::test]
async fn other_key_types_are_signed_for_their_own_key() {
    let (ca, _dir) = fresh().await;
    let grant = ca.create_token(token_req("catalog")).await.expect("token");
    for alg in [&rcgen::PKCS_ED25519, &rcgen::PKCS_ECDSA_P384_SHA384] {
        let key = KeyPair::generate_for(alg).expect("key");
        let signed = ca.sign(&grant.token, &csr(&key)).await.expect("signed");
        let der = der_of(&signed.certificate_chain);
        let (_, leaf) = X509Certificate::from_der(&der).expect("leaf");
        assert_eq!(
            leaf.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw()
        );
    }
}
