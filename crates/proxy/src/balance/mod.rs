//! Load balancers: pick one endpoint of a cluster for a request.
//!
//! A balancer is built from an immutable endpoint list (rebuilt when EDS changes) and is shared
//! by every request of its cluster, so `pick` takes `&self` and must be cheap and lock-free on
//! the hot path. Load-aware algorithms (least request, peak EWMA) learn from the [`LoadGuard`]
//! each pick returns: it counts the request as in flight until dropped, and
//! [`LoadGuard::complete`] feeds the observed latency.
//!
//! One file per algorithm: [`round_robin`], [`random`], [`weighted`], [`least_request`],
//! [`peak_ewma`], [`ring_hash`] and [`maglev`]; [`hash`] holds the stable 64-bit hash (XXH64)
//! that hash-based balancers place endpoints with and the data plane hashes request keys with
//! ([`hash_key`]).

mod hash;
mod least_request;
mod maglev;
mod peak_ewma;
mod random;
mod ring_hash;
mod round_robin;
mod weighted;

#[cfg(test)]
mod tests;

pub use hash::hash_key;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `PeakEwma`'s decay when the Cluster does not set one.
pub const PEAK_EWMA_DEFAULT_DECAY: Duration = Duration::from_secs(10);
/// The latency estimate `PeakEwma` assumes for an endpoint before its first response.
pub const PEAK_EWMA_DEFAULT_RTT: Duration = Duration::from_millis(30);
/// `RingHash`'s `min_ring_size` when the Cluster does not set one (Envoy's default).
pub const RING_HASH_DEFAULT_MIN_RING_SIZE: u64 = 1024;
/// `Maglev`'s `table_size` when the Cluster does not set one (Envoy's default, a prime).
pub const MAGLEV_DEFAULT_TABLE_SIZE: u64 = 65537;

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
    /// When the pick happened, for trackers that learn latency; `None` otherwise, so balancers
    /// that don't need it skip reading the clock.
    pub(crate) started: Option<Instant>,
}

/// Implemented by per-endpoint load state of load-aware balancers.
pub(crate) trait LoadTracker: Send + Sync + std::fmt::Debug {
    /// The request picked at `started` ended, after `rtt` if it completed.
    fn finish(&self, rtt: Option<Duration>, started: Option<Instant>);
}

impl LoadGuard {
    /// A guard that tracks nothing (for balancers that are not load-aware).
    pub fn none() -> Self {
        LoadGuard {
            inner: None,
            started: None,
        }
    }

    /// Ends the request, recording the time since the pick as its latency.
    pub fn complete(self) {
        let rtt = self.started.map(|started| started.elapsed());
        self.finish(rtt);
    }

    /// Ends the request with a latency measured by the caller (e.g. time to first byte, or a
    /// latency the upstream reported).
    pub fn complete_with(self, rtt: Duration) {
        self.finish(Some(rtt));
    }

    fn finish(mut self, rtt: Option<Duration>) {
        if let Some(t) = self.inner.take() {
            t.finish(rtt, self.started);
        }
    }

    /// A guard that reports to `tracker` when the request ends.
    pub(crate) fn tracked(tracker: Arc<dyn LoadTracker>, started: Option<Instant>) -> Self {
        LoadGuard {
            inner: Some(tracker),
            started,
        }
    }
}

/// Requests in flight on a load-aware balancer's `endpoint`, whose `Arc` only the balancer and
/// the [`LoadGuard`]s of its requests hold: the strong count minus the balancer's own reference.
pub(crate) fn in_flight<T: ?Sized>(endpoint: &Arc<T>) -> usize {
    Arc::strong_count(endpoint) - 1
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        if let Some(t) = self.inner.take() {
            t.finish(None, self.started);
        }
    }
}

