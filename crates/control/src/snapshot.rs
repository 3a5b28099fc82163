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
    AuthorizationPolicyResource, HttpRouteResource, Protocol, RequestAuthenticationResource,
    ServiceSpec, TrafficPolicySpec,
};

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MeshSnapshot {
    /// Increases with every published change; used as the xDS `version_info`.
    pub version: u64,
    /// Every known service: declared by a Service resource or with registered instances.
    pub services: BTreeMap<String, ServiceView>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ServiceView {
    pub name: String,
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
}

pub type SharedSnapshot = Arc<MeshSnapshot>;
