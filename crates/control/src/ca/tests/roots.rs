//! Roots: the generated root, persistence across reopen, operator roots and their errors,
//! configuration errors, and the rotation groundwork.

use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::*;

#[tokio::test]
async fn the_generated_root_is_a_p256_ca_named_for_the_trust_domain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = CaConfig {
        trust_domain: "prod.example".to_string(),
        ..CaConfig::default()
    };
    let (ca, _) = open(dir.path(), config).await.expect("ca");
    let roots = all_ders(&ca.trust_bundle());
    assert_eq!(roots.len(), 1);
    let (_, root) = X509Certificate::from_der(&roots[0]).expect("root");
    assert!(
        root.subject()
            .to_string()
            .contains("CN=Trellis mesh CA prod.example"),
        "{}",
        root.subject()
    );
    let bc = root.basic_constraints().expect("bc").expect("present");
    assert!(bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, Some(1));
    assert!(
        root.key_usage()
            .expect("ku")
            .expect("present")
            .value
            .key_cert_sign()
    );
    root.verify_signature(None).expect("self-signed");
    let v = root.validity();
    let years = (v.not_after.timestamp() - v.not_before.timestamp()) / (365 * 24 * 3600);
    assert_eq!(years, 10);
    assert_eq!(
        root.public_key()
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok()),
        Some(x509_parser::oid_registry::OID_EC_P256)
    );
    let grant = ca.create_token(token_req("web")).await.expect("token");
    assert_eq!(grant.spiffe_id, "spiffe://prod.example/ns/default/svc/web");
}

#[tokio::test]
async fn the_root_survives_reopening_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (bundle, roots) = {
        let (ca, _store) = open(dir.path(), CaConfig::default()).await.expect("ca");
        (ca.trust_bundle(), ca.roots())
    };
    let (again, _store) = open(dir.path(), CaConfig::default()).await.expect("reopen");
    assert_eq!(again.trust_bundle(), bundle);
    assert_eq!(again.roots(), roots);
    // And it signs with the stored key.
    let grant = again.create_token(token_req("web")).await.expect("token");
    let signed = again
        .sign(&grant.token, &csr(&p256()))
        .await
        .expect("signed");
    let leaf_der = der_of(&signed.certificate_chain);
    let (_, leaf) = X509Certificate::from_der(&leaf_der).expect("leaf");
    let root_der = der_of(&bundle);
    let (_, root) = X509Certificate::from_der(&root_der).expect("root");
    leaf.verify_signature(Some(root.public_key()))
        .expect("signed by the same root as before the reopen");
    // A different data dir is a different CA.
    let other = tempfile::tempdir().expect("tempdir");
    let (fresh_ca, _s) = open(other.path(), CaConfig::default()).await.expect("ca");
    assert_ne!(fresh_ca.trust_bundle(), bundle);
}

fn write_pair(dir: &std::path::Path, cert: &str, key: &str) -> OperatorRoot {
    let op = OperatorRoot {
        cert: dir.join("ca.pem"),
        key: dir.join("ca.key"),
    };
    std::fs::write(&op.cert, cert).expect("write cert");
    std::fs::write(&op.key, key).expect("write key");
    op
}

async fn open_with(dir: &std::path::Path, op: OperatorRoot) -> Result<Ca, CaInitError> {
    let config = CaConfig {
        operator_root: Some(op),
        ..CaConfig::default()
    };
    open(&dir.join("data"), config).await.map(|(ca, _)| ca)
}

#[tokio::test]
async fn an_operator_root_signs_and_joins_the_stored_bundle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let generated = {
        let (ca, _) = open(&dir.path().join("data"), CaConfig::default())
            .await
            .expect("ca");
        ca.roots()
    };
    let (cert, key) = operator_ca("Acme mesh root", 48);
    let ca = open_with(dir.path(), write_pair(dir.path(), &cert, &key))
        .await
        .expect("ca");
    let roots = ca.roots();
    assert_eq!(roots.len(), 2, "the earlier root stays trusted: {roots:?}");
    let active: Vec<_> = roots.iter().filter(|r| r.active).collect();
    assert_eq!(active.len(), 1);
    assert!(active[0].subject.contains("Acme mesh root"));
    assert!(
        roots
            .iter()
            .any(|r| r.fingerprint == generated[0].fingerprint && !r.active)
    );
    let grant = ca.create_token(token_req("web")).await.expect("token");
    let signed = ca.sign(&grant.token, &csr(&p256())).await.expect("signed");
    let leaf_der = der_of(&signed.certificate_chain);
    let (_, leaf) = X509Certificate::from_der(&leaf_der).expect("leaf");
    let root_der = der_of(&cert);
    let (_, root) = X509Certificate::from_der(&root_der).expect("root");
    leaf.verify_signature(Some(root.public_key()))
        .expect("signed by the operator root");
    assert!(
        signed
            .trust_bundle
            .starts_with(&cert.replace("\r\n", "\n")[..27])
    );
    assert_eq!(all_ders(&signed.trust_bundle).len(), 2);
}

