use std::sync::Arc;

use crate::resilience::breaker::{Breaker, Limits};

#[test]
fn slots_are_limited_and_given_back() {
    let b = Arc::new(Breaker::new(Limits {
        max_connections: 1024,
        max_pending_requests: 1024,
        max_requests: 2,
        max_retries: 1,
    }));
    let a = b.try_request().expect("first");
    let c = b.try_request().expect("second");
    assert!(b.try_request().is_none(), "third overflows");
    let r = b.try_retry().expect("retry");
    assert!(b.try_retry().is_none());
    assert_eq!(b.in_flight(), (2, 1));
    drop(a);
    drop(r);
    assert!(b.try_request().is_some());
    assert!(b.try_retry().is_some());
    drop(c);
    assert_eq!(b.in_flight(), (0, 0));
}

#[test]
fn connections_and_pending_requests_are_limited_and_given_back() {
    let b = Arc::new(Breaker::new(Limits {
        max_connections: 1,
        max_pending_requests: 2,
        max_requests: 1024,
        max_retries: 1024,
    }));
    let c = b.try_connection().expect("first connection");
    assert!(b.try_connection().is_none(), "second connection overflows");
    let p1 = b.try_pending().expect("first pending");
    let _p2 = b.try_pending().expect("second pending");
    assert!(b.try_pending().is_none(), "third pending overflows");
    assert_eq!(b.connections_and_pending(), (1, 2));
    assert_eq!(b.in_flight(), (0, 0), "other counters untouched");
    drop(c);
    drop(p1);
    assert!(b.try_connection().is_some());
    assert!(b.try_pending().is_some());
}
