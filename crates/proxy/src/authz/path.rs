//! Request path normalization, run before any path is matched by an authorization rule, so
//! that `/a/%2e%2e/admin`, `//admin` and `/public/../admin` cannot slip past a rule that
//! names `/admin`. Pure; the rejected forms map to `400 Bad Request`.
//!
//! Steps, on the path part only (the query string, from the first `?`, is kept untouched):
//! 1. percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, every other
//!    escape is kept with upper-case hex digits, raw non-ASCII bytes are encoded;
//! 2. encoded `/` (`%2F`), `\` (`%5C`) and NUL (`%00`), raw `\`, NUL and other control
//!    characters, and malformed escapes are rejected;
//! 3. repeated slashes are merged, `.` segments dropped and `..` segments resolved, never
//!    above the root (RFC 3986 §5.2.4); a `.`/`..` segment carrying a `;` parameter (`..;`),
//!    which some servers treat as `..`, is rejected.

use std::fmt;

/// The longest path (without the query) accepted.
pub const MAX_PATH_LEN: usize = 8192;

/// Why a path was rejected; every variant is the client's fault (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    NotAbsolute,
    TooLong,
    MalformedEscape,
    EncodedSlash,
    EncodedBackslash,
    Nul,
    Backslash,
    Control,
    DotSegmentParameter,
}

impl PathError {
    /// A short, fixed description, safe to put in a response.
    pub fn reason(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "the request path must start with `/`",
            PathError::TooLong => "the request path is longer than 8192 bytes",
            PathError::MalformedEscape => {
                "malformed percent-encoding: `%` must be followed by two hex digits"
            }
            PathError::EncodedSlash => "an encoded `/` (%2F) is not allowed in the path",
            PathError::EncodedBackslash => "an encoded `\\` (%5C) is not allowed in the path",
            PathError::Nul => "NUL (raw or %00) is not allowed in the path",
            PathError::Backslash => "`\\` is not allowed in the path",
            PathError::Control => "control characters are not allowed in the path",
            PathError::DotSegmentParameter => {
                "a `.` or `..` segment with a `;` parameter is ambiguous"
            }
        }
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for PathError {}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn push_escaped(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 0x0f)]));
}

/// Step 1 and 2: decodes unreserved escapes, canonicalizes the others, rejects the dangerous.
fn decode(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex_value);
                let lo = bytes.get(i + 2).copied().and_then(hex_value);
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(PathError::MalformedEscape);
                };
                let v = hi << 4 | lo;
                match v {
                    0 => return Err(PathError::Nul),
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::EncodedBackslash),
                    v if is_unreserved(v) => out.push(char::from(v)),
                    v => push_escaped(&mut out, v),
                }
                i += 3;
            }
            0 => return Err(PathError::Nul),
            b'\\' => return Err(PathError::Backslash),
            b if b < 0x20 || b == 0x7f => return Err(PathError::Control),
            b if b >= 0x80 => {
                push_escaped(&mut out, b);
                i += 1;
            }
            b => {
                out.push(char::from(b));
                i += 1;
            }
        }
    }
    Ok(out)
}

/// True for `.;x` and `..;x`: a dot segment with a path parameter.
fn is_dot_with_parameter(segment: &str) -> bool {
    match segment.split_once(';') {
        Some((head, _)) => head == "." || head == "..",
        None => false,
    }
}

/// Normalizes a request target's path (see the module doc); the query is kept as it is.
pub fn normalize_path(raw: &str) -> Result<String, PathError> {
    let (path, query) = match raw.find('?') {
        Some(i) => raw.split_at(i),
        None => (raw, ""),
    };
    if path.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let decoded = decode(path)?;
    let mut segments: Vec<&str> = Vec::new();
    // Whether the path ends in a directory: a trailing `/`, `.` or `..`.
    let mut trailing_slash = false;
    for segment in decoded[1..].split('/') {
        trailing_slash = true;
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s if is_dot_with_parameter(s) => return Err(PathError::DotSegmentParameter),
            s => {
                segments.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(decoded.len() + query.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if segments.is_empty() || trailing_slash {
        out.push('/');
    }
    out.push_str(query);
    Ok(out)
}

/// True when `target` is already what [`normalize_path`] returns (so nothing needs to change):
/// checked in one pass over the path, without allocating. Conservative: `false` only means the
/// full normalization must run.
pub fn is_normalized(target: &str) -> bool {
    let path = path_only(target);
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') || bytes.len() > MAX_PATH_LEN {
        return false;
    }
    // Printable ASCII except `%` (escapes may need decoding) and `\`.
    if !bytes
        .iter()
        .all(|&b| b > 0x20 && b < 0x7f && b != b'%' && b != b'\\')
    {
        return false;
    }
    let mut segments = path[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        let bad = (segment.is_empty() && !last)
            || segment == "."
            || segment == ".."
            || segment.starts_with(".;")
            || segment.starts_with("..;");
        if bad {
            return false;
        }
    }
    true
}

/// The path part of a normalized request target (without `?query`).
pub fn path_only(target: &str) -> &str {
    target.split_once('?').map_or(target, |(p, _)| p)
}

#[cfg(test)]
mod tests;
