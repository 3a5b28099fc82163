//! How the sidecar trusts the control plane: plaintext for an `http://` control URL; for
//! `https://`, TLS verified against the roots in `--control-ca` (the control plane keeps its
//! trust bundle in `<data-dir>/trust-bundle.pem`). The file is read again whenever a client is
//! built, and clients are rebuilt after a failed call, so a root added to the file before the
//! control plane switches its signing root keeps the sidecar connected through the rotation.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

/// The control plane's URL and how to verify it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ControlTrust {
    ca_file: Option<PathBuf>,
}

impl ControlTrust {
    /// `ca_file` must be given for an `https://` control URL.
    pub fn new(control_url: &str, ca_file: Option<&Path>) -> Result<Self, String> {
        let https = control_url.starts_with("https://");
        match ca_file {
            None if https => Err(format!(
                "control = `{control_url}`: an https:// control plane needs --control-ca FILE, \
                 the PEM roots that verify it (the control plane writes its trust bundle to \
                 <data-dir>/trust-bundle.pem)"
            )),
            Some(path) if !https => Err(format!(
                "--control-ca {}: given, but control = `{control_url}` is plaintext; use an \
                 https:// URL (the control plane runs with --tls)",
                path.display()
            )),
            _ => {
                let trust = ControlTrust {
                    ca_file: ca_file.map(Path::to_path_buf),
                };
                trust.roots()?;
                Ok(trust)
            }
        }
    }

    /// The trust of an already validated configuration (see [`ControlTrust::new`]).
    pub fn unchecked(ca_file: Option<PathBuf>) -> Self {
        ControlTrust { ca_file }
    }

    /// Whether the control plane is reached over TLS.
    pub fn is_tls(&self) -> bool {
        self.ca_file.is_some()
    }

    /// The roots of `--control-ca`, read now (none for plaintext): the PEM and each DER.
    fn roots(&self) -> Result<(Vec<u8>, Vec<CertificateDer<'static>>), String> {
        let Some(path) = &self.ca_file else {
            return Ok((Vec::new(), Vec::new()));
        };
        let pem = std::fs::read(path)
            .map_err(|e| format!("--control-ca {}: cannot read it: {e}", path.display()))?;
        let roots: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("--control-ca {}: not readable PEM: {e}", path.display()))?;
        if roots.is_empty() {
            return Err(format!(
                "--control-ca {}: holds no `-----BEGIN CERTIFICATE-----` block",
                path.display()
            ));
        }
        Ok((pem, roots))
    }

    /// An HTTP client for the control plane's API that trusts only `--control-ca`.
    pub fn http_client(
        &self,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<reqwest::Client, String> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .timeout(timeout);
        if self.is_tls() {
            let mut certs = Vec::new();
            for der in self.roots()?.1 {
                certs.push(
                    reqwest::Certificate::from_der(der.as_ref())
                        .map_err(|e| format!("--control-ca: unusable certificate: {e}"))?,
                );
            }
            builder = builder.tls_certs_only(certs).https_only(true);
        }
        builder
            .build()
            .map_err(|e| format!("HTTP client for the control plane: {e}"))
    }

    /// The gRPC endpoint of the control plane's xDS server at `addr` (`host:port`).
    pub fn xds_endpoint(&self, addr: &str) -> Result<tonic::transport::Endpoint, String> {
        let scheme = if self.is_tls() { "https" } else { "http" };
        let url = format!("{scheme}://{addr}");
        let endpoint = tonic::transport::Endpoint::from_shared(url)
            .map_err(|e| format!("xds address `{addr}` is not usable: {e}"))?;
        if !self.is_tls() {
            return Ok(endpoint);
        }
        let host = addr
            .rsplit_once(':')
            .map_or(addr, |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let (pem, _) = self.roots()?;
        let tls = tonic::transport::ClientTlsConfig::new()
            .domain_name(host.to_string())
            .ca_certificate(tonic::transport::Certificate::from_pem(pem));
        endpoint
            .tls_config(tls)
            .map_err(|e| format!("xDS TLS configuration: {e}"))
    }
}

/// A control-plane HTTP client that is rebuilt (re-reading `--control-ca`) after a failure.
#[derive(Debug, Clone)]
pub(crate) struct ControlHttp {
    trust: ControlTrust,
    connect_timeout: Duration,
    timeout: Duration,
    client: Arc<Mutex<reqwest::Client>>,
}

impl ControlHttp {
    pub fn new(
        trust: ControlTrust,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<Self, String> {
        let client = trust.http_client(connect_timeout, timeout)?;
        Ok(ControlHttp {
            trust,
            connect_timeout,
            timeout,
            client: Arc::new(Mutex::new(client)),
        })
    }

    /// The current client.
    pub fn get(&self) -> reqwest::Client {
        self.client
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Call after a request failed to connect: the next one uses fresh connections and the
    /// roots as the file holds them now. A file that became unreadable keeps the old client.
    pub fn refresh(&self) {
        if !self.trust.is_tls() {
            return;
        }
        match self.trust.http_client(self.connect_timeout, self.timeout) {
            Ok(client) => *self.client.lock().unwrap_or_else(PoisonError::into_inner) = client,
            Err(e) => tracing::warn!(error = %e, "keeping the previous control-plane client"),
        }
    }
}

/// An error with its sources, `a: b: c` (TLS failures hide their reason in a source).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
