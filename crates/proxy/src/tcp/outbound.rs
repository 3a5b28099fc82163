//! The outbound side of raw TCP: one local listener per `--upstream <service>=<port>`. Each
//! accepted connection goes to an endpoint of the service's cluster (the live snapshot's
//! balancer), over mTLS (ALPN `trellis-tcp`, the server's SPIFFE ID checked) to endpoints
//! that serve it, plaintext to the others. A failed connect tries another endpoint, at most
//! [`MAX_CONNECT_ATTEMPTS`] in all; when none connects the app's connection is closed.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::{ALPN_TCP, MAX_CONNECT_ATTEMPTS, relay};
use crate::accesslog::ConnLog;
use crate::balance::LoadGuard;
use crate::identity::{ExpectedIds, client_config};
use crate::metrics::{Direction, TcpResult};
use crate::mtls::{HANDSHAKE_TIMEOUT, Tls, handshake_failure_reason};
use crate::security::TlsPolicy;
use crate::shared::Shared;
use crate::upstream::UpstreamCluster;

/// One upstream listener's state.
struct Upstream {
    service: Arc<str>,
    shared: Arc<Shared>,
    /// mTLS client configs (ALPN `trellis-tcp`) by expected server IDs; built on first use.
    configs: Mutex<HashMap<Vec<String>, Arc<ClientConfig>>>,
}

/// Accepts on `listener` until `stop` turns true. Open connections are not drained: they end
/// with the process.
pub(crate) async fn serve(
    listener: TcpListener,
    service: Arc<str>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let upstream = Arc::new(Upstream {
        service,
        shared,
        configs: Mutex::new(HashMap::new()),
    });
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(upstream.clone().connection(stream, peer));
                }
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tracing::warn!(upstream = %upstream.service, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
    }
}

/// Why one connect attempt failed.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error(
        "the endpoint serves mTLS only and this sidecar has no workload certificate (start it with --join-token)"
    )]
    NoIdentity,
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("mTLS handshake failed ({reason}): {source}")]
    Handshake {
        reason: &'static str,
        source: io::Error,
    },
    #[error("mTLS client configuration: {0}")]
    Config(String),
}

enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// The endpoint to try after `tried` when the balancer picked `picked`: itself when untried,
/// else the next untried index; `None` when all `n` were tried.
pub(crate) fn next_index(picked: usize, tried: &[usize], n: usize) -> Option<usize> {
    (0..n)
        .map(|k| (picked + k) % n)
        .find(|i| !tried.contains(i))
}

