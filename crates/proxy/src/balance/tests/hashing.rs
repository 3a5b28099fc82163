//! The stable hash and the consistent-hashing balancers (ring hash, Maglev).

use super::super::hash::xxh64;
use super::super::{Algorithm, EndpointMeta, build, hash_key};
use super::{counts, endpoints};

#[test]
fn xxh64_matches_the_reference_vectors() {
    let fox = b"The quick brown fox jumps over the lazy dog";
    let cases: [(&[u8], u64, u64); 7] = [
        (b"", 0, 0xEF46_DB37_51D8_E999),
        (b"a", 0, 0xD24E_C4F1_A98C_6E5B),
        (b"abc", 0, 0x44BC_2CF5_AD77_0999),
        (b"Hello, World!", 0, 0xC49A_ACF8_080F_E47F),
        (b"Hello, World!", 42, 0xC2E0_FE28_B251_2846),
        (
            b"12345678901234567890123456789012",
            0,
            0x40FD_1AA5_2D98_274C,
        ),
        (fox, 0, 0x0B24_2D36_1FDA_71BC),
    ];
    for (input, seed, want) in cases {
        let got = xxh64(input, seed);
        assert_eq!(
            got,
            want,
            "{:?} seed {seed}",
            String::from_utf8_lossy(input)
        );
    }
    assert_eq!(hash_key(b"abc"), 0x44BC_2CF5_AD77_0999);
}

pub(super) const RING: Algorithm = Algorithm::RingHash {
    min_ring_size: super::super::RING_HASH_DEFAULT_MIN_RING_SIZE,
};
pub(super) const MAGLEV: Algorithm = Algorithm::Maglev {
    table_size: super::super::MAGLEV_DEFAULT_TABLE_SIZE,
};

/// The id of the endpoint each of `keys` request keys goes to.
pub(super) fn owners(algorithm: &Algorithm, set: &[EndpointMeta], keys: usize) -> Vec<String> {
    let balancer = build(algorithm, set);
    (0..keys)
        .map(|k| {
            let hash = hash_key(format!("user-{k}").as_bytes());
            let index = balancer.pick(Some(hash)).map(|p| p.index);
            set[index.expect("non-empty balancer picks")].id.clone()
        })
        .collect()
}

/// Fraction of keys whose endpoint differs between `before` and `after`.
pub(super) fn moved(before: &[String], after: &[String]) -> f64 {
    let moved = before.iter().zip(after).filter(|(a, b)| a != b).count();
    moved as f64 / before.len() as f64
}

#[test]
fn same_key_same_endpoint_whatever_the_list_order() {
    let set = endpoints(12);
    let mut reversed = set.clone();
    reversed.reverse();
    for algorithm in [RING, MAGLEV] {
        let first = owners(&algorithm, &set, 2_000);
        assert_eq!(first, owners(&algorithm, &set, 2_000), "{algorithm:?}");
        assert_eq!(first, owners(&algorithm, &reversed, 2_000), "{algorithm:?}");
    }
}

#[test]
fn removing_one_endpoint_moves_about_its_share() {
    let set = endpoints(10);
    let fewer: Vec<EndpointMeta> = set.iter().filter(|e| e.id != "ep-4").cloned().collect();
    for algorithm in [RING, MAGLEV] {
        let before = owners(&algorithm, &set, 10_000);
        let after = owners(&algorithm, &fewer, 10_000);
        let share = moved(&before, &after);
        assert!(share < 0.2, "{algorithm:?}: {share} of keys moved");
        // Keys of the surviving endpoints stay put (ring hash: all of them).
        let survivors: Vec<(&String, &String)> = before
            .iter()
            .zip(&after)
            .filter(|(b, _)| *b != "ep-4")
            .collect();
        let stayed = survivors.iter().filter(|(b, a)| b == a).count() as f64;
        let stayed = stayed / survivors.len() as f64;
        assert!(
            stayed > 0.95,
            "{algorithm:?}: only {stayed} of surviving keys stayed"
        );
    }
}

