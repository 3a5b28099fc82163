//! Test PKI (rcgen CAs and leaves of every kind) and a real TLS echo server / client over
//! 127.0.0.1 TCP, counting the bytes that reach the server's app.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector, client};
use trellis_proxy::identity::{self, Identity};

/// Deadline of any single wait in these tests.
pub const WAIT: Duration = Duration::from_secs(10);

pub const TD: &str = "cluster.local";

pub fn id(svc: &str) -> String {
    format!("spiffe://{TD}/ns/default/svc/{svc}")
}

pub struct TestCa {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    Current,
    Expired,
    NotYetValid,
}

/// What to put in a leaf.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub uris: Vec<String>,
    pub is_ca: bool,
    pub validity: Validity,
}

impl Leaf {
    pub fn of(spiffe_id: &str) -> Self {
        Leaf {
            uris: vec![spiffe_id.to_string()],
            is_ca: false,
            validity: Validity::Current,
        }
    }
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("test root {name}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        let cert = params.self_signed(&key).expect("self-signed");
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// (cert PEM, PKCS#8 key PEM).
    pub fn leaf(&self, leaf: &Leaf) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = leaf
            .uris
            .iter()
            .map(|u| SanType::URI(u.as_str().try_into().expect("ia5")))
            .collect();
        if leaf.is_ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        let (from, to) = match leaf.validity {
            Validity::Current => (now - Duration::from_secs(60), now + day),
            Validity::Expired => (now - 2 * day, now - day),
            Validity::NotYetValid => (now + day, now + 2 * day),
        };
        params.not_before = from.into();
        params.not_after = to.into();
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }

    /// A good identity for `svc`, trusting `bundle_pem`.
    pub fn identity(&self, svc: &str, bundle_pem: &str) -> Identity {
        let (cert, key) = self.leaf(&Leaf::of(&id(svc)));
        Identity::from_parts(&cert, &key, bundle_pem).expect("identity")
    }
}

pub fn der_of(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("cert pem")
}

/// What the server saw of one connection.
pub type Outcome = Result<Accepted, String>;

#[derive(Debug)]
pub struct Accepted {
    pub peer: Option<String>,
    pub alpn: Option<Vec<u8>>,
}

/// A TLS echo server: each accepted handshake is reported, then the app echoes bytes back.
pub struct Server {
    pub addr: SocketAddr,
    pub app_bytes: Arc<AtomicUsize>,
    outcomes: mpsc::UnboundedReceiver<Outcome>,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    pub async fn start(config: Arc<ServerConfig>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = TlsAcceptor::from(config);
        let app_bytes = Arc::new(AtomicUsize::new(0));
        let (tx, outcomes) = mpsc::unbounded_channel();
        let counter = app_bytes.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, tx, counter) = (acceptor.clone(), tx.clone(), counter.clone());
                tokio::spawn(async move {
                    let mut tls = match acceptor.accept(tcp).await {
                        Ok(tls) => tls,
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let conn = tls.get_ref().1;
                    let _ = tx.send(Ok(Accepted {
                        peer: identity::peer_spiffe_id(conn),
                        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                    }));
                    let mut buf = [0u8; 1024];
                    loop {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                counter.fetch_add(n, Ordering::SeqCst);
                                if tls.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        Server {
            addr,
            app_bytes,
            outcomes,
            task,
        }
    }

    pub async fn next_outcome(&mut self) -> Outcome {
        tokio::time::timeout(WAIT, self.outcomes.recv())
            .await
            .expect("the server reports each handshake")
            .expect("server running")
    }

    pub fn app_bytes(&self) -> usize {
        self.app_bytes.load(Ordering::SeqCst)
    }
}

pub async fn connect(
    config: Arc<ClientConfig>,
    addr: SocketAddr,
) -> Result<client::TlsStream<TcpStream>, String> {
    let tcp = TcpStream::connect(addr).await.expect("tcp connect");
    let name = ServerName::try_from("catalog.default.svc").expect("name");
    tokio::time::timeout(WAIT, TlsConnector::from(config).connect(name, tcp))
        .await
        .expect("handshake ends")
        .map_err(|e| e.to_string())
}

/// Sends `msg` and reads the echo.
pub async fn ping(tls: &mut client::TlsStream<TcpStream>, msg: &[u8]) -> Result<Vec<u8>, String> {
    tls.write_all(msg).await.map_err(|e| e.to_string())?;
    tls.flush().await.map_err(|e| e.to_string())?;
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(WAIT, tls.read_exact(&mut back))
        .await
        .map_err(|_| "no echo".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(back)
}

/// A refused connection: what the client saw (handshake or first exchange) and the server's
/// handshake error. Asserts that nothing reached the server's app.
pub struct Refused {
    pub client: String,
    pub server: String,
}

pub async fn refused(server: &mut Server, client: Arc<ClientConfig>, case: &str) -> Refused {
    let before = server.app_bytes();
    let client_err = match connect(client, server.addr).await {
        // TLS 1.3: the client finishes before the server has checked its certificate; the
        // refusal shows on the first exchange.
        Ok(mut tls) => match ping(&mut tls, b"secret").await {
            Ok(_) => panic!("{case}: the app answered"),
            Err(e) => e,
        },
        Err(e) => e,
    };
    let server_err = match server.next_outcome().await {
        Ok(a) => panic!("{case}: the server accepted the handshake: {a:?}"),
        Err(e) => e,
    };
    assert_eq!(server.app_bytes(), before, "{case}: bytes reached the app");
    Refused {
        client: client_err,
        server: server_err,
    }
}

/// A client that trusts any server and presents `cert` (or nothing): a peer that does not
/// follow the mesh's rules, to test our server's checks.
pub fn raw_client(cert: Option<(String, String)>) -> Arc<ClientConfig> {
    let provider = identity::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let config = match cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(vec![der_of(&cert)], key_of(&key))
            .expect("client cert"),
    };
    Arc::new(config)
}

/// A server that asks for no client certificate and presents `cert`, to test our client's
/// checks.
pub fn raw_server(cert: &str, key: &str) -> Arc<ServerConfig> {
    let config = ServerConfig::builder_with_provider(identity::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_no_client_auth()
        .with_single_cert(vec![der_of(cert)], key_of(key))
        .expect("server cert");
    Arc::new(config)
}

fn key_of(pem: &str) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).expect("key pem")
}

#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
