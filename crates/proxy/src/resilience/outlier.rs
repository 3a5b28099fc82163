//! Passive outlier detection for one cluster, in the calling proxy (Envoy's outlier detection):
//! each endpoint's consecutive 5xx answers and consecutive gateway errors (502/503/504,
//! connect failure, reset, timeout), and optionally its success rate per interval. An
//! endpoint crossing a threshold is ejected for `base_ejection_time × times ejected` (capped
//! at `max_ejection_time`) and comes back by itself when that time is over.
//!
//! At most `max_ejection_percent` of the endpoints are ejected at once, but always at least
//! one (as Envoy does: with 3 endpoints and 10% one may still be ejected). When fewer than
//! `panic_threshold`% of the endpoints are available, ejections are ignored and every endpoint
//! is balanced over (a mostly ejected cluster is more likely a detector mistake than a real
//! outage of all but a few).
//!
//! The request path asks [`OutlierDetector::any_ejected`] first (one atomic load), so a
//! cluster without ejections costs nothing more per pick.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::retry::Outcome;

#[derive(Debug, Clone, PartialEq)]
pub struct OutlierConfig {
    /// `None`: not enforced.
    pub consecutive_5xx: Option<u32>,
    pub consecutive_gateway: Option<u32>,
    pub interval: Duration,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    pub max_ejection_percent: u32,
    pub panic_threshold: u32,
    pub success_rate: Option<SuccessRateConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SuccessRateConfig {
    pub minimum_hosts: u32,
    pub request_volume: u32,
    /// Divided by 1000 (Envoy's unit).
    pub stdev_factor: u32,
}

#[derive(Debug, Default)]
struct Host {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    /// Milliseconds since the detector's epoch until which the host is ejected; 0: not ejected.
    ejected_until: AtomicU64,
    times_ejected: AtomicU32,
    successes: AtomicU64,
    failures: AtomicU64,
}

#[derive(Debug)]
pub struct OutlierDetector {
    pub config: OutlierConfig,
    epoch: Instant,
    hosts: Box<[Host]>,
    ejected: AtomicUsize,
    ejections_total: AtomicU64,
    next_evaluation: Mutex<Instant>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl OutlierDetector {
    pub fn new(config: OutlierConfig, hosts: usize, now: Instant) -> Self {
        OutlierDetector {
            next_evaluation: Mutex::new(now + config.interval),
            config,
            // The epoch is a little in the past so that "until" is never 0 for a real ejection.
            epoch: now.checked_sub(Duration::from_secs(1)).unwrap_or(now),
            hosts: (0..hosts).map(|_| Host::default()).collect(),
            ejected: AtomicUsize::new(0),
            ejections_total: AtomicU64::new(0),
        }
    }

    fn now_ms(&self, now: Instant) -> u64 {
        ms(now.saturating_duration_since(self.epoch))
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Ejections since the detector was built.
    pub fn ejections(&self) -> u64 {
        self.ejections_total.load(Ordering::Relaxed)
    }

    /// Whether any endpoint is (or was, until checked again) ejected: the cheap first check.
    pub fn any_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed) > 0
    }

    /// Whether the ejections should be ignored: fewer than `panic_threshold`% of the endpoints
    /// are available.
    pub fn in_panic(&self) -> bool {
        let total = self.hosts.len();
        let available = total.saturating_sub(self.ejected.load(Ordering::Relaxed));
        available * 100 < total * self.config.panic_threshold as usize
    }

    /// Whether endpoint `i` is ejected at `now`; an ejection whose time is over ends here.
    pub fn is_ejected(&self, i: usize, now: Instant) -> bool {
        let Some(h) = self.hosts.get(i) else {
            return false;
        };
        let until = h.ejected_until.load(Ordering::Relaxed);
        if until == 0 {
            return false;
        }
        if self.now_ms(now) < until {
            return true;
        }
        // Time served: readmit (once, whoever sees it first).
        if h.ejected_until
            .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.ejected.fetch_sub(1, Ordering::Relaxed);
        }
        false
    }

    /// The most endpoints that may be ejected at once: `max_ejection_percent`, at least one.
    pub fn max_ejected(&self) -> usize {
        let n = self.hosts.len();
        (n * self.config.max_ejection_percent as usize / 100)
            .max(1)
            .min(n)
    }

    /// How many times endpoint `i` was ejected, as the ejection time multiplier sees it.
    pub fn times_ejected(&self, i: usize) -> u32 {
        self.hosts
            .get(i)
            .map_or(0, |h| h.times_ejected.load(Ordering::Relaxed))
    }

