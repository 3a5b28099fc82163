//! The resource kinds. See docs/RESOURCES.md for the user-facing description.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    ActiveHealthCheck, AuthorizationPolicyResource, CircuitBreakers, Faults, LocalityFailover,
    OutlierDetection, Protocol, RateLimitPolicyResource, RequestAuthenticationResource,
    RetryPolicy, RouteRetry, RouteTimeouts, Timeouts,
};

/// The only apiVersion this release understands.
pub const API_VERSION: &str = "trellis.dev/v1alpha1";

/// A validated resource, as stored and as returned by the API.
// Resources are few and never on the request path: boxing the large RequestAuthentication
// would only make every match on them noisier.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Resource {
    Service(ServiceResource),
    TrafficPolicy(TrafficPolicyResource),
    #[serde(rename = "HTTPRoute")]
    HttpRoute(HttpRouteResource),
    AuthorizationPolicy(AuthorizationPolicyResource),
    RequestAuthentication(RequestAuthenticationResource),
    RateLimitPolicy(RateLimitPolicyResource),
}

/// The kinds, for addressing (`trellis get httproutes`, `DELETE /v1/resources/{kind}/{name}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    Service,
    TrafficPolicy,
    #[serde(rename = "HTTPRoute")]
    HttpRoute,
    AuthorizationPolicy,
    RequestAuthentication,
    RateLimitPolicy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

fn default_namespace() -> String {
    "default".to_string()
}

// ---- Service --------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceResource {
    pub api_version: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: ServiceSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<Subset>,
    /// Inbound mutual TLS; STRICT unless set (docs/RESOURCES.md).
    #[serde(default, skip_serializing_if = "MtlsSettings::is_default")]
    pub mtls: MtlsSettings,
}

/// `spec.mtls` of a Service: how its sidecars' inbound listeners treat callers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MtlsSettings {
    #[serde(default)]
    pub mode: MtlsMode,
}

impl MtlsSettings {
    pub fn is_default(&self) -> bool {
        *self == MtlsSettings::default()
    }
}

/// Inbound mTLS mode of a service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MtlsMode {
    /// Only mutually authenticated TLS; plaintext and certificate-less callers fail in the
    /// handshake.
    #[default]
    #[serde(rename = "STRICT")]
    Strict,
    /// mTLS and plaintext both accepted, for migration; plaintext callers have no identity.
    #[serde(rename = "PERMISSIVE")]
    Permissive,
}

impl MtlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Strict => "STRICT",
            MtlsMode::Permissive => "PERMISSIVE",
        }
    }
}

impl std::fmt::Display for MtlsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

// ---- TrafficPolicy --------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicyResource {
    pub api_version: String,
    pub metadata: Metadata,
    pub spec: TrafficPolicySpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicySpec {
    pub target_ref: ServiceRef,
    #[serde(default)]
    pub load_balancer: LoadBalancer,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetryPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breakers: Option<CircuitBreakers>,
    /// Active health checks of the service's endpoints by the calling sidecars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<ActiveHealthCheck>,
    /// Delays and aborts injected by every caller's sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faults: Option<Faults>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceRef {
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancer {
    #[serde(default)]
    pub algorithm: Algorithm,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_key: Option<HashKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_size: Option<u64>,
    /// Zone-aware balancing (off unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality_failover: Option<LocalityFailover>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Algorithm {
    #[default]
    RoundRobin,
    Random,
    Weighted,
    LeastRequest,
    PeakEwma,
    RingHash,
    Maglev,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HashKey {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub source_ip: bool,
}

// ---- HTTPRoute ------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteResource {
    pub api_version: String,
    pub metadata: Metadata,
    pub spec: HttpRouteSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteSpec {
    pub parent_refs: Vec<ServiceRef>,
    #[serde(default)]
    pub rules: Vec<HttpRouteRule>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteRule {
    /// Any match selects the rule; empty matches everything.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpRouteMatch>,
    pub backend_refs: Vec<BackendRef>,
    /// Overrides the target service's timeouts for this rule (Gateway API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<RouteTimeouts>,
    /// Overrides the target service's retries for this rule (Gateway API GEP-1731).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RouteRetry>,
    /// Replaces the target service's faults for this rule (`{}`: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faults: Option<Faults>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathMatch {
    #[serde(rename = "type", default)]
    pub kind: PathMatchType,
    pub value: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathMatchType {
    Exact,
    #[default]
    PathPrefix,
    RegularExpression,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderMatch {
    #[serde(rename = "type", default)]
    pub kind: HeaderMatchType,
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HeaderMatchType {
    #[default]
    Exact,
    RegularExpression,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

impl Resource {
    pub fn kind(&self) -> Kind {
        match self {
            Resource::Service(_) => Kind::Service,
            Resource::TrafficPolicy(_) => Kind::TrafficPolicy,
            Resource::HttpRoute(_) => Kind::HttpRoute,
            Resource::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Resource::RequestAuthentication(_) => Kind::RequestAuthentication,
            Resource::RateLimitPolicy(_) => Kind::RateLimitPolicy,
        }
    }

    pub fn metadata(&self) -> &Metadata {
        match self {
            Resource::Service(r) => &r.metadata,
            Resource::TrafficPolicy(r) => &r.metadata,
            Resource::HttpRoute(r) => &r.metadata,
            Resource::AuthorizationPolicy(r) => &r.metadata,
            Resource::RequestAuthentication(r) => &r.metadata,
            Resource::RateLimitPolicy(r) => &r.metadata,
        }
    }

    pub fn name(&self) -> &str {
        &self.metadata().name
    }
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Service,
        Kind::TrafficPolicy,
        Kind::HttpRoute,
        Kind::AuthorizationPolicy,
        Kind::RequestAuthentication,
        Kind::RateLimitPolicy,
    ];

    /// The canonical kind name, as written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::TrafficPolicy => "TrafficPolicy",
            Kind::HttpRoute => "HTTPRoute",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::RequestAuthentication => "RequestAuthentication",
            Kind::RateLimitPolicy => "RateLimitPolicy",
        }
    }

    /// Accepts the kind name, its lowercase form and plurals (`httproutes`, `service`, `tp`...).
    pub fn parse(s: &str) -> Option<Kind> {
        match s.to_ascii_lowercase().as_str() {
            "service" | "services" | "svc" => Some(Kind::Service),
            "trafficpolicy" | "trafficpolicies" | "tp" => Some(Kind::TrafficPolicy),
            "httproute" | "httproutes" | "route" | "routes" => Some(Kind::HttpRoute),
            "authorizationpolicy" | "authorizationpolicies" | "authz" | "ap" => {
                Some(Kind::AuthorizationPolicy)
            }
            "requestauthentication" | "requestauthentications" | "authn" | "ra" => {
                Some(Kind::RequestAuthentication)
            }
            "ratelimitpolicy" | "ratelimitpolicies" | "ratelimit" | "rl" => {
                Some(Kind::RateLimitPolicy)
            }
            _ => None,
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
