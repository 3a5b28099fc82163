//! The identity endpoints over real HTTP: join tokens, CSR signing with the token as Bearer,
//! the trust bundle and the roots API, on the router bound to 127.0.0.1:0.

use reqwest::StatusCode;
use serde_json::{Value, json};
use trellis_control::ca::verify;

mod common;

use common::{Api, serve};

impl Api {
    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let (s, b, _) = self
            .call(self.http.post(format!("{}{path}", self.base)).json(&body))
            .await;
        (s, b)
    }

    async fn sign(
        &self,
        token: Option<&str>,
        body: String,
    ) -> (StatusCode, Value, reqwest::header::HeaderMap) {
        let mut req = self
            .http
            .post(format!("{}/v1/certificates", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        self.call(req).await
    }
}

fn csr_pem() -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    rcgen::CertificateParams::default()
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem")
}

fn error_of(body: &Value) -> &str {
    body["error"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_token_buys_a_certificate_for_its_identity_only() {
    let api = serve().await;
    let (status, grant) = api
        .post(
            "/v1/tokens",
            json!({"service": "catalog", "namespace": "shop", "ttl_ms": 60000}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{grant}");
    assert_eq!(
        grant["spiffe_id"],
        "spiffe://cluster.local/ns/shop/svc/catalog"
    );
    let token = grant["token"].as_str().expect("token");

    let body = json!({ "csr": csr_pem() }).to_string();
    let (status, signed, _) = api.sign(Some(token), body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{signed}");
    assert_eq!(signed["spiffe_id"], grant["spiffe_id"]);
    let chain = signed["certificate_chain"].as_str().expect("chain");
    let der = rustls_pki_types::CertificateDer::from_pem_slice(chain.as_bytes()).expect("pem");
    assert_eq!(
        verify::spiffe_id_of(&der).as_deref(),
        Ok("spiffe://cluster.local/ns/shop/svc/catalog")
    );
    let (_, bundle) = api.get("/v1/trust-bundle").await;
    assert_eq!(bundle["trust_domain"], "cluster.local");
    assert_eq!(bundle["trust_bundle"], signed["trust_bundle"]);

    // Refusals: 401 before anything else is looked at, then 400 naming the problem.
    for (name, auth, body, status, needle) in [
        (
            "no token",
            None,
            body.clone(),
            StatusCode::UNAUTHORIZED,
            "Authorization header is missing",
        ),
        (
            "wrong token",
            Some("nope"),
            body.clone(),
            StatusCode::UNAUTHORIZED,
            "unknown",
        ),
        (
            "wrong token, bad body",
            Some("nope"),
            "{".to_string(),
            StatusCode::UNAUTHORIZED,
            "unknown",
        ),
        (
            "bad json",
            Some(token),
            "{".to_string(),
            StatusCode::BAD_REQUEST,
            "certificate request",
        ),
        (
            "unknown field",
            Some(token),
            json!({"csr": "x", "spiffe_id": "y"}).to_string(),
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
        (
            "garbage csr",
            Some(token),
            json!({"csr": "garbage"}).to_string(),
            StatusCode::BAD_REQUEST,
            "csr: ",
        ),
    ] {
        let (got, body, headers) = api.sign(auth, body).await;
        assert_eq!(got, status, "{name}: {body}");
        assert!(error_of(&body).contains(needle), "{name}: {body}");
        if status == StatusCode::UNAUTHORIZED {
            assert!(headers.contains_key("www-authenticate"), "{name}");
        }
    }
    let (status, body) = api.post("/v1/tokens", json!({"service": "Catalog"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).contains("service `Catalog`"), "{body}");
}

#[tokio::test]
async fn roots_api_adds_activates_and_deletes() {
    let api = serve().await;
    let (_, roots) = api.get("/v1/ca/roots").await;
    let first = roots[0]["fingerprint"].as_str().expect("fp").to_string();
    assert_eq!(roots[0]["active"], true);

    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "second root");
    let now = x509_parser::time::ASN1Time::now().timestamp();
    params.not_before = x509_parser::time::ASN1Time::from_timestamp(now - 60)
        .expect("t")
        .to_datetime();
    params.not_after = x509_parser::time::ASN1Time::from_timestamp(now + 86400)
        .expect("t")
        .to_datetime();
    let cert = params.self_signed(&key).expect("cert");
    let (status, added) = api
        .post(
            "/v1/ca/roots",
            json!({"cert_pem": cert.pem(), "key_pem": key.serialize_pem()}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{added}");
    assert_eq!(added["active"], false);
    let second = added["fingerprint"].as_str().expect("fp").to_string();
    let (status, _) = api
        .post(
            "/v1/ca/roots",
            json!({"cert_pem": cert.pem(), "key_pem": key.serialize_pem()}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    let del = |fp: &str| api.http.delete(format!("{}/v1/ca/roots/{fp}", api.base));
    let (status, body, _) = api.call(del(&first)).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "the signing root cannot go: {body}"
    );
    let (status, body) = api
        .post("/v1/ca/activate", json!({"fingerprint": second}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["active"], true);
    let (status, body, _) = api.call(del(&first)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, _) = api.call(del(&first)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, roots) = api.get("/v1/ca/roots").await;
    assert_eq!(roots.as_array().map(Vec::len), Some(1));
    assert_eq!(roots[0]["fingerprint"], second.as_str());
}

use rustls_pki_types::pem::PemObject as _;
