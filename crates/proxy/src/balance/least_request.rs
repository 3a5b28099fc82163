//! Least request: power of two choices on per-endpoint in-flight counters.
//!
//! Two distinct endpoints are drawn at random and the one with fewer requests in flight wins
//! (Mitzenmacher's P2C: nearly the balance of a full scan at the cost of two loads, and no herd
//! onto one "least loaded" endpoint).
//!
//! An endpoint's in-flight count is its `Arc`'s strong count ([`in_flight`]): the [`LoadGuard`]
//! of each request holds one clone and drops it when the request ends, however it ends. That
//! makes a pick and its end one locked instruction each, instead of two (a counter's and the
//! clone's).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Balance, LoadGuard, LoadTracker, Picked, in_flight, random_pair};

#[derive(Debug)]
pub(crate) struct LeastRequest {
    /// Cloned only into [`LoadGuard`]s: see [`in_flight`].
    endpoints: Vec<Arc<Endpoint>>,
}

/// One endpoint. Aligned so that its `Arc`'s counts sit on a cache line of their own, and picks
/// on different endpoints do not contend.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Endpoint;

impl LoadTracker for Endpoint {
    fn finish(&self, _rtt: Option<Duration>, _started: Option<Instant>) {
        // The guard's clone of this endpoint is dropped right after: that ends the request.
    }
}

impl LeastRequest {
    pub(crate) fn new(len: usize) -> Self {
        LeastRequest {
            endpoints: (0..len).map(|_| Arc::new(Endpoint)).collect(),
        }
    }

    fn choose(&self) -> Option<usize> {
        match self.endpoints.len() {
            0 => None,
            1 => Some(0),
            n => {
                let (a, b) = random_pair(n);
                let load = |i: usize| in_flight(&self.endpoints[i]);
                Some(if load(b) < load(a) { b } else { a })
            }
        }
    }
}

impl Balance for LeastRequest {
    fn pick(&self, _hash: Option<u64>) -> Option<Picked> {
        let index = self.choose()?;
        Some(Picked {
            index,
            load: LoadGuard::tracked(self.endpoints[index].clone(), None),
        })
    }

    fn len(&self) -> usize {
        self.endpoints.len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::in_flight;
    use super::super::tests::load::guards_count_in_flight_until_they_end;
    use super::LeastRequest;

    #[test]
    fn each_guard_counts_in_flight_until_it_ends() {
        guards_count_in_flight_until_they_end(&LeastRequest::new(3), |b| {
            b.endpoints.iter().map(in_flight).collect()
        });
    }
}
