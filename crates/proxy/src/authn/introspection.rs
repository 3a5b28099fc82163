//! OAuth2 token introspection (RFC 7662) for opaque bearer tokens: an [`Introspector`] POSTs
//! `token=...` to the authorization server's endpoint with HTTP Basic client credentials and
//! accepts the token only when the answer says `"active": true` and its `exp`, `nbf`, `iss`
//! and `aud`, when present, fit the rule.
//!
//! Answers (active or not) are cached for `cacheTtl`, never past the token's `exp`, keyed by
//! the token's SHA-256, in a map of bounded size; a cached answer is judged again on each use,
//! so it cannot outlive its dates. When the endpoint cannot be reached or answers anything but
//! a 200 JSON object, the request fails closed ([`AuthnError::IntrospectionUnavailable`]) and
//! nothing is cached.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{ACCEPT, CONTENT_TYPE, HeaderName};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::Value;
use tokio::time::Instant;
use trellis_model::{DEFAULT_CLOCK_SKEW, Introspection};

use super::token::TokenSources;
use super::{AuthnError, MAX_TOKEN_LEN};
use AuthnError::Invalid;

/// Limits of one introspection provider.
#[derive(Debug, Clone)]
pub struct IntrospectionOptions {
    /// Bound on one call to the endpoint, connection included.
    pub timeout: Duration,
    /// Largest answer accepted, in bytes.
    pub max_body: usize,
    /// Most answers cached at once.
    pub max_entries: usize,
    /// Tolerance on the answer's `exp` and `nbf`.
    pub clock_skew: Duration,
}

impl Default for IntrospectionOptions {
    fn default() -> Self {
        IntrospectionOptions {
            timeout: Duration::from_secs(5),
            max_body: 64 * 1024,
            max_entries: 10_000,
            clock_skew: DEFAULT_CLOCK_SKEW,
        }
    }
}

/// Where the client secret comes from.
enum Secret {
    Inline(String),
    /// Read on every call to the endpoint, so the file can be rotated in place.
    File(PathBuf),
}

struct Cached {
    answer: Arc<Value>,
    until: Instant,
}

/// One introspection endpoint.
pub struct Introspector {
    endpoint: String,
    client_id: String,
    secret: Secret,
    issuer: Option<String>,
    audiences: Vec<String>,
    ttl: Duration,
    sources: TokenSources,
    client: reqwest::Client,
    options: IntrospectionOptions,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
}