#[test]
fn keys_spread_evenly() {
    for (algorithm, tolerance) in [(RING, 0.3), (MAGLEV, 0.1)] {
        let balancer = build(&algorithm, &endpoints(8));
        let mut counts = vec![0usize; 8];
        for k in 0..16_000u64 {
            let picked = balancer.pick(Some(hash_key(&k.to_le_bytes())));
            counts[picked.map(|p| p.index).expect("non-empty balancer picks")] += 1;
        }
        for &count in &counts {
            let error = (count as f64 - 2_000.0).abs() / 2_000.0;
            assert!(error <= tolerance, "{algorithm:?}: {counts:?}");
        }
    }
}

#[test]
fn maglev_respects_weights() {
    let mut set = endpoints(3);
    set[0].weight = 3;
    let balancer = build(&MAGLEV, &set);
    let mut counts = vec![0usize; 3];
    for k in 0..50_000u64 {
        let picked = balancer.pick(Some(hash_key(&k.to_le_bytes())));
        counts[picked.map(|p| p.index).expect("non-empty balancer picks")] += 1;
    }
    // Shares 3/5, 1/5, 1/5.
    assert!((28_500..=31_500).contains(&counts[0]), "{counts:?}");
}

#[test]
fn without_a_hash_picks_at_random() {
    for algorithm in [RING, MAGLEV] {
        let balancer = build(&algorithm, &endpoints(4));
        let counts = counts(&*balancer, 4_000, None);
        assert!(counts.iter().all(|&c| c > 800), "{algorithm:?}: {counts:?}");
    }
}

#[test]
fn the_same_hash_always_picks_the_same_endpoint() {
    for algorithm in [RING, MAGLEV] {
        let balancer = build(&algorithm, &endpoints(5));
        let counts = counts(&*balancer, 100, Some(hash_key(b"10.0.0.7")));
        assert_eq!(
            counts.iter().filter(|&&c| c == 100).count(),
            1,
            "{algorithm:?}"
        );
    }
}

#[test]
fn table_sizes_round_up_to_primes() {
    use super::super::maglev::next_prime;
    assert_eq!(next_prime(2), 2);
    assert_eq!(next_prime(1000), 1009);
    assert_eq!(next_prime(65537), 65537);
    // A composite size still fills (a step below a composite size could cycle short).
    let balancer = build(&Algorithm::Maglev { table_size: 1000 }, &endpoints(7));
    assert!(balancer.pick(Some(12_345)).is_some_and(|p| p.index < 7));
}

#[test]
fn ring_hash_picks_the_owner_of_the_next_point_on_the_ring() {
    // An independent model of the ring: 64 points per endpoint (min_ring_size 256 / 4), at
    // XXH64(id, replica); a key belongs to the first point at or after it, wrapping around.
    for n in [1, 2, 5, 40] {
        let set = endpoints(n);
        let mut ring: Vec<(u64, usize)> = (0..n)
            .flat_map(|i| (0..64).map(move |r| (i, r)))
            .map(|(i, r)| (xxh64(set[i].id.as_bytes(), r), i))
            .collect();
        ring.sort_unstable();
        let balancer = build(&Algorithm::RingHash { min_ring_size: 256 }, &set);
        let mut keys: Vec<u64> = (0..2_000u64).map(|k| hash_key(&k.to_le_bytes())).collect();
        keys.extend(
            ring.iter()
                .flat_map(|&(p, _)| [p.wrapping_sub(1), p, p.wrapping_add(1)]),
        );
        keys.extend([0, u64::MAX]);
        for key in keys {
            let at = ring.partition_point(|&(p, _)| p < key);
            let want = ring.get(at).unwrap_or(&ring[0]).1;
            let got = balancer.pick(Some(key)).map(|p| p.index);
            assert_eq!(got, Some(want), "n = {n}, key {key:#x}");
        }
    }
}
