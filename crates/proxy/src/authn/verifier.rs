//! [`JwtVerifier`]: one `jwtRules[]` entry — where its token is read from, which checks it
//! must pass, and what is forwarded.

use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation, decode, decode_header};
use serde_json::Value;
use trellis_model::JwtRule;

use super::AuthnError;
use super::jwks::{JwksOptions, JwksSource};
use super::token::TokenSources;

/// Longest token accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// At most this many keys are tried for a token without `kid`.
const MAX_KEYS_TRIED: usize = 8;

use AuthnError::Invalid;

/// Verifies tokens of one issuer.
pub struct JwtVerifier {
    issuer: String,
    audiences: Vec<String>,
    algorithms: Vec<Algorithm>,
    leeway: u64,
    sources: TokenSources,
    keys: JwksSource,
}

/// The parts of a token read before its signature is checked, only to reject early.
struct Unverified {
    alg: String,
    payload: Value,
}

impl Unverified {
    fn parse(token: &str) -> Result<Unverified, AuthnError> {
        const MALFORMED: AuthnError = Invalid("malformed token");
        if token.len() > MAX_TOKEN_LEN {
            return Err(Invalid("token too large"));
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(MALFORMED);
        };
        let json = |part: &str| -> Result<Value, AuthnError> {
            let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| MALFORMED)?;
            serde_json::from_slice::<Value>(&bytes).map_err(|_| MALFORMED)
        };
        let alg = json(header)?
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(MALFORMED)?
            .to_string();
        let payload = json(payload)?;
        if !payload.is_object() {
            return Err(MALFORMED);
        }
        Ok(Unverified { alg, payload })
    }

    fn issuer(&self) -> Option<&str> {
        self.payload.get("iss").and_then(Value::as_str)
    }

    /// `exp` must be present and, like `nbf` and `iat`, a non-negative number (RFC 7519
    /// NumericDate): a string or negative date is refused, never read as absent.
    fn check_dates(&self) -> Result<(), AuthnError> {
        let date = |v: &Value| v.as_f64().is_some_and(|x| x.is_finite() && x >= 0.0);
        match self.payload.get("exp") {
            None => return Err(Invalid("the token has no exp claim")),
            Some(v) if !date(v) => return Err(Invalid("exp must be a non-negative number")),
            Some(_) => {}
        }
        for (claim, reason) in [
            ("nbf", "nbf must be a non-negative number"),
            ("iat", "iat must be a non-negative number"),
        ] {
            if self.payload.get(claim).is_some_and(|v| !date(v)) {
                return Err(Invalid(reason));
            }
        }
        Ok(())
    }
}

/// Maps jsonwebtoken's verdict to a fixed reason.
fn reason(e: &ErrorKind) -> &'static str {
    match e {
        ErrorKind::ExpiredSignature => "token expired",
        ErrorKind::ImmatureSignature => "token not yet valid",
        ErrorKind::InvalidIssuer => "issuer not accepted",
        ErrorKind::InvalidAudience => "audience not accepted",
        ErrorKind::InvalidSignature => "signature does not verify",
        ErrorKind::InvalidAlgorithm => "algorithm not accepted",
        ErrorKind::MissingRequiredClaim(_) => "a required claim (exp, iss or aud) is missing",
        ErrorKind::InvalidClaimFormat(_) => "exp and nbf must be numbers",
        _ => "malformed token",
    }
}

