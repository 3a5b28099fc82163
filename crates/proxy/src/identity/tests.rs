//! Unit tests of the identity module: certificate reading, `from_parts` checks, replacement
//! and the renewal schedule. Handshakes are tested in `tests/mtls.rs`.

use std::time::{Duration, SystemTime};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};

use super::*;

const ID: &str = "spiffe://cluster.local/ns/default/svc/catalog";

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca() -> Ca {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    let cert = params.self_signed(&key).expect("self-signed");
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

fn leaf(ca: &Ca, uris: &[&str], is_ca: bool) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI((*u).try_into().expect("ia5")))
        .collect();
    if is_ca {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    }
    let cert = params.signed_by(&key, &ca.issuer).expect("sign");
    (cert.pem(), key.serialize_pem())
}

fn err_of(r: Result<Identity, IdentityError>) -> String {
    match r {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn spiffe_ids() {
    assert!(is_spiffe_id(ID));
    for bad in [
        "spiffe://",
        "spiffe://td",
        "spiffe://td/",
        "spiffe:///a",
        "spiffe://TD/a",
        "spiffe://td/a//b",
        "spiffe://td/a/../b",
        "spiffe://td/a?x",
        "https://td/a",
    ] {
        assert!(!is_spiffe_id(bad), "{bad}");
    }
    assert_eq!(trust_domain_of(ID), Some("cluster.local"));
    assert_eq!(trust_domain_of("nope"), None);
    assert!(looks_like_tls(&[0x16, 0x03, 0x01]));
    assert!(!looks_like_tls(b"GET / HTTP/1.1"));
    assert!(!looks_like_tls(&[0x16]));
}

#[test]
fn from_parts_reads_the_identity() {
    let ca = ca();
    let (cert, key) = leaf(&ca, &[ID], false);
    let identity = Identity::from_parts(&cert, &key, &ca.pem).expect("identity");
    assert_eq!(identity.spiffe_id(), ID);
    assert_eq!(identity.trust_domain(), "cluster.local");
    assert_eq!(identity.trust_bundle().roots().len(), 1);
    assert_eq!(identity.current().cert.len(), 1);
    let creds = identity.credentials();
    assert!(creds.not_before < creds.not_after);
}

#[test]
fn from_parts_refuses_unusable_material() {
    let ca = ca();
    let other = self::ca();
    let (cert, key) = leaf(&ca, &[ID], false);
    let (_, other_key) = leaf(&ca, &[ID], false);

    let e = err_of(Identity::from_parts(&cert, &key, "not pem"));
    assert!(e.contains("trust bundle"), "{e}");
    let e = err_of(Identity::from_parts("", &key, &ca.pem));
    assert!(e.contains("certificate chain"), "{e}");
    let e = err_of(Identity::from_parts(&cert, "garbage", &ca.pem));
    assert!(e.contains("private key"), "{e}");
    let e = err_of(Identity::from_parts(&cert, &other_key, &ca.pem));
    assert!(e.contains("does not match"), "{e}");
    let e = err_of(Identity::from_parts(&cert, &key, &other.pem));
    assert!(e.contains("does not chain"), "{e}");

    let (two, two_key) = leaf(&ca, &[ID, "spiffe://cluster.local/ns/x/svc/y"], false);
    let e = err_of(Identity::from_parts(&two, &two_key, &ca.pem));
    assert!(e.contains("2 URI SANs"), "{e}");
    let (none, none_key) = leaf(&ca, &[], false);
    let e = err_of(Identity::from_parts(&none, &none_key, &ca.pem));
    assert!(e.contains("0 URI SANs"), "{e}");
    let (is_ca, is_ca_key) = leaf(&ca, &[ID], true);
    let e = err_of(Identity::from_parts(&is_ca, &is_ca_key, &ca.pem));
    assert!(e.contains("CA:TRUE"), "{e}");
    let (http, http_key) = leaf(&ca, &["https://catalog"], false);
    let e = err_of(Identity::from_parts(&http, &http_key, &ca.pem));
    assert!(e.contains("not a SPIFFE ID"), "{e}");
}

#[test]
fn replace_swaps_and_notifies_and_keeps_the_id() {
    let ca = ca();
    let (cert, key) = leaf(&ca, &[ID], false);
    let identity = Identity::from_parts(&cert, &key, &ca.pem).expect("identity");
    let mut watch = identity.watch();
    let before = identity.credentials().serial.clone();

    let (cert2, key2) = leaf(&ca, &[ID], false);
    identity.replace(&cert2, &key2, None).expect("replace");
    assert!(watch.has_changed().expect("open"));
    assert_eq!(watch.borrow_and_update().cert, 1);
    assert_ne!(identity.credentials().serial, before);

    let (other, other_key) = leaf(&ca, &["spiffe://cluster.local/ns/default/svc/web"], false);
    let e = identity
        .replace(&other, &other_key, None)
        .expect_err("another identity");
    assert!(e.to_string().contains("this identity is"), "{e}");

    // A bundle adding a second root: changed once, not again for the same roots.
    let second = self::ca();
    let both = format!("{}{}", ca.pem, second.pem);
    assert!(identity.set_trust_bundle(&both).expect("bundle"));
    assert!(!identity.set_trust_bundle(&both).expect("bundle"));
    assert_eq!(watch.borrow_and_update().bundle, 1);
    // A bundle our certificate does not chain to is refused.
    let e = identity
        .set_trust_bundle(&second.pem)
        .expect_err("orphaned cert");
    assert!(e.to_string().contains("does not chain"), "{e}");
    assert_eq!(identity.trust_bundle().roots().len(), 2);
}

#[test]
fn renewal_schedule() {
    let nb = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let na = nb + Duration::from_secs(3000);
    let opts = RotationOptions::default();
    assert_eq!(renew_at(nb, na, &opts, 0.0), nb + Duration::from_secs(2000));
    let early = renew_at(nb, na, &opts, -1.0);
    let late = renew_at(nb, na, &opts, 1.0);
    assert_eq!(early, nb + Duration::from_secs(1850));
    assert_eq!(late, nb + Duration::from_secs(2150));
    // Out-of-range spreads are clamped, and the moment stays inside the validity.
    assert_eq!(renew_at(nb, na, &opts, 7.0), late);
    let wild = RotationOptions {
        renew_fraction: 0.99,
        jitter: 0.5,
        ..RotationOptions::default()
    };
    assert_eq!(renew_at(nb, na, &wild, 1.0), na);
    // A certificate whose validity is inverted renews at once.
    assert_eq!(renew_at(na, nb, &opts, 0.0), na);
}
