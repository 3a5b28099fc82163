//! Token buckets and rule selection, on a manual clock.

use std::time::Duration;

use super::*;

fn spec(capacity: u32, per: u32, every_ms: u64) -> BucketSpec {
    BucketSpec {
        capacity,
        tokens_per_fill: per,
        fill_interval: Duration::from_millis(every_ms),
    }
}

const MS: fn(u64) -> Duration = Duration::from_millis;

#[test]
fn bucket_table() {
    // (spec, [(at ms, expect taken?)])
    let cases: &[(BucketSpec, &[(u64, bool)])] = &[
        // Burst of 2, then one per 100 ms.
        (
            spec(2, 10, 1000),
            &[
                (0, true),
                (0, true),
                (0, false),
                (50, false),
                (100, true),
                (100, false),
                (300, true),
                (300, true),
                (300, false),
            ],
        ),
        // Refill never exceeds the capacity.
        (
            spec(1, 1, 10),
            &[(0, true), (10_000, true), (10_000, false), (10_010, true)],
        ),
        // One per hour.
        (
            spec(1, 1, 3_600_000),
            &[
                (0, true),
                (1_000, false),
                (3_599_999, false),
                (3_600_000, true),
            ],
        ),
    ];
    for (s, steps) in cases {
        let mut b = TokenBucket::full(s, Duration::ZERO);
        for (at, want) in *steps {
            assert_eq!(b.try_take(s, MS(*at)).is_ok(), *want, "{s:?} at {at} ms");
        }
    }
}

#[test]
fn wait_is_the_time_until_a_token() {
    let s = spec(1, 10, 1000);
    let mut b = TokenBucket::full(&s, Duration::ZERO);
    assert!(b.try_take(&s, Duration::ZERO).is_ok());
    let wait = b.try_take(&s, MS(30)).expect_err("empty");
    assert!(wait > MS(69) && wait <= MS(70), "{wait:?}");
    assert_eq!(retry_after_secs(wait), 1);
    assert_eq!(retry_after_secs(Duration::from_millis(2500)), 3);
    assert_eq!(retry_after_secs(Duration::ZERO), 1);
    assert_eq!(retry_after_secs(Duration::from_secs(60)), 60);
}

#[test]
fn sustained_rate_over_a_long_window() {
    // 50/s with a burst of 5, asked 1000 times a second for 10 s: 5 + 500 pass.
    let s = spec(5, 50, 1000);
    let mut b = TokenBucket::full(&s, Duration::ZERO);
    let passed = (0..10_000u64)
        .filter(|ms| b.try_take(&s, MS(*ms)).is_ok())
        .count();
    assert!((504..=506).contains(&passed), "{passed}");
}

fn rule(name: &str, path: PathRule, s: BucketSpec, per_source: bool) -> RuleConfig {
    RuleConfig {
        name: name.to_string(),
        path,
        bucket: s,
        per_source,
        global: false,
    }
}

#[test]
fn the_first_matching_rule_decides() {
    let limiter = RateLimiter::new(vec![
        rule(
            "login",
            PathRule::Exact("/login".into()),
            spec(1, 1, 60_000),
            false,
        ),
        rule(
            "api",
            PathRule::Prefix("/api".into()),
            spec(2, 1, 60_000),
            false,
        ),
        rule("rest", PathRule::Any, spec(3, 1, 60_000), false),
    ]);
    let at = Duration::ZERO;
    let limited = |path: &str| matches!(limiter.check_at(path, None, at), Verdict::Limited { .. });
    assert!(!limited("/login"));
    assert!(limited("/login"));
    assert!(!limited("/api"));
    assert!(!limited("/api/items"));
    assert!(limited("/api/x"));
    // `/apix` and `/login/x` are not theirs: the catch-all's three tokens.
    assert!(!limited("/apix"));
    assert!(!limited("/login/x"));
    assert!(!limited("/"));
    match limiter.check_at("/other", None, at) {
        Verdict::Limited { rule, retry_after } => {
            assert_eq!(rule, "rest");
            assert!(retry_after <= MS(60_000) && retry_after > MS(59_000));
        }
        v => panic!("{v:?}"),
    }
}

#[test]
fn unmatched_requests_pass_and_per_source_buckets_are_separate() {
    let limiter = RateLimiter::new(vec![rule(
        "api",
        PathRule::Prefix("/api".into()),
        spec(2, 1, 60_000),
        true,
    )]);
    let at = Duration::ZERO;
    for _ in 0..10 {
        assert_eq!(limiter.check_at("/health", None, at), Verdict::Allowed);
    }
    let a = Some("spiffe://cluster.local/ns/default/svc/a");
    let b = Some("spiffe://cluster.local/ns/default/svc/b");
    let ok = |src| limiter.check_at("/api", src, at) == Verdict::Allowed;
    assert!(ok(a) && ok(a) && !ok(a));
    assert!(ok(b) && ok(b) && !ok(b));
    // Callers without an identity share one bucket.
    assert!(ok(None) && ok(None) && !ok(None));
    let dump = limiter.dump();
    assert_eq!(dump[0]["allowed"], 6);
    assert_eq!(dump[0]["limited"], 3);
    assert_eq!(dump[0]["sources"], 3);
}

#[test]
fn many_sources_stay_bounded() {
    let limiter = RateLimiter::new(vec![rule("all", PathRule::Any, spec(1, 1, 1000), true)]);
    for i in 0..(MAX_SOURCES + 50) {
        let id = format!("spiffe://td/ns/x/svc/s{i}");
        let _ = limiter.check_at("/", Some(&id), Duration::ZERO);
    }
    assert!(lock(&limiter.rules[0].sources).len() <= MAX_SOURCES);
    // Later, the idle (refilled) buckets are forgotten to make room.
    let _ = limiter.check_at("/", Some("new"), Duration::from_secs(5));
    assert!(lock(&limiter.rules[0].sources).len() < MAX_SOURCES);
}

#[test]
fn path_rules() {
    let p = PathRule::Prefix("/api".into());
    assert!(p.matches("/api") && p.matches("/api/") && p.matches("/api/v1"));
    assert!(!p.matches("/apis") && !p.matches("/"));
    assert!(PathRule::Prefix("/".into()).matches("/anything"));
    assert!(PathRule::Exact("/a".into()).matches("/a"));
    assert!(!PathRule::Exact("/a".into()).matches("/a/"));
}

#[test]
fn a_global_rule_waits_for_its_share() {
    let mut config = rule("g", PathRule::Any, spec(30, 60, 1000), false);
    config.global = true;
    let limiter = RateLimiter::new(vec![config]);
    let ok = |ms| limiter.check_at("/", None, MS(ms)) == Verdict::Allowed;
    // One token until the first lease, and no refill.
    assert!(ok(0));
    assert!(!ok(0) && !ok(1000));
    assert_eq!(
        limiter.global_rules(),
        vec![GlobalRule {
            name: "g".into(),
            seen: 3,
            rate: 60.0,
            burst: 30,
        }]
    );
    // A share of 20/s with a bucket of 10: ten at once, then one per 50 ms.
    limiter.set_share("g", 20.0, 10);
    let now = limiter.start.elapsed().as_millis() as u64 + 10_000;
    let passed = (0..20).filter(|_| ok(now)).count();
    assert_eq!(passed, 10);
    assert!(!ok(now + 49));
    assert!(ok(now + 50));
    assert_eq!(limiter.dump()[0]["share"]["burst"], 10);
    // Unknown rules are ignored.
    limiter.set_share("nope", 1.0, 1);
}
