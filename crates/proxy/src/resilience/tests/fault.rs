//! Which requests are delayed or aborted, and the status an abort answers with.

use std::time::Duration;

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue, Method, StatusCode};

use crate::resilience::fault::*;
use crate::routing::{HeaderMatch, HeaderTarget, StringMatch};

fn policy(delay_pm: Option<u32>, abort_pm: Option<u32>, headers: Vec<HeaderMatch>) -> FaultPolicy {
    FaultPolicy {
        delay: delay_pm.map(|per_million| Delay {
            fixed: Duration::from_millis(50),
            per_million,
        }),
        abort: abort_pm.map(|per_million| Abort {
            status: AbortStatus::Http(StatusCode::SERVICE_UNAVAILABLE),
            per_million,
        }),
        headers,
    }
}

/// Draws from a fixed list, counting how many were taken.
fn draws(values: Vec<u32>) -> (impl FnMut() -> u32, std::rc::Rc<std::cell::Cell<usize>>) {
    let taken = std::rc::Rc::new(std::cell::Cell::new(0));
    let t = taken.clone();
    let f = move || {
        let i = t.get();
        t.set(i + 1);
        values[i]
    };
    (f, taken)
}

#[test]
fn a_fault_hits_when_its_draw_is_below_the_percentage() {
    let p = policy(Some(100_000), Some(1), vec![]);
    let none = HeaderMap::new();
    let cases = [
        // (delay draw, abort draw) → (delayed, aborted)
        ((0, 0), (true, true)),
        ((99_999, 1), (true, false)),
        ((100_000, 0), (false, true)),
        ((999_999, 999_999), (false, false)),
    ];
    for ((dd, ad), (delayed, aborted)) in cases {
        let (draw, taken) = draws(vec![dd, ad]);
        let got = p.decide(&Method::GET, &none, draw);
        assert_eq!(
            (got.delay.is_some(), got.abort.is_some()),
            (delayed, aborted),
            "draws {dd}, {ad}"
        );
        assert_eq!(taken.get(), 2, "one draw per configured fault");
        if delayed {
            assert_eq!(got.delay, Some(Duration::from_millis(50)));
        }
    }
    // 100% always hits and 0% never does, whatever the draw.
    let all = policy(Some(PER_MILLION), Some(0), vec![]);
    for d in [0, PER_MILLION / 2, PER_MILLION - 1] {
        let got = all.decide(&Method::GET, &none, || d);
        assert!(got.delay.is_some() && got.abort.is_none());
    }
    // Only the configured faults draw.
    let (draw, taken) = draws(vec![0]);
    let got = policy(None, Some(10), vec![]).decide(&Method::GET, &none, draw);
    assert_eq!(taken.get(), 1);
    assert!(got.delay.is_none() && got.abort.is_some());
}

#[test]
fn only_requests_whose_headers_all_match_are_faulted() {
    let header = |name: &'static str, value: &str| HeaderMatch {
        target: HeaderTarget::Header(HeaderName::from_static(name)),
        matcher: StringMatch::Exact(value.to_string()),
        invert: false,
    };
    let p = policy(
        None,
        Some(PER_MILLION),
        vec![header("x-chaos", "on"), header("x-team", "a")],
    );
    let mut both = HeaderMap::new();
    both.insert("x-chaos", HeaderValue::from_static("on"));
    both.insert("x-team", HeaderValue::from_static("a"));
    let mut one = HeaderMap::new();
    one.insert("x-chaos", HeaderValue::from_static("on"));
    assert!(p.decide(&Method::GET, &both, || 0).abort.is_some());
    let (draw, taken) = draws(vec![0]);
    assert_eq!(p.decide(&Method::GET, &one, draw), Injection::default());
    assert_eq!(taken.get(), 0, "no draw for a request the headers exclude");
}

#[test]
fn aborts_answer_grpc_and_http_callers_with_the_mapped_status() {
    let http = |s: u16| AbortStatus::Http(StatusCode::from_u16(s).expect("status"));
    let cases = [
        (http(503), 503, 14),
        (http(404), 404, 12),
        (http(429), 429, 14),
        (http(401), 401, 16),
        (http(418), 418, 2),
        (AbortStatus::Grpc(14), 503, 14),
        (AbortStatus::Grpc(4), 504, 4),
        (AbortStatus::Grpc(8), 429, 8),
        (AbortStatus::Grpc(13), 500, 13),
        (AbortStatus::Grpc(16), 401, 16),
    ];
    for (status, want_http, want_grpc) in cases {
        assert_eq!(status.http_status().as_u16(), want_http, "{status:?}");
        assert_eq!(status.grpc_code(), want_grpc, "{status:?}");
    }
}
