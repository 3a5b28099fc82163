use std::time::{Duration, Instant};

use crate::resilience::budget::{BudgetConfig, RetryBudget};

#[test]
fn retries_are_a_share_of_requests_plus_a_floor_per_second() {
    let t0 = Instant::now();
    let b = RetryBudget::new(
        BudgetConfig {
            percent: 20.0,
            min_per_second: 3,
        },
        t0,
    );
    let at = |ms| t0 + Duration::from_millis(ms);
    // No requests yet: the floor only.
    let granted = (0..10).filter(|_| b.try_retry(at(10))).count();
    assert_eq!(granted, 3);
    // 50 requests in the same second: 20% more.
    for _ in 0..50 {
        b.on_request(at(20));
    }
    let granted = (0..100).filter(|_| b.try_retry(at(30))).count();
    assert_eq!(granted, 10, "3 + 20% of 50 = 13 in all, 3 already taken");
    // A new second starts afresh.
    assert!(b.try_retry(at(1_010)));
}

#[test]
fn a_long_outage_stays_within_the_bound() {
    let t0 = Instant::now();
    let b = RetryBudget::new(
        BudgetConfig {
            percent: 20.0,
            min_per_second: 3,
        },
        t0,
    );
    // 5 seconds, 100 requests a second, each wanting 3 retries.
    let mut retries = 0;
    for ms in 0..5_000u64 {
        let now = t0 + Duration::from_millis(ms);
        if ms % 10 == 0 {
            b.on_request(now);
            retries += (0..3).filter(|_| b.try_retry(now)).count();
        }
    }
    assert!(retries <= 500 * 20 / 100 + 3 * 5, "{retries}");
    assert!(retries >= 100, "{retries}");
}
