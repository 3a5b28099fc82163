//! mTLS between sidecars over real TCP on 127.0.0.1: the configs of `trellis_proxy::identity`
//! against each other and against peers that break the mesh's rules. Every refused connection
//! asserts that no byte reached the server's app. The identity manager is tested against the
//! real control plane and a small CA server in `mtls/manager.rs`.

#[path = "mtls/manager.rs"]
mod manager;
#[path = "mtls/pki.rs"]
mod pki;

use std::sync::Arc;

use pki::{Leaf, Server, TD, TestCa, Validity, connect, der_of, id, ping, raw_client, raw_server};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use trellis_proxy::identity::{
    ClientAuth, ExpectedIds, Identity, client_config, peer_spiffe_id, server_config,
};

/// A mesh of one CA with a `catalog` server and a `web` client.
struct Mesh {
    ca: TestCa,
    catalog: Identity,
    web: Identity,
}

fn mesh() -> Mesh {
    let ca = TestCa::new("mesh");
    let catalog = ca.identity("catalog", &ca.pem);
    let web = ca.identity("web", &ca.pem);
    Mesh { ca, catalog, web }
}

fn to_catalog(client: &Identity) -> Arc<rustls::ClientConfig> {
    client_config(client, ExpectedIds::new([id("catalog")])).expect("client config")
}

async fn catalog_server(m: &Mesh, mode: ClientAuth) -> Server {
    Server::start(server_config(&m.catalog, mode).expect("server config")).await
}

