//! Properties over random endpoint sets.

use proptest::prelude::*;

use super::super::{Algorithm, build};
use super::hashing::{moved, owners};
use super::{all_algorithms, endpoints, weighted};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn picks_are_in_range(
        weights in proptest::collection::vec(0u32..20, 0..40),
        hashes in proptest::collection::vec(any::<Option<u64>>(), 1..50),
    ) {
        let set = weighted(&weights);
        for algorithm in all_algorithms() {
            let balancer = build(&algorithm, &set);
            prop_assert_eq!(balancer.len(), set.len());
            for &hash in &hashes {
                let picked = balancer.pick(hash).map(|p| p.index);
                match picked {
                    None => prop_assert!(set.is_empty(), "{:?} picked nothing", algorithm),
                    Some(index) => prop_assert!(index < set.len(), "{:?}: {}", algorithm, index),
                }
            }
        }
    }

    #[test]
    fn weighted_cycles_honour_weights_exactly(weights in proptest::collection::vec(1u32..50, 1..12)) {
        let balancer = build(&Algorithm::Weighted, &weighted(&weights));
        let total: u32 = weights.iter().sum();
        let counts = super::counts(&*balancer, total as usize * 3, None);
        let want: Vec<usize> = weights.iter().map(|&w| w as usize * 3).collect();
        prop_assert_eq!(counts, want);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn removing_one_of_n_moves_under_two_nths(n in 3usize..30, removed in any::<prop::sample::Index>()) {
        let set = endpoints(n);
        let gone = removed.index(n);
        let fewer: Vec<_> = set.iter().enumerate().filter(|(i, _)| *i != gone).map(|(_, e)| e.clone()).collect();
        let algorithms = [
            Algorithm::RingHash { min_ring_size: 1024 },
            Algorithm::Maglev { table_size: 65537 },
        ];
        for algorithm in algorithms {
            let before = owners(&algorithm, &set, 10_000);
            prop_assert_eq!(&before, &owners(&algorithm, &set, 10_000));
            let after = owners(&algorithm, &fewer, 10_000);
            let share = moved(&before, &after);
            prop_assert!(share < 2.0 / n as f64, "{:?}: {} of keys moved, n = {}", algorithm, share, n);
            let gone_id = &set[gone].id;
            let kept = before.iter().zip(&after).filter(|(b, _)| *b != gone_id);
            let (stayed, total) = kept.fold((0, 0), |(s, t), (b, a)| (s + usize::from(b == a), t + 1));
            prop_assert!(stayed as f64 >= 0.9 * total as f64, "{:?}: {}/{} stayed", algorithm, stayed, total);
        }
    }
}
