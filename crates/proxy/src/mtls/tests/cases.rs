//! The cases: mTLS forwarding and pooling, the inbound gate, failures, rotation, HTTP/1.1 peers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::{App, Ca, Proxy, get, h1_client, id, parts, policy};
use crate::identity::{ALPN_HTTP11, ClientAuth, ExpectedIds, client_config, server_config};
use crate::security::InboundMode;

/// web (client side) → catalog (server side with the app), both from `ca`.
async fn pair(ca: &Ca, web_ca: &Ca) -> (Proxy, Proxy, App) {
    let app = App::start().await;
    let catalog = Proxy::start("catalog", app.addr.port(), Some(ca.identity("catalog"))).await;
    catalog.set_inbound(Some(InboundMode::Strict));
    let web = Proxy::start("web", 1, Some(web_ca.identity("web"))).await;
    web.route(
        "catalog",
        catalog.addrs.inbound,
        policy("catalog", &["catalog"]),
        true,
        None,
    );
    (web, catalog, app)
}

#[tokio::test]
async fn http1_travels_as_h2_over_mtls_with_one_handshake_and_reaches_the_app_as_http1() {
    let ca = Ca::new("mesh");
    let (web, catalog, app) = pair(&ca, &ca).await;
    let mut client = h1_client(web.addrs.outbound).await;
    for i in 0..200 {
        let resp = client
            .send_request(get("catalog", "/items"))
            .await
            .expect("response");
        assert_eq!(
            resp.version(),
            http::Version::HTTP_11,
            "the app's own version"
        );
        let (status, reason, body) = parts(resp).await;
        assert_eq!((status, reason.as_str()), (200, ""), "request {i}: {body}");
        assert_eq!(body, "version=HTTP/1.1 host=catalog orig=-");
    }
    // More client connections, still the same pooled mTLS connection.
    for _ in 0..5 {
        let mut c = h1_client(web.addrs.outbound).await;
        let (status, _, body) =
            parts(c.send_request(get("catalog", "/")).await.expect("resp")).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(app.count(), 205);
    let out = web.metric("trellis_tls_handshakes_total", &[("direction", "outbound")]);
    let inb = catalog.metric("trellis_tls_handshakes_total", &[("direction", "inbound")]);
    assert_eq!((out, inb), (1.0, 1.0), "one handshake for 205 requests");
    assert_eq!(
        catalog.metric("trellis_inbound_plaintext_connections_total", &[]),
        0.0
    );

    // An app speaking h2c keeps HTTP/2 end to end.
    let stream = TcpStream::connect(web.addrs.outbound)
        .await
        .expect("connect");
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let req = Request::builder()
        .uri("http://catalog/h2")
        .body(Empty::<Bytes>::new())
        .expect("req");
    let (status, _, body) = parts(h2.send_request(req).await.expect("h2 resp")).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "version=HTTP/2.0 host=- orig=-")
    );
}

#[tokio::test]
async fn strict_inbound_refuses_plaintext_before_the_app_and_permissive_accepts_it() {
    let ca = Ca::new("mesh");
    let app = App::start().await;
    let catalog = Proxy::start("catalog", app.addr.port(), Some(ca.identity("catalog"))).await;
    for mode in [None, Some(InboundMode::Strict)] {
        catalog.set_inbound(mode);
        let mut s = TcpStream::connect(catalog.addrs.inbound)
            .await
            .expect("connect");
        // The write may fail if the close already arrived; either way nothing is answered.
        let _ = s
            .write_all(b"GET / HTTP/1.1\r\nhost: catalog\r\n\r\n")
            .await;
        let mut buf = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
            .await
            .expect("the proxy closes the connection")
            .unwrap_or(0);
        assert_eq!(n, 0, "{mode:?}: no answer to plaintext: {buf:?}");
    }
    assert_eq!(app.count(), 0, "0 requests reach the app");
    assert_eq!(
        catalog.metric(
            "trellis_inbound_plaintext_connections_total",
            &[("result", "refused")]
        ),
        2.0
    );

    catalog.set_inbound(Some(InboundMode::Permissive));
    let mut client = h1_client(catalog.addrs.inbound).await;
    let (status, _, body) = parts(
        client
            .send_request(get("catalog", "/"))
            .await
            .expect("resp"),
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (200, "version=HTTP/1.1 host=catalog orig=-")
    );
    assert_eq!(app.count(), 1);
    assert_eq!(
        catalog.metric(
            "trellis_inbound_plaintext_connections_total",
            &[("result", "accepted")]
        ),
        1.0
    );
}

