//! Join tokens: `tjt_` then 32 random bytes as unpadded base64url, shown once; only their
//! SHA-256 is kept. The prefix makes tokens recognisable (secret scanners, logs) and keeps a
//! token from starting with `-`, which command lines would read as a flag.

use aws_lc_rs::digest;

/// What every token starts with.
pub const TOKEN_PREFIX: &str = "tjt_";
/// Random bytes in a token.
pub const TOKEN_BYTES: usize = 32;

/// A fresh token and the hash it is stored under.
pub struct NewToken {
    pub token: String,
    pub hash: String,
}

/// Draws a new token from the system RNG.
pub fn generate() -> Result<NewToken, String> {
    let mut bytes = [0u8; TOKEN_BYTES];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| "the system RNG failed".to_string())?;
    let token = format!("{TOKEN_PREFIX}{}", base64url(&bytes));
    let hash = hash(&token);
    Ok(NewToken { token, hash })
}

/// The key a presented token is looked up by: lowercase hex SHA-256 of its text.
pub fn hash(token: &str) -> String {
    hex(digest::digest(&digest::SHA256, token.as_bytes()).as_ref())
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Unpadded base64url (RFC 4648 §5).
pub fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            let idx = (n >> (18 - 6 * i)) & 0x3f;
            out.push(char::from(ALPHABET[idx as usize]));
        }
    }
    out
}
