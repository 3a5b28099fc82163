//! State shared by the listeners and the background tasks of one sidecar.

use arc_swap::ArcSwap;

use crate::config::ProxyConfig;
use crate::metrics::Metrics;
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
}

impl Shared {
    pub fn new(config: ProxyConfig) -> Self {
        Shared {
            config,
            live: ArcSwap::from_pointee(Snapshot::default()),
            metrics: Metrics::new(),
            status: Status::default(),
            clients: ClientCache::default(),
        }
    }
}