#[tokio::test]
async fn good_handshake_both_ways_reads_peer_ids() {
    let m = mesh();
    let mut server = catalog_server(&m, ClientAuth::Required).await;
    let mut tls = connect(to_catalog(&m.web), server.addr)
        .await
        .expect("handshake");
    let accepted = server.next_outcome().await.expect("server accepted");
    assert_eq!(accepted.peer.as_deref(), Some(id("web").as_str()));
    assert_eq!(accepted.alpn.as_deref(), Some(&b"h2"[..]));
    let conn = tls.get_ref().1;
    assert_eq!(peer_spiffe_id(conn), Some(id("catalog")));
    assert_eq!(
        conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(ping(&mut tls, b"hello").await.expect("echo"), b"hello");
    assert_eq!(server.app_bytes(), 5);

    // And the other way round: catalog calls web.
    let mut web_server =
        Server::start(server_config(&m.web, ClientAuth::Required).expect("config")).await;
    let config = client_config(&m.catalog, ExpectedIds::new([id("web")])).expect("config");
    let mut tls = connect(config, web_server.addr).await.expect("handshake");
    let accepted = web_server.next_outcome().await.expect("accepted");
    assert_eq!(accepted.peer, Some(id("catalog")));
    assert_eq!(peer_spiffe_id(tls.get_ref().1), Some(id("web")));
    assert_eq!(ping(&mut tls, b"x").await.expect("echo"), b"x");
}

#[tokio::test]
async fn optional_client_auth_accepts_anonymous_clients_without_an_id() {
    let m = mesh();
    let mut server = catalog_server(&m, ClientAuth::Optional).await;
    let mut tls = connect(raw_client(None), server.addr)
        .await
        .expect("handshake");
    assert_eq!(ping(&mut tls, b"hi").await.expect("echo"), b"hi");
    let accepted = server.next_outcome().await.expect("accepted");
    assert_eq!(accepted.peer, None);
    // A certificate that is sent must still be valid.
    let stranger = TestCa::new("stranger");
    let cert = stranger.leaf(&Leaf::of(&id("web")));
    let r = pki::refused(&mut server, raw_client(Some(cert)), "optional, untrusted").await;
    assert!(r.server.contains("UnknownIssuer"), "{}", r.server);
}

#[tokio::test]
async fn plaintext_client_is_refused() {
    let m = mesh();
    let mut server = catalog_server(&m, ClientAuth::Required).await;
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: catalog\r\n\r\n")
        .await
        .expect("write");
    let err = server.next_outcome().await.expect_err("plaintext refused");
    assert!(!err.is_empty());
    assert_eq!(server.app_bytes(), 0);
}

#[tokio::test]
async fn bad_client_certificates_are_refused() {
    let m = mesh();
    let mut server = catalog_server(&m, ClientAuth::Required).await;
    let stranger = TestCa::new("stranger");
    let web = id("web");
    type Case<'a> = (&'a str, Option<(String, String)>, &'a str);
    let cases: Vec<Case> = vec![
        ("no certificate", None, "no certificates"),
        (
            "untrusted CA",
            Some(stranger.leaf(&Leaf::of(&web))),
            "UnknownIssuer",
        ),
        (
            "expired",
            Some(m.ca.leaf(&Leaf {
                validity: Validity::Expired,
                ..Leaf::of(&web)
            })),
            "xpired",
        ),
        (
            "not yet valid",
            Some(m.ca.leaf(&Leaf {
                validity: Validity::NotYetValid,
                ..Leaf::of(&web)
            })),
            "not valid yet",
        ),
        (
            "CA:TRUE leaf",
            Some(m.ca.leaf(&Leaf {
                is_ca: true,
                ..Leaf::of(&web)
            })),
            "CaUsedAsEndEntity",
        ),
        (
            "two URI SANs",
            Some(m.ca.leaf(&Leaf {
                uris: vec![web.clone(), id("admin")],
                ..Leaf::of(&web)
            })),
            "2 URI SANs",
        ),
        (
            "no URI SAN",
            Some(m.ca.leaf(&Leaf {
                uris: vec![],
                ..Leaf::of(&web)
            })),
            "0 URI SANs",
        ),
        (
            "another trust domain",
            Some(m.ca.leaf(&Leaf::of("spiffe://evil.example/ns/default/svc/web"))),
            "trust domain",
        ),
    ];
    for (case, cert, reason) in cases {
        let r = pki::refused(&mut server, raw_client(cert), case).await;
        assert!(
            r.server.contains(reason),
            "{case}: server error `{}` should say `{reason}`",
            r.server
        );
        assert!(!r.client.is_empty(), "{case}");
    }
    assert_eq!(server.app_bytes(), 0);
    // The server still serves good clients afterwards.
    let mut tls = connect(to_catalog(&m.web), server.addr)
        .await
        .expect("handshake");
    assert_eq!(ping(&mut tls, b"ok").await.expect("echo"), b"ok");
}

#[tokio::test]
async fn bad_server_certificates_are_refused_by_the_client() {
    let m = mesh();
    let stranger = TestCa::new("stranger");
    let catalog = id("catalog");
    let cases: Vec<(&str, (String, String), &str)> = vec![
        (
            "untrusted CA",
            stranger.leaf(&Leaf::of(&catalog)),
            "UnknownIssuer",
        ),
        (
            "expired",
            m.ca.leaf(&Leaf {
                validity: Validity::Expired,
                ..Leaf::of(&catalog)
            }),
            "xpired",
        ),
        (
            "not yet valid",
            m.ca.leaf(&Leaf {
                validity: Validity::NotYetValid,
                ..Leaf::of(&catalog)
            }),
            "not valid yet",
        ),
        (
            "wrong service",
            m.ca.leaf(&Leaf::of(&id("web"))),
            "is not one of those serving this destination",
        ),
        (
            "CA:TRUE leaf",
            m.ca.leaf(&Leaf {
                is_ca: true,
                ..Leaf::of(&catalog)
            }),
            "CaUsedAsEndEntity",
        ),
        (
            "two URI SANs",
            m.ca.leaf(&Leaf {
                uris: vec![catalog.clone(), id("web")],
                ..Leaf::of(&catalog)
            }),
            "2 URI SANs",
        ),
        (
            "another trust domain",
            m.ca.leaf(&Leaf::of("spiffe://evil.example/ns/default/svc/catalog")),
            "is not one of those serving this destination",
        ),
    ];
    for (case, (cert, key), reason) in cases {
        let mut server = Server::start(raw_server(&cert, &key)).await;
        let r = pki::refused(&mut server, to_catalog(&m.web), case).await;
        assert!(
            r.client.contains(reason),
            "{case}: client error `{}` should say `{reason}`",
            r.client
        );
    }
}

#[tokio::test]
async fn expected_ids_can_change_without_a_new_config() {
    let m = mesh();
    let mut server = catalog_server(&m, ClientAuth::Required).await;
    let expected = ExpectedIds::new([id("other")]);
    let config = client_config(&m.web, expected.clone()).expect("config");
    let r = pki::refused(&mut server, config.clone(), "not yet expected").await;
    assert!(r.client.contains("not one of"), "{}", r.client);
    expected.set([id("other"), id("catalog")]);
    let mut tls = connect(config, server.addr).await.expect("handshake");
    assert_eq!(ping(&mut tls, b"ok").await.expect("echo"), b"ok");
}

#[tokio::test]
async fn certificate_rotation_keeps_connections_and_serves_the_new_cert() {
    let m = mesh();
    let mut server = catalog_server(&m, ClientAuth::Required).await;
    let first_cert = m.catalog.current().cert[0].clone();
    let mut old = connect(to_catalog(&m.web), server.addr)
        .await
        .expect("handshake");
    server.next_outcome().await.expect("accepted");
    let seen = |tls: &tokio_rustls::client::TlsStream<TcpStream>| {
        tls.get_ref().1.peer_certificates().expect("certs")[0].clone()
    };
    assert_eq!(seen(&old), first_cert);

    let (cert, key) = m.ca.leaf(&Leaf::of(&id("catalog")));
    m.catalog.replace(&cert, &key, None).expect("rotate");
    assert_eq!(m.catalog.current().cert[0], der_of(&cert));

    // Existing connection: still served.
    assert_eq!(ping(&mut old, b"still").await.expect("echo"), b"still");
    // New handshakes: the new certificate, with the same config.
    let mut new = connect(to_catalog(&m.web), server.addr)
        .await
        .expect("handshake");
    server.next_outcome().await.expect("accepted");
    assert_eq!(seen(&new), der_of(&cert));
    assert_ne!(seen(&new), first_cert);
    assert_eq!(ping(&mut new, b"new").await.expect("echo"), b"new");
    // The client's certificate rotates the same way.
    let (cert, key) = m.ca.leaf(&Leaf::of(&id("web")));
    m.web.replace(&cert, &key, None).expect("rotate client");
    let _tls = connect(to_catalog(&m.web), server.addr)
        .await
        .expect("handshake");
    assert_eq!(
        server.next_outcome().await.expect("accepted").peer,
        Some(id("web"))
    );
}

#[tokio::test]
async fn trust_bundle_rotation_to_a_second_root() {
    let m = mesh();
    let mut server = catalog_server(&m, ClientAuth::Required).await;
    // A client that never learns about the new root.
    let stale = m.ca.identity("web", &m.ca.pem);
    let new_root = TestCa::new("second");
    let both = format!("{}{}", m.ca.pem, new_root.pem);

    // Step 1: everyone trusts both roots; nothing changes for connections.
    assert!(m.web.set_trust_bundle(&both).expect("client bundle"));
    assert!(m.catalog.set_trust_bundle(&both).expect("server bundle"));
    let mut tls = connect(to_catalog(&m.web), server.addr)
        .await
        .expect("handshake");
    server.next_outcome().await.expect("accepted");
    assert_eq!(ping(&mut tls, b"1").await.expect("echo"), b"1");

    // Step 2: the server's certificate now comes from the new root.
    let (cert, key) = new_root.leaf(&Leaf::of(&id("catalog")));
    m.catalog
        .replace(&cert, &key, Some(&both))
        .expect("switch root");
    let mut tls = connect(to_catalog(&m.web), server.addr)
        .await
        .expect("a client with both roots connects");
    let accepted = server.next_outcome().await.expect("accepted");
    assert_eq!(accepted.peer, Some(id("web")));
    assert_eq!(
        tls.get_ref().1.peer_certificates().expect("certs")[0],
        der_of(&cert)
    );
    assert_eq!(ping(&mut tls, b"2").await.expect("echo"), b"2");

    // The client keeps its old-root certificate and is still trusted; a client that only knows
    // the old root refuses the new server certificate.
    let r = pki::refused(&mut server, to_catalog(&stale), "stale bundle").await;
    assert!(r.client.contains("UnknownIssuer"), "{}", r.client);

    // Step 3: the client moves to the new root too; the server's verifier follows the bundle.
    let (cert, key) = new_root.leaf(&Leaf::of(&id("web")));
    m.web
        .replace(&cert, &key, Some(&new_root.pem))
        .expect("client on new root");
    assert_eq!(m.web.trust_bundle().roots().len(), 1);
    let mut tls = connect(to_catalog(&m.web), server.addr)
        .await
        .expect("handshake");
    server.next_outcome().await.expect("accepted");
    assert_eq!(ping(&mut tls, b"3").await.expect("echo"), b"3");
    // Once the server drops the old root, clients with old-root certificates are refused.
    let old_cert = m.ca.identity("web", &both);
    m.catalog
        .set_trust_bundle(&new_root.pem)
        .expect("drop old root");
    let r = pki::refused(&mut server, to_catalog(&old_cert), "old root client").await;
    assert!(r.server.contains("UnknownIssuer"), "{}", r.server);
    assert!(m.catalog.trust_domain() == TD);
}