impl Upstream {
    async fn connection(self: Arc<Self>, client: TcpStream, peer: SocketAddr) {
        let metrics = &self.shared.metrics.tcp;
        let service = &self.service;
        let mut log = ConnLog::start(
            self.shared.access_log.as_ref(),
            Direction::Outbound,
            peer,
            None,
        );
        let cluster = self.shared.live.load().clusters.get(&**service).cloned();
        let Some(cluster) = cluster else {
            metrics.connection(Direction::Outbound, service, TcpResult::UnknownService);
            if let Some(log) = log {
                log.finish(Some(TcpResult::UnknownService.as_str()), 0, 0);
            }
            tracing::warn!(upstream = %service, %peer, "tcp upstream: no service named \"{service}\" is known to this proxy (yet); closing the connection");
            return;
        };
        let n = cluster.endpoints.len();
        let mut tried: Vec<usize> = Vec::with_capacity(MAX_CONNECT_ATTEMPTS);
        let mut no_identity = false;
        while tried.len() < MAX_CONNECT_ATTEMPTS.min(n) {
            let Some(picked) = cluster.pick(None, Instant::now(), 0) else {
                break;
            };
            let Some(index) = next_index(picked.index.min(n.saturating_sub(1)), &tried, n) else {
                break;
            };
            // The balancer's guard counts this connection as load while it lasts (least
            // request); a substitute endpoint gets none.
            let load = if index == picked.index {
                picked.load
            } else {
                LoadGuard::none()
            };
            tried.push(index);
            let endpoint = &cluster.endpoints[index];
            match self.connect(&cluster, index).await {
                Ok(conn) => {
                    metrics.connection(Direction::Outbound, service, TcpResult::Forwarded);
                    tracing::trace!(upstream = %service, endpoint = %endpoint.authority, "tcp upstream connected");
                    let all = &self.shared.metrics;
                    let relayed = match conn {
                        Conn::Plain(s) => {
                            relay(client, s, None, all, Direction::Outbound, service).await
                        }
                        Conn::Tls(s) => {
                            relay(client, s, None, all, Direction::Outbound, service).await
                        }
                    };
                    load.complete();
                    if let Some(mut log) = log {
                        log.upstream(&cluster.name, Some(&endpoint.authority));
                        log.finish(None, relayed.up, relayed.down);
                    }
                    return;
                }
                Err(e) => {
                    no_identity |= matches!(e, ConnectError::NoIdentity);
                    tracing::debug!(upstream = %service, endpoint = %endpoint.authority, error = %e, "tcp upstream connect failed");
                }
            }
        }
        let result = if n == 0 {
            TcpResult::NoEndpoints
        } else if no_identity && tried.len() == 1 {
            TcpResult::NoIdentity
        } else {
            TcpResult::ConnectFailed
        };
        metrics.connection(Direction::Outbound, service, result);
        if let Some(mut log) = log.take() {
            log.upstream(&cluster.name, None);
            log.finish(Some(result.as_str()), 0, 0);
        }
        tracing::info!(upstream = %service, %peer, attempts = tried.len(), result = result.as_str(), "tcp upstream: no endpoint of \"{service}\" could be connected; closing the connection");
    }

    async fn connect(&self, cluster: &UpstreamCluster, index: usize) -> Result<Conn, ConnectError> {
        let endpoint = &cluster.endpoints[index];
        let addr = endpoint.endpoint.addr;
        let tls = match (&cluster.tls, endpoint.endpoint.mtls) {
            (Some(policy), true) => {
                let tls = self.shared.tls.get().ok_or(ConnectError::NoIdentity)?;
                Some((tls.clone(), policy))
            }
            _ => None,
        };
        let timeout = cluster.connect_timeout;
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ConnectError::Timeout(timeout))?
            .map_err(ConnectError::Connect)?;
        let _ = stream.set_nodelay(true);
        let Some((tls, policy)) = tls else {
            return Ok(Conn::Plain(stream));
        };
        let config = self.config(&tls, policy)?;
        let sni = ServerName::try_from(policy.sni.clone())
            .unwrap_or_else(|_| ServerName::IpAddress(addr.ip().into()));
        let handshake = TlsConnector::from(config).connect(sni, stream);
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(s)) => {
                tls.metrics.handshake(Direction::Outbound);
                Ok(Conn::Tls(Box::new(s)))
            }
            Ok(Err(source)) => {
                let reason = handshake_failure_reason(&source);
                tls.metrics.handshake_error(Direction::Outbound, reason);
                Err(ConnectError::Handshake { reason, source })
            }
            Err(_) => {
                tls.metrics.handshake_error(Direction::Outbound, "timeout");
                Err(ConnectError::Handshake {
                    reason: "timeout",
                    source: io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"),
                })
            }
        }
    }

    /// The mTLS client config for servers that must present one of the policy's IDs.
    fn config(&self, tls: &Tls, policy: &TlsPolicy) -> Result<Arc<ClientConfig>, ConnectError> {
        let mut configs = self.configs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = configs.get(&policy.expected_ids) {
            return Ok(c.clone());
        }
        let base = client_config(
            &tls.identity,
            ExpectedIds::new(policy.expected_ids.iter().cloned()),
        )
        .map_err(|e| ConnectError::Config(e.to_string()))?;
        let mut config = (*base).clone();
        config.alpn_protocols = vec![ALPN_TCP.to_vec()];
        let config = Arc::new(config);
        configs.insert(policy.expected_ids.clone(), config.clone());
        Ok(config)
    }
}
