//! Remote JWKS against a real HTTP server on 127.0.0.1:0: fetched once and cached, refetched
//! on an unknown `kid` (rate-limited), and failing closed when the server is gone or answers
//! garbage.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use trellis_model::JwtRule;

use super::super::testkeys::{self, AUDIENCE, ISSUER, claims, sign};
use super::super::{AuthnError, JwksOptions, JwtVerifier};
use super::KeySet;

/// A JWKS endpoint whose answer the test controls, counting requests.
struct JwksServer {
    uri: String,
    hits: Arc<AtomicUsize>,
    answer: Arc<Mutex<(StatusCode, String)>>,
    task: JoinHandle<()>,
}

impl JwksServer {
    async fn start(body: String) -> JwksServer {
        Self::start_with(body, None).await
    }

    /// Over TLS when `tls` is given (the URI is then `https://localhost:PORT/...`).
    async fn start_with(body: String, tls: Option<Arc<rustls::ServerConfig>>) -> JwksServer {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let answer = Arc::new(Mutex::new((StatusCode::OK, body)));
        let (h, a) = (hits.clone(), answer.clone());
        let task = tokio::spawn(async move {
            // Connections live in this set, so aborting the task closes them all.
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (h, a, acceptor) = (h.clone(), a.clone(), acceptor.clone());
                let service = service_fn(move |_req: Request<Incoming>| {
                    h.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = a.lock().map(|g| g.clone()).unwrap_or_default();
                    async move {
                        let mut response = Response::new(Full::new(Bytes::from(body)));
                        *response.status_mut() = status;
                        Ok::<_, Infallible>(response)
                    }
                });
                connections.spawn(async move {
                    let http = hyper::server::conn::http1::Builder::new();
                    let _ = match acceptor {
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(tls) => http.serve_connection(TokioIo::new(tls), service).await,
                            Err(_) => return,
                        },
                        None => http.serve_connection(TokioIo::new(stream), service).await,
                    };
                });
            }
        });
        JwksServer {
            uri: format!("{scheme}://localhost:{}/.well-known/jwks.json", addr.port()),
            hits,
            answer,
            task,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn answer(&self, status: StatusCode, body: String) {
        if let Ok(mut g) = self.answer.lock() {
            *g = (status, body);
        }
    }

    /// Stops accepting and closes every connection.
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

fn verifier(uri: &str, options: JwksOptions) -> JwtVerifier {
    let client = reqwest::Client::builder().pool_max_idle_per_host(0);
    verifier_with(uri, options, client)
}

fn verifier_with(uri: &str, options: JwksOptions, client: reqwest::ClientBuilder) -> JwtVerifier {
    let rule = JwtRule {
        issuer: ISSUER.into(),
        audiences: vec![AUDIENCE.into()],
        jwks_uri: Some(uri.to_string()),
        ..JwtRule::default()
    };
    // No idle connections kept, so a stopped server is seen at once.
    let client = client.build().expect("client");
    JwtVerifier::new(&rule, &client, &options).expect("verifier")
}

fn eager() -> JwksOptions {
    JwksOptions {
        min_refetch_interval: Duration::ZERO,
        ..JwksOptions::default()
    }
}

#[tokio::test]
async fn fetched_once_then_served_from_the_cache() {
    let key = testkeys::ed("d1");
    let server = JwksServer::start(testkeys::jwks(&[&key])).await;
    let v = verifier(&server.uri, JwksOptions::default());
    assert_eq!(
        server.hits(),
        0,
        "nothing is fetched before the first token"
    );
    for _ in 0..3 {
        assert!(v.verify(&sign(&key, &claims())).await.is_ok());
    }
    assert_eq!(server.hits(), 1);
    server.stop().await;
}

/// An identity provider's JWKS over https: fetched when the server's certificate verifies,
/// and failing closed when it does not.
#[tokio::test]
async fn https_jwks_is_fetched_only_from_a_verified_server() {
    let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let key_der = rustls_pki_types::PrivateKeyDer::Pkcs8(
        rustls_pki_types::PrivatePkcs8KeyDer::from(issued.signing_key.serialize_der()),
    );
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![issued.cert.der().clone()], key_der)
        .expect("server config");
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let key = testkeys::ed("tls1");
    let server = JwksServer::start_with(testkeys::jwks(&[&key]), Some(Arc::new(tls))).await;
    assert!(server.uri.starts_with("https://"), "{}", server.uri);

    let root = reqwest::Certificate::from_der(issued.cert.der()).expect("root");
    let trusting = verifier_with(
        &server.uri,
        eager(),
        reqwest::Client::builder().tls_certs_only([root]),
    );
    assert!(trusting.verify(&sign(&key, &claims())).await.is_ok());
    assert_eq!(server.hits(), 1);

    // The system's roots do not know this server: no keys, so the token is refused.
    let stranger = verifier(&server.uri, eager());
    assert!(stranger.verify(&sign(&key, &claims())).await.is_err());
    assert_eq!(server.hits(), 1, "no request got past the TLS handshake");
    server.stop().await;
}

