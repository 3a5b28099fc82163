//! Distribution of the stateless balancers: round robin, random, weighted.

use std::sync::Arc;

use super::super::{Algorithm, Balance, build};
use super::{counts, endpoints, weighted};

#[test]
fn round_robin_is_exactly_even() {
    let balancer = build(&Algorithm::RoundRobin, &endpoints(7));
    assert_eq!(counts(&*balancer, 7_000, None), vec![1_000; 7]);
}

#[test]
fn round_robin_visits_endpoints_in_order() {
    let balancer = build(&Algorithm::RoundRobin, &endpoints(3));
    let order: Vec<usize> = (0..6)
        .map(|_| balancer.pick(None).map(|p| p.index))
        .collect::<Option<_>>()
        .expect("picks");
    assert_eq!(order, [0, 1, 2, 0, 1, 2]);
}

#[test]
fn round_robin_is_exactly_even_across_threads() {
    let balancer: Arc<dyn Balance> = build(&Algorithm::RoundRobin, &endpoints(5));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let balancer = balancer.clone();
            std::thread::spawn(move || counts(&*balancer, 5_000, None))
        })
        .collect();
    let mut total = vec![0; 5];
    for thread in threads {
        let counts = thread.join().expect("picking thread");
        total.iter_mut().zip(counts).for_each(|(t, c)| *t += c);
    }
    assert_eq!(total, vec![4_000; 5]);
}

#[test]
fn random_is_uniform_within_tolerance() {
    let balancer = build(&Algorithm::Random, &endpoints(4));
    // 10,000 expected per endpoint, standard deviation ~87: 5% is ~6 sigma.
    for (i, count) in counts(&*balancer, 40_000, None).into_iter().enumerate() {
        assert!((9_500..=10_500).contains(&count), "endpoint {i}: {count}");
    }
}

fn assert_within(counts: &[usize], weights: &[u32], tolerance: f64) {
    let total_weight: u32 = weights.iter().sum();
    let picks: usize = counts.iter().sum();
    for (i, (&count, &w)) in counts.iter().zip(weights).enumerate() {
        let expected = picks as f64 * f64::from(w) / f64::from(total_weight);
        let error = (count as f64 - expected).abs() / expected;
        assert!(
            error <= tolerance,
            "endpoint {i} (weight {w}): {count} picks, expected {expected:.0}"
        );
    }
}

#[test]
fn weighted_is_within_three_percent_of_weights() {
    let weights = [1, 2, 3, 4, 7, 13];
    let balancer = build(&Algorithm::Weighted, &weighted(&weights));
    assert_within(&counts(&*balancer, 10_000, None), &weights, 0.03);
}

#[test]
fn weighted_spreads_picks_instead_of_running() {
    let balancer = build(&Algorithm::Weighted, &weighted(&[5, 1, 1]));
    let cycle: Vec<usize> = (0..7)
        .map(|_| balancer.pick(None).map(|p| p.index))
        .collect::<Option<_>>()
        .expect("picks");
    assert_eq!(cycle, [0, 1, 0, 0, 0, 2, 0]);
    assert!(longest_run(&*balancer, 70) <= 3);
}

/// Longest run of one endpoint in `picks` consecutive picks.
fn longest_run(balancer: &dyn Balance, picks: usize) -> usize {
    let (mut longest, mut run, mut last) = (0, 0, usize::MAX);
    for _ in 0..picks {
        let index = balancer.pick(None).map(|p| p.index);
        let index = index.expect("non-empty balancer picks");
        run = if index == last { run + 1 } else { 1 };
        last = index;
        longest = longest.max(run);
    }
    longest
}

#[test]
fn weighted_runs_are_no_longer_than_the_weights_force() {
    // Share 10/13 for the heavy endpoint: at most ceil(10 / 3) = 4 in a row, across cycles too.
    let balancer = build(&Algorithm::Weighted, &weighted(&[10, 1, 1, 1]));
    assert!(longest_run(&*balancer, 130) <= 4);
    // Equal weights are plain round robin.
    let balancer = build(&Algorithm::Weighted, &weighted(&[3, 3, 3]));
    assert_eq!(counts(&*balancer, 9, None), [3, 3, 3]);
    assert_eq!(longest_run(&*balancer, 90), 1);
}

#[test]
fn weighted_treats_zero_as_one() {
    let balancer = build(&Algorithm::Weighted, &weighted(&[0, 1, 2]));
    assert_eq!(counts(&*balancer, 400, None), [100, 100, 200]);
}

#[test]
fn weighted_with_a_huge_total_falls_back_to_alias_sampling() {
    // Coprime weights summing past the schedule limit.
    let weights = [40_000, 30_001, 10_007];
    let balancer = build(&Algorithm::Weighted, &weighted(&weights));
    assert_within(&counts(&*balancer, 100_000, None), &weights, 0.05);
}

#[test]
fn every_algorithm_picks_none_when_empty() {
    for algorithm in super::all_algorithms() {
        let balancer = build(&algorithm, &[]);
        assert!(balancer.is_empty());
        assert!(balancer.pick(Some(7)).is_none(), "{algorithm:?}");
        assert!(balancer.pick(None).is_none(), "{algorithm:?}");
    }
}

#[test]
fn every_algorithm_picks_the_only_endpoint() {
    for algorithm in super::all_algorithms() {
        let balancer = build(&algorithm, &endpoints(1));
        for hash in [None, Some(0), Some(u64::MAX)] {
            let picked = balancer.pick(hash).map(|p| p.index);
            assert_eq!(picked, Some(0), "{algorithm:?}");
        }
    }
}
