//! The priority load table: Envoy's numbers for its documented examples.

use super::*;

fn lv(available: usize, total: usize) -> Level {
    Level { available, total }
}

fn loads(levels: &[Level], factor: u32) -> Vec<u32> {
    priority_loads(levels, factor)
        .iter()
        .map(|l| l.round() as u32)
        .collect()
}

#[test]
fn priority_load_table() {
    // (levels, factor, expected percentages)
    let cases: &[(&[Level], u32, &[u32])] = &[
        // Everything healthy: the first level takes it all.
        (&[lv(2, 2), lv(2, 2)], 140, &[100, 0]),
        // Envoy's table (factor 140): P0 at 72% healthy still takes 100%.
        (&[lv(72, 100), lv(100, 100)], 140, &[100, 0]),
        // P0 at 71%: 99.4% stays, the rest spills.
        (&[lv(71, 100), lv(100, 100)], 140, &[99, 1]),
        // P0 at 50%: 70% / 30%.
        (&[lv(50, 100), lv(100, 100)], 140, &[70, 30]),
        // P0 at 25%: 35% / 65%.
        (&[lv(25, 100), lv(100, 100)], 140, &[35, 65]),
        // P0 empty of healthy hosts: all to P1.
        (&[lv(0, 2), lv(2, 2)], 140, &[0, 100]),
        // Factor 200 (spilloverThreshold 50): 1 of 4 local → 50% local.
        (&[lv(1, 4), lv(4, 4)], 200, &[50, 50]),
        // Factor 100: proportional from the first unhealthy host on.
        (&[lv(3, 4), lv(4, 4)], 100, &[75, 25]),
        // Both levels degraded: normalized so the loads still sum to 100.
        (&[lv(1, 4), lv(1, 4)], 140, &[50, 50]),
        (&[lv(2, 4), lv(1, 4)], 140, &[70, 30]),
        // Three levels: the third only gets what the first two cannot take.
        (&[lv(1, 2), lv(1, 4), lv(4, 4)], 140, &[70, 30, 0]),
        (&[lv(0, 2), lv(1, 4), lv(4, 4)], 140, &[0, 35, 65]),
        // Nothing healthy anywhere: the first level (the panic rule decides what to do).
        (&[lv(0, 2), lv(0, 2)], 140, &[100, 0]),
        // An empty level takes nothing.
        (&[lv(0, 0), lv(3, 3)], 140, &[0, 100]),
        // One level: always everything.
        (&[lv(1, 10)], 140, &[100]),
    ];
    for (levels, factor, expected) in cases {
        let got = loads(levels, *factor);
        assert_eq!(&got[..], *expected, "{levels:?} factor {factor}");
        let sum: f64 = priority_loads(levels, *factor).iter().sum();
        assert!((sum - 100.0).abs() < 1e-9, "{levels:?}: loads sum to {sum}");
    }
}

#[test]
fn the_default_spillover_threshold_keeps_about_71_percent_local_with_half_down() {
    // spilloverThreshold 70 → factor 143: 1 of 2 local endpoints → 71.5% stays local.
    let l = priority_loads(&[lv(1, 2), lv(2, 2)], 143);
    assert!(
        (l[0] - 71.5).abs() < 1e-6 && (l[1] - 28.5).abs() < 1e-6,
        "{l:?}"
    );
    // Exactly at the threshold nothing spills (70% × 1.43 ≥ 100%).
    assert_eq!(loads(&[lv(7, 10), lv(2, 2)], 143), [100, 0]);
}

#[test]
fn choose_follows_the_loads() {
    let loads = [70.0, 30.0, 0.0];
    assert_eq!(choose(&loads, 0.0), 0);
    assert_eq!(choose(&loads, 0.6999), 0);
    assert_eq!(choose(&loads, 0.7), 1);
    assert_eq!(choose(&loads, 0.9999), 1);
    assert_eq!(
        choose(&[0.0, 100.0], 0.0),
        1,
        "a level without load is never chosen"
    );
    assert_eq!(choose(&[100.0, 0.0], 0.99999), 0);
    // Over many draws the shares match.
    let mut counts = [0usize; 3];
    for i in 0..10_000 {
        counts[choose(&loads, f64::from(i) / 10_000.0)] += 1;
    }
    assert_eq!(counts, [7000, 3000, 0]);
}
