//! Signing keys: a parsed JWKS ([`KeySet`]) and where it comes from ([`JwksSource`]).
//!
//! A remote JWKS is fetched with reqwest on first use, kept in an `ArcSwap` that requests read
//! without locking, refreshed when older than [`JwksOptions::refresh_interval`], and refetched
//! when a token names an unknown `kid` — at most once per
//! [`JwksOptions::min_refetch_interval`], so forged `kid`s cannot make the sidecar hammer the
//! issuer. When a refresh fails the last keys stay in use up to [`JwksOptions::max_stale`];
//! with no usable keys, verification fails closed.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use tokio::time::Instant;

use super::AuthnError;

/// Most keys kept from one JWKS document.
const MAX_KEYS: usize = 64;

/// How a remote JWKS is cached and refreshed.
#[derive(Debug, Clone)]
pub struct JwksOptions {
    /// Keys older than this are refreshed on the next use.
    pub refresh_interval: Duration,
    /// At most one fetch per this interval (unknown `kid`s, failed fetches).
    pub min_refetch_interval: Duration,
    /// Keys whose refresh keeps failing are dropped after this long: fail closed.
    pub max_stale: Duration,
    /// Bound on one fetch, connection included.
    pub fetch_timeout: Duration,
    /// Largest JWKS document accepted, in bytes.
    pub max_body: usize,
}

impl Default for JwksOptions {
    fn default() -> Self {
        JwksOptions {
            refresh_interval: Duration::from_secs(300),
            min_refetch_interval: Duration::from_secs(30),
            max_stale: Duration::from_secs(3600),
            fetch_timeout: Duration::from_secs(5),
            max_body: 256 * 1024,
        }
    }
}

/// The type of a public key, which fixes the algorithms it may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyKind {
    /// True when `alg` is a signature algorithm for this key type. This is what stops a token
    /// signed "HS256 with the RSA public key as secret" or "ES256 against an RSA key".
    pub(super) fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyKind::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::EcP256 => alg == ES256,
            KeyKind::EcP384 => alg == ES384,
            KeyKind::Ed25519 => alg == EdDSA,
        }
    }
}

pub(super) struct Key {
    pub kid: Option<String>,
    pub kind: KeyKind,
    /// The `alg` the JWK pins, if any.
    pub alg: Option<Algorithm>,
    pub key: DecodingKey,
}

/// The usable public signing keys of one JWKS document.
pub struct KeySet {
    keys: Vec<Key>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| (k.kid.as_deref(), k.kind)))
            .finish()
    }
}

/// One JWK as a usable key, or why it is skipped.
fn usable(value: &Value) -> Result<Key, &'static str> {
    if value.get("d").is_some() {
        return Err("private key material (`d`) in a JWKS");
    }
    let jwk: Jwk = serde_json::from_value(value.clone()).map_err(|_| "unreadable JWK")?;
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return Err("not a signature key (`use`)");
    }
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyKind::Rsa,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => KeyKind::EcP256,
            EllipticCurve::P384 => KeyKind::EcP384,
            _ => return Err("unsupported EC curve"),
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            KeyKind::Ed25519
        }
        AlgorithmParameters::OctetKey(_) => return Err("symmetric key (kty oct)"),
        _ => return Err("unsupported key type"),
    };
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(ka) => {
            let alg = Algorithm::try_from(ka).map_err(|_| "unsupported `alg`")?;
            if !kind.fits(alg) {
                return Err("`alg` does not fit the key type");
            }
            Some(alg)
        }
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| "malformed key parameters")?;
    Ok(Key {
        kid: jwk.common.key_id,
        kind,
        alg,
        key,
    })
}

