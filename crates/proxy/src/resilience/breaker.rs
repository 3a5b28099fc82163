//! Circuit breakers of a cluster: at most `max_requests` requests and `max_retries` retries in
//! flight (until the response head). Overflowing requests are answered at once (503
//! `circuit_open`); an overflowing retry is skipped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
}

#[derive(Debug)]
pub struct Breaker {
    pub limits: Limits,
    requests: AtomicU32,
    retries: AtomicU32,
}

/// One admitted request or retry; gives its slot back when dropped.
#[derive(Debug)]
pub struct Slot {
    breaker: Arc<Breaker>,
    retry: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let c = if self.retry {
            &self.breaker.retries
        } else {
            &self.breaker.requests
        };
        c.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Breaker {
    pub fn new(limits: Limits) -> Self {
        Breaker {
            limits,
            requests: AtomicU32::new(0),
            retries: AtomicU32::new(0),
        }
    }

    fn take(counter: &AtomicU32, max: u32) -> bool {
        counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Admits a request, or `None` when `max_requests` are in flight.
    pub fn try_request(self: &Arc<Self>) -> Option<Slot> {
        Self::take(&self.requests, self.limits.max_requests).then(|| Slot {
            breaker: self.clone(),
            retry: false,
        })
    }

    /// Admits a retry, or `None` when `max_retries` are in flight.
    pub fn try_retry(self: &Arc<Self>) -> Option<Slot> {
        Self::take(&self.retries, self.limits.max_retries).then(|| Slot {
            breaker: self.clone(),
            retry: true,
        })
    }

    pub fn in_flight(&self) -> (u32, u32) {
        (
            self.requests.load(Ordering::Relaxed),
            self.retries.load(Ordering::Relaxed),
        )
    }
}
