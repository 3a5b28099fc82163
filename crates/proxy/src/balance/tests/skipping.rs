//! `pick_excluding`: every algorithm avoids skipped endpoints, keeps using the others, and
//! hash-based ones send a key of a skipped endpoint to the same alternative every time.

use std::time::Instant;

use super::{all_algorithms, endpoints};
use crate::balance::build;

#[test]
fn every_algorithm_skips_what_it_is_told() {
    let eps = endpoints(5);
    let now = Instant::now();
    for alg in all_algorithms() {
        let b = build(&alg, &eps);
        let mut seen = [0usize; 5];
        for k in 0..2_000u64 {
            let hash = alg
                .uses_hash()
                .then_some(k.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let p = b
                .pick_excluding(hash, now, &|i| i == 1 || i == 3)
                .unwrap_or_else(|| panic!("{alg:?}: no pick"));
            seen[p.index] += 1;
        }
        assert_eq!((seen[1], seen[3]), (0, 0), "{alg:?}: {seen:?}");
        assert!(
            seen[0] > 0 && seen[2] > 0 && seen[4] > 0,
            "{alg:?}: {seen:?}"
        );
    }
}

#[test]
fn everything_skipped_is_none_and_empty_is_none() {
    let now = Instant::now();
    for alg in all_algorithms() {
        let b = build(&alg, &endpoints(3));
        assert!(
            b.pick_excluding(Some(7), now, &|_| true).is_none(),
            "{alg:?}"
        );
        let empty = build(&alg, &[]);
        assert!(
            empty.pick_excluding(Some(7), now, &|_| false).is_none(),
            "{alg:?}"
        );
    }
}

#[test]
fn a_hashed_key_of_a_skipped_endpoint_always_lands_on_the_same_alternative() {
    let eps = endpoints(6);
    let now = Instant::now();
    for alg in all_algorithms().into_iter().filter(|a| a.uses_hash()) {
        let b = build(&alg, &eps);
        for key in 0..200u64 {
            let hash = Some(key.wrapping_mul(0xff51_afd7_ed55_8ccd));
            let Some(first) = b.pick_at(hash, now) else {
                continue;
            };
            let skipped = first.index;
            let alt = |_: ()| {
                b.pick_excluding(hash, now, &|i| i == skipped)
                    .map(|p| p.index)
            };
            let a = alt(());
            assert!(a.is_some() && a != Some(skipped), "{alg:?}");
            assert_eq!(a, alt(()), "{alg:?}: key {key} moved");
            // Keys of endpoints that are not skipped stay where they are.
            let other = (skipped + 1) % eps.len();
            let stay = b
                .pick_excluding(hash, now, &|i| i == other)
                .map(|p| p.index);
            assert_eq!(stay, Some(skipped), "{alg:?}");
        }
    }
}

#[test]
fn round_robin_and_random_keep_even_shares_around_a_skipped_endpoint() {
    use crate::balance::Algorithm;
    let now = Instant::now();
    for alg in [Algorithm::RoundRobin, Algorithm::Random] {
        let b = build(&alg, &endpoints(3));
        let mut seen = [0usize; 3];
        for _ in 0..3_000 {
            if let Some(p) = b.pick_excluding(None, now, &|i| i == 1) {
                seen[p.index] += 1;
            }
        }
        assert_eq!(seen[1], 0, "{alg:?}");
        let (a, c) = (seen[0] as f64, seen[2] as f64);
        assert!((a / (a + c) - 0.5).abs() < 0.05, "{alg:?}: {seen:?}");
    }
}