    /// Feeds one attempt's outcome on endpoint `i`; returns whether it got the endpoint ejected.
    pub fn record(&self, i: usize, outcome: Outcome, now: Instant) -> bool {
        let Some(h) = self.hosts.get(i) else {
            return false;
        };
        let mut ejected = false;
        if outcome.is_5xx() {
            h.failures.fetch_add(1, Ordering::Relaxed);
            let c5 = h.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
            let gw = if outcome.is_gateway_error() {
                h.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1
            } else {
                h.consecutive_gateway.store(0, Ordering::Relaxed);
                0
            };
            let trip = self.config.consecutive_5xx.is_some_and(|t| c5 >= t)
                || self.config.consecutive_gateway.is_some_and(|t| gw >= t);
            if trip {
                h.consecutive_5xx.store(0, Ordering::Relaxed);
                h.consecutive_gateway.store(0, Ordering::Relaxed);
                ejected = self.eject(i, now);
            }
        } else {
            h.successes.fetch_add(1, Ordering::Relaxed);
            h.consecutive_5xx.store(0, Ordering::Relaxed);
            h.consecutive_gateway.store(0, Ordering::Relaxed);
        }
        self.maybe_evaluate(now);
        ejected
    }

    /// Ejects endpoint `i` unless it already is or the max ejection share is reached.
    pub fn eject(&self, i: usize, now: Instant) -> bool {
        let Some(h) = self.hosts.get(i) else {
            return false;
        };
        if self.is_ejected(i, now) {
            return false;
        }
        let max = self.max_ejected();
        if self
            .ejected
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            return false;
        }
        let times = h.times_ejected.fetch_add(1, Ordering::Relaxed) + 1;
        let time = ejection_time(&self.config, times);
        h.ejected_until.store(
            self.now_ms(now).saturating_add(ms(time)).max(1),
            Ordering::Relaxed,
        );
        self.ejections_total.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Once per interval: readmits endpoints whose time is over, lowers the ejection multiplier
    /// of each endpoint that stayed in (as Envoy does, so a host that recovered for good is
    /// not punished for old ejections forever) and, when configured, ejects success-rate
    /// outliers.
    fn maybe_evaluate(&self, now: Instant) {
        let Ok(mut next) = self.next_evaluation.try_lock() else {
            return;
        };
        if now < *next {
            return;
        }
        *next = now + self.config.interval;
        drop(next);
        let stats: Vec<(u64, u64)> = self
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                if !self.is_ejected(i, now) {
                    let _ =
                        h.times_ejected
                            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                                t.checked_sub(1)
                            });
                }
                let s = h.successes.swap(0, Ordering::Relaxed);
                let f = h.failures.swap(0, Ordering::Relaxed);
                (s, s + f)
            })
            .collect();
        if let Some(sr) = &self.config.success_rate {
            for i in success_rate_outliers(&stats, sr) {
                self.eject(i, now);
            }
        }
    }
}

/// `base × times`, capped at `max` (and never below `base`).
pub fn ejection_time(config: &OutlierConfig, times: u32) -> Duration {
    config
        .base_ejection
        .saturating_mul(times.max(1))
        .min(config.max_ejection.max(config.base_ejection))
}

/// Envoy's success-rate outliers: among hosts with at least `request_volume` requests (and
/// only when at least `minimum_hosts` of them), those whose success rate is below
/// `mean − stdev × stdev_factor / 1000`. `stats` are (successes, total) per host.
pub fn success_rate_outliers(stats: &[(u64, u64)], config: &SuccessRateConfig) -> Vec<usize> {
    let rates: Vec<(usize, f64)> = stats
        .iter()
        .enumerate()
        .filter(|(_, (_, total))| *total >= u64::from(config.request_volume) && *total > 0)
        .map(|(i, (s, total))| (i, *s as f64 / *total as f64))
        .collect();
    if rates.len() < config.minimum_hosts as usize || rates.is_empty() {
        return Vec::new();
    }
    let n = rates.len() as f64;
    let mean = rates.iter().map(|(_, r)| r).sum::<f64>() / n;
    let variance = rates.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / n;
    let threshold = mean - variance.sqrt() * f64::from(config.stdev_factor) / 1000.0;
    rates
        .into_iter()
        // The epsilon keeps equal rates (whose mean rounds above them) from being outliers.
        .filter(|(_, r)| *r < threshold - 1e-9)
        .map(|(i, _)| i)
        .collect()
}
