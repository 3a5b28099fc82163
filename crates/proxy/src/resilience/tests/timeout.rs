use std::time::Duration;

use crate::resilience::timeout::{effective, parse_grpc_timeout};

#[test]
fn grpc_timeout_values() {
    let ms = Duration::from_millis;
    let cases: &[(&str, Option<Duration>)] = &[
        ("1S", Some(Duration::from_secs(1))),
        ("250m", Some(ms(250))),
        ("2M", Some(Duration::from_secs(120))),
        ("1H", Some(Duration::from_secs(3600))),
        ("5000u", Some(ms(5))),
        ("99999999n", Some(Duration::from_nanos(99_999_999))),
        ("99999999H", Some(Duration::from_secs(99_999_999 * 3600))),
        // Hostile or malformed: ignored, never a panic.
        ("", None),
        ("S", None),
        ("100", None),
        ("123456789S", None),
        ("-1S", None),
        ("1.5S", None),
        ("1s", None),
        ("1 S", None),
        ("١S", None),
        ("18446744073709551616S", None),
        ("1SS", None),
    ];
    for (v, want) in cases {
        assert_eq!(parse_grpc_timeout(v.as_bytes()), *want, "{v:?}");
    }
}

#[test]
fn the_smaller_timeout_wins() {
    let s = Duration::from_secs;
    assert_eq!(effective(None, None), None);
    assert_eq!(effective(Some(s(2)), None), Some(s(2)));
    assert_eq!(effective(None, Some(s(3))), Some(s(3)));
    assert_eq!(effective(Some(s(2)), Some(s(3))), Some(s(2)));
    assert_eq!(effective(Some(s(5)), Some(s(1))), Some(s(1)));
}
