//! normalize_path: one row per case, hostile ones included.

use proptest::prelude::*;

use super::{MAX_PATH_LEN, PathError, is_normalized, normalize_path, path_only};

#[test]
fn normalizes_or_rejects_every_case() {
    use PathError::*;
    let ok = |s: &str| Ok::<String, PathError>(s.to_string());
    let cases: Vec<(&str, Result<String, PathError>)> = vec![
        // Plain paths are untouched.
        ("/", ok("/")),
        ("/a/b", ok("/a/b")),
        ("/a/b/", ok("/a/b/")),
        // Slashes merge.
        ("//admin", ok("/admin")),
        ("/a//b///c", ok("/a/b/c")),
        ("///", ok("/")),
        // Dot segments.
        ("/a/./b", ok("/a/b")),
        ("/a/b/..", ok("/a/")),
        ("/a/b/.", ok("/a/b/")),
        ("/a/./b/../../../c", ok("/c")),
        ("/..", ok("/")),
        ("/../../etc/passwd", ok("/etc/passwd")),
        ("/public/../admin", ok("/admin")),
        ("/a/.../b", ok("/a/.../b")),
        ("/a/..b/c", ok("/a/..b/c")),
        // Encoded dots are dots.
        ("/a/%2e%2e/b", ok("/b")),
        ("/a/%2E%2E/b", ok("/b")),
        ("/a/.%2e/b", ok("/b")),
        ("/public/%2e%2e/%2e%2e/admin", ok("/admin")),
        ("/a/%2e/b", ok("/a/b")),
        // Unreserved characters decode, others stay encoded with upper-case hex.
        ("/%41%62%63", ok("/Abc")),
        ("/a%2d%5f%7e%2E", ok("/a-_~.")),
        ("/a%3ab", ok("/a%3Ab")),
        ("/a%20b", ok("/a%20b")),
        ("/%25", ok("/%25")),
        // Double encoding decodes once only.
        ("/a/%252e%252e/b", ok("/a/%252e%252e/b")),
        // Overlong UTF-8 for `.` is not a dot.
        ("/a/%c0%ae%c0%ae/b", ok("/a/%C0%AE%C0%AE/b")),
        // Raw non-ASCII is encoded, so it equals its escaped form.
        ("/caf\u{e9}", ok("/caf%C3%A9")),
        ("/caf%c3%a9", ok("/caf%C3%A9")),
        // The query is kept exactly, even with `..` or odd escapes in it.
        ("/a/../b?x=/../y&z=%2f", ok("/b?x=/../y&z=%2f")),
        ("/?", ok("/?")),
        ("//admin?q", ok("/admin?q")),
        // Path parameters on dot segments are ambiguous.
        ("/..;/admin", Err(DotSegmentParameter)),
        ("/public/..;/admin", Err(DotSegmentParameter)),
        ("/public/%2e%2e;x/admin", Err(DotSegmentParameter)),
        ("/a/.;/b", Err(DotSegmentParameter)),
        ("/a;b/c", ok("/a;b/c")),
        // Encoded separators and NUL.
        ("/a%2fb", Err(EncodedSlash)),
        ("/a%2Fb", Err(EncodedSlash)),
        ("/a%5cb", Err(EncodedBackslash)),
        ("/a%00b", Err(Nul)),
        ("/a\0b", Err(Nul)),
        ("/a\\b", Err(Backslash)),
        ("/a\\..\\admin", Err(Backslash)),
        ("/a\tb", Err(Control)),
        ("/a\x7fb", Err(Control)),
        // Malformed escapes.
        ("/a%", Err(MalformedEscape)),
        ("/a%2", Err(MalformedEscape)),
        ("/a%zz", Err(MalformedEscape)),
        ("/a%%41", Err(MalformedEscape)),
        // Not origin-form.
        ("", Err(NotAbsolute)),
        ("*", Err(NotAbsolute)),
        ("a/b", Err(NotAbsolute)),
        ("?x=1", Err(NotAbsolute)),
        ("http://evil/admin", Err(NotAbsolute)),
    ];
    assert!(cases.len() >= 30);
    for (raw, want) in cases {
        assert_eq!(normalize_path(raw), want, "normalize_path({raw:?})");
    }
}

#[test]
fn overlong_paths_are_rejected_but_long_queries_are_not() {
    let long = format!("/{}", "a".repeat(MAX_PATH_LEN));
    assert_eq!(normalize_path(&long), Err(PathError::TooLong));
    let at_limit = format!("/{}", "a".repeat(MAX_PATH_LEN - 1));
    assert_eq!(normalize_path(&at_limit).as_deref(), Ok(at_limit.as_str()));
    let query = format!("/a?{}", "q".repeat(MAX_PATH_LEN * 2));
    assert_eq!(normalize_path(&query).as_deref(), Ok(query.as_str()));
    // Deep `..` chains cannot climb above the root, however many there are.
    let climb = format!("{}/etc", "/..".repeat(2000));
    assert_eq!(normalize_path(&climb).as_deref(), Ok("/etc"));
}

#[test]
fn normalizing_is_idempotent() {
    for raw in [
        "/a/%2e%2e/b/./c//d/",
        "/x%3a%7e%41/..",
        "/caf\u{e9}/%c0%ae",
        "/a?b=../c",
    ] {
        let once = normalize_path(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
        assert_eq!(normalize_path(&once).as_deref(), Ok(once.as_str()), "{raw}");
    }
}

#[test]
fn path_only_strips_the_query() {
    assert_eq!(path_only("/a/b?x=1?y"), "/a/b");
    assert_eq!(path_only("/a"), "/a");
}

#[test]
fn reasons_are_fixed_and_header_safe() {
    for e in [
        PathError::NotAbsolute,
        PathError::TooLong,
        PathError::MalformedEscape,
        PathError::EncodedSlash,
        PathError::EncodedBackslash,
        PathError::Nul,
        PathError::Backslash,
        PathError::Control,
        PathError::DotSegmentParameter,
    ] {
        let r = e.reason();
        assert!(!r.is_empty() && !r.contains('"') && r.is_ascii(), "{r}");
        assert_eq!(e.to_string(), r);
    }
}

#[test]
fn the_fast_check_recognizes_normal_paths() {
    for normal in [
        "/",
        "/a",
        "/a/b/",
        "/a.b/..c/...",
        "/api/v1?x=../..//",
        "/a;b/c",
        "/~x-y_z",
    ] {
        assert!(is_normalized(normal), "{normal}");
        assert_eq!(normalize_path(normal).as_deref(), Ok(normal));
    }
    for not in [
        "",
        "a",
        "//",
        "/a//b",
        "/./a",
        "/a/..",
        "/a/.",
        "/%41",
        "/a\\b",
        "/..;/x",
        "/.;x",
        "/caf\u{e9}",
        "/a b",
    ] {
        assert!(!is_normalized(not), "{not:?}");
    }
}

proptest! {
    /// Whenever the allocation-free check says "normal", normalizing changes nothing.
    #[test]
    fn the_fast_check_never_skips_a_change(raw in "(/|\\.|\\.\\.|;|%2[eEfF]|%41|a|b|\\?|\\\\|%|\\x00| ){0,12}") {
        if is_normalized(&raw) {
            let normalized = normalize_path(&raw);
            prop_assert_eq!(normalized.as_deref(), Ok(raw.as_str()));
        }
    }

    #[test]
    fn the_fast_check_holds_on_printable_paths(raw in "/[ -~]{0,40}") {
        if is_normalized(&raw) {
            let normalized = normalize_path(&raw);
            prop_assert_eq!(normalized.as_deref(), Ok(raw.as_str()));
        }
    }
}
