use std::time::{Duration, Instant};

use crate::resilience::outlier::{
    OutlierConfig, OutlierDetector, SuccessRateConfig, ejection_time, success_rate_outliers,
};
use crate::resilience::retry::Outcome;

fn config() -> OutlierConfig {
    OutlierConfig {
        consecutive_5xx: Some(5),
        consecutive_gateway: Some(3),
        interval: Duration::from_secs(10),
        base_ejection: Duration::from_secs(30),
        max_ejection: Duration::from_secs(300),
        max_ejection_percent: 10,
        panic_threshold: 50,
        success_rate: None,
    }
}

fn resp(status: u16) -> Outcome {
    Outcome::Response { status, grpc: None }
}

#[test]
fn consecutive_counters_eject_and_successes_reset_them() {
    let t0 = Instant::now();
    let d = OutlierDetector::new(config(), 10, t0);
    // 4 × 500 then a success: no ejection; the counter starts again.
    for _ in 0..4 {
        assert!(!d.record(0, resp(500), t0));
    }
    assert!(!d.record(0, resp(200), t0));
    for _ in 0..4 {
        assert!(!d.record(0, resp(500), t0));
    }
    assert!(d.record(0, resp(500), t0), "5th consecutive 5xx ejects");
    assert!(d.is_ejected(0, t0) && d.any_ejected());
    // Gateway errors: 3 in a row (connect failure, reset, 503) on another host.
    let d = OutlierDetector::new(config(), 10, t0);
    assert!(!d.record(1, Outcome::ConnectFailure, t0));
    assert!(!d.record(1, Outcome::Reset, t0));
    assert!(d.record(1, resp(503), t0));
    // A 500 between gateway errors resets the gateway counter (not the 5xx one).
    let d = OutlierDetector::new(config(), 10, t0);
    d.record(2, Outcome::Timeout, t0);
    d.record(2, Outcome::Timeout, t0);
    assert!(!d.record(2, resp(500), t0));
    assert!(!d.record(2, Outcome::Timeout, t0));
    assert!(!d.is_ejected(2, t0));
}

#[test]
fn ejection_time_grows_with_each_ejection_and_is_capped() {
    let c = config();
    let s = Duration::from_secs;
    assert_eq!(ejection_time(&c, 1), s(30));
    assert_eq!(ejection_time(&c, 2), s(60));
    assert_eq!(ejection_time(&c, 10), s(300));
    assert_eq!(ejection_time(&c, u32::MAX), s(300));
    let t0 = Instant::now();
    let d = OutlierDetector::new(c, 10, t0);
    assert!(d.eject(3, t0));
    assert!(d.is_ejected(3, t0 + s(29)));
    assert!(!d.is_ejected(3, t0 + s(31)), "readmitted after 30s");
    assert!(!d.any_ejected());
    let t1 = t0 + s(40);
    assert!(d.eject(3, t1));
    assert!(d.is_ejected(3, t1 + s(59)), "second ejection lasts 60s");
    assert!(!d.is_ejected(3, t1 + s(61)));
    assert_eq!(d.ejections(), 2);
}

#[test]
fn max_ejection_percent_allows_at_least_one() {
    let t0 = Instant::now();
    let cases: &[(usize, u32, usize)] = &[
        (3, 10, 1),
        (10, 10, 1),
        (20, 10, 2),
        (4, 50, 2),
        (4, 100, 4),
        (1, 10, 1),
        (5, 0, 1),
    ];
    for (hosts, pct, max) in cases {
        let d = OutlierDetector::new(
            OutlierConfig {
                max_ejection_percent: *pct,
                ..config()
            },
            *hosts,
            t0,
        );
        assert_eq!(d.max_ejected(), *max, "{hosts} hosts, {pct}%");
        let ejected = (0..*hosts).filter(|i| d.eject(*i, t0)).count();
        assert_eq!(ejected, *max, "{hosts} hosts, {pct}%");
    }
}

#[test]
fn panic_threshold() {
    let t0 = Instant::now();
    let cases: &[(usize, u32, usize, bool)] = &[
        (3, 50, 1, false),
        (2, 50, 1, false),
        (4, 50, 3, true),
        (10, 50, 5, false),
        (10, 50, 6, true),
        (3, 0, 3, false),
        (1, 50, 1, true),
    ];
    for (hosts, threshold, eject, panic) in cases {
        let d = OutlierDetector::new(
            OutlierConfig {
                max_ejection_percent: 100,
                panic_threshold: *threshold,
                ..config()
            },
            *hosts,
            t0,
        );
        for i in 0..*eject {
            d.eject(i, t0);
        }
        assert_eq!(
            d.in_panic(),
            *panic,
            "{hosts} hosts, {eject} ejected, {threshold}%"
        );
    }
}

#[test]
fn success_rate_outliers_as_envoy() {
    let sr = SuccessRateConfig {
        minimum_hosts: 3,
        request_volume: 10,
        stdev_factor: 1000,
    };
    // Four good hosts and one at 50%: the bad one is an outlier.
    let stats = [(100, 100), (99, 100), (100, 100), (98, 100), (50, 100)];
    assert_eq!(success_rate_outliers(&stats, &sr), vec![4]);
    // Too few requests on the bad one: not judged.
    let stats = [(100, 100), (100, 100), (100, 100), (5, 9)];
    assert!(success_rate_outliers(&stats, &sr).is_empty());
    // Too few hosts with enough volume.
    let stats = [(100, 100), (10, 100)];
    assert!(success_rate_outliers(&stats, &sr).is_empty());
    // All equal: nobody below mean − stdev.
    let stats = [(90, 100); 5];
    assert!(success_rate_outliers(&stats, &sr).is_empty());
    assert!(success_rate_outliers(&[], &sr).is_empty());
}

#[test]
fn out_of_range_indexes_are_ignored() {
    let t0 = Instant::now();
    let d = OutlierDetector::new(config(), 2, t0);
    assert!(!d.record(7, resp(500), t0));
    assert!(!d.eject(7, t0));
    assert!(!d.is_ejected(7, t0));
}

#[test]
fn the_multiplier_goes_down_while_an_endpoint_stays_in() {
    let s = Duration::from_secs;
    let t0 = Instant::now();
    let d = OutlierDetector::new(config(), 10, t0);
    assert!(d.eject(0, t0));
    let t1 = t0 + s(31);
    assert!(d.eject(0, t1));
    assert_eq!(d.times_ejected(0), 2);
    // Readmitted after 60s; every interval (10s) in service takes one ejection off.
    let back = t1 + s(61);
    d.record(1, resp(200), back);
    assert_eq!(d.times_ejected(0), 1);
    d.record(1, resp(200), back + s(5));
    assert_eq!(d.times_ejected(0), 1, "not before the next interval");
    d.record(1, resp(200), back + s(11));
    assert_eq!(d.times_ejected(0), 0);
    d.record(1, resp(200), back + s(22));
    assert_eq!(d.times_ejected(0), 0);
    // While ejected, the multiplier stays.
    assert!(d.eject(2, back + s(22)));
    d.record(1, resp(200), back + s(33));
    assert_eq!(d.times_ejected(2), 1);
}
