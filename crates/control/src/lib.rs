//! The Trellis control plane: registry, store, xDS server and admin API.
//!
//! [`run`] wires the pieces: the [`store::RedbStore`] under the [`registry::Registry`], which
//! publishes [`snapshot::MeshSnapshot`]s to the ADS server ([`xds`]) on the gRPC listener,
//! and the admin API ([`api`]) on the HTTP listener. The mesh certificate authority ([`ca`])
//! keeps its roots and join tokens in the same store and serves through the admin API.

#![forbid(unsafe_code)]

pub mod api;
pub mod ca;
pub mod metrics;
pub mod ratelimit;
pub mod registry;
pub mod snapshot;
pub mod store;
pub mod tls;
pub mod xds;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::TcpListenerStream;

use crate::metrics::Metrics;
use crate::registry::{Registry, RegistryConfig};
use crate::store::{RedbStore, StoreError};
use crate::xds::ProxyTable;

/// How long servers get to finish after the shutdown signal before they are dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Directory of the embedded store (created if missing).
    pub data_dir: PathBuf,
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub restart_grace: Duration,
    pub remove_after: Duration,
    pub push_debounce: Duration,
    /// Self-preservation: at most this fraction of instances is evicted for missed heartbeats
    /// at once (1.0: off).
    pub max_eviction_fraction: f64,
    /// The mesh CA: trust domain, certificate lifetime, optional operator root.
    pub ca: ca::CaConfig,
    /// TLS on the admin API and xDS listeners.
    pub tls: tls::ServingTls,
}

/// The addresses actually bound (useful with port 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundAddrs {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
}

/// A startup problem caused by the configuration or the environment (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("--data-dir {path}: cannot create the directory: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--data-dir: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Ca(#[from] ca::CaInitError),
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
    #[error("--data-dir {path}: cannot write the trust bundle: {source}")]
    Bundle {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--{flag} {addr}: cannot listen: {source}")]
    Bind {
        flag: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Runs the control plane until `shutdown` completes. `ready` is called once both listeners are
/// bound. Errors that the operator must fix in the configuration are [`StartupError`]s.
pub async fn run(
    config: ControlConfig,
    ready: impl FnOnce(BoundAddrs) + Send,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| StartupError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let dir = config.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || RedbStore::open(&dir))
        .await?
        .map_err(StartupError::Store)?;
    let store = Arc::new(store);
    let ca = ca::Ca::init(store.clone(), config.ca.clone())
        .await
        .map_err(StartupError::Ca)?;
    let metrics = Arc::new(Metrics::new());
    let registry_config = RegistryConfig {
        restart_grace: config.restart_grace,
        remove_after: config.remove_after,
        push_debounce: config.push_debounce,
        trust_domain: ca.trust_domain().to_string(),
        max_eviction_fraction: config.max_eviction_fraction,
        ..RegistryConfig::default()
    };
    let (registry, tasks) = Registry::start(store, registry_config, metrics)
        .await
        .map_err(StartupError::Store)?;

    let http = bind("http-addr", config.http_addr).await?;
    let grpc = bind("grpc-addr", config.grpc_addr).await?;
    let bound = BoundAddrs {
        http: http.local_addr()?,
        grpc: grpc.local_addr()?,
    };
    let serving = match &config.tls {
        tls::ServingTls::Mesh { names } if names.is_empty() => tls::ServingTls::Mesh {
            names: tls::default_names(&[bound.http, bound.grpc]),
        },
        other => other.clone(),
    };
    let control_tls = tls::ControlTls::start(&serving, &ca).map_err(StartupError::Tls)?;
    let bundle_task = keep_bundle_file(&config.data_dir, &ca)?;
    tracing::info!(http = %bound.http, grpc = %bound.grpc, data_dir = %config.data_dir.display(),
        tls = control_tls.is_some(), "control plane listening");

    let proxies = ProxyTable::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let router = api::router(api::ApiState {
        registry: registry.clone(),
        proxies: proxies.clone(),
        xds_addr: bound.grpc,
        ca,
    });
    let http_stop = stopped(stop_rx.clone());
    let mut http_task = match &control_tls {
        Some(t) => {
            let listener = tls::TlsListener {
                rx: tls::incoming(http, t.server_config(&[b"h2", b"http/1.1"])?),
                local: bound.http,
            };
            tokio::spawn(
                axum::serve(listener, router)
                    .with_graceful_shutdown(http_stop)
                    .into_future(),
            )
        }
        None => tokio::spawn(
            axum::serve(http, router)
                .with_graceful_shutdown(http_stop)
                .into_future(),
        ),
    };
    // The ADS streams follow their own copy of the snapshot feed, owned here, so that shutdown
    // can end them (a closed feed ends every stream) whoever else still holds the registry.
    let mut source = registry.subscribe();
    let (feed_tx, feed_rx) = watch::channel(source.borrow_and_update().clone());
    let feed = tokio::spawn(async move {
        while source.changed().await.is_ok() {
            let snapshot = source.borrow_and_update().clone();
            if feed_tx.send(snapshot).is_err() {
                break;
            }
        }
    });
    let ads = crate::xds::ads_server(feed_rx, proxies);
    let grpc_stop = stopped(stop_rx);
    let mut grpc_task = match &control_tls {
        Some(t) => {
            let accepted = tls::incoming(grpc, t.server_config(&[b"h2"])?);
            let incoming = tokio_stream::wrappers::ReceiverStream::new(accepted)
                .map(|(stream, _)| Ok::<_, std::io::Error>(stream));
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(ads)
                    .serve_with_incoming_shutdown(incoming, grpc_stop),
            )
        }
        None => tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(ads)
                .serve_with_incoming_shutdown(TcpListenerStream::new(grpc), grpc_stop),
        ),
    };
    drop(registry);
    ready(bound);

    let early = tokio::select! {
        () = shutdown => None,
        r = &mut http_task => Some(format!("admin HTTP server stopped: {}", outcome(r))),
        r = &mut grpc_task => Some(format!("xDS gRPC server stopped: {}", outcome(r))),
    };
    tracing::info!("control plane shutting down");
    let _ = stop_tx.send(true);
    finish("admin HTTP", http_task).await;
    // Closing the feed ends the ADS streams, so proxies reconnect instead of holding us open.
    feed.abort();
    let _ = feed.await;
    tasks.shutdown().await;
    finish("xDS gRPC", grpc_task).await;
    bundle_task.abort();
    drop(control_tls);
    match early {
        Some(e) => anyhow::bail!(e),
        None => Ok(()),
    }
}

