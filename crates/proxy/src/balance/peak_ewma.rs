//! Peak EWMA (Linkerd/Finagle): power of two choices on `latency estimate × (in flight + 1)`.
//!
//! Each endpoint keeps an exponentially weighted moving average of its round-trip time that is
//! *peak sensitive*: a sample above the estimate replaces it at once (a slowing endpoint is
//! shunned immediately), a lower one pulls it down with weight `1 - e^(-Δt/decay)`, where `Δt`
//! is the time since the previous sample (so it recovers over about `decay`, not after a fixed
//! number of requests). Multiplying by the in-flight count (+1) makes a fast endpoint that is
//! already busy look as expensive as a slower idle one.
//!
//! A fresh endpoint starts at [`super::PEAK_EWMA_DEFAULT_RTT`], so it is tried as soon as the
//! known endpoints are slower or busier than that; its first response replaces that guess
//! outright (unlike tower's `PeakEwma`, where a guess above the real latency takes about `decay`
//! to wear off). When reading the cost, a measured estimate also decays toward zero with the
//! time since its last sample (as in Linkerd), so an endpoint that was shunned for being slow is
//! probed again after a while instead of starving forever; the read does not store, so it never
//! distorts the average.
//!
//! Lock-free: the estimate is an `f64`'s bits in an `AtomicU64` and the sample time a second
//! atomic, both updated with plain stores (no compare-and-swap: the locked instructions cost
//! more than the rest of the update). Two completions of one endpoint racing can at worst lose
//! one of the two samples; the next sample corrects the estimate. The in-flight count is the
//! endpoint's `Arc` strong count ([`in_flight`]), as in least request: one locked instruction to pick
//! and one to end the request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{
    Balance, LoadGuard, LoadTracker, PEAK_EWMA_DEFAULT_RTT, Picked, in_flight, random_pair,
};

#[derive(Debug)]
pub(crate) struct PeakEwma {
    /// Cloned only into [`LoadGuard`]s: the clones are the requests in flight.
    endpoints: Vec<Arc<Endpoint>>,
    epoch: Instant,
}

/// One endpoint's latency estimate. Not cache-line aligned: an aligned `Arc` payload starts a
/// line after the `Arc`'s counts, and a pick reads both.
#[derive(Debug)]
struct Endpoint {
    /// The RTT estimate in nanoseconds, as `f64::to_bits`.
    estimate_ns: AtomicU64,
    /// One more than when the estimate was last sampled, in nanoseconds since `epoch`; 0 while
    /// the estimate is still the default guess.
    sampled_ns: AtomicU64,
    epoch: Instant,
    /// `1 / decay` in 1/ns: a multiply on the hot path instead of a divide.
    per_decay_ns: f64,
}

const NEVER_SAMPLED: u64 = 0;

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Endpoint {
    fn new(epoch: Instant, decay: Duration) -> Self {
        Endpoint {
            estimate_ns: AtomicU64::new((nanos(PEAK_EWMA_DEFAULT_RTT) as f64).to_bits()),
            sampled_ns: AtomicU64::new(NEVER_SAMPLED),
            epoch,
            // A zero decay would divide by zero; one nanosecond means "only the last sample".
            per_decay_ns: 1.0 / (nanos(decay) as f64).max(1.0),
        }
    }

    /// `e^(-elapsed/decay)`: how much of the old estimate survives `elapsed` nanoseconds.
    fn survival(&self, elapsed_ns: u64) -> f64 {
        let x = elapsed_ns as f64 * self.per_decay_ns;
        // A busy endpoint was sampled moments ago: there `1 - x` is e^-x within x²/2 (5e-7 at
        // most), and skipping `exp` keeps the pick cheap.
        if x < 1e-3 { 1.0 - x } else { (-x).exp() }
    }

    /// How much of the estimate sampled at `sampled` (as stored) survives until `now_ns`.
    fn survival_since(&self, sampled: u64, now_ns: u64) -> f64 {
        match sampled {
            NEVER_SAMPLED => 1.0,
            sampled => self.survival(now_ns.saturating_sub(sampled - 1)),
        }
    }

    /// The estimate decayed to `now_ns`, times the requests in flight plus one.
    fn cost(&self, now_ns: u64, pending: usize) -> f64 {
        let estimate = f64::from_bits(self.estimate_ns.load(Ordering::Relaxed));
        let sampled = self.sampled_ns.load(Ordering::Relaxed);
        estimate * self.survival_since(sampled, now_ns) * (pending + 1) as f64
    }

    /// Records a latency sample that arrived at `at`.
    ///
    /// Plain loads and stores, no read-modify-write: two completions of the same endpoint racing
    /// can lose one sample (the next one corrects the estimate), which costs far less than two
    /// locked instructions on every response.
    fn observe(&self, rtt: Duration, at: Instant) {
        let now_ns = nanos(at.saturating_duration_since(self.epoch));
        let sample = nanos(rtt) as f64;
        let estimate = f64::from_bits(self.estimate_ns.load(Ordering::Relaxed));
        let sampled = self.sampled_ns.load(Ordering::Relaxed);
        let next = if sample >= estimate || sampled == NEVER_SAMPLED {
            sample
        } else {
            let keep = self.survival_since(sampled, now_ns);
            estimate * keep + sample * (1.0 - keep)
        };
        self.estimate_ns.store(next.to_bits(), Ordering::Relaxed);
        let stamp = now_ns.saturating_add(1);
        if stamp > sampled {
            self.sampled_ns.store(stamp, Ordering::Relaxed);
        }
    }
}

impl LoadTracker for Endpoint {
    fn finish(&self, rtt: Option<Duration>, started: Option<Instant>) {
        if let Some(rtt) = rtt {
            // The response arrived `rtt` after the pick: no second clock read on the hot path.
            let at = started.and_then(|s| s.checked_add(rtt));
            self.observe(rtt, at.unwrap_or_else(Instant::now));
        }
        // The guard's clone of this endpoint is dropped right after: that ends the request.
    }
}

impl PeakEwma {
    pub(crate) fn new(len: usize, decay: Duration) -> Self {
        let epoch = Instant::now();
        PeakEwma {
            endpoints: (0..len)
                .map(|_| Arc::new(Endpoint::new(epoch, decay)))
                .collect(),
            epoch,
        }
    }
}

impl Balance for PeakEwma {
    fn pick(&self, hash: Option<u64>) -> Option<Picked> {
        self.pick_at(hash, Instant::now())
    }

    fn pick_at(&self, _hash: Option<u64>, now: Instant) -> Option<Picked> {
        let index = match self.endpoints.len() {
            0 => return None,
            1 => 0,
            n => {
                let (a, b) = random_pair(n);
                let now_ns = nanos(now.saturating_duration_since(self.epoch));
                let cost = |i: usize| {
                    let endpoint = &self.endpoints[i];
                    endpoint.cost(now_ns, in_flight(endpoint))
                };
                if cost(b) < cost(a) { b } else { a }
            }
        };
        Some(Picked {
            index,
            load: LoadGuard::tracked(self.endpoints[index].clone(), Some(now)),
        })
    }

    fn len(&self) -> usize {
        self.endpoints.len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::PEAK_EWMA_DEFAULT_DECAY;
    use super::super::in_flight;
    use super::super::tests::load::guards_count_in_flight_until_they_end;
    use super::PeakEwma;

    #[test]
    fn each_guard_counts_in_flight_until_it_ends() {
        guards_count_in_flight_until_they_end(&PeakEwma::new(3, PEAK_EWMA_DEFAULT_DECAY), |b| {
            b.endpoints.iter().map(in_flight).collect()
        });
    }
}
