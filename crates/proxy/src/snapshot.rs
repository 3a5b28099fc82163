//! The live configuration the request path reads: an immutable snapshot swapped atomically
//! (`ArcSwap`) whenever an xDS update is accepted. Readers never lock.

use std::collections::HashMap;
use std::sync::Arc;

use crate::metrics::{Direction, Metrics, ServiceMetrics};
use crate::routing::RouteTable;
use crate::security::InboundSecurity;
use crate::upstream::UpstreamCluster;

#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub routes: Arc<Routes>,
    /// Looked up per request by name: a fast seeded hash instead of SipHash.
    pub clusters: HashMap<Arc<str>, Arc<UpstreamCluster>, foldhash::quality::RandomState>,
    /// This proxy's inbound mode and policies; `None` until the `inbound` Listener has been
    /// accepted (the inbound listener then refuses requests: fail closed).
    pub inbound: Option<Arc<InboundSecurity>>,
}

/// The route table with each virtual host's metric handles (same indexes).
#[derive(Debug, Default)]
pub(crate) struct Routes {
    pub table: RouteTable,
    pub metrics: Vec<Arc<ServiceMetrics>>,
}

impl Routes {
    pub fn new(table: RouteTable, metrics: &Metrics) -> Self {
        let metrics = table
            .vhosts
            .iter()
            .map(|vh| metrics.service(Direction::Outbound, &vh.name))
            .collect();
        Routes { table, metrics }
    }
}

impl Snapshot {
    pub fn new(
        routes: Arc<Routes>,
        clusters: impl IntoIterator<Item = Arc<UpstreamCluster>>,
    ) -> Self {
        Snapshot {
            routes,
            clusters: clusters.into_iter().map(|c| (c.name.clone(), c)).collect(),
            inbound: None,
        }
    }
}
