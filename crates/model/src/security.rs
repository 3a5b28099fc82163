//! The zero-trust kinds: [`AuthorizationPolicyResource`] (who may call what) and
//! [`RequestAuthenticationResource`] (which JWTs, or OAuth2 tokens checked by introspection,
//! are accepted). docs/RESOURCES.md describes
//! them and the exact evaluation order; the sidecar compiles and enforces them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Metadata, ServiceRef, parse_duration};

/// Signature algorithms a `jwtRules[].algorithms` list may name: asymmetric ones only.
/// Shared-secret algorithms (HS256/384/512) and `none` are never accepted.
pub const JWT_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// Clock skew allowed on `exp`/`nbf` when `clockSkew` is not set.
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// The largest `clockSkew` accepted.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// How long an introspection answer is cached when `cacheTtl` is not set.
pub const DEFAULT_INTROSPECTION_CACHE_TTL: Duration = Duration::from_secs(30);

/// The largest `introspection.cacheTtl` accepted: a revoked token stays usable this long.
pub const MAX_INTROSPECTION_CACHE_TTL: Duration = Duration::from_secs(300);

// ---- AuthorizationPolicy --------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicyResource {
    pub api_version: String,
    pub metadata: Metadata,
    pub spec: AuthorizationPolicySpec,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// The service whose inbound requests the policy governs; absent means every service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<ServiceRef>,
    #[serde(default)]
    pub action: AuthorizationAction,
    /// A request matches the policy when it matches any rule. No rules match nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AuthorizationRule>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AuthorizationAction {
    #[default]
    #[serde(rename = "ALLOW")]
    Allow,
    #[serde(rename = "DENY")]
    Deny,
}

/// Matches when every non-empty part matches: any `from`, any `to`, and all `when`.
/// A rule with nothing set matches every request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<RequestSource>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<RequestOperation>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<ClaimCondition>,
}

/// Who calls: every non-empty list must match. Values are exact, `prefix*`, `*suffix` or `*`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestSource {
    /// SPIFFE ids of the calling workload (from its mTLS certificate).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    /// Matches when the caller's principal is none of these (a caller without one included).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
}

/// What is called: every non-empty list must match (`methods` any, `paths` any, `headers` all).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestOperation {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Matched against the normalized path without its query: `/exact`, `/prefix/*`, `*.ext`, `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderValueMatch>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderValueMatch {
    pub name: String,
    /// Exact, `prefix*`, `*suffix` or `*` (present).
    pub value: String,
}

/// A condition on a verified JWT claim: the claim must hold one of `values`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimCondition {
    /// `iss`, `sub`, `aud`, `scope` or any custom claim; `a.b` reads a nested claim.
    pub claim: String,
    pub values: Vec<String>,
}

// ---- RequestAuthentication ------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthenticationResource {
    pub api_version: String,
    pub metadata: Metadata,
    pub spec: RequestAuthenticationSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthenticationSpec {
    /// The service whose inbound requests are checked; absent means every service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<ServiceRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt_rules: Vec<JwtRule>,
    /// OAuth2 token introspection (RFC 7662) for opaque tokens: an alternative to JWT rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub introspection: Option<Introspection>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRule {
    /// The exact `iss` a token must carry.
    pub issuer: String,
    /// Accepted `aud` values (any one); empty accepts any audience.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Where the signing keys (a JWKS document) are fetched from; exclusive with `jwks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// The JWKS document itself, as a JSON string; exclusive with `jwksUri`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    /// Accepted signature algorithms; empty means all of [`JWT_ALGORITHMS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub algorithms: Vec<String>,
    /// Tolerance on `exp` and `nbf`, e.g. `60s` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_skew: Option<String>,
    /// Headers the token is read from; with `fromParams` both empty, `Authorization: Bearer`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_headers: Vec<JwtHeader>,
    /// Query parameters the token is read from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_params: Vec<String>,
    /// Forwards selected verified claims to the app in one header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_claims_header: Option<ForwardClaims>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtHeader {
    pub name: String,
    /// Stripped from the value before the token is read, e.g. `Bearer ` (case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ForwardClaims {
    pub header: String,
    pub claims: Vec<String>,
}

/// An OAuth2 token introspection endpoint (RFC 7662) that judges opaque bearer tokens.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Introspection {
    /// The `http://` or `https://` URL the token is POSTed to.
    pub endpoint: String,
    /// The client id the sidecar authenticates with (HTTP Basic).
    pub client_id: String,
    /// The client secret inline; exclusive with `clientSecretFile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// An absolute path, on the sidecar's host, of a file holding the client secret (read on
    /// each call to the endpoint, so it can be rotated in place); exclusive with `clientSecret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_file: Option<String>,
    /// When set and the answer carries `iss`, it must be this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// When set and the answer carries `aud`, it must hold one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// How long an answer is reused, e.g. `30s` (the default); never past the token's `exp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_ttl: Option<String>,
    /// Headers the token is read from; with `fromParams` both empty, `Authorization: Bearer`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_headers: Vec<JwtHeader>,
    /// Query parameters the token is read from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_params: Vec<String>,
    /// Forwards selected fields of the introspection answer to the app in one header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_claims_header: Option<ForwardClaims>,
}

impl std::fmt::Debug for Introspection {
    /// The inline secret is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspection")
            .field("endpoint", &self.endpoint)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("client_secret_file", &self.client_secret_file)
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .field("cache_ttl", &self.cache_ttl)
            .finish_non_exhaustive()
    }
}

impl Introspection {
    /// The configured cache TTL, or [`DEFAULT_INTROSPECTION_CACHE_TTL`].
    pub fn cache_ttl(&self) -> Duration {
        self.cache_ttl
            .as_deref()
            .and_then(|s| parse_duration(s).ok())
            .unwrap_or(DEFAULT_INTROSPECTION_CACHE_TTL)
    }
}

impl JwtRule {
    /// The configured clock skew, or [`DEFAULT_CLOCK_SKEW`] (validation has checked the text).
    pub fn clock_skew(&self) -> Duration {
        self.clock_skew
            .as_deref()
            .and_then(|s| parse_duration(s).ok())
            .unwrap_or(DEFAULT_CLOCK_SKEW)
    }

    /// The configured algorithms, or every accepted one.
    pub fn algorithm_names(&self) -> Vec<&str> {
        if self.algorithms.is_empty() {
            JWT_ALGORITHMS.to_vec()
        } else {
            self.algorithms.iter().map(String::as_str).collect()
        }
    }
}

impl AuthorizationPolicySpec {
    /// True when the policy governs `service` (it names it, or names no service at all).
    pub fn applies_to(&self, service: &str) -> bool {
        self.target_ref.as_ref().is_none_or(|t| t.name == service)
    }
}

impl RequestAuthenticationSpec {
    /// True when the rules apply to `service` (it names it, or names no service at all).
    pub fn applies_to(&self, service: &str) -> bool {
        self.target_ref.as_ref().is_none_or(|t| t.name == service)
    }
}
