use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::ServerName;
use rustls_pki_types::pem::PemObject as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

use super::*;
use crate::ca::root::Root;
use crate::ca::{CaConfig, DEFAULT_CERT_TTL};
use crate::store::RedbStore;

async fn new_ca(dir: &Path) -> Ca {
    let store = Arc::new(RedbStore::open(dir).expect("store"));
    Ca::init(
        store,
        CaConfig {
            trust_domain: "test.local".to_string(),
            cert_ttl: DEFAULT_CERT_TTL,
            operator_root: None,
        },
    )
    .await
    .expect("ca")
}

fn client(bundle: &str) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
        roots.add(cert.expect("pem")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// Serves one echo exchange per accepted TLS connection.
async fn echo_server(tls: &ControlTls) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut rx = incoming(listener, tls.server_config(&[b"h2"]).expect("config"));
    tokio::spawn(async move {
        while let Some((mut stream, _)) = rx.recv().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4];
                if stream.read_exact(&mut buf).await.is_ok() {
                    let _ = stream.write_all(&buf).await;
                    let _ = stream.shutdown().await;
                }
            });
        }
    });
    addr
}

async fn exchange(
    connector: &TlsConnector,
    addr: SocketAddr,
    name: &str,
) -> Result<Vec<u8>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let (_, conn) = tls.get_ref();
    assert_eq!(
        conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
    tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
    Ok(out)
}

#[tokio::test]
async fn mesh_certificate_verifies_with_the_bundle_for_its_names_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = new_ca(dir.path()).await;
    let names = vec!["127.0.0.1".to_string(), "control.test".to_string()];
    let tls = ControlTls::start(&ServingTls::Mesh { names }, &ca)
        .expect("tls")
        .expect("on");
    let addr = echo_server(&tls).await;
    let good = client(&ca.trust_bundle());
    assert_eq!(
        exchange(&good, addr, "127.0.0.1").await.expect("ip"),
        b"ping"
    );
    assert_eq!(
        exchange(&good, addr, "control.test").await.expect("dns"),
        b"ping"
    );
    let wrong_name = exchange(&good, addr, "other.test").await.expect_err("name");
    assert!(wrong_name.contains("NotValidForName"), "{wrong_name}");

    // A client trusting another CA (whose root has the same subject) refuses the certificate.
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = new_ca(other_dir.path()).await;
    let stranger = client(&other.trust_bundle());
    let err = exchange(&stranger, addr, "127.0.0.1")
        .await
        .expect_err("untrusted");
    assert!(
        err.contains("UnknownIssuer") || err.contains("BadSignature"),
        "{err}"
    );
}

#[tokio::test]
async fn switching_the_signing_root_reissues_the_serving_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = new_ca(dir.path()).await;
    let names = vec!["127.0.0.1".to_string()];
    let tls = ControlTls::start(&ServingTls::Mesh { names }, &ca)
        .expect("tls")
        .expect("on");
    let addr = echo_server(&tls).await;

    let now_ms = unix_ms();
    let second = Root::generate("test.local", (now_ms / 1000) as i64, now_ms).expect("root");
    let stored = second.to_stored();
    ca.add_root(&stored.cert_pem, &stored.key_pem)
        .await
        .expect("add");
    let only_new = client(&stored.cert_pem);
    assert!(
        exchange(&only_new, addr, "127.0.0.1").await.is_err(),
        "signed by the first root until the switch"
    );
    ca.activate(&second.fingerprint).await.expect("activate");
    // The renewal task re-issues on the change: poll until the new chain is served.
    let mut served = Err(String::new());
    for _ in 0..500 {
        served = exchange(&only_new, addr, "127.0.0.1").await;
        if served.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(served.expect("new root"), b"ping");
    // The old root can go now: nothing served is signed by it.
    let first = ca
        .roots()
        .into_iter()
        .find(|r| !r.active)
        .expect("old root");
    ca.remove_root(&first.fingerprint).await.expect("remove");
    assert_eq!(
        exchange(&only_new, addr, "127.0.0.1").await.expect("after"),
        b"ping"
    );
}

#[tokio::test]
async fn operator_files_are_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let ca = new_ca(dir.path()).await;
    let files = |cert: &Path, key: &Path| ServingTls::Files {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
    };
    let missing = ControlTls::start(&files(&cert, &key), &ca)
        .err()
        .expect("missing files")
        .to_string();
    assert!(missing.starts_with("--tls-cert "), "{missing}");
    assert!(missing.contains("cannot read it"), "{missing}");

    std::fs::write(&cert, "not a certificate").expect("write");
    std::fs::write(&key, "not a key").expect("write");
    let garbage = ControlTls::start(&files(&cert, &key), &ca)
        .err()
        .expect("garbage")
        .to_string();
    assert!(
        garbage.contains("no `-----BEGIN CERTIFICATE-----` block"),
        "{garbage}"
    );

    // A certificate with another certificate's key.
    let a = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).expect("a");
    let b = rcgen::generate_simple_self_signed(vec!["b.test".to_string()]).expect("b");
    std::fs::write(&cert, a.cert.pem()).expect("write");
    std::fs::write(&key, b.signing_key.serialize_pem()).expect("write");
    let mismatch = ControlTls::start(&files(&cert, &key), &ca)
        .err()
        .expect("mismatch")
        .to_string();
    assert!(
        mismatch.contains("does not belong to the certificate"),
        "{mismatch}"
    );

    std::fs::write(&key, a.signing_key.serialize_pem()).expect("write");
    let tls = ControlTls::start(&files(&cert, &key), &ca)
        .expect("good files")
        .expect("on");
    let addr = echo_server(&tls).await;
    let ok = exchange(&client(&a.cert.pem()), addr, "a.test")
        .await
        .expect("served");
    assert_eq!(ok, b"ping");
}
