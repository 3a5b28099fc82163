//! `verify::spiffe_id_of`: what makes a certificate a workload certificate.

use super::*;

fn leaf_with(sans: Vec<SanType>, is_ca: IsCa) -> Vec<u8> {
    let key = p256();
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    params.is_ca = is_ca;
    params.self_signed(&key).expect("cert").der().to_vec()
}

fn uri(u: &str) -> SanType {
    SanType::URI(u.try_into().expect("uri"))
}

#[test]
fn a_single_spiffe_uri_san_on_a_non_ca_is_the_identity() {
    let id = "spiffe://cluster.local/ns/default/svc/catalog";
    let both = [IsCa::ExplicitNoCa, IsCa::NoCa];
    for is_ca in both {
        let der = leaf_with(
            vec![
                uri(id),
                SanType::DnsName("catalog".try_into().expect("dns")),
            ],
            is_ca,
        );
        assert_eq!(verify::spiffe_id_of(&der), Ok(id.to_string()));
    }
}

#[test]
fn other_certificates_are_refused() {
    use verify::IdentityError as E;
    let id = "spiffe://cluster.local/ns/default/svc/catalog";
    let cases = [
        (
            leaf_with(vec![uri(id)], IsCa::Ca(BasicConstraints::Unconstrained)),
            E::IsCa,
        ),
        (
            leaf_with(
                vec![uri(id), uri("spiffe://cluster.local/ns/default/svc/b")],
                IsCa::NoCa,
            ),
            E::UriSanCount(2),
        ),
        (
            leaf_with(
                vec![SanType::DnsName("a.b".try_into().expect("dns"))],
                IsCa::NoCa,
            ),
            E::UriSanCount(0),
        ),
        (leaf_with(Vec::new(), IsCa::NoCa), E::UriSanCount(0)),
        (
            leaf_with(vec![uri("https://cluster.local/ns/x")], IsCa::NoCa),
            E::NotSpiffe("https://cluster.local/ns/x".to_string()),
        ),
    ];
    for (der, want) in cases {
        assert_eq!(verify::spiffe_id_of(&der), Err(want));
    }
    assert!(matches!(
        verify::spiffe_id_of(b"not der"),
        Err(E::Malformed(_))
    ));
}

#[test]
fn spiffe_id_syntax() {
    for ok in ["spiffe://cluster.local/ns/default/svc/a", "spiffe://td/x"] {
        assert!(verify::is_spiffe_id(ok), "{ok}");
    }
    for bad in [
        "spiffe://",
        "spiffe://td",
        "spiffe://td/",
        "spiffe:///path",
        "spiffe://TD/x",
        "spiffe://td:443/x",
        "spiffe://user@td/x",
        "spiffe://td/a//b",
        "spiffe://td/a/../b",
        "spiffe://td/a?q",
        "spiffe://td/a#f",
        "http://td/x",
    ] {
        assert!(!verify::is_spiffe_id(bad), "{bad}");
    }
}

#[test]
fn names_and_trust_domains() {
    assert!(spiffe::check_name("service", "catalog-v2").is_ok());
    for bad in ["", "-a", "a-", "A", "a.b", &"a".repeat(64)] {
        assert!(spiffe::check_name("service", bad).is_err(), "{bad}");
    }
    assert!(spiffe::check_trust_domain("cluster.local").is_ok());
    for bad in ["", "Cluster", "a/b", "a:1"] {
        assert!(spiffe::check_trust_domain(bad).is_err(), "{bad}");
    }
}
