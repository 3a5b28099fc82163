//! `GET /v1/services/{name}`: everything the registry knows about one service, its identity,
//! mTLS mode and the policies that apply to it included.

use serde::Serialize;
use tokio::time::Instant;
use trellis_model::{
    AuthorizationPolicyResource, HttpRouteResource, MtlsMode, RateLimitPolicyResource,
    RequestAuthenticationResource, ServiceSpec, TrafficPolicySpec,
};

use super::{
    InstanceView, Registry, authentication_for, authorization_for, declared, namespace_of,
    policy_for, rate_limit_for, routes_for, view_of,
};

/// Everything the registry knows about one service (the API adds its proxies).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceDescription {
    pub name: String,
    /// The Service resource's namespace (`default` without one).
    pub namespace: String,
    /// The SPIFFE ID of the service's workloads.
    pub spiffe_id: String,
    /// Inbound mTLS mode (the Service resource's `spec.mtls.mode`, STRICT by default).
    pub mtls: MtlsMode,
    pub declared: Option<ServiceSpec>,
    pub policy: Option<TrafficPolicySpec>,
    pub routes: Vec<HttpRouteResource>,
    /// AuthorizationPolicies governing the service (naming it, or mesh-wide), by name.
    pub authorization: Vec<AuthorizationPolicyResource>,
    /// RequestAuthentications applying to the service (naming it, or mesh-wide), by name.
    pub authentication: Vec<RequestAuthenticationResource>,
    /// The RateLimitPolicy targeting the service (the first by name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitPolicyResource>,
    pub instances: Vec<InstanceView>,
}

impl Registry {
    /// `None` when the service is neither declared nor has instances.
    pub fn describe(&self, name: &str) -> Option<ServiceDescription> {
        let now = Instant::now();
        let st = self.state();
        let declared = declared(st.resources.values(), name);
        let instances: Vec<InstanceView> = st
            .instances
            .values()
            .filter(|i| i.registration.service == name)
            .map(|i| view_of(i, now))
            .collect();
        if declared.is_none() && instances.is_empty() {
            return None;
        }
        let namespace = namespace_of(st.resources.values(), name);
        Some(ServiceDescription {
            name: name.to_string(),
            spiffe_id: trellis_model::wire::spiffe_id(
                &self.inner.config.trust_domain,
                &namespace,
                name,
            ),
            namespace,
            mtls: declared.as_ref().map(|d| d.mtls.mode).unwrap_or_default(),
            declared,
            policy: policy_for(st.resources.values(), name),
            routes: routes_for(st.resources.values(), name),
            authorization: authorization_for(st.resources.values(), name),
            authentication: authentication_for(st.resources.values(), name),
            rate_limit: rate_limit_for(st.resources.values(), name),
            instances,
        })
    }
}
