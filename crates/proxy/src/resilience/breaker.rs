//! Circuit breakers of a cluster (Envoy's): at most `max_requests` requests and `max_retries`
//! retries in flight (until the response head), `max_connections` upstream HTTP/1.1
//! connections open, and `max_pending_requests` requests waiting for a connection (while one
//! is being made, or for a busy one to be free when the connections are at their limit).
//! Overflowing requests are answered at once (503 `circuit_open`); an overflowing retry is
//! skipped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
}

/// The four resources a breaker counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resource {
    Requests,
    Retries,
    Connections,
    Pending,
}

#[derive(Debug)]
pub struct Breaker {
    pub limits: Limits,
    requests: AtomicU32,
    retries: AtomicU32,
    connections: AtomicU32,
    pending: AtomicU32,
}

/// One admitted request, retry, connection or pending request; gives its slot back when
/// dropped.
#[derive(Debug)]
pub struct Slot {
    breaker: Arc<Breaker>,
    resource: Resource,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.breaker
            .counter(self.resource)
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Breaker {
    pub fn new(limits: Limits) -> Self {
        Breaker {
            limits,
            requests: AtomicU32::new(0),
            retries: AtomicU32::new(0),
            connections: AtomicU32::new(0),
            pending: AtomicU32::new(0),
        }
    }

    fn counter(&self, r: Resource) -> &AtomicU32 {
        match r {
            Resource::Requests => &self.requests,
            Resource::Retries => &self.retries,
            Resource::Connections => &self.connections,
            Resource::Pending => &self.pending,
        }
    }

    fn take(self: &Arc<Self>, resource: Resource, max: u32) -> Option<Slot> {
        self.counter(resource)
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot {
                breaker: self.clone(),
                resource,
            })
    }

    /// Admits a request, or `None` when `max_requests` are in flight.
    pub fn try_request(self: &Arc<Self>) -> Option<Slot> {
        self.take(Resource::Requests, self.limits.max_requests)
    }

    /// Admits a retry, or `None` when `max_retries` are in flight.
    pub fn try_retry(self: &Arc<Self>) -> Option<Slot> {
        self.take(Resource::Retries, self.limits.max_retries)
    }

    /// Admits a new upstream connection, or `None` when `max_connections` are open. The slot
    /// lives as long as the connection.
    pub fn try_connection(self: &Arc<Self>) -> Option<Slot> {
        self.take(Resource::Connections, self.limits.max_connections)
    }

    /// Admits a request that has to wait for a connection, or `None` when
    /// `max_pending_requests` already wait.
    pub fn try_pending(self: &Arc<Self>) -> Option<Slot> {
        self.take(Resource::Pending, self.limits.max_pending_requests)
    }

    /// Requests and retries in flight.
    pub fn in_flight(&self) -> (u32, u32) {
        (
            self.requests.load(Ordering::Relaxed),
            self.retries.load(Ordering::Relaxed),
        )
    }

    /// Open connections and pending requests.
    pub fn connections_and_pending(&self) -> (u32, u32) {
        (
            self.connections.load(Ordering::Relaxed),
            self.pending.load(Ordering::Relaxed),
        )
    }
}