#[tokio::test]
async fn mtls_endpoint_without_an_identity_answers_503_no_identity() {
    let ca = Ca::new("mesh");
    let app = App::start().await;
    let catalog = Proxy::start("catalog", app.addr.port(), Some(ca.identity("catalog"))).await;
    let web = Proxy::start("web", 1, None).await;
    web.route(
        "catalog",
        catalog.addrs.inbound,
        policy("catalog", &["catalog"]),
        true,
        None,
    );
    let mut client = h1_client(web.addrs.outbound).await;
    let (status, reason, body) = parts(
        client
            .send_request(get("catalog", "/"))
            .await
            .expect("resp"),
    )
    .await;
    assert_eq!((status, reason.as_str()), (503, "no_identity"), "{body}");
    assert!(body.contains("--join-token"), "{body}");
    assert_eq!(app.count(), 0);

    // A plaintext endpoint (no mtls flag) of the same cluster is still reachable in plaintext:
    // the endpoint, not the cluster, decides.
    catalog.set_inbound(Some(InboundMode::Permissive));
    web.route(
        "catalog",
        catalog.addrs.inbound,
        policy("catalog", &["catalog"]),
        false,
        None,
    );
    let (status, _, body) = parts(
        client
            .send_request(get("catalog", "/"))
            .await
            .expect("resp"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn unexpected_server_identity_or_untrusted_client_fail_the_handshake() {
    let ca = Ca::new("mesh");
    let (web, catalog, app) = pair(&ca, &ca).await;
    // The control plane says `payments` serves this destination; catalog's certificate says
    // otherwise.
    web.route(
        "catalog",
        catalog.addrs.inbound,
        policy("catalog", &["payments"]),
        true,
        None,
    );
    let mut client = h1_client(web.addrs.outbound).await;
    let (status, reason, body) = parts(
        client
            .send_request(get("catalog", "/"))
            .await
            .expect("resp"),
    )
    .await;
    assert_eq!(
        (status, reason.as_str()),
        (503, "upstream_tls_failure"),
        "{body}"
    );
    assert!(
        body.contains("is not one of those serving this destination"),
        "{body}"
    );
    assert_eq!(
        web.metric(
            "trellis_tls_handshake_errors_total",
            &[("direction", "outbound"), ("reason", "bad_identity")]
        ),
        1.0
    );

    // A client whose certificate comes from another CA (it trusts the mesh's root, so the
    // refusal is the server's).
    let stranger = Ca::new("stranger");
    let (cert, key) = stranger.leaf("web");
    let both = format!("{}{}", stranger.pem, ca.pem);
    let outsider_id = crate::identity::Identity::from_parts(&cert, &key, &both).expect("identity");
    let outsider = Proxy::start("web", 1, Some(outsider_id)).await;
    outsider.route(
        "catalog",
        catalog.addrs.inbound,
        policy("catalog", &["catalog"]),
        true,
        None,
    );
    let mut client = h1_client(outsider.addrs.outbound).await;
    let (status, reason, body) = parts(
        client
            .send_request(get("catalog", "/"))
            .await
            .expect("resp"),
    )
    .await;
    assert_eq!(
        (status, reason.as_str()),
        (503, "upstream_tls_failure"),
        "{body}"
    );
    assert_eq!(app.count(), 0, "no byte reached the app");
    assert_eq!(
        catalog.metric(
            "trellis_tls_handshake_errors_total",
            &[("direction", "inbound"), ("reason", "untrusted_ca")]
        ),
        1.0
    );
}

/// The serial of the certificate `server` presents to a new mTLS connection from `web`.
async fn served_serial(web: &Proxy, server: std::net::SocketAddr) -> String {
    let tls = web.shared.tls.get().expect("identity");
    let config = client_config(&tls.identity, ExpectedIds::new([id("catalog")])).expect("config");
    let stream = TcpStream::connect(server).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from("catalog").expect("name");
    let conn = tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
        .expect("handshake");
    let leaf = conn.get_ref().1.peer_certificates().expect("certs")[0].clone();
    let (_, x) = X509Certificate::from_der(&leaf).expect("x509");
    x.raw_serial_as_string()
}

#[tokio::test]
async fn rotation_keeps_pooled_connections_and_new_handshakes_show_the_new_certificate() {
    let ca = Ca::new("mesh");
    let (web, catalog, app) = pair(&ca, &ca).await;
    let mut client = h1_client(web.addrs.outbound).await;
    let send = |c: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>| {
        c.send_request(get("catalog", "/"))
    };
    for _ in 0..10 {
        assert_eq!(parts(send(&mut client).await.expect("resp")).await.0, 200);
    }
    let catalog_identity = &catalog.shared.tls.get().expect("tls").identity;
    let old = catalog_identity.credentials().serial.clone();
    for (p, svc) in [(&catalog, "catalog"), (&web, "web")] {
        let (cert, key) = ca.leaf(svc);
        p.shared
            .tls
            .get()
            .expect("tls")
            .identity
            .replace(&cert, &key, None)
            .expect("replace");
    }
    let new = catalog_identity.credentials().serial.clone();
    assert_ne!(old, new);
    for _ in 0..10 {
        assert_eq!(parts(send(&mut client).await.expect("resp")).await.0, 200);
    }
    assert_eq!(app.count(), 20);
    assert_eq!(
        web.metric("trellis_tls_handshakes_total", &[("direction", "outbound")]),
        1.0,
        "the pooled connection survived the rotation"
    );
    assert_eq!(served_serial(&web, catalog.addrs.inbound).await, new);
}

#[tokio::test]
async fn a_peer_that_answers_http11_in_alpn_gets_an_http1_pool_over_tls() {
    let ca = Ca::new("mesh");
    let peer = ca.identity("catalog");
    let mut config = (*server_config(&peer, ClientAuth::Required).expect("config")).clone();
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let served = Arc::new(AtomicUsize::new(0));
    let tls_conns = Arc::new(AtomicUsize::new(0));
    let (s, t) = (served.clone(), tls_conns.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, s, t) = (acceptor.clone(), s.clone(), t.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                t.fetch_add(1, Ordering::SeqCst);
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    s.fetch_add(1, Ordering::SeqCst);
                    let text = format!("version={:?}", req.version());
                    async move {
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            text,
                        ))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    let web = Proxy::start("web", 1, Some(ca.identity("web"))).await;
    web.route("catalog", addr, policy("catalog", &["catalog"]), true, None);
    let mut client = h1_client(web.addrs.outbound).await;
    for _ in 0..20 {
        let (status, _, body) = parts(
            client
                .send_request(get("catalog", "/"))
                .await
                .expect("resp"),
        )
        .await;
        assert_eq!((status, body.as_str()), (200, "version=HTTP/1.1"));
    }
    assert_eq!(served.load(Ordering::SeqCst), 20);
    // The ALPN probe connection, then one pooled HTTP/1.1 connection.
    assert!(tls_conns.load(Ordering::SeqCst) <= 2, "{tls_conns:?}");
}
