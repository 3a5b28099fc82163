//! Load-aware balancers: least request (P2C on in-flight) and peak EWMA.

use std::time::Duration;

use super::super::{Algorithm, Balance, LoadGuard, PEAK_EWMA_DEFAULT_DECAY, build};
use super::endpoints;

const PEAK_EWMA: Algorithm = Algorithm::PeakEwma {
    decay: PEAK_EWMA_DEFAULT_DECAY,
};

/// Picks until `target` is picked `count` times, keeping those guards and dropping the rest.
fn hold(balancer: &dyn Balance, target: usize, count: usize) -> Vec<LoadGuard> {
    let mut held = Vec::new();
    for _ in 0..10_000 {
        if held.len() == count {
            return held;
        }
        let picked = balancer.pick(None).expect("non-empty balancer picks");
        if picked.index == target {
            held.push(picked.load);
        }
    }
    panic!("endpoint {target} was picked only {} times", held.len());
}

fn assert_prefers_idle_endpoint(algorithm: &Algorithm) {
    let balancer = build(algorithm, &endpoints(2));
    let held = hold(&*balancer, 0, 1);
    // Two endpoints: P2C compares both every time, and endpoint 0 has a request in flight.
    for _ in 0..200 {
        assert_eq!(
            balancer.pick(None).map(|p| p.index),
            Some(1),
            "{algorithm:?}"
        );
    }
    // Ending the request (without a latency sample) makes endpoint 0 eligible again.
    drop(held);
    let back = (0..200).any(|_| balancer.pick(None).map(|p| p.index) == Some(0));
    assert!(
        back,
        "{algorithm:?}: endpoint 0 never picked after its request ended"
    );
}

#[test]
fn least_request_prefers_the_endpoint_with_fewer_in_flight() {
    assert_prefers_idle_endpoint(&Algorithm::LeastRequest);
}

#[test]
fn peak_ewma_prefers_the_endpoint_with_fewer_in_flight() {
    assert_prefers_idle_endpoint(&PEAK_EWMA);
}

#[test]
fn least_request_keeps_in_flight_counts_level() {
    // Holding every request open, P2C keeps the spread of in-flight counts to a few (about
    // log log n); uniform random picks would spread them by ~±30 here.
    let balancer = build(&Algorithm::LeastRequest, &endpoints(10));
    let mut in_flight = [0usize; 10];
    let mut held = Vec::new();
    for _ in 0..1_000 {
        let picked = balancer.pick(None).expect("non-empty balancer picks");
        in_flight[picked.index] += 1;
        held.push(picked.load);
    }
    let (min, max) = (in_flight.iter().min(), in_flight.iter().max());
    let spread = max.zip(min).map(|(max, min)| max - min);
    assert!(spread.is_some_and(|s| s <= 6), "in flight: {in_flight:?}");
}

#[test]
fn completed_and_dropped_guards_both_end_the_request() {
    let balancer = build(&Algorithm::LeastRequest, &endpoints(2));
    hold(&*balancer, 0, 1)
        .into_iter()
        .for_each(LoadGuard::complete);
    hold(&*balancer, 1, 1)
        .into_iter()
        .for_each(|g| g.complete_with(Duration::from_millis(1)));
    // Both back to zero in flight: both are picked again.
    let counts = super::counts(&*balancer, 400, None);
    assert!(counts.iter().all(|&c| c > 0), "{counts:?}");
}

/// Sequential requests where endpoint `slow` takes 50 ms longer than the others.
fn simulate(balancer: &dyn Balance, slow: usize, requests: usize) -> Vec<usize> {
    let mut counts = vec![0; balancer.len()];
    for _ in 0..requests {
        let picked = balancer.pick(None).expect("non-empty balancer picks");
        counts[picked.index] += 1;
        let rtt = if picked.index == slow { 60 } else { 10 };
        picked.load.complete_with(Duration::from_millis(rtt));
    }
    counts
}

