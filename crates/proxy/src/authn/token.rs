//! Where a provider (a JWT rule or an introspection endpoint) reads its token from, and which
//! verified claims it forwards to the app: shared by [`super::JwtVerifier`] and
//! [`super::Introspector`].

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header::{AUTHORIZATION, HeaderName};
use http::{HeaderMap, HeaderValue};
use serde_json::{Map, Value};
use trellis_model::{ForwardClaims, JwtHeader};

use super::AuthnError;
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

/// A provider's token locations and its `forwardClaimsHeader`.
#[derive(Debug, Clone)]
pub(super) struct TokenSources {
    locations: Vec<Location>,
    forward: Option<(HeaderName, Vec<String>)>,
}

fn header_name(name: &str, field: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{field}: `{name}` is not a valid header name"))
}

impl TokenSources {
    /// From a rule's `fromHeaders`, `fromParams` (both empty: `Authorization: Bearer`) and
    /// `forwardClaimsHeader`.
    pub(super) fn new(
        from_headers: &[JwtHeader],
        from_params: &[String],
        forward: Option<&ForwardClaims>,
    ) -> Result<TokenSources, String> {
        let mut locations = Vec::new();
        for h in from_headers {
            locations.push(Location::Header {
                name: header_name(&h.name, "fromHeaders")?,
                prefix: h.prefix.clone().filter(|p| !p.is_empty()),
            });
        }
        locations.extend(from_params.iter().cloned().map(Location::Param));
        if locations.is_empty() {
            locations.push(Location::Header {
                name: AUTHORIZATION,
                prefix: Some("Bearer ".into()),
            });
        }
        let forward = match forward {
            Some(f) => Some((
                header_name(&f.header, "forwardClaimsHeader")?,
                f.claims.clone(),
            )),
            None => None,
        };
        Ok(TokenSources { locations, forward })
    }

    /// The token in these locations, if any. Two different tokens, or one header given
    /// twice, are refused: the app must not see a token other than the one verified.
    pub(super) fn find<'r>(
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

    /// The name of the `forwardClaimsHeader`, if configured.
    pub(super) fn forward_name(&self) -> Option<&HeaderName> {
        self.forward.as_ref().map(|(name, _)| name)
    }

    /// The `forwardClaimsHeader`: the selected claims as a JSON object, base64url-encoded
    /// (so any claim value is header-safe). `None` when not configured or no claim is present.
    pub(super) fn forward_header(&self, claims: &Value) -> Option<(HeaderName, HeaderValue)> {
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