impl KeySet {
    /// Parses a JWKS document, keeping its public RSA, EC P-256/P-384 and Ed25519 signature
    /// keys. Other keys are skipped (and logged); none usable is an error.
    pub fn parse(text: &str) -> Result<KeySet, String> {
        let doc: Value =
            serde_json::from_str(text).map_err(|e| format!("the JWKS is not JSON: {e}"))?;
        let list = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("the JWKS has no `keys` list")?;
        let mut keys = Vec::new();
        for (i, value) in list.iter().enumerate().take(MAX_KEYS) {
            match usable(value) {
                Ok(k) => keys.push(k),
                Err(why) => tracing::warn!(key = i, why, "JWKS key skipped"),
            }
        }
        if keys.is_empty() {
            return Err(
                "the JWKS holds no usable public signing key (RSA, EC P-256/P-384 or Ed25519)"
                    .into(),
            );
        }
        Ok(KeySet { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub(super) fn knows_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// The keys that may verify a token with this `kid` (any key when the token has none)
    /// and `alg`.
    pub(super) fn candidates(&self, kid: Option<&str>, alg: Algorithm) -> Vec<&Key> {
        self.keys
            .iter()
            .filter(|k| kid.is_none_or(|kid| k.kid.as_deref() == Some(kid)))
            .filter(|k| k.kind.fits(alg) && k.alg.is_none_or(|a| a == alg))
            .collect()
    }
}

struct Cached {
    keys: Arc<KeySet>,
    fetched_at: Instant,
}

/// Remote JWKS state: the cache read by requests and the fetch bookkeeping.
pub(super) struct Remote {
    uri: String,
    client: reqwest::Client,
    options: JwksOptions,
    cache: ArcSwapOption<Cached>,
    /// Time of the last fetch attempt; the lock also makes concurrent misses fetch once.
    last_attempt: tokio::sync::Mutex<Option<Instant>>,
}

/// Where a verifier's keys come from.
pub(super) enum JwksSource {
    Inline(Arc<KeySet>),
    Remote(Box<Remote>),
}

impl JwksSource {
    pub(super) fn inline(text: &str) -> Result<JwksSource, String> {
        Ok(JwksSource::Inline(Arc::new(KeySet::parse(text)?)))
    }

    pub(super) fn remote(uri: &str, client: reqwest::Client, options: JwksOptions) -> JwksSource {
        JwksSource::Remote(Box::new(Remote {
            uri: uri.to_string(),
            client,
            options,
            cache: ArcSwapOption::empty(),
            last_attempt: tokio::sync::Mutex::new(None),
        }))
    }

    /// The keys to verify with: cached, refreshed when due, fetched on first use.
    pub(super) async fn keys(&self) -> Result<Arc<KeySet>, AuthnError> {
        let remote = match self {
            JwksSource::Inline(keys) => return Ok(keys.clone()),
            JwksSource::Remote(r) => r,
        };
        let now = Instant::now();
        let cached = remote.cache.load_full();
        match cached {
            Some(c) if now.duration_since(c.fetched_at) < remote.options.refresh_interval => {
                Ok(c.keys.clone())
            }
            Some(c) => match remote.fetch(now).await {
                Ok(keys) => Ok(keys),
                Err(_) if now.duration_since(c.fetched_at) < remote.options.max_stale => {
                    Ok(c.keys.clone())
                }
                Err(_) => Err(AuthnError::JwksUnavailable),
            },
            None => remote.fetch(now).await,
        }
    }

    /// Keys after a token named an unknown `kid`: refetched unless a fetch happened within
    /// the minimum interval (then the current keys, without the `kid`).
    pub(super) async fn keys_for_unknown_kid(&self) -> Result<Arc<KeySet>, AuthnError> {
        match self {
            JwksSource::Inline(keys) => Ok(keys.clone()),
            JwksSource::Remote(r) => r.fetch(Instant::now()).await,
        }
    }
}

impl Remote {
    /// Fetches the JWKS unless another caller already did since `since`, or a fetch was
    /// attempted within `min_refetch_interval` (then the cached keys, or unavailable).
    async fn fetch(&self, since: Instant) -> Result<Arc<KeySet>, AuthnError> {
        let mut last = self.last_attempt.lock().await;
        let cached = self.cache.load_full();
        if let Some(c) = &cached
            && c.fetched_at >= since
        {
            return Ok(c.keys.clone());
        }
        let now = Instant::now();
        if let Some(at) = *last
            && now.duration_since(at) < self.options.min_refetch_interval
        {
            return cached
                .filter(|c| now.duration_since(c.fetched_at) < self.options.max_stale)
                .map(|c| c.keys.clone())
                .ok_or(AuthnError::JwksUnavailable);
        }
        *last = Some(now);
        match self.get().await {
            Ok(keys) => {
                let keys = Arc::new(keys);
                tracing::debug!(uri = %self.uri, keys = keys.len(), "JWKS fetched");
                self.cache.store(Some(Arc::new(Cached {
                    keys: keys.clone(),
                    fetched_at: Instant::now(),
                })));
                Ok(keys)
            }
            Err(e) => {
                tracing::warn!(uri = %self.uri, error = %e, "cannot fetch the JWKS");
                Err(AuthnError::JwksUnavailable)
            }
        }
    }

    async fn get(&self) -> Result<KeySet, String> {
        let mut response = self
            .client
            .get(&self.uri)
            .timeout(self.options.fetch_timeout)
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("reading the body failed: {e}"))?
        {
            if body.len() + chunk.len() > self.options.max_body {
                return Err(format!(
                    "the JWKS is larger than {} bytes",
                    self.options.max_body
                ));
            }
            body.extend_from_slice(&chunk);
        }
        let text = String::from_utf8(body).map_err(|_| "the JWKS is not UTF-8".to_string())?;
        KeySet::parse(&text)
    }
}

#[cfg(test)]
mod tests;