#[tokio::test]
async fn an_unknown_kid_refetches_and_finds_a_rotated_key() {
    let old = testkeys::ed("old");
    let new = testkeys::ec("new");
    let server = JwksServer::start(testkeys::jwks(&[&old])).await;
    let v = verifier(&server.uri, eager());
    assert!(v.verify(&sign(&old, &claims())).await.is_ok());
    server.answer(StatusCode::OK, testkeys::jwks(&[&old, &new]));
    assert!(v.verify(&sign(&new, &claims())).await.is_ok());
    assert_eq!(server.hits(), 2);
    // A kid the issuer does not publish is refused after one more fetch.
    let forged = testkeys::ed("forged");
    assert_eq!(
        v.verify(&sign(&forged, &claims())).await,
        Err(AuthnError::Invalid("unknown signing key (kid)"))
    );
    assert_eq!(server.hits(), 3);
    server.stop().await;
}

#[tokio::test]
async fn unknown_kids_refetch_at_most_once_per_interval() {
    let key = testkeys::ed("d1");
    let server = JwksServer::start(testkeys::jwks(&[&key])).await;
    let v = verifier(&server.uri, JwksOptions::default());
    assert!(v.verify(&sign(&key, &claims())).await.is_ok());
    for i in 0..5 {
        let forged = testkeys::ed(&format!("forged-{i}"));
        assert_eq!(
            v.verify(&sign(&forged, &claims())).await,
            Err(AuthnError::Invalid("unknown signing key (kid)"))
        );
    }
    assert_eq!(
        server.hits(),
        1,
        "forged kids must not make the sidecar hammer the issuer"
    );
    server.stop().await;
}

#[tokio::test]
async fn fails_closed_when_the_server_is_gone() {
    let key = testkeys::ed("d1");
    let server = JwksServer::start(testkeys::jwks(&[&key])).await;
    let uri = server.uri.clone();
    let warm = verifier(&uri, eager());
    assert!(warm.verify(&sign(&key, &claims())).await.is_ok());
    server.stop().await;

    // Never fetched: nothing to verify with.
    let cold = verifier(&uri, eager());
    assert_eq!(
        cold.verify(&sign(&key, &claims())).await,
        Err(AuthnError::JwksUnavailable)
    );
    // A new kid cannot be looked up.
    let rotated = testkeys::ed("d2");
    assert_eq!(
        warm.verify(&sign(&rotated, &claims())).await,
        Err(AuthnError::JwksUnavailable)
    );
    // Known keys stay usable while fresh, then until max_stale, then not at all.
    assert!(warm.verify(&sign(&key, &claims())).await.is_ok());
    let server = JwksServer::start(testkeys::jwks(&[&key])).await;
    let always_stale = JwksOptions {
        refresh_interval: Duration::ZERO,
        min_refetch_interval: Duration::ZERO,
        max_stale: Duration::from_secs(3600),
        ..JwksOptions::default()
    };
    let stale_ok = verifier(&server.uri, always_stale.clone());
    let expired = verifier(
        &server.uri,
        JwksOptions {
            max_stale: Duration::ZERO,
            ..always_stale
        },
    );
    assert!(stale_ok.verify(&sign(&key, &claims())).await.is_ok());
    assert!(expired.verify(&sign(&key, &claims())).await.is_ok());
    server.stop().await;
    assert!(stale_ok.verify(&sign(&key, &claims())).await.is_ok());
    assert_eq!(
        expired.verify(&sign(&key, &claims())).await,
        Err(AuthnError::JwksUnavailable)
    );
}

#[tokio::test]
async fn bad_answers_fail_closed() {
    let key = testkeys::ed("d1");
    let token = sign(&key, &claims());
    let server = JwksServer::start(String::new()).await;
    let answers = [
        (StatusCode::INTERNAL_SERVER_ERROR, testkeys::jwks(&[&key])),
        (StatusCode::OK, "not json".to_string()),
        (
            StatusCode::OK,
            r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#.to_string(),
        ),
        (
            StatusCode::OK,
            format!("{{\"keys\":[],\"pad\":\"{}\"}}", "x".repeat(300_000)),
        ),
    ];
    for (status, body) in answers {
        server.answer(status, body);
        let v = verifier(&server.uri, eager());
        assert_eq!(
            v.verify(&token).await,
            Err(AuthnError::JwksUnavailable),
            "{status}"
        );
    }
    server.stop().await;
}

#[test]
fn key_sets_keep_only_public_signature_keys() {
    let ed = testkeys::ed("d1");
    let mut enc = testkeys::ec("enc").jwk;
    enc["use"] = serde_json::json!("enc");
    let mut private = testkeys::ed("p").jwk;
    private["d"] = serde_json::json!("AAAA");
    let doc = serde_json::json!({ "keys": [
        ed.jwk,
        enc,
        private,
        { "kty": "oct", "k": "c2VjcmV0", "kid": "s" },
        { "kty": "EC", "crv": "P-521", "x": "AA", "y": "AA", "kid": "p521" },
        { "kty": "RSA", "kid": "broken" },
    ]});
    let set = KeySet::parse(&doc.to_string()).expect("one usable key");
    assert_eq!(set.len(), 1);
    assert!(set.knows_kid("d1") && !set.knows_kid("s") && !set.knows_kid("enc"));
    assert!(KeySet::parse(r#"{"keys":[]}"#).is_err());
    assert!(KeySet::parse(r#"{"nokeys":1}"#).is_err());
}
