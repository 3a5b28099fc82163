//! State shared by the listeners and the background tasks of one sidecar.

use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;

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
    /// The live config; the request path `load()`s it, xDS `store()`s a new one.
    pub live: ArcSwap<Snapshot>,
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
            metrics: Metrics::new(),
            status: Status::default(),
            clients: ClientCache::default(),
            tls: OnceLock::new(),
            access_log: None,
            prober: Prober::default(),
        }
    }
}
