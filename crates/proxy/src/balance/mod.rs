//! Load balancers: pick one endpoint of a cluster for a request.
//!
//! A balancer is built from an immutable endpoint list (rebuilt when EDS changes) and is shared
//! by every request of its cluster, so `pick` takes `&self` and must be cheap and lock-free on
//! the hot path. Load-aware algorithms (least request, peak EWMA) learn from the [`LoadGuard`]
//! each pick returns: it counts the request as in flight until dropped, and
//! [`LoadGuard::complete`] feeds the observed latency.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// One endpoint as the balancer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointMeta {
    pub addr: SocketAddr,
    /// Relative weight, >= 1. Only `Weighted` uses it.
    pub weight: u32,
    /// Stable identity (instance id); hashing algorithms place endpoints on the ring by it, so
    /// a key keeps its endpoint when others come and go.
    pub id: String,
}

/// The algorithm and its parameters, decoded from the Cluster (docs/XDS.md).
#[derive(Debug, Clone, PartialEq)]
pub enum Algorithm {
    RoundRobin,
    Random,
    Weighted,
    /// Power of two choices on in-flight requests.
    LeastRequest,
    /// Linkerd/Finagle peak EWMA of round-trip latency times (in-flight + 1), P2C.
    PeakEwma {
        decay: Duration,
    },
    RingHash {
        min_ring_size: u64,
    },
    Maglev {
        table_size: u64,
    },
}

impl Algorithm {
    /// Hash-based algorithms need a request hash in [`Balance::pick`].
    pub fn uses_hash(&self) -> bool {
        matches!(self, Algorithm::RingHash { .. } | Algorithm::Maglev { .. })
    }
}

/// The result of a pick: the endpoint's index in the list the balancer was built from.
#[derive(Debug)]
pub struct Picked {
    pub index: usize,
    pub load: LoadGuard,
}

/// Tracks one request against its endpoint. Dropping it ends the request without a latency
/// sample (e.g. on error); `complete` ends it with one.
#[derive(Debug)]
pub struct LoadGuard {
    // Implementation detail of the balance module.
    pub(crate) inner: Option<Arc<dyn LoadTracker>>,
    pub(crate) started: std::time::Instant,
}

/// Implemented by per-endpoint load state of load-aware balancers.
pub(crate) trait LoadTracker: Send + Sync + std::fmt::Debug {
    fn finish(&self, rtt: Option<Duration>);
}

impl LoadGuard {
    /// A guard that tracks nothing (for balancers that are not load-aware).
    pub fn none() -> Self {
        LoadGuard {
            inner: None,
            started: std::time::Instant::now(),
        }
    }

    /// Ends the request, recording the time since the pick as its latency.
    pub fn complete(mut self) {
        if let Some(t) = self.inner.take() {
            t.finish(Some(self.started.elapsed()));
        }
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        if let Some(t) = self.inner.take() {
            t.finish(None);
        }
    }
}

/// A load balancer over a fixed endpoint list.
pub trait Balance: Send + Sync + std::fmt::Debug {
    /// Picks an endpoint. `hash` is the request's hash key for hash-based algorithms (ignored by
    /// others; a hash-based balancer given `None` picks at random). `None` when empty.
    fn pick(&self, hash: Option<u64>) -> Option<Picked>;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Builds the balancer for `algorithm` over `endpoints`.
pub fn build(algorithm: &Algorithm, endpoints: &[EndpointMeta]) -> Arc<dyn Balance> {
    let _ = (algorithm, endpoints);
    unimplemented!("balance::build")
}
