//! The table of connected proxies, shown by `GET /v1/proxies` and `trellis get proxies`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// What the control plane knows about one ADS stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ProxyStatus {
    pub node_id: String,
    pub service: String,
    pub instance_id: String,
    pub peer: String,
    /// Unix time, milliseconds.
    pub connected_at_ms: u64,
    /// Accepted (ACKed) version per resource type short name (`Listener`, `Cluster`, ...).
    pub acked: BTreeMap<String, String>,
    /// Last version sent per type.
    pub sent: BTreeMap<String, String>,
    /// The last NACK: type, version and error message.
    pub last_nack: Option<Nack>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Nack {
    pub type_name: String,
    pub version: String,
    pub message: String,
    pub at_ms: u64,
}

/// Shared between the ADS server (writes) and the admin API (reads).
#[derive(Debug, Clone, Default)]
pub struct ProxyTable {
    inner: Arc<Mutex<BTreeMap<u64, ProxyStatus>>>,
}

impl ProxyTable {
    /// Every connected proxy, sorted by node id.
    pub fn list(&self) -> Vec<ProxyStatus> {
        let mut v: Vec<ProxyStatus> = match self.inner.lock() {
            Ok(g) => g.values().cloned().collect(),
            Err(p) => p.into_inner().values().cloned().collect(),
        };
        v.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        v
    }

    /// Runs `f` on the status of stream `stream_id`, creating it if absent.
    pub fn update(&self, stream_id: u64, f: impl FnOnce(&mut ProxyStatus)) {
        let mut g = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(g.entry(stream_id).or_default());
    }

    pub fn remove(&self, stream_id: u64) {
        let mut g = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        g.remove(&stream_id);
    }
}
