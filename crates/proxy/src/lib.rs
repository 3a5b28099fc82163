//! The Trellis sidecar: the data plane.
//!
//! One sidecar runs next to one app instance with three listeners: **outbound** (the app's
//! calls to other services, routed by the xDS config), **inbound** (other sidecars' calls to
//! this app, forwarded to 127.0.0.1:<app-port>) and **admin** (`/ready`, `/config_dump`,
//! `/metrics`). In the background it registers the instance with the control plane and keeps
//! an ADS stream open; accepted configs are swapped in atomically ([`snapshot`]), and the proxy
//! keeps serving its last config while the control plane is unreachable.
//!
//! With a join token the sidecar first obtains its workload certificate from the control
//! plane's CA ([`identity`]) and only then registers; sidecar-to-sidecar traffic is mTLS
//! (`mtls`), and the inbound listener refuses plaintext unless its service is PERMISSIVE.
//!
//! Request path: [`server`] accepts → [`outbound`] decides with [`routing`] over the live
//! snapshot and picks an endpoint with [`balance`] → pooled [`upstream`] client → peer's
//! [`inbound`] → app.

#![forbid(unsafe_code)]

pub mod accesslog;
mod admin;
pub mod authn;
pub mod authz;
mod backoff;
pub mod balance;
mod body;
mod config;
pub mod control_tls;
pub mod health;
mod http;
pub mod identity;
mod idle;
mod inbound;
mod metrics;
mod mtls;
mod outbound;
mod pool;
mod ratelimit;
mod registration;
pub mod resilience;
// Public only for the criterion benches (benches/routing.rs); not a supported API.
#[doc(hidden)]
pub mod routing;
mod security;
mod server;
mod shared;
mod snapshot;
mod status;
mod tcp;
mod upstream;
mod xds;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

pub use accesslog::AccessLogTarget;
pub use config::{BoundAddrs, JoinToken, ProxyConfig, Upstream};

/// A startup problem the operator must fix (invalid flags, a listener port in use); the CLI
/// exits with a distinct code for it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartupError(pub String);

use metrics::Direction;
use shared::Shared;