impl JwtVerifier {
    /// Builds a verifier from a validated rule. `client` fetches a `jwksUri` (nothing is
    /// fetched until the first token arrives).
    pub fn new(
        rule: &JwtRule,
        client: &reqwest::Client,
        options: &JwksOptions,
    ) -> Result<JwtVerifier, String> {
        let mut algorithms = Vec::new();
        for name in rule.algorithm_names() {
            let alg = Algorithm::from_str(name)
                .map_err(|_| format!("algorithms: `{name}` is not a known algorithm"))?;
            if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                return Err(format!(
                    "algorithms: `{name}` is a shared-secret algorithm and is never accepted"
                ));
            }
            algorithms.push(alg);
        }
        let keys = match (&rule.jwks_uri, &rule.jwks) {
            (Some(uri), None) => JwksSource::remote(uri, client.clone(), options.clone()),
            (None, Some(jwks)) => JwksSource::inline(jwks).map_err(|e| format!("jwks: {e}"))?,
            _ => return Err("set exactly one of jwksUri and jwks".into()),
        };
        let sources = TokenSources::new(
            &rule.from_headers,
            &rule.from_params,
            rule.forward_claims_header.as_ref(),
        )?;
        Ok(JwtVerifier {
            issuer: rule.issuer.clone(),
            audiences: rule.audiences.clone(),
            algorithms,
            leeway: rule.clock_skew().as_secs(),
            sources,
            keys,
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Whether `token` is a JWT naming this rule's issuer (read before any check, only to pick
    /// the rule). An error when it is not a JWT at all.
    pub(super) fn is_issuer_of(&self, token: &str) -> Result<bool, AuthnError> {
        Ok(Unverified::parse(token)?.issuer() == Some(self.issuer.as_str()))
    }

    /// The token in this rule's locations, if any. Two different tokens, or one header given
    /// twice, are refused: the app must not see a token other than the one verified.
    pub fn find_token<'r>(
        &self,
        headers: &'r HeaderMap,
        query: Option<&'r str>,
    ) -> Result<Option<&'r str>, AuthnError> {
        self.sources.find(headers, query)
    }

    /// Verifies signature, algorithm, issuer, audience and dates; returns the claims.
    pub async fn verify(&self, token: &str) -> Result<Value, AuthnError> {
        let unverified = Unverified::parse(token)?;
        let alg_name = unverified.alg.as_str();
        if alg_name.eq_ignore_ascii_case("none") {
            return Err(Invalid("unsigned tokens (alg none) are not accepted"));
        }
        if alg_name.to_ascii_uppercase().starts_with("HS") {
            return Err(Invalid("shared-secret algorithms (HS*) are not accepted"));
        }
        let alg = Algorithm::from_str(alg_name).map_err(|_| Invalid("unknown algorithm"))?;
        if !self.algorithms.contains(&alg) {
            return Err(Invalid("algorithm not accepted"));
        }
        unverified.check_dates()?;
        let header = decode_header(token).map_err(|_| Invalid("malformed token"))?;
        let kid = header.kid.as_deref();
        let mut keys = self.keys.keys().await?;
        if let Some(kid) = kid
            && !keys.knows_kid(kid)
        {
            keys = self.keys.keys_for_unknown_kid().await?;
            if !keys.knows_kid(kid) {
                return Err(Invalid("unknown signing key (kid)"));
            }
        }
        let candidates = keys.candidates(kid, alg);
        if candidates.is_empty() {
            return Err(Invalid(
                "the token's algorithm does not fit the signing key",
            ));
        }
        let validation = self.validation(alg);
        for key in candidates.into_iter().take(MAX_KEYS_TRIED) {
            match decode::<Value>(token, &key.key, &validation) {
                Ok(data) => {
                    if data.claims.get("iss").and_then(Value::as_str) != Some(&self.issuer) {
                        return Err(Invalid("issuer not accepted"));
                    }
                    return Ok(data.claims);
                }
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => continue,
                Err(e) => return Err(Invalid(reason(e.kind()))),
            }
        }
        Err(Invalid("signature does not verify"))
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.algorithms = vec![alg];
        v.leeway = self.leeway;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_issuer(&[&self.issuer]);
        if self.audiences.is_empty() {
            v.validate_aud = false;
            v.set_required_spec_claims(&["exp", "iss"]);
        } else {
            v.set_audience(&self.audiences);
            v.set_required_spec_claims(&["exp", "iss", "aud"]);
        }
        v
    }

    /// The `forwardClaimsHeader` with the selected claims (see [`TokenSources`]).
    pub fn forward_header(&self, claims: &Value) -> Option<(HeaderName, HeaderValue)> {
        self.sources.forward_header(claims)
    }

    pub(super) fn sources(&self) -> &TokenSources {
        &self.sources
    }
}

#[cfg(test)]
mod tests;
