//! Least request: power of two choices on per-endpoint in-flight counters.
//!
//! Two distinct endpoints are drawn at random and the one with fewer requests in flight wins
//! (Mitzenmacher's P2C: nearly the balance of a full scan at the cost of two loads, and no herd
//! onto one "least loaded" endpoint). The [`LoadGuard`] holds the winner's counter and
//! decrements it when the request ends, however it ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{Balance, LoadGuard, LoadTracker, Picked, random_pair};

#[derive(Debug)]
pub(crate) struct LeastRequest {
    endpoints: Vec<Arc<InFlight>>,
}

/// One endpoint's in-flight count, on its own cache line so picks on different endpoints do not
/// contend.
#[derive(Debug, Default)]
#[repr(align(64))]
struct InFlight(AtomicU64);

impl LoadTracker for InFlight {
    fn finish(&self, _rtt: Option<Duration>, _started: Option<Instant>) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl LeastRequest {
    pub(crate) fn new(len: usize) -> Self {
        LeastRequest {
            endpoints: (0..len).map(|_| Arc::new(InFlight::default())).collect(),
        }
    }

    fn choose(&self) -> Option<usize> {
        match self.endpoints.len() {
            0 => None,
            1 => Some(0),
            n => {
                let (a, b) = random_pair(n);
                let load = |i: usize| self.endpoints[i].0.load(Ordering::Relaxed);
                Some(if load(b) < load(a) { b } else { a })
            }
        }
    }
}

impl Balance for LeastRequest {
    fn pick(&self, _hash: Option<u64>) -> Option<Picked> {
        let index = self.choose()?;
        let endpoint = &self.endpoints[index];
        endpoint.0.fetch_add(1, Ordering::Relaxed);
        Some(Picked {
            index,
            load: LoadGuard::tracked(endpoint.clone(), None),
        })
    }

    fn len(&self) -> usize {
        self.endpoints.len()
    }
}
