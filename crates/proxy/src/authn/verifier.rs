//! [`JwtVerifier`] (one `jwtRules[]` entry) and [`Authenticator`] (all rules of a service):
//! where the token is read from, which checks it must pass, and what is forwarded.

use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header::{AUTHORIZATION, HeaderName};
use http::{HeaderMap, HeaderValue};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation, decode, decode_header};
use serde_json::{Map, Value};
use trellis_model::{JwtRule, RequestAuthenticationResource};

use super::AuthnError;
use super::jwks::{JwksOptions, JwksSource};

/// Longest token accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// At most this many keys are tried for a token without `kid`.
const MAX_KEYS_TRIED: usize = 8;

use AuthnError::Invalid;

/// Where a token may be found.
#[derive(Debug, Clone)]
enum Location {
    /// A header, with the prefix (matched case-insensitively) before the token.
    Header {
        name: HeaderName,
        prefix: Option<String>,
    },
    Param(String),
}

/// Verifies tokens of one issuer.
pub struct JwtVerifier {
    issuer: String,
    audiences: Vec<String>,
    algorithms: Vec<Algorithm>,
    leeway: u64,
    locations: Vec<Location>,
    forward: Option<(HeaderName, Vec<String>)>,
    keys: JwksSource,
}

/// A successfully authenticated request.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// The verified claims (a JSON object).
    pub claims: Value,
    /// The `forwardClaimsHeader` to add to the request, if configured and any claim is present.
    pub forward: Option<(HeaderName, HeaderValue)>,
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

fn header_name(name: &str, field: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{field}: `{name}` is not a valid header name"))
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
        let mut locations = Vec::new();
        for h in &rule.from_headers {
            locations.push(Location::Header {
                name: header_name(&h.name, "fromHeaders")?,
                prefix: h.prefix.clone().filter(|p| !p.is_empty()),
            });
        }
        locations.extend(rule.from_params.iter().cloned().map(Location::Param));
        if locations.is_empty() {
            locations.push(Location::Header {
                name: AUTHORIZATION,
                prefix: Some("Bearer ".into()),
            });
        }
        let forward = match &rule.forward_claims_header {
            Some(f) => Some((
                header_name(&f.header, "forwardClaimsHeader")?,
                f.claims.clone(),
            )),
            None => None,
        };
        Ok(JwtVerifier {
            issuer: rule.issuer.clone(),
            audiences: rule.audiences.clone(),
            algorithms,
            leeway: rule.clock_skew().as_secs(),
            locations,
            forward,
            keys,
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The token in this rule's locations, if any. Two different tokens, or one header given
    /// twice, are refused: the app must not see a token other than the one verified.
    pub fn find_token<'r>(
        &self,
        headers: &'r HeaderMap,
        query: Option<&'r str>,
    ) -> Result<Option<&'r str>, AuthnError> {
        let mut found: Option<&str> = None;
        let mut take = |token: &'r str| -> Result<(), AuthnError> {
            match found {
                Some(t) if t != token => Err(Invalid("more than one token in the request")),
                _ => {
                    found = Some(token);
                    Ok(())
                }
            }
        };
        for location in &self.locations {
            match location {
                Location::Header { name, prefix } => {
                    let mut values = headers.get_all(name).iter();
                    let Some(value) = values.next() else {
                        continue;
                    };
                    if values.next().is_some() {
                        return Err(Invalid("more than one token in the request"));
                    }
                    let value = value.to_str().map_err(|_| Invalid("malformed token"))?;
                    let token = match prefix {
                        None => value,
                        Some(p) => match value.get(..p.len()) {
                            Some(head) if head.eq_ignore_ascii_case(p) => &value[p.len()..],
                            // Another scheme (e.g. `Basic`): not a token for this rule.
                            _ => continue,
                        },
                    };
                    take(token.trim())?;
                }
                Location::Param(param) => {
                    for pair in query.unwrap_or("").split('&') {
                        if let Some((k, v)) = pair.split_once('=')
                            && k == param
                        {
                            take(v)?;
                        }
                    }
                }
            }
        }
        Ok(found.filter(|t| !t.is_empty()))
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

    /// The `forwardClaimsHeader`: the selected claims as a JSON object, base64url-encoded
    /// (so any claim value is header-safe). `None` when not configured or no claim is present.
    pub fn forward_header(&self, claims: &Value) -> Option<(HeaderName, HeaderValue)> {
        let (name, wanted) = self.forward.as_ref()?;
        let selected: Map<String, Value> = wanted
            .iter()
            .filter_map(|c| claims.get(c).map(|v| (c.clone(), v.clone())))
            .collect();
        if selected.is_empty() {
            return None;
        }
        let json = serde_json::to_vec(&Value::Object(selected)).ok()?;
        let value = HeaderValue::from_str(&URL_SAFE_NO_PAD.encode(json)).ok()?;
        Some((name.clone(), value))
    }
}

/// Every JWT rule that applies to one service.
#[derive(Default)]
pub struct Authenticator {
    verifiers: Vec<JwtVerifier>,
}

impl Authenticator {
    /// Builds the verifiers of every rule of `resources` (those applying to the service).
    pub fn new(
        resources: &[RequestAuthenticationResource],
        client: &reqwest::Client,
        options: &JwksOptions,
    ) -> Result<Authenticator, String> {
        let mut verifiers = Vec::new();
        for r in resources {
            for (i, rule) in r.spec.jwt_rules.iter().enumerate() {
                let v = JwtVerifier::new(rule, client, options).map_err(|e| {
                    format!(
                        "RequestAuthentication {}: jwtRules[{i}].{e}",
                        r.metadata.name
                    )
                })?;
                verifiers.push(v);
            }
        }
        Ok(Authenticator { verifiers })
    }

    pub fn from_verifiers(verifiers: Vec<JwtVerifier>) -> Authenticator {
        Authenticator { verifiers }
    }

    /// True when no rule applies: requests are not authenticated.
    pub fn is_empty(&self) -> bool {
        self.verifiers.is_empty()
    }

    /// Finds the request's token, picks the rule of its issuer and verifies it.
    /// [`AuthnError::Missing`] when no rule's location holds a token.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Verified, AuthnError> {
        let mut saw_token = false;
        for v in &self.verifiers {
            let Some(token) = v.find_token(headers, query)? else {
                continue;
            };
            saw_token = true;
            let unverified = Unverified::parse(token)?;
            if unverified.issuer() != Some(v.issuer()) {
                continue;
            }
            let claims = v.verify(token).await?;
            let forward = v.forward_header(&claims);
            return Ok(Verified { claims, forward });
        }
        if saw_token {
            Err(Invalid("issuer not accepted"))
        } else {
            Err(AuthnError::Missing)
        }
    }
}

#[cfg(test)]
mod tests;
