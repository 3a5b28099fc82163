use std::time::Duration;

use super::*;

#[test]
fn limits_follow_the_fraction_above_the_minimum_size() {
    let cases = [
        // (total, fraction, limit)
        (0, 0.5, 0),
        (1, 0.5, 1),
        (2, 0.0, 2),
        (3, 0.5, 1),
        (4, 0.5, 2),
        (10, 0.85, 8),
        (10, 1.0, 10),
        (10, 0.0, 0),
        (10, 7.0, 10),
        (10, -1.0, 0),
    ];
    for (total, fraction, want) in cases {
        assert_eq!(
            eviction_limit(total, fraction),
            want,
            "total {total}, fraction {fraction}"
        );
    }
}

#[test]
fn the_longest_silent_are_evicted_first_and_the_rest_held() {
    let s = Duration::from_secs;
    let lapsed = vec![(s(3), "b"), (s(9), "a"), (s(5), "c"), (s(5), "d")];
    assert_eq!(
        held(lapsed.clone(), 2),
        ["b", "d"].into_iter().collect(),
        "a (9 s) and c (5 s, before d by key) go"
    );
    assert!(held(lapsed.clone(), 4).is_empty());
    assert_eq!(held(lapsed, 0).len(), 4);
}
