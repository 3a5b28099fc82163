//! The zero-trust kinds: [`AuthorizationPolicyResource`] (who may call what) and
//! [`RequestAuthenticationResource`] (which JWTs are accepted). docs/RESOURCES.md describes
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
    pub jwt_rules: Vec<JwtRule>,
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
