//! The mesh as the xDS layer sees it: an immutable, versioned snapshot of every known service,
//! its declared config, its policy, its routes and its healthy endpoints.
//!
//! The registry (instances + resources) publishes a new [`MeshSnapshot`] on a
//! `tokio::sync::watch` channel whenever anything that affects proxies changes; the ADS server
//! translates snapshots into xDS resources. Nothing here does I/O.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use trellis_model::{
    AuthorizationPolicyResource, HttpRouteResource, Protocol, RateLimitPolicyResource,
    RequestAuthenticationResource, ServiceSpec, TrafficPolicySpec,
};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MeshSnapshot {
    /// Increases with every published change; used as the xDS `version_info`.
    pub version: u64,
    /// The mesh CA's trust domain: services' SPIFFE IDs are
    /// `spiffe://<trust_domain>/ns/<namespace>/svc/<name>`.
    pub trust_domain: String,
    /// Every known service: declared by a Service resource or with registered instances.
    pub services: BTreeMap<String, ServiceView>,
}

impl Default for MeshSnapshot {
    fn default() -> Self {
        MeshSnapshot {
            version: 0,
            trust_domain: crate::ca::DEFAULT_TRUST_DOMAIN.to_string(),
            services: BTreeMap::new(),
        }
    }
}

impl MeshSnapshot {
    /// The SPIFFE ID of a service's workloads (namespace `default` for an unknown service).
    pub fn spiffe_id(&self, service: &str) -> String {
        let namespace = self
            .services
            .get(service)
            .map(|v| v.namespace.as_str())
            .filter(|n| !n.is_empty())
            .unwrap_or(DEFAULT_NAMESPACE);
        trellis_model::wire::spiffe_id(&self.trust_domain, namespace, service)
    }
}

/// The namespace of a service without a Service resource.
pub const DEFAULT_NAMESPACE: &str = "default";

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ServiceView {
    pub name: String,
    /// The Service resource's `metadata.namespace`; `default` without one (empty means
    /// `default` too).
    pub namespace: String,
    /// The Service resource's spec, when one is applied.
    pub declared: Option<ServiceSpec>,
    /// The TrafficPolicy targeting this service, when one is applied.
    pub policy: Option<TrafficPolicySpec>,
    /// HTTPRoutes whose parentRefs name this service, sorted by name.
    pub routes: Vec<HttpRouteResource>,
    /// Healthy instances only, sorted by instance id.
    pub endpoints: Vec<Endpoint>,
    /// AuthorizationPolicies governing this service's inbound requests (those naming it and
    /// the mesh-wide ones, without targetRef), sorted by name.
    pub authorization: Vec<AuthorizationPolicyResource>,
    /// RequestAuthentications applying to this service (naming it, or mesh-wide), sorted by
    /// name.
    pub authentication: Vec<RequestAuthenticationResource>,
    /// The RateLimitPolicy targeting this service (the first by name when several do).
    pub rate_limit: Option<RateLimitPolicyResource>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub instance_id: String,
    pub address: std::net::IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub zone: Option<String>,
    pub weight: u32,
    pub labels: BTreeMap<String, String>,
    /// The SPIFFE ID the instance registered with: its sidecar serves mTLS.
    pub identity: Option<String>,
}

pub type SharedSnapshot = Arc<MeshSnapshot>;
