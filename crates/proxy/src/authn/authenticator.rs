//! [`Authenticator`]: every provider (JWT rules, introspection endpoints) that applies to one
//! service; finds the request's token and picks the provider that judges it.

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};
use serde_json::Value;
use trellis_model::RequestAuthenticationResource;

use super::AuthnError;
use super::introspection::{IntrospectionOptions, Introspector};
use super::jwks::JwksOptions;
use super::verifier::JwtVerifier;

/// A successfully authenticated request.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// The verified claims (a JSON object): a JWT's payload, or an introspection answer.
    pub claims: Value,
    /// The `forwardClaimsHeader` to add to the request, if configured and any claim is present.
    pub forward: Option<(HeaderName, HeaderValue)>,
}

/// Every authentication provider that applies to one service.
#[derive(Default)]
pub struct Authenticator {
    verifiers: Vec<JwtVerifier>,
    introspectors: Vec<Introspector>,
    /// Every `forwardClaimsHeader` name, stripped from requests before forwarding.
    forward_names: Vec<HeaderName>,
}

impl Authenticator {
    /// Builds the providers of every resource in `resources` (those applying to the service).
    pub fn new(
        resources: &[RequestAuthenticationResource],
        client: &reqwest::Client,
        options: &JwksOptions,
    ) -> Result<Authenticator, String> {
        let mut verifiers = Vec::new();
        let mut introspectors = Vec::new();
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
            if let Some(rule) = &r.spec.introspection {
                let i = Introspector::new(rule, client, IntrospectionOptions::default()).map_err(
                    |e| {
                        format!(
                            "RequestAuthentication {}: introspection.{e}",
                            r.metadata.name
                        )
                    },
                )?;
                introspectors.push(i);
            }
        }
        Ok(Authenticator::from_providers(verifiers, introspectors))
    }

    pub fn from_verifiers(verifiers: Vec<JwtVerifier>) -> Authenticator {
        Authenticator::from_providers(verifiers, Vec::new())
    }

    pub fn from_providers(
        verifiers: Vec<JwtVerifier>,
        introspectors: Vec<Introspector>,
    ) -> Authenticator {
        let mut forward_names: Vec<HeaderName> = verifiers
            .iter()
            .map(|v| v.sources())
            .chain(introspectors.iter().map(|i| i.sources()))
            .filter_map(|s| s.forward_name().cloned())
            .collect();
        forward_names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        forward_names.dedup();
        Authenticator {
            verifiers,
            introspectors,
            forward_names,
        }
    }

    /// True when no provider applies: requests are not authenticated.
    pub fn is_empty(&self) -> bool {
        self.verifiers.is_empty() && self.introspectors.is_empty()
    }

    /// Removes every configured `forwardClaimsHeader` from `headers`: only the proxy may set
    /// them, after verifying a token.
    pub fn strip_forwarded(&self, headers: &mut HeaderMap) {
        for name in &self.forward_names {
            if headers.contains_key(name) {
                headers.remove(name);
            }
        }
    }

    /// Finds the request's token and judges it: a JWT by the rule of its issuer; any other
    /// token (or a JWT no rule claims) by the introspection endpoints, the first that says
    /// it is active wins. [`AuthnError::Missing`] when no location holds a token.
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
            match v.is_issuer_of(token) {
                Ok(true) => {
                    let claims = v.verify(token).await?;
                    let forward = v.forward_header(&claims);
                    return Ok(Verified { claims, forward });
                }
                Ok(false) => {}
                // Not a JWT: refused unless an introspection endpoint may know it.
                Err(e) if self.introspectors.is_empty() => return Err(e),
                Err(_) => {}
            }
        }
        let mut failure: Option<AuthnError> = None;
        for i in &self.introspectors {
            let Some(token) = i.find_token(headers, query)? else {
                continue;
            };
            saw_token = true;
            match i.introspect(token).await {
                Ok(claims) => {
                    let forward = i.forward_header(&claims);
                    return Ok(Verified { claims, forward });
                }
                // An endpoint that could not answer might have accepted it: fail closed.
                Err(e @ AuthnError::IntrospectionUnavailable) => failure = Some(e),
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        match (saw_token, failure) {
            (false, _) => Err(AuthnError::Missing),
            (true, Some(e)) => Err(e),
            (true, None) => Err(AuthnError::Invalid("issuer not accepted")),
        }
    }
}
