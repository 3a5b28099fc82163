//! The threshold state machine (tables), flag parsing and the probe verdicts.

use http::StatusCode;
use trellis_model::CheckStatus::{self, Critical, Passing, Warning};

use super::probe::http_verdict;
use super::{CheckState, HealthCheckConfig, Probe, Thresholds};

fn run(thresholds: (u32, u32), results: &[CheckStatus]) -> Vec<Option<CheckStatus>> {
    let mut s = CheckState::new(Thresholds {
        healthy: thresholds.0,
        unhealthy: thresholds.1,
    });
    results.iter().map(|r| s.observe(*r)).collect()
}

/// (healthy, unhealthy) thresholds, results, the changes expected after each.
type Case = (
    (u32, u32),
    &'static [CheckStatus],
    &'static [Option<CheckStatus>],
);

#[test]
fn thresholds_table() {
    let cases: &[Case] = &[
        // The first result sets the status at once.
        ((3, 3), &[Passing], &[Some(Passing)]),
        ((3, 3), &[Critical], &[Some(Critical)]),
        // Three failures to go critical.
        (
            (2, 3),
            &[Passing, Critical, Critical, Critical, Critical],
            &[Some(Passing), None, None, Some(Critical), None],
        ),
        // Two passes to recover.
        (
            (2, 3),
            &[Critical, Passing, Passing, Passing],
            &[Some(Critical), None, Some(Passing), None],
        ),
        // A pass in between restarts the count.
        (
            (2, 3),
            &[Passing, Critical, Critical, Passing, Critical, Critical],
            &[Some(Passing), None, None, None, None, None],
        ),
        // Warning counts as unhealthy; warning <-> critical follows at once.
        (
            (1, 2),
            &[Passing, Warning, Critical, Warning],
            &[Some(Passing), None, Some(Critical), Some(Warning)],
        ),
        // Thresholds of 1 follow every result.
        (
            (1, 1),
            &[Passing, Critical, Passing],
            &[Some(Passing), Some(Critical), Some(Passing)],
        ),
    ];
    for (t, results, want) in cases {
        assert_eq!(
            run(*t, results),
            *want,
            "thresholds {t:?}, results {results:?}"
        );
    }
}

#[test]
fn alternating_results_never_flip_with_thresholds_of_three() {
    let results: Vec<CheckStatus> = (0..100)
        .map(|i| if i % 2 == 0 { Passing } else { Critical })
        .collect();
    let changes: Vec<_> = run((3, 3), &results).into_iter().flatten().collect();
    assert_eq!(changes, vec![Passing]);
    // Two failures, one pass, repeated: still never three in a row.
    let results: Vec<CheckStatus> = (0..99)
        .map(|i| if i % 3 == 2 { Passing } else { Critical })
        .collect();
    let changes: Vec<_> = run((3, 3), &results).into_iter().flatten().collect();
    assert_eq!(changes, vec![Critical]);
}

#[test]
fn probes_parse_and_bad_ones_say_why() {
    let ok: &[(&str, Probe)] = &[
        ("tcp", Probe::Tcp),
        (
            "http:/healthz",
            Probe::Http {
                expected: None,
                path: "/healthz".into(),
            },
        ),
        (
            "http:/ready?full=1",
            Probe::Http {
                expected: None,
                path: "/ready?full=1".into(),
            },
        ),
        (
            "grpc",
            Probe::Grpc {
                service: String::new(),
            },
        ),
        (
            "grpc:shop.Catalog",
            Probe::Grpc {
                service: "shop.Catalog".into(),
            },
        ),
    ];
    for (s, want) in ok {
        assert_eq!(s.parse::<Probe>().as_ref(), Ok(want), "{s}");
    }
    let bad: &[(&str, &str)] = &[
        ("http", "needs a path"),
        ("http:healthz", "must start with `/`"),
        ("http:/a b", "valid request path"),
        ("tcp:80", "takes no argument"),
        ("grpc:a/b", "not a gRPC service name"),
        ("udp", "unknown check kind `udp`"),
        ("", "unknown check kind"),
    ];
    for (s, want) in bad {
        let e = s.parse::<Probe>().expect_err(s);
        assert!(e.contains(want) && e.contains("expected"), "{s}: {e}");
    }
}

#[test]
fn timing_problems_name_the_flag() {
    let mut c = HealthCheckConfig {
        probe: Probe::Tcp,
        interval: std::time::Duration::from_secs(1),
        timeout: std::time::Duration::from_millis(500),
        thresholds: Thresholds::default(),
    };
    assert!(c.problems().is_empty());
    c.timeout = std::time::Duration::from_secs(2);
    c.thresholds.healthy = 0;
    c.thresholds.unhealthy = 1000;
    let p = c.problems().join("; ");
    assert!(p.contains("--health-timeout"), "{p}");
    assert!(p.contains("--healthy-threshold = 0"), "{p}");
    assert!(p.contains("--unhealthy-threshold = 1000"), "{p}");
    c.interval = std::time::Duration::ZERO;
    assert!(c.problems().join(";").contains("--health-interval"));
}

#[test]
fn http_verdicts() {
    for (code, want) in [
        (200, Passing),
        (204, Passing),
        (301, Passing),
        (429, Warning),
        (404, Critical),
        (500, Critical),
        (503, Critical),
    ] {
        let status = StatusCode::from_u16(code).expect("status");
        assert_eq!(http_verdict(status), want, "{code}");
    }
}

#[test]
fn hostile_outputs_are_cut_and_cleaned() {
    let long = "é".repeat(5000);
    let out = trellis_model::sanitize_output(&long);
    assert!(out.len() <= trellis_model::MAX_CHECK_OUTPUT);
    assert!(out.chars().all(|c| c == 'é'));
    assert_eq!(trellis_model::sanitize_output("a\nb\u{0}c"), "a b c");
}
