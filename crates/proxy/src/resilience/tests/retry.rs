use std::time::Duration;

use http::Method;

use crate::resilience::retry::{
    Outcome, RetryOn, RetryPolicy, backoff, method_retriable, retriable,
};

fn policy(on: &str, codes: &[u16]) -> RetryPolicy {
    RetryPolicy {
        attempts: 2,
        on: RetryOn::parse(on).expect("valid"),
        status_codes: codes.to_vec(),
        backoff_base: Duration::from_millis(25),
        backoff_max: Duration::from_millis(250),
        idempotent_only: true,
        buffer_limit: 65536,
    }
}

fn resp(status: u16) -> Outcome {
    Outcome::Response { status, grpc: None }
}

fn grpc(code: u32) -> Outcome {
    Outcome::Response {
        status: 200,
        grpc: Some(code),
    }
}

#[test]
fn retry_decisions() {
    use Outcome::{ConnectFailure, Reset, Timeout};
    let cases: &[(&str, &[u16], Outcome, bool)] = &[
        ("5xx", &[], resp(500), true),
        ("5xx", &[], resp(503), true),
        ("5xx", &[], resp(404), false),
        ("5xx", &[], resp(200), false),
        ("5xx", &[], ConnectFailure, true),
        ("5xx", &[], Reset, true),
        ("5xx", &[], Timeout, true),
        ("gateway-error", &[], resp(500), false),
        ("gateway-error", &[], resp(502), true),
        ("gateway-error", &[], resp(504), true),
        ("gateway-error", &[], Timeout, true),
        ("reset", &[], Reset, true),
        ("reset", &[], ConnectFailure, false),
        ("reset", &[], resp(503), false),
        ("reset", &[], Timeout, false),
        ("connect-failure", &[], ConnectFailure, true),
        ("connect-failure", &[], Reset, false),
        ("retriable-status-codes", &[409, 429], resp(429), true),
        ("retriable-status-codes", &[409, 429], resp(409), true),
        ("retriable-status-codes", &[409, 429], resp(400), false),
        ("5xx", &[429], resp(429), false),
        ("unavailable", &[], grpc(14), true),
        ("unavailable", &[], grpc(8), false),
        ("resource-exhausted", &[], grpc(8), true),
        ("cancelled,deadline-exceeded,internal", &[], grpc(1), true),
        ("cancelled,deadline-exceeded,internal", &[], grpc(4), true),
        ("cancelled,deadline-exceeded,internal", &[], grpc(13), true),
        ("unavailable", &[], grpc(0), false),
        ("unavailable", &[], resp(503), false),
        ("", &[], resp(503), false),
    ];
    for (on, codes, outcome, want) in cases {
        assert_eq!(
            retriable(&policy(on, codes), *outcome),
            *want,
            "retry_on {on:?} codes {codes:?} {outcome:?}"
        );
    }
}

#[test]
fn retry_on_names() {
    assert!(RetryOn::parse("5xx, reset,connect-failure").is_ok());
    let e = RetryOn::parse("5xx,refused-stream").expect_err("unknown");
    assert!(e.contains("`refused-stream`"), "{e}");
}

#[test]
fn only_idempotent_methods_unless_told() {
    let mut p = policy("5xx", &[]);
    for m in [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::PUT,
        Method::DELETE,
        Method::TRACE,
    ] {
        assert!(method_retriable(&p, &m), "{m}");
    }
    for m in [Method::POST, Method::PATCH, Method::CONNECT] {
        assert!(!method_retriable(&p, &m), "{m}");
    }
    p.idempotent_only = false;
    assert!(method_retriable(&p, &Method::POST));
}

#[test]
fn backoff_is_bounded_full_jitter() {
    let base = Duration::from_millis(25);
    let max = Duration::from_millis(250);
    for retry in [0u32, 1, 2, 3, 4, 10, 31, 32, 1000, u32::MAX] {
        let ceiling = if retry < 4 { base * (1 << retry) } else { max };
        assert_eq!(backoff(base, max, retry, 0.0), Duration::ZERO);
        let top = backoff(base, max, retry, 0.999_999);
        assert!(top <= ceiling && top <= max, "retry {retry}: {top:?}");
        assert!(
            top >= ceiling.mul_f64(0.99),
            "retry {retry}: {top:?} vs {ceiling:?}"
        );
        // Out-of-range randomness is clamped.
        assert!(backoff(base, max, retry, 7.0) <= max);
        assert_eq!(backoff(base, max, retry, -1.0), Duration::ZERO);
    }
}
