//! Which deadline a request gets: the route's request timeout, or the caller's `grpc-timeout`
//! when that is smaller (gRPC over HTTP/2: 1–8 ASCII digits and a unit, H M S m u n).

use std::time::Duration;

use http::HeaderMap;
use http::header::HeaderName;

pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// Parses a `grpc-timeout` value; `None` for anything malformed (then it is ignored, as gRPC
/// servers do), never a panic or an overflow.
pub fn parse_grpc_timeout(v: &[u8]) -> Option<Duration> {
    let (unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // At most 8 digits: fits in a u64 with room for every unit's multiplier.
    let n = digits
        .iter()
        .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The `grpc-timeout` of a request, when it has a well-formed one.
pub fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    parse_grpc_timeout(headers.get(GRPC_TIMEOUT)?.as_bytes())
}

/// The smaller of the route's timeout and the caller's, when either is set.
pub fn effective(route: Option<Duration>, grpc: Option<Duration>) -> Option<Duration> {
    match (route, grpc) {
        (Some(r), Some(g)) => Some(r.min(g)),
        (r, g) => r.or(g),
    }
}
