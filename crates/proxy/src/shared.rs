//! State shared by the listeners and the background tasks of one sidecar.

use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::accesslog::AccessLog;
use crate::config::ProxyConfig;
use crate::control_tls::ControlTrust;
use crate::health::upstream::Prober;
use crate::metrics::Metrics;
use crate::mtls::Tls;
use crate::snapshot::Snapshot;
use crate::status::Status;
use crate::upstream::ClientCache;

#[derive(Debug)]
pub(crate) struct Shared {
    pub config: ProxyConfig,
    /// The live config; the request path `load()`s it, xDS replaces it through [`Shared::publish`].
    pub live: ArcSwap<Snapshot>,
    /// Bumped after every new live config, for background tasks that wait for one instead of
    /// polling `live` (an idle sidecar arms no timer for them).
    live_changed: watch::Sender<u64>,
    pub metrics: Metrics,
    pub status: Status,
    pub clients: ClientCache,
    /// This sidecar's workload identity and TLS configs, set once the first certificate has
    /// been obtained (never, without a join token). Rotation happens inside the identity.
    pub tls: OnceLock<Arc<Tls>>,
    /// How the control plane is reached and verified.
    pub control: ControlTrust,
    /// The access log's writer, when `--access-log` is given.
    pub access_log: Option<Arc<AccessLog>>,
    /// The active health checks of upstream endpoints (none without a configured check).
    pub prober: Prober,
}

impl Shared {
    pub fn new(config: ProxyConfig) -> Self {
        Shared {
            control: ControlTrust::unchecked(config.control_ca.clone()),
            config,
            live: ArcSwap::from_pointee(Snapshot::default()),
            live_changed: watch::Sender::new(0),
            metrics: Metrics::new(),
            status: Status::default(),
            clients: ClientCache::default(),
            tls: OnceLock::new(),
            access_log: None,
            prober: Prober::default(),
        }
    }

    /// Makes `next` the live config and tells the [`Shared::live_changes`] receivers.
    pub fn publish(&self, next: Arc<Snapshot>) {
        self.live.store(next);
        self.live_changed.send_modify(|generation| *generation += 1);
    }

    /// A receiver that sees a change after each [`Shared::publish`] (stored before it tells).
    pub fn live_changes(&self) -> watch::Receiver<u64> {
        self.live_changed.subscribe()
    }
}