impl std::fmt::Debug for Introspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspector")
            .field("endpoint", &self.endpoint)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            b => {
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0x0f)]));
            }
        }
    }
    out
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Introspector {
    /// Builds a provider from a validated `introspection` block. Nothing is fetched or read
    /// until the first token arrives.
    pub fn new(
        rule: &Introspection,
        client: &reqwest::Client,
        options: IntrospectionOptions,
    ) -> Result<Introspector, String> {
        let secret = match (&rule.client_secret, &rule.client_secret_file) {
            (Some(s), None) => Secret::Inline(s.clone()),
            (None, Some(path)) => Secret::File(PathBuf::from(path)),
            _ => return Err("set exactly one of clientSecret and clientSecretFile".into()),
        };
        Ok(Introspector {
            endpoint: rule.endpoint.clone(),
            client_id: rule.client_id.clone(),
            secret,
            issuer: rule.issuer.clone(),
            audiences: rule.audiences.clone(),
            ttl: rule.cache_ttl(),
            sources: TokenSources::new(
                &rule.from_headers,
                &rule.from_params,
                rule.forward_claims_header.as_ref(),
            )?,
            client: client.clone(),
            options,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The token in this provider's locations, if any (see [`TokenSources::find`]).
    pub fn find_token<'r>(
        &self,
        headers: &'r HeaderMap,
        query: Option<&'r str>,
    ) -> Result<Option<&'r str>, AuthnError> {
        self.sources.find(headers, query)
    }

    /// The `forwardClaimsHeader` with the selected fields of the answer.
    pub fn forward_header(&self, claims: &Value) -> Option<(HeaderName, HeaderValue)> {
        self.sources.forward_header(claims)
    }

    pub(super) fn sources(&self) -> &TokenSources {
        &self.sources
    }

    /// The number of cached answers.
    pub fn cached(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Cached>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The introspection answer for `token` (cached or fetched) judged now: its claims when the
    /// token is active and fits the rule.
    pub async fn introspect(&self, token: &str) -> Result<Value, AuthnError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(Invalid("token too large"));
        }
        let key: [u8; 32] = {
            let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
            let mut k = [0u8; 32];
            k.copy_from_slice(d.as_ref());
            k
        };
        let now = Instant::now();
        let cached = self
            .lock()
            .get(&key)
            .filter(|c| c.until > now)
            .map(|c| c.answer.clone());
        let answer = match cached {
            Some(a) => a,
            None => {
                let answer = Arc::new(self.fetch(token).await?);
                self.store(key, answer.clone());
                answer
            }
        };
        self.judge(&answer, unix_now())?;
        Ok(Value::clone(&answer))
    }

    /// Checks an answer at unix time `now`.
    fn judge(&self, answer: &Value, now: f64) -> Result<(), AuthnError> {
        if answer.get("active") != Some(&Value::Bool(true)) {
            return Err(Invalid("token is not active"));
        }
        let skew = self.options.clock_skew.as_secs_f64();
        let date = |claim: &str, reason: &'static str| -> Result<Option<f64>, AuthnError> {
            match answer.get(claim) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => match v.as_f64() {
                    Some(x) if x.is_finite() && x >= 0.0 => Ok(Some(x)),
                    _ => Err(Invalid(reason)),
                },
            }
        };
        if date("exp", "exp must be a non-negative number")?.is_some_and(|exp| exp + skew <= now) {
            return Err(Invalid("token expired"));
        }
        if date("nbf", "nbf must be a non-negative number")?.is_some_and(|nbf| nbf - skew > now) {
            return Err(Invalid("token not yet valid"));
        }
        if let (Some(want), Some(iss)) = (&self.issuer, answer.get("iss"))
            && iss.as_str() != Some(want.as_str())
        {
            return Err(Invalid("issuer not accepted"));
        }
        if let Some(aud) = answer.get("aud")
            && !self.audiences.is_empty()
        {
            let ok = match aud {
                Value::String(a) => self.audiences.contains(a),
                Value::Array(items) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|a| self.audiences.iter().any(|w| w == a)),
                _ => false,
            };
            if !ok {
                return Err(Invalid("audience not accepted"));
            }
        }
        Ok(())
    }

    /// Caches an answer for the TTL, or until the token's `exp` when sooner.
    fn store(&self, key: [u8; 32], answer: Arc<Value>) {
        let now = Instant::now();
        let mut ttl = self.ttl;
        if let Some(exp) = answer.get("exp").and_then(Value::as_f64) {
            let left = (exp - unix_now()).max(0.0);
            ttl = ttl.min(Duration::try_from_secs_f64(left).unwrap_or(Duration::ZERO));
        }
        if ttl.is_zero() {
            return;
        }
        let mut cache = self.lock();
        if cache.len() >= self.options.max_entries {
            cache.retain(|_, c| c.until > now);
            // Still full of live answers: drop one, whichever.
            if cache.len() >= self.options.max_entries
                && let Some(k) = cache.keys().next().copied()
            {
                cache.remove(&k);
            }
        }
        cache.insert(
            key,
            Cached {
                answer,
                until: now + ttl,
            },
        );
    }

    async fn secret(&self) -> Result<String, AuthnError> {
        match &self.secret {
            Secret::Inline(s) => Ok(s.clone()),
            Secret::File(path) => match tokio::fs::read_to_string(path).await {
                Ok(s) => Ok(s.trim_end_matches(['\r', '\n']).to_string()),
                Err(e) => {
                    tracing::warn!(
                        path = %path.display(),
                        error = %e,
                        "cannot read the introspection client secret (clientSecretFile)"
                    );
                    Err(AuthnError::IntrospectionUnavailable)
                }
            },
        }
    }

    /// Calls the endpoint; any failure is [`AuthnError::IntrospectionUnavailable`].
    async fn fetch(&self, token: &str) -> Result<Value, AuthnError> {
        let secret = self.secret().await?;
        match self.post(token, &secret).await {
            Ok(answer) => Ok(answer),
            Err(e) => {
                tracing::warn!(endpoint = %self.endpoint, error = %e, "token introspection failed");
                Err(AuthnError::IntrospectionUnavailable)
            }
        }
    }

    async fn post(&self, token: &str, secret: &str) -> Result<Value, String> {
        let body = format!("token={}&token_type_hint=access_token", form_encode(token));
        let mut response = self
            .client
            .post(&self.endpoint)
            .timeout(self.options.timeout)
            // RFC 6749 §2.3.1: both are form-encoded before Basic encoding.
            .basic_auth(form_encode(&self.client_id), Some(form_encode(secret)))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        if response.status() != StatusCode::OK {
            return Err(format!("answered {}", response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("reading the answer failed: {e}"))?
        {
            if body.len() + chunk.len() > self.options.max_body {
                return Err(format!(
                    "the answer is larger than {} bytes",
                    self.options.max_body
                ));
            }
            body.extend_from_slice(&chunk);
        }
        let answer: Value =
            serde_json::from_slice(&body).map_err(|e| format!("the answer is not JSON: {e}"))?;
        if !answer.is_object() {
            return Err("the answer is not a JSON object".into());
        }
        Ok(answer)
    }
}

#[cfg(test)]
mod tests;