#[test]
fn peak_ewma_sends_far_less_than_a_fair_share_to_a_slow_endpoint() {
    let balancer = build(&PEAK_EWMA, &endpoints(4));
    let counts = simulate(&*balancer, 3, 2_000);
    // A fair share is 500; once its first 60 ms sample arrives the slow endpoint loses every
    // comparison (only a pause of many seconds would let its estimate decay enough to win one).
    assert!(counts[3] < 50, "{counts:?}");
    // Least request, blind to latency, gives it a fair share: the difference is the EWMA.
    let blind = simulate(&*build(&Algorithm::LeastRequest, &endpoints(4)), 3, 2_000);
    assert!(blind[3] > 300, "{blind:?}");
}

#[test]
fn peak_ewma_shuns_an_endpoint_at_its_first_slow_response() {
    let balancer = build(&PEAK_EWMA, &endpoints(2));
    // Both learn 10 ms (endpoint 1 is picked while 0 is busy), then one response of endpoint 0
    // takes a second.
    let mut first = hold(&*balancer, 0, 1);
    first.extend(hold(&*balancer, 1, 1));
    first
        .into_iter()
        .for_each(|g| g.complete_with(Duration::from_millis(10)));
    hold(&*balancer, 0, 1)
        .into_iter()
        .for_each(|g| g.complete_with(Duration::from_secs(1)));
    // Peak sensitivity: the estimate jumps to 1 s at once, and endpoint 1 takes everything.
    // (10 ms x 51 in flight would still be cheaper than 1 s idle, so hold up to 50.)
    let mut held = Vec::new();
    for _ in 0..50 {
        let picked = balancer.pick(None).expect("non-empty balancer picks");
        assert_eq!(picked.index, 1);
        held.push(picked.load);
    }
}

#[test]
fn peak_ewma_tries_fresh_endpoints_over_busy_ones() {
    // Endpoint 0 is measured at 1 ms; endpoint 1 is fresh, assumed to take 30 ms.
    let balancer = build(&PEAK_EWMA, &endpoints(2));
    hold(&*balancer, 0, 1)
        .into_iter()
        .for_each(|g| g.complete_with(Duration::from_millis(1)));
    // The first sample replaces the guess, so endpoint 0 is cheaper while 1 ms x (in flight + 1)
    // stays below 30 ms...
    let mut held = Vec::new();
    while held.len() < 25 {
        let picked = balancer.pick(None).expect("non-empty balancer picks");
        assert_eq!(picked.index, 0, "with {} in flight", held.len());
        held.push(picked.load);
    }
    // ...and the fresh endpoint gets tried once endpoint 0 is busy enough (30 in flight ties).
    loop {
        let picked = balancer.pick(None).expect("non-empty balancer picks");
        if picked.index == 1 {
            break;
        }
        held.push(picked.load);
        assert!(
            held.len() <= 30,
            "fresh endpoint not tried with {} in flight",
            held.len()
        );
    }
}

/// Checks that `loads` (a balancer's in-flight count per endpoint) follows the request guards
/// of six picks over three endpoints: one completed, one dropped, then all dropped.
pub(in crate::balance) fn guards_count_in_flight_until_they_end<B: Balance>(
    balancer: &B,
    loads: impl Fn(&B) -> Vec<usize>,
) {
    let picks: Vec<_> = (0..6).filter_map(|_| balancer.pick(None)).collect();
    let mut expected = vec![0; 3];
    picks.iter().for_each(|p| expected[p.index] += 1);
    assert_eq!(loads(balancer), expected);
    let mut picks = picks.into_iter();
    let (Some(first), Some(second)) = (picks.next(), picks.next()) else {
        panic!("a balancer of three endpoints picked fewer than two times in six");
    };
    expected[first.index] -= 1;
    first.load.complete_with(Duration::from_millis(3));
    expected[second.index] -= 1;
    drop(second);
    assert_eq!(loads(balancer), expected);
    drop(picks);
    assert_eq!(loads(balancer), vec![0; 3]);
}