/// A load balancer over a fixed endpoint list.
pub trait Balance: Send + Sync + std::fmt::Debug {
    /// Picks an endpoint. `hash` is the request's hash key for hash-based algorithms (ignored by
    /// others; a hash-based balancer given `None` picks at random). `None` when empty.
    fn pick(&self, hash: Option<u64>) -> Option<Picked>;
    /// [`Balance::pick`] for a request that arrived at `now`: latency-aware balancers use it
    /// instead of reading the clock again (the data plane reads it once per request).
    fn pick_at(&self, hash: Option<u64>, now: Instant) -> Option<Picked> {
        let _ = now;
        self.pick(hash)
    }
    /// [`Balance::pick_at`] avoiding the endpoints for which `skip(index)` holds (ejected by
    /// outlier detection, or already tried by this request); `None` when no pick avoided them.
    ///
    /// The request path calls it only when something is to be skipped, so picks without
    /// ejections cost what they did. The default draws again up to [`SKIP_TRIES`] times: each
    /// pick of P2C is a fresh draw, and a hash-based balancer is asked with the hash moved by a
    /// fixed step per try, so a key whose endpoint is ejected lands on the same alternative
    /// every time, and keys of other endpoints do not move. Round robin takes fresh tickets
    /// and random fresh draws (then scans), so the others keep even shares.
    fn pick_excluding(
        &self,
        hash: Option<u64>,
        now: Instant,
        skip: &dyn Fn(usize) -> bool,
    ) -> Option<Picked> {
        let tries = (self.len() * 4).clamp(1, SKIP_TRIES);
        for t in 0..tries as u64 {
            let h = hash.map(|h| h.wrapping_add(t.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
            let picked = self.pick_at(h, now)?;
            if !skip(picked.index) {
                return Some(picked);
            }
        }
        None
    }
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How many draws [`Balance::pick_excluding`]'s default makes before giving up.
pub const SKIP_TRIES: usize = 32;

/// The first index at or after `start` (wrapping) that `skip` lets through.
fn scan_from(start: usize, len: usize, skip: &dyn Fn(usize) -> bool) -> Option<usize> {
    (0..len).map(|k| (start + k) % len).find(|&i| !skip(i))
}

/// Builds the balancer for `algorithm` over `endpoints`.
///
/// Never fails: an empty list gives a balancer whose `pick` returns `None`, a weight of 0 counts
/// as 1, and out-of-range sizes are clamped (see each algorithm's module).
pub fn build(algorithm: &Algorithm, endpoints: &[EndpointMeta]) -> Arc<dyn Balance> {
    match algorithm {
        Algorithm::RoundRobin => Arc::new(round_robin::RoundRobin::new(endpoints.len())),
        Algorithm::Random => Arc::new(random::Random::new(endpoints.len())),
        Algorithm::Weighted => Arc::new(weighted::Weighted::new(endpoints)),
        Algorithm::LeastRequest => Arc::new(least_request::LeastRequest::new(endpoints.len())),
        Algorithm::PeakEwma { decay } => {
            Arc::new(peak_ewma::PeakEwma::new(endpoints.len(), *decay))
        }
        Algorithm::RingHash { min_ring_size } => {
            Arc::new(ring_hash::RingHash::new(endpoints, *min_ring_size))
        }
        Algorithm::Maglev { table_size } => Arc::new(maglev::Maglev::new(endpoints, *table_size)),
    }
}

thread_local! {
    /// wyrand state, seeded once per thread from the OS-seeded `rand` RNG. Picks need speed and
    /// uniformity, not unpredictability: this is one add and one multiply per number, where
    /// `rand::rng()` costs a thread-local `Rc` clone and a ChaCha block refill now and then.
    static RNG: std::cell::Cell<u64> = std::cell::Cell::new(rand::random());
}

/// The next 64 random bits (wyrand).
fn random_u64() -> u64 {
    RNG.with(|state| {
        let s = state.get().wrapping_add(0xa076_1d64_78bd_642f);
        state.set(s);
        let t = u128::from(s) * u128::from(s ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    })
}

/// A uniformly random index below `n` (`n > 0`): Lemire's multiply-shift (bias below n/2⁶⁴).
fn random_index(n: usize) -> usize {
    ((u128::from(random_u64()) * n as u128) >> 64) as usize
}

/// A uniformly random `f64` in `[0, 1)`.
pub(crate) fn random_f64() -> f64 {
    (random_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Two distinct uniformly random indices below `n` (`n >= 2`), for power of two choices.
fn random_pair(n: usize) -> (usize, usize) {
    let a = random_index(n);
    let b = random_index(n - 1);
    (a, if b >= a { b + 1 } else { b })
}