/// Waits up to [`SHUTDOWN_GRACE`] for a server to drain, then drops it.
async fn finish<T>(what: &str, mut task: tokio::task::JoinHandle<T>) {
    if tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
        .await
        .is_err()
    {
        tracing::warn!(server = what, grace = ?SHUTDOWN_GRACE, "server did not drain in time; closing it");
        task.abort();
    }
}

/// Writes the trust bundle to `<data-dir>/trust-bundle.pem` now and after every change of the
/// roots, for clients that verify the control plane (and for operators).
fn keep_bundle_file(
    dir: &std::path::Path,
    ca: &ca::Ca,
) -> Result<tokio::task::JoinHandle<()>, StartupError> {
    let write = |dir: &std::path::Path, bundle: &str| {
        tls::write_bundle(dir, bundle).map_err(|source| StartupError::Bundle {
            path: dir.join(tls::TRUST_BUNDLE_FILE),
            source,
        })
    };
    write(dir, &ca.trust_bundle())?;
    let (dir, ca) = (dir.to_path_buf(), ca.clone());
    let mut changes = ca.root_changes();
    Ok(tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            if let Err(e) = write(&dir, &ca.trust_bundle()) {
                tracing::error!(error = %e, "trust bundle file not updated");
            }
        }
    }))
}

async fn bind(flag: &'static str, addr: SocketAddr) -> Result<TcpListener, StartupError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Bind { flag, addr, source })
}

fn outcome<E: std::fmt::Display>(r: Result<Result<(), E>, tokio::task::JoinError>) -> String {
    match r {
        Ok(Ok(())) => "without error".to_string(),
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    }
}
