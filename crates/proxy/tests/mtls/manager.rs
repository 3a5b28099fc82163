//! The identity manager against a real CA: the control plane run in-process (tokens, CSR
//! signing, trust-bundle and root rotation), and a small hyper CA issuing short-lived
//! certificates to exercise the rotation task (renewal, retries, bundle refresh).

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use trellis_control::{BoundAddrs, ControlConfig};
use trellis_proxy::identity::{
    CaClient, ClientAuth, ExpectedIds, Identity, IdentityError, RotationOptions, client_config,
    peer_spiffe_id, server_config,
};

use super::pki::{Server, WAIT, connect, id, ping};

struct Control {
    base: String,
    http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn control_plane() -> Control {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = ControlConfig {
        data_dir: dir.path().join("data"),
        http_addr: "127.0.0.1:0".parse().expect("addr"),
        grpc_addr: "127.0.0.1:0".parse().expect("addr"),
        restart_grace: Duration::from_secs(10),
        remove_after: Duration::from_secs(60),
        push_debounce: Duration::from_millis(100),
        max_eviction_fraction: 0.5,
        ca: trellis_control::ca::CaConfig::default(),
        tls: trellis_control::tls::ServingTls::Off,
    };
    let (ready_tx, ready_rx) = oneshot::channel::<BoundAddrs>();
    let (stop, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(trellis_control::run(
        config,
        move |b| {
            let _ = ready_tx.send(b);
        },
        async move {
            let _ = stop_rx.await;
        },
    ));
    let bound = tokio::time::timeout(WAIT, ready_rx)
        .await
        .expect("control plane starts")
        .expect("ready");
    Control {
        base: format!("http://{}", bound.http),
        http: reqwest::Client::new(),
        stop: Some(stop),
        task,
        _dir: dir,
    }
}

impl Control {
    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = resp.status();
        (status, resp.json().await.expect("json answer"))
    }

    async fn token(&self, service: &str) -> String {
        let (status, body) = self.post("/v1/tokens", json!({ "service": service })).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["token"].as_str().expect("token").to_string()
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(WAIT, &mut self.task).await;
    }
}

fn root_with_key(name: &str) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("operator root {name}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    let cert = params.self_signed(&key).expect("self-signed");
    (cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn identities_from_the_real_control_plane_talk_mtls_and_rotate() {
    let control = control_plane().await;
    let catalog_ca = CaClient::new(&control.base, &control.token("catalog").await).expect("ca");
    let web_ca = CaClient::new(&control.base, &control.token("web").await).expect("ca");
    let catalog = Identity::request(&catalog_ca)
        .await
        .expect("catalog identity");
    let web = Identity::request(&web_ca).await.expect("web identity");
    assert_eq!(catalog.spiffe_id(), id("catalog"));
    assert_eq!(web.spiffe_id(), id("web"));
    assert_eq!(catalog.trust_bundle().roots().len(), 1);

    let mut server =
        Server::start(server_config(&catalog, ClientAuth::Required).expect("config")).await;
    let to_catalog = client_config(&web, ExpectedIds::new([id("catalog")])).expect("config");
    let mut tls = connect(to_catalog.clone(), server.addr)
        .await
        .expect("handshake");
    assert_eq!(peer_spiffe_id(tls.get_ref().1), Some(id("catalog")));
    assert_eq!(
        server.next_outcome().await.expect("accepted").peer,
        Some(id("web"))
    );
    assert_eq!(ping(&mut tls, b"hi").await.expect("echo"), b"hi");

    // Renewal: a new key and certificate, same identity, watchers told.
    let mut changes = catalog.watch();
    let before = catalog.credentials();
    catalog.renew(&catalog_ca).await.expect("renew");
    let after = catalog.credentials();
    assert_ne!(after.serial, before.serial);
    assert_ne!(
        after.certified.key.public_key(),
        before.certified.key.public_key(),
        "renewal uses a new key"
    );
    assert_eq!(changes.borrow_and_update().cert, 1);

    // Root rotation: add a root, everyone picks up the bundle, activate it, renew.
    let (root_pem, key_pem) = root_with_key("second");
    let (status, added) = control
        .post(
            "/v1/ca/roots",
            json!({ "cert_pem": root_pem, "key_pem": key_pem }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{added}");
    assert!(
        catalog
            .refresh_trust_bundle(&catalog_ca)
            .await
            .expect("bundle")
    );
    assert!(web.refresh_trust_bundle(&web_ca).await.expect("bundle"));
    assert!(!web.refresh_trust_bundle(&web_ca).await.expect("bundle"));
    assert_eq!(web.trust_bundle().roots().len(), 2);
    let (status, body) = control
        .post(
            "/v1/ca/activate",
            json!({ "fingerprint": added["fingerprint"] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    catalog
        .renew(&catalog_ca)
        .await
        .expect("renew on the new root");
    let mut tls = connect(to_catalog, server.addr).await.expect("handshake");
    server.next_outcome().await.expect("accepted");
    let issuer_cn = {
        use x509_parser::prelude::{FromDer as _, X509Certificate};
        let der = tls.get_ref().1.peer_certificates().expect("certs")[0].clone();
        let (_, cert) = X509Certificate::from_der(der.as_ref()).expect("parse");
        cert.issuer().to_string()
    };
    assert!(issuer_cn.contains("operator root second"), "{issuer_cn}");
    assert_eq!(ping(&mut tls, b"again").await.expect("echo"), b"again");

    // A token the control plane does not know is refused, and says so.
    let bogus = CaClient::new(&control.base, "bogus-token").expect("client");
    match Identity::request(&bogus).await {
        Err(IdentityError::Unauthorized { .. }) => {}
        other => panic!("expected a refused token, got {other:?}"),
    }
    control.stop().await;
}

/// A CA that signs any CSR for one identity with a short lifetime, can fail on demand, and
/// serves a trust bundle that the test may change.
struct MiniCa {
    issuer: Issuer<'static, KeyPair>,
    bundle: Mutex<String>,
    lifetime: Duration,
    sign_requests: AtomicUsize,
    fail_next: AtomicUsize,
}

impl MiniCa {
    fn sign(&self, body: &[u8]) -> Result<Value, String> {
        let v: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        let pem = v["csr"].as_str().ok_or("no csr")?;
        let mut csr =
            rcgen::CertificateSigningRequestParams::from_pem(pem).map_err(|e| e.to_string())?;
        let now = SystemTime::now();
        csr.params.subject_alt_names = vec![SanType::URI(
            id("catalog").as_str().try_into().map_err(|_| "ia5")?,
        )];
        csr.params.not_before = now.into();
        csr.params.not_after = (now + self.lifetime).into();
        let cert = csr.signed_by(&self.issuer).map_err(|e| e.to_string())?;
        let not_after_ms = (now + self.lifetime)
            .duration_since(UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_millis();
        Ok(json!({
            "certificate_chain": cert.pem(),
            "trust_bundle": self.bundle(),
            "spiffe_id": id("catalog"),
            "not_after_ms": not_after_ms,
        }))
    }

    fn bundle(&self) -> String {
        self.bundle.lock().expect("lock").clone()
    }
}

async fn handle(
    ca: Arc<MiniCa>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, body: Value| {
        let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
        *resp.status_mut() = status;
        Ok(resp)
    };
    match (req.method().clone(), req.uri().path()) {
        (Method::POST, "/v1/certificates") => {
            ca.sign_requests.fetch_add(1, Ordering::SeqCst);
            let failing = ca
                .fail_next
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if failing {
                return reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"error": "try later"}),
                );
            }
            let Ok(body) = req.into_body().collect().await else {
                return reply(StatusCode::BAD_REQUEST, json!({"error": "body"}));
            };
            match ca.sign(&body.to_bytes()) {
                Ok(v) => reply(StatusCode::OK, v),
                Err(e) => reply(StatusCode::BAD_REQUEST, json!({ "error": e })),
            }
        }
        (Method::GET, "/v1/trust-bundle") => reply(
            StatusCode::OK,
            json!({"trust_bundle": ca.bundle(), "trust_domain": super::pki::TD}),
        ),
        _ => reply(StatusCode::NOT_FOUND, json!({"error": "not found"})),
    }
}

async fn serve_mini_ca(ca: Arc<MiniCa>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let ca = ca.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| handle(ca.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn rotation_task_renews_retries_and_refreshes_the_bundle() {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    let root = params.self_signed(&key).expect("root");
    let ca = Arc::new(MiniCa {
        issuer: Issuer::new(params, key),
        bundle: Mutex::new(root.pem()),
        lifetime: Duration::from_secs(3),
        sign_requests: AtomicUsize::new(0),
        fail_next: AtomicUsize::new(0),
    });
    let base = serve_mini_ca(ca.clone()).await;
    let client = CaClient::new(&base, "any").expect("client");
    let identity = Identity::request(&client).await.expect("identity");
    let first = identity.credentials();
    assert_eq!(identity.spiffe_id(), id("catalog"));

    // The next two renewals fail; the task must retry and keep the current certificate.
    ca.fail_next.store(2, Ordering::SeqCst);
    let options = RotationOptions {
        retry_base: Duration::from_millis(50),
        retry_max: Duration::from_millis(200),
        bundle_refresh: Duration::from_millis(100),
        ..RotationOptions::default()
    };
    let mut changes = identity.watch();
    let task = identity.spawn_rotation(client, options);

    // A second root shows up in the bundle and is picked up by the periodic refresh.
    let second = super::pki::TestCa::new("second");
    let both = format!("{}{}", root.pem(), second.pem);
    *ca.bundle.lock().expect("lock") = both;
    tokio::time::timeout(Duration::from_secs(30), changes.wait_for(|v| v.bundle >= 1))
        .await
        .expect("bundle refreshed in time")
        .expect("watch open");
    assert_eq!(identity.trust_bundle().roots().len(), 2);

    tokio::time::timeout(Duration::from_secs(30), changes.wait_for(|v| v.cert >= 1))
        .await
        .expect("renewed in time")
        .expect("watch open");
    let renewed = identity.credentials();
    assert_ne!(renewed.serial, first.serial);
    assert!(renewed.not_after >= first.not_after);
    assert!(
        ca.sign_requests.load(Ordering::SeqCst) >= 4,
        "one issue, two refused renewals, one good renewal"
    );
    assert_eq!(ca.fail_next.load(Ordering::SeqCst), 0);

    // And it keeps going: the next renewal follows the new certificate's lifetime.
    tokio::time::timeout(Duration::from_secs(30), changes.wait_for(|v| v.cert >= 2))
        .await
        .expect("renewed again")
        .expect("watch open");
    task.abort();
}
