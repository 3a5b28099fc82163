//! Request authentication for RequestAuthentication resources: JWT verification and OAuth2
//! token introspection.
//!
//! A [`JwtVerifier`] is built from one `jwtRules[]` entry: its signing keys come from an
//! inline JWKS or from `jwksUri` ([`jwks`]: cached in an `ArcSwap`, refreshed every
//! [`JwksOptions::refresh_interval`], refetched on an unknown `kid` at most once per
//! [`JwksOptions::min_refetch_interval`]). An [`Introspector`] ([`introspection`]) asks an
//! RFC 7662 endpoint about opaque tokens, with a short bounded cache. An [`Authenticator`]
//! holds the providers of one service, finds the token in the request and picks the verifier
//! by the token's issuer, or the introspection endpoints for other tokens.
//!
//! Only asymmetric algorithms are accepted; `none` and every `HS*` are always refused, and
//! the token's `alg` must fit the key's type. Failures are [`AuthnError`]s, mapped to `401`
//! with a `WWW-Authenticate: Bearer` challenge by [`AuthnError::challenge`]. Without usable
//! keys, or an introspection endpoint that answers, authentication fails closed.

mod authenticator;
mod introspection;
mod jwks;
mod token;
mod verifier;

#[cfg(test)]
pub(crate) mod testkeys;

use http::{HeaderValue, StatusCode};

pub use authenticator::{Authenticator, Verified};
pub use introspection::{IntrospectionOptions, Introspector};
pub use jwks::{JwksOptions, KeySet};
pub use verifier::{JwtVerifier, MAX_TOKEN_LEN};

/// Why a request is not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    /// No token in any configured location. Authorization decides whether that is fine.
    #[error("no token in the request")]
    Missing,
    /// The token is present but not acceptable; the reason is fixed text, safe to return.
    #[error("invalid token: {0}")]
    Invalid(&'static str),
    /// The signing keys cannot be obtained: fail closed.
    #[error("the issuer's signing keys are unavailable")]
    JwksUnavailable,
    /// The introspection endpoint could not judge the token: fail closed.
    #[error("the token introspection endpoint is unavailable")]
    IntrospectionUnavailable,
}

impl AuthnError {
    /// The response for this failure: `401 Unauthorized` with an RFC 6750 challenge, e.g.
    /// `Bearer realm="trellis", error="invalid_token", error_description="token expired"`.
    pub fn challenge(&self) -> (StatusCode, HeaderValue) {
        let value = match self {
            AuthnError::Missing => "Bearer realm=\"trellis\"".to_string(),
            AuthnError::Invalid(reason) => format!(
                "Bearer realm=\"trellis\", error=\"invalid_token\", error_description=\"{reason}\""
            ),
            AuthnError::JwksUnavailable => "Bearer realm=\"trellis\", error=\"invalid_token\", \
                 error_description=\"signing keys unavailable\""
                .to_string(),
            AuthnError::IntrospectionUnavailable => "Bearer realm=\"trellis\", \
                 error=\"invalid_token\", error_description=\"token introspection unavailable\""
                .to_string(),
        };
        let header = HeaderValue::from_str(&value)
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer realm=\"trellis\""));
        (StatusCode::UNAUTHORIZED, header)
    }
}