#[tokio::test]
async fn operator_root_problems_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let now = now_s();
    let (good_cert, good_key) = operator_ca("good", 48);
    let (_, other_key) = operator_ca("other", 48);
    let (leaf_cert, leaf_key) = make_cert("leaf", false, now - 3600, now + 3600);
    let (old_cert, old_key) = make_cert("old", true, now - 7200, now - 3600);
    let (future_cert, future_key) = make_cert("future", true, now + 3600, now + 7200);
    let cases: Vec<(&str, String, String, &str)> = vec![
        (
            "mismatched key",
            good_cert.clone(),
            other_key,
            "does not match",
        ),
        ("not a CA", leaf_cert, leaf_key, "is not a CA"),
        ("expired", old_cert, old_key, "expired"),
        ("not yet valid", future_cert, future_key, "not valid before"),
        (
            "cert not PEM",
            "junk".to_string(),
            good_key.clone(),
            "BEGIN CERTIFICATE",
        ),
        (
            "key not PEM",
            good_cert.clone(),
            "junk".to_string(),
            "PKCS#8",
        ),
        (
            "two certs",
            format!("{good_cert}{good_cert}"),
            good_key.clone(),
            "2 certificates",
        ),
    ];
    for (name, cert, key, needle) in cases {
        let err = open_with(dir.path(), write_pair(dir.path(), &cert, &key))
            .await
            .err()
            .unwrap_or_else(|| panic!("{name}: accepted"));
        let msg = err.to_string();
        assert!(
            matches!(err, CaInitError::OperatorRoot { .. }) && msg.contains(needle),
            "{name}: `{msg}` should mention `{needle}`"
        );
        assert!(
            msg.contains("--ca-cert") && msg.contains("ca.pem"),
            "{name}: {msg}"
        );
    }
    let missing = OperatorRoot {
        cert: dir.path().join("nope.pem"),
        key: dir.path().join("nope.key"),
    };
    let err = open_with(dir.path(), missing)
        .await
        .err()
        .expect("missing file refused");
    assert!(
        matches!(
            err,
            CaInitError::Read {
                flag: "--ca-cert",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("nope.pem"));
}

#[tokio::test]
async fn bad_flags_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad_td = CaConfig {
        trust_domain: "Not A Domain".to_string(),
        ..CaConfig::default()
    };
    let err = open(dir.path(), bad_td).await.err().expect("refused");
    assert!(err.to_string().starts_with("--trust-domain"), "{err}");
    let dir = tempfile::tempdir().expect("tempdir");
    let short = CaConfig {
        cert_ttl: Duration::from_secs(30),
        ..CaConfig::default()
    };
    let err = open(dir.path(), short).await.err().expect("refused");
    assert!(err.to_string().starts_with("--cert-ttl 30s"), "{err}");
}

#[tokio::test]
async fn roots_can_be_added_activated_and_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, _store) = open(dir.path(), CaConfig::default()).await.expect("ca");
    let first = ca.roots()[0].clone();
    let (cert, key) = operator_ca("next root", 48);
    let added = ca.add_root(&cert, &key).await.expect("added");
    assert!(!added.active);
    assert_eq!(all_ders(&ca.trust_bundle()).len(), 2);
    assert!(matches!(
        ca.add_root(&cert, &key).await,
        Err(CaError::Conflict(_))
    ));
    let (_, wrong_key) = operator_ca("x", 1);
    assert!(
        matches!(ca.add_root(&cert, &wrong_key).await, Err(CaError::Invalid(m)) if m.contains("does not match"))
    );

    // Still signing with the first root until activation.
    let grant = ca.create_token(token_req("web")).await.expect("token");
    let issuer_of = |signed: &SignedCert| {
        let der = der_of(&signed.certificate_chain);
        let (_, leaf) = X509Certificate::from_der(&der).expect("leaf");
        leaf.issuer().to_string()
    };
    let s1 = ca.sign(&grant.token, &csr(&p256())).await.expect("signed");
    assert!(issuer_of(&s1).contains("Trellis mesh CA"));
    assert!(matches!(
        ca.activate("00ff").await,
        Err(CaError::NotFound(_))
    ));
    ca.activate(&added.fingerprint.to_ascii_uppercase())
        .await
        .expect("activated");
    let s2 = ca.sign(&grant.token, &csr(&p256())).await.expect("signed");
    assert!(issuer_of(&s2).contains("next root"), "{}", issuer_of(&s2));

    assert!(matches!(
        ca.remove_root(&added.fingerprint).await,
        Err(CaError::Conflict(_))
    ));
    ca.remove_root(&first.fingerprint).await.expect("removed");
    assert!(matches!(
        ca.remove_root(&first.fingerprint).await,
        Err(CaError::NotFound(_))
    ));
    assert_eq!(all_ders(&ca.trust_bundle()).len(), 1);
    drop((ca, _store));

    let (again, _s) = open(dir.path(), CaConfig::default()).await.expect("reopen");
    let roots = again.roots();
    assert_eq!(roots.len(), 1);
    assert_eq!(roots[0].fingerprint, added.fingerprint);
    assert!(roots[0].active, "the activation is stored");
}
