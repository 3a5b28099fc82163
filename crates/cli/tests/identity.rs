//! End-to-end: workload identity. The real `trellis control` issues a join token through the
//! real `trellis token create`, signs a CSR made here for the token's SPIFFE ID only, refuses
//! a wrong token with 401, and keeps the same root (and the token) across a SIGKILL and
//! restart on the same data dir. A bad `--ca-cert` stops the control plane with exit code 2.

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use serde_json::{Value, json};
use trellis_control::ca::verify::spiffe_id_of;
use trellis_testkit::{ControlPlane, TestLog};
use x509_parser::prelude::{FromDer as _, X509Certificate};

const BIN: &str = env!("CARGO_BIN_EXE_trellis");

/// Runs `trellis token create ...`; returns stdout, failing with stderr on a non-zero exit.
async fn token_create(control: &ControlPlane, extra: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(BIN)
        .args(["token", "create", "--control", &control.url()])
        .args(extra)
        .output()
        .await
        .context("cannot run trellis token create")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "trellis token create {extra:?} failed: {stderr}"
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// POSTs a CSR with `token` as Bearer: `(status, body)`.
async fn sign(control: &ControlPlane, token: &str, csr: &str) -> anyhow::Result<(u16, Value)> {
    let resp = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?
        .post(format!("{}/v1/certificates", control.url()))
        .bearer_auth(token)
        .json(&json!({ "csr": csr }))
        .send()
        .await
        .context("POST /v1/certificates")?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    let body = serde_json::from_str(&text).with_context(|| format!("not JSON: {text}"))?;
    Ok((status, body))
}

/// A fresh P-256 key's CSR that asks for someone else's identity (which must be ignored).
fn csr_asking_for_admin() -> anyhow::Result<(rcgen::KeyPair, String)> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://cluster.local/ns/default/svc/admin".try_into()?,
    )];
    let csr = params.serialize_request(&key)?.pem()?;
    Ok((key, csr))
}

fn str_field<'a>(v: &'a Value, field: &str) -> anyhow::Result<&'a str> {
    v.get(field)
        .and_then(Value::as_str)
        .with_context(|| format!("no string `{field}` in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_csr_certificate_and_a_stable_root_across_restart() -> anyhow::Result<()> {
    let log = TestLog::new("identity")?;
    let mut control = ControlPlane::start(BIN, &log, &log.dir().join("data")).await?;

    log.note("trellis token create, text and JSON");
    let text_token = token_create(&control, &["--service", "catalog", "--ttl", "1h"]).await?;
    let text_token = text_token.trim();
    ensure!(
        text_token.len() == 4 + 43
            && text_token.starts_with("tjt_")
            && !text_token.contains(char::is_whitespace),
        "text output should be the token alone, got {text_token:?}"
    );
    let grant: Value = serde_json::from_str(
        &token_create(
            &control,
            &["--service", "catalog", "--namespace", "shop", "-o", "json"],
        )
        .await?,
    )?;
    let token = str_field(&grant, "token")?.to_string();
    let spiffe_id = str_field(&grant, "spiffe_id")?.to_string();
    ensure!(
        spiffe_id == "spiffe://cluster.local/ns/shop/svc/catalog",
        "{grant}"
    );

    log.note("sign a CSR that asks for another identity");
    let (key, csr) = csr_asking_for_admin()?;
    let (status, signed) = sign(&control, &token, &csr).await?;
    ensure!(status == 200, "signing failed: {status} {signed}");
    let leaf = CertificateDer::from_pem_slice(str_field(&signed, "certificate_chain")?.as_bytes())?;
    ensure!(
        spiffe_id_of(&leaf).as_deref() == Ok(spiffe_id.as_str()),
        "the certificate must carry only the token's identity: {:?}",
        spiffe_id_of(&leaf)
    );
    let bundle = str_field(&signed, "trust_bundle")?.to_string();
    let root = CertificateDer::from_pem_slice(bundle.as_bytes())?;
    let (_, leaf_x509) = X509Certificate::from_der(&leaf).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (_, root_x509) = X509Certificate::from_der(&root).map_err(|e| anyhow::anyhow!("{e}"))?;
    leaf_x509
        .verify_signature(Some(root_x509.public_key()))
        .map_err(|e| anyhow::anyhow!("the leaf is not signed by the trust bundle's root: {e}"))?;
    ensure!(
        leaf_x509.public_key().subject_public_key.data.as_ref() == key.public_key_raw(),
        "the certificate is not for the CSR's key"
    );

    log.note("a wrong token is refused");
    let (status, body) = sign(&control, "not-a-token", &csr).await?;
    ensure!(
        status == 401,
        "wrong token: expected 401, got {status} {body}"
    );
    ensure!(body.get("error").is_some(), "401 without an error: {body}");

    log.note("SIGKILL and restart on the same data dir");
    let before = control.get_json("/v1/trust-bundle").await?;
    ensure!(str_field(&before, "trust_bundle")? == bundle, "{before}");
    control.sigkill().await?;
    control.restart().await?;
    let after = control.get_json("/v1/trust-bundle").await?;
    ensure!(
        before == after,
        "the trust bundle changed across a restart:\nbefore {before}\nafter {after}"
    );
    let (status, again) = sign(&control, &token, &csr).await?;
    ensure!(
        status == 200,
        "the token should survive a restart: {status} {again}"
    );
    let (status, _) = sign(&control, text_token, &csr).await?;
    ensure!(status == 200, "the text-mode token works too");
    log.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_ca_files_stop_the_control_plane_with_exit_code_2() -> anyhow::Result<()> {
    let log = TestLog::new("identity-bad-ca")?;
    let cert = log.dir().join("missing-ca.pem");
    let key_file = log.dir().join("ca.key");
    std::fs::write(&key_file, "not a key")?;
    let out = tokio::time::timeout(
        trellis_testkit::DEADLINE,
        tokio::process::Command::new(BIN)
            .arg("control")
            .arg("--data-dir")
            .arg(log.dir().join("data"))
            .args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
            .arg("--ca-cert")
            .arg(&cert)
            .arg("--ca-key")
            .arg(&key_file)
            .output(),
    )
    .await
    .context("trellis control with a missing --ca-cert did not exit")??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() != Some(2) {
        bail!(
            "expected exit code 2, got {:?}; stderr: {stderr}",
            out.status
        );
    }
    ensure!(
        stderr.contains("--ca-cert") && stderr.contains("missing-ca.pem"),
        "the error should name the flag and the file: {stderr}"
    );
    log.passed();
    Ok(())
}
