//! TLS for the control plane's own listeners (the admin API and xDS).
//!
//! Two sources of the serving certificate:
//! - [`ServingTls::Mesh`]: the mesh CA issues it (a key made here, never stored), with the
//!   SPIFFE ID `spiffe://<trust-domain>/ns/trellis-system/svc/control` and the DNS names and
//!   addresses clients connect to. It is re-issued at 2/3 of its life and as soon as the
//!   signing root changes, so a root rotation never leaves the control plane with a
//!   certificate from a removed root. Clients verify it with the trust bundle, which the
//!   control plane keeps in `<data-dir>/trust-bundle.pem`.
//! - [`ServingTls::Files`]: the operator's certificate chain and PKCS#8 key (PEM), read once
//!   at start.
//!
//! Both listeners speak TLS 1.3 only. The admin API offers ALPN `h2` and `http/1.1`; xDS
//! offers `h2` (gRPC). A handshake runs in its own task, so a slow client never holds up
//! the accept loop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::ca::{Ca, unix_ms};

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Completed handshakes waiting for the server to take them.
const ACCEPT_BACKLOG: usize = 128;
/// The file, under the data directory, that holds the mesh trust bundle for clients.
pub const TRUST_BUNDLE_FILE: &str = "trust-bundle.pem";

/// Where the control plane's serving certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServingTls {
    /// Plaintext listeners.
    Off,
    /// Issued by the mesh CA for these DNS names / IP addresses.
    Mesh { names: Vec<String> },
    /// The operator's PEM certificate chain and PKCS#8 private key.
    Files { cert: PathBuf, key: PathBuf },
}

/// Why TLS could not be set up (the operator's to fix: exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{flag} {path}: cannot read it: {source}")]
    Read {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{flag} {path}: {reason}")]
    Material {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("--tls: the mesh CA cannot issue the serving certificate: {0}")]
    Issue(String),
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The serving certificate, swapped in place when it is re-issued.
#[derive(Debug)]
struct Resolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        )
    }
}

/// TLS for both listeners, with the task that keeps a mesh-issued certificate fresh.
pub struct ControlTls {
    resolver: Arc<Resolver>,
    renewal: Option<tokio::task::JoinHandle<()>>,
}

impl ControlTls {
    /// Loads or issues the serving certificate. `None` for [`ServingTls::Off`].
    pub fn start(mode: &ServingTls, ca: &Ca) -> Result<Option<ControlTls>, TlsError> {
        match mode {
            ServingTls::Off => Ok(None),
            ServingTls::Files { cert, key } => {
                let key = load_files(cert, key)?;
                Ok(Some(ControlTls {
                    resolver: Arc::new(Resolver {
                        current: RwLock::new(Arc::new(key)),
                    }),
                    renewal: None,
                }))
            }
            ServingTls::Mesh { names } => {
                let (key, not_after_ms) = issue(ca, names)?;
                let resolver = Arc::new(Resolver {
                    current: RwLock::new(Arc::new(key)),
                });
                let renewal = tokio::spawn(renew(
                    ca.clone(),
                    names.clone(),
                    resolver.clone(),
                    not_after_ms,
                ));
                Ok(Some(ControlTls {
                    resolver,
                    renewal: Some(renewal),
                }))
            }
        }
    }

    /// A rustls server config offering `alpn`, TLS 1.3 only.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.resolver.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

impl Drop for ControlTls {
    fn drop(&mut self) {
        if let Some(task) = self.renewal.take() {
            task.abort();
        }
    }
}

fn issue(ca: &Ca, names: &[String]) -> Result<(CertifiedKey, u64), TlsError> {
    let serving = ca
        .issue_serving(names)
        .map_err(|e| TlsError::Issue(e.to_string()))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(serving.key_der));
    let certified =
        certified(vec![CertificateDer::from(serving.cert_der)], &key).map_err(TlsError::Issue)?;
    Ok((certified, serving.not_after_ms))
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'_>,
) -> Result<CertifiedKey, String> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| format!("unusable private key: {e}"))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| format!("the key does not belong to the certificate: {e}"))?;
    Ok(certified)
}

fn load_files(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let read = |flag: &'static str, path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            flag,
            path: path.to_path_buf(),
            source,
        })
    };
    let material = |flag: &'static str, path: &Path, reason: String| TlsError::Material {
        flag,
        path: path.to_path_buf(),
        reason,
    };
    let cert_pem = read("--tls-cert", cert)?;
    let key_pem = read("--tls-key", key)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| material("--tls-cert", cert, format!("not readable PEM: {e}")))?;
    if chain.is_empty() {
        return Err(material(
            "--tls-cert",
            cert,
            "holds no `-----BEGIN CERTIFICATE-----` block".to_string(),
        ));
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        material(
            "--tls-key",
            key,
            format!("no readable private key (PKCS#8, SEC1 or PKCS#1 PEM): {e}"),
        )
    })?;
    certified(chain, &private).map_err(|reason| material("--tls-key", key, reason))
}

/// Re-issues the mesh certificate at 2/3 of its life, and at once when the roots change.
async fn renew(ca: Ca, names: Vec<String>, resolver: Arc<Resolver>, mut not_after_ms: u64) {
    let mut changes = ca.root_changes();
    let mut issued_at_ms = unix_ms();
    loop {
        let life = not_after_ms.saturating_sub(issued_at_ms);
        let due = issued_at_ms.saturating_add(life / 3 * 2);
        let wait = Duration::from_millis(due.saturating_sub(unix_ms()));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        match issue(&ca, &names) {
            Ok((key, next)) => {
                *resolver
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(key);
                not_after_ms = next;
                issued_at_ms = unix_ms();
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot renew the control plane's serving certificate; retrying in 10s");
                issued_at_ms = unix_ms();
                not_after_ms = issued_at_ms + 15_000;
            }
        }
    }
}

/// Accepts TCP connections on `listener` and hands over those whose TLS handshake completed.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
    let (tx, rx) = mpsc::channel(ACCEPT_BACKLOG);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let acceptor = acceptor.clone();
            let handed = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = handed.send((tls, peer)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
            if tx.is_closed() {
                return;
            }
        }
    });
    rx
}

/// [`incoming`] as an axum listener.
pub struct TlsListener {
    pub rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    pub local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(accepted) => accepted,
            // The accept loop only ends when this listener is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Writes the trust bundle where clients find it, atomically (a temporary file renamed).
pub fn write_bundle(dir: &Path, bundle: &str) -> std::io::Result<PathBuf> {
    let path = dir.join(TRUST_BUNDLE_FILE);
    let tmp = dir.join(format!("{TRUST_BUNDLE_FILE}.tmp"));
    std::fs::write(&tmp, bundle)?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// The names a mesh-issued serving certificate covers by default: loopback and the bound
/// addresses that are not wildcards (`--tls-san` adds others).
pub fn default_names(bound: &[SocketAddr]) -> Vec<String> {
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    for addr in bound {
        let ip = addr.ip().to_string();
        if !addr.ip().is_unspecified() && !names.contains(&ip) {
            names.push(ip);
        }
    }
    names
}

#[cfg(test)]
mod tests;