/// Runs a sidecar until `shutdown` completes, then drains and deregisters.
///
/// `ready` is called once all listeners are bound, with their actual addresses (useful with
/// port 0). Startup errors (bad config, a port in use) are returned; once running, control-plane
/// trouble is retried forever and never ends the proxy.
pub async fn run(
    mut config: ProxyConfig,
    ready: impl FnOnce(BoundAddrs),
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    config.validate().map_err(|e| StartupError(e.to_string()))?;
    let trust = control_tls::ControlTrust::new(&config.control_url, config.control_ca.as_deref())
        .map_err(StartupError)?;
    let ca = match &config.join_token {
        Some(token) => Some(
            identity::CaClient::with_trust(&config.control_url, token.expose(), trust)
                .map_err(|e| StartupError(e.to_string()))?,
        ),
        None => None,
    };
    let bind = |name: &'static str, addr| async move {
        TcpListener::bind(addr).await.map_err(|e| {
            StartupError(format!(
                "cannot bind the {name} listener on {addr}: {e} (is the port in use? see --{name}-addr)"
            ))
        })
    };
    let admin = bind("admin", config.admin_addr).await?;
    let outbound = bind("outbound", config.outbound_addr).await?;
    let inbound = bind("inbound", config.inbound_addr).await?;
    let mut upstreams = Vec::with_capacity(config.upstreams.len());
    for u in &mut config.upstreams {
        let listener = TcpListener::bind(u.addr).await.map_err(|e| {
            StartupError(format!(
                "cannot bind the upstream listener for `{}` on {}: {e} (is the port in use? see \
                 --upstream {}=PORT)",
                u.service, u.addr, u.service
            ))
        })?;
        u.addr = listener.local_addr()?;
        upstreams.push((Arc::<str>::from(u.service.as_str()), listener));
    }
    let bound = BoundAddrs {
        admin: admin.local_addr()?,
        outbound: outbound.local_addr()?,
        inbound: inbound.local_addr()?,
        upstreams: config
            .upstreams
            .iter()
            .map(|u| (u.service.clone(), u.addr))
            .collect(),
    };
    config.admin_addr = bound.admin;
    config.outbound_addr = bound.outbound;
    config.inbound_addr = bound.inbound;

    let mut shared = Shared::new(config);
    if let Some(target) = &shared.config.access_log {
        let dropped = shared.metrics.conn.access_log_dropped.clone();
        let log = accesslog::AccessLog::open(target, dropped).map_err(StartupError)?;
        shared.access_log = Some(Arc::new(log));
    }
    let shared = Arc::new(shared);
    let mut listeners = Listeners::start(&shared, admin, outbound, inbound);
    listeners.start_upstreams(&shared, upstreams);

    let (check, health) = match shared.config.health_check.clone() {
        Some(hc) => {
            let (tx, rx) = watch::channel(health::initial_report(&hc));
            let c = &shared.config;
            let task = tokio::spawn(health::run(hc, c.app_port, c.app_protocol, tx));
            (Some(rx), Some(task))
        }
        None => (None, None),
    };
    let registrar = registration::Registrar::new(shared.clone(), check)?;
    let (xds_tx, xds_rx) = oneshot::channel();
    let registration = {
        let (shared, registrar) = (shared.clone(), registrar.clone());
        tokio::spawn(async move {
            // With a token: the certificate first, so the registration and the xDS node carry
            // the identity; the rotation tasks stop with this task.
            let _rotation = match ca {
                Some(ca) => Some(mtls::lifecycle::establish(&shared, ca).await),
                None => {
                    tracing::warn!(
                        "no join token (--join-token): this sidecar has no workload identity; it \
                         can only reach plaintext endpoints, and its inbound listener refuses \
                         every connection unless the service's mTLS mode is PERMISSIVE"
                    );
                    None
                }
            };
            registrar.run(xds_tx).await;
        })
    };
    let leases = tokio::spawn(ratelimit::lease::run(shared.clone()));
    let xds_shared = shared.clone();
    let xds = tokio::spawn(async move {
        if let Ok(addr) = xds_rx.await {
            xds::client::run(xds_shared, addr, balance::build).await;
        }
    });
    tracing::info!(
        service = %shared.config.service,
        instance = %shared.config.instance_id,
        admin = %bound.admin,
        outbound = %bound.outbound,
        inbound = %bound.inbound,
        upstreams = ?bound.upstreams,
        "sidecar listening"
    );
    ready(bound);

    shutdown.await;
    tracing::info!(drain_timeout = ?shared.config.drain_timeout, "shutting down: draining and deregistering");
    registration.abort();
    xds.abort();
    leases.abort();
    if let Some(h) = health {
        h.abort();
    }
    // Deregister while draining so peers stop sending new requests as soon as possible.
    tokio::join!(listeners.stop(), registrar.deregister());
    Ok(())
}

/// The three running listeners.
pub(crate) struct Listeners {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Listeners {
    pub(crate) fn start(
        shared: &Arc<Shared>,
        admin: TcpListener,
        outbound: TcpListener,
        inbound: TcpListener,
    ) -> Self {
        let (stop, rx) = watch::channel(false);
        let drain = shared.config.drain_timeout;
        let log = |d| shared.access_log.clone().map(|l| (l, d));
        let head_timeout = Some(shared.config.request_head_timeout).filter(|t| !t.is_zero());
        let serving = |name, log, inbound| server::Serving {
            name,
            log,
            inbound,
            head_timeout,
        };
        let tasks = vec![
            tokio::spawn(server::serve(
                serving("admin", None, None),
                admin,
                Arc::new(admin::Admin::new(shared.clone())),
                rx.clone(),
                drain,
            )),
            tokio::spawn(server::serve(
                serving("outbound", log(Direction::Outbound), None),
                outbound,
                Arc::new(outbound::Outbound::new(shared.clone())),
                rx.clone(),
                drain,
            )),
            tokio::spawn(server::serve(
                serving("inbound", log(Direction::Inbound), Some(shared.clone())),
                inbound,
                Arc::new(inbound::Inbound::new(shared)),
                rx,
                drain,
            )),
        ];
        Listeners { stop, tasks }
    }

    /// Starts the TCP upstream listeners (`--upstream`), stopped with the others.
    pub(crate) fn start_upstreams(
        &mut self,
        shared: &Arc<Shared>,
        upstreams: Vec<(Arc<str>, TcpListener)>,
    ) {
        for (service, listener) in upstreams {
            self.tasks.push(tokio::spawn(tcp::outbound::serve(
                listener,
                service,
                shared.clone(),
                self.stop.subscribe(),
            )));
        }
    }

    /// Stops accepting and waits for in-flight requests (each listener bounded by the drain
    /// timeout).
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
