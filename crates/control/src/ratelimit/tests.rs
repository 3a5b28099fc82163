//! Lease splitting: table-style, on tokio's paused clock.

use std::time::Duration;

use tokio::time::Instant;
use trellis_model::LeaseRequest;

use super::*;

fn req(instance: &str, demand: f64) -> LeaseRequest {
    LeaseRequest {
        service: "catalog".into(),
        instance: instance.into(),
        rule: "ratelimit-0".into(),
        demand,
    }
}

/// Leases every sharer in turn, `rounds` times; the last grant of each.
fn rounds(l: &Leases, demands: &[(&str, f64)], rounds: usize, now: Instant) -> Vec<f64> {
    let mut last = vec![0.0; demands.len()];
    for _ in 0..rounds {
        for (i, (id, d)) in demands.iter().enumerate() {
            last[i] = l.grant(&req(id, *d), 100.0, 10, now).tokens_per_second;
            let held: f64 = last.iter().sum();
            assert!(held <= 100.0 + 1e-6, "held {held} > rate: {last:?}");
        }
    }
    last
}

#[tokio::test(start_paused = true)]
async fn shares_follow_demand_and_never_sum_past_the_rate() {
    let l = Leases::default();
    let now = Instant::now();
    // Alone: everything.
    let g = l.grant(&req("a", 0.0), 100.0, 10, now);
    assert!((g.tokens_per_second - 100.0).abs() < 1e-9 && g.burst == 10 && g.sharers == 1);
    // Three with equal demand settle on a third each.
    let shares = rounds(&l, &[("a", 50.0), ("b", 50.0), ("c", 50.0)], 4, now);
    for s in &shares {
        assert!((s - 100.0 / 3.0).abs() < 1e-6, "{shares:?}");
    }
    // Max-min fair: the idle one keeps its floor, one wanting 24 gets 24, the busy one the rest.
    let shares = rounds(&l, &[("a", 300.0), ("b", 20.0), ("c", 0.0)], 4, now);
    let sum: f64 = shares.iter().sum();
    assert!((sum - 100.0).abs() < 1e-6, "{shares:?}");
    let floor = 100.0 / 30.0;
    assert!((shares[2] - floor).abs() < 1e-6, "{shares:?}");
    assert!((shares[1] - 24.0).abs() < 1e-6, "{shares:?}");
    assert!(
        (shares[0] - (100.0 - 24.0 - floor)).abs() < 1e-6,
        "{shares:?}"
    );
    // All idle: the rate is split equally, not left unused.
    let shares = rounds(&l, &[("a", 0.0), ("b", 0.0), ("c", 0.0)], 4, now);
    for s in &shares {
        assert!((s - 100.0 / 3.0).abs() < 1e-6, "{shares:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn silent_sharers_expire() {
    let l = Leases::default();
    let now = Instant::now();
    l.grant(&req("a", 10.0), 90.0, 9, now);
    l.grant(&req("b", 10.0), 90.0, 9, now);
    let later = now + SHARER_EXPIRY + Duration::from_millis(1);
    let g = l.grant(&req("a", 10.0), 90.0, 9, later);
    assert_eq!(g.sharers, 1);
    assert!((g.tokens_per_second - 90.0).abs() < 1e-9);
    // Rules are separate.
    let other = LeaseRequest {
        rule: "default".into(),
        ..req("b", 1.0)
    };
    assert_eq!(l.grant(&other, 5.0, 1, later).sharers, 1);
}
