//! Pure functions from registry state to what proxies see: health, and the [`MeshSnapshot`].
//! No I/O, no clock of their own: `now` is a parameter so tests control time.

use std::collections::BTreeMap;
use std::net::IpAddr;

use tokio::time::Instant;
use trellis_model::{
    AuthorizationPolicyResource, Health, HttpRouteResource, InstanceRegistration,
    RateLimitPolicyResource, RequestAuthenticationResource, Resource, ServiceSpec,
    TrafficPolicySpec,
};

use crate::snapshot::{DEFAULT_NAMESPACE, Endpoint, MeshSnapshot, ServiceView};

/// One registered instance as the registry holds it in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceState {
    pub registration: InstanceRegistration,
    /// Unix time, milliseconds.
    pub registered_at_ms: u64,
    /// May lie in the future right after a restart (restart grace).
    pub last_heartbeat: Instant,
    /// The health last observed by the reaper or a heartbeat (TTL and self-preservation);
    /// a change triggers a push.
    pub healthy: bool,
    /// Healthy only because self-preservation holds it (its heartbeats lapsed).
    pub held: bool,
    /// App-held TTL checks, by name (memory only; [`super::checks`]).
    pub ttl_checks: super::checks::TtlChecks,
}

impl InstanceState {
    /// Passing: heartbeat fresh (or held), and every check passing. Only these are endpoints.
    pub fn is_endpoint(&self) -> bool {
        super::checks::status_of(self) == trellis_model::CheckStatus::Passing
    }

    /// Healthy while the last heartbeat is younger than the TTL.
    pub fn is_healthy(&self, now: Instant) -> bool {
        self.since_heartbeat(now).as_millis() < u128::from(self.registration.ttl_ms)
    }

    pub fn since_heartbeat(&self, now: Instant) -> std::time::Duration {
        now.saturating_duration_since(self.last_heartbeat)
    }

    /// How long without a heartbeat before the reaper removes it: `remove_after`, or the TTL
    /// when longer.
    pub fn removal_age(&self, remove_after: std::time::Duration) -> std::time::Duration {
        remove_after.max(std::time::Duration::from_millis(self.registration.ttl_ms))
    }

    /// Silent for its [`removal_age`](Self::removal_age).
    pub fn is_expired(&self, remove_after: std::time::Duration, now: Instant) -> bool {
        self.since_heartbeat(now) >= self.removal_age(remove_after)
    }

    /// The first moment after `now` at which the reaper's verdict on this instance can change
    /// by itself: its heartbeat lapsing, its removal falling due
    /// ([`removal_age`](Self::removal_age)), one of its TTL checks lapsing. None once all of
    /// those have passed.
    pub fn next_deadline(
        &self,
        remove_after: std::time::Duration,
        now: Instant,
    ) -> Option<Instant> {
        let ttl = std::time::Duration::from_millis(self.registration.ttl_ms);
        let heartbeat = [ttl, self.removal_age(remove_after)]
            .into_iter()
            .filter_map(|d| self.last_heartbeat.checked_add(d));
        let checks = self
            .ttl_checks
            .values()
            .filter(|c| !c.lapsed)
            .filter_map(|c| c.updated.checked_add(c.ttl));
        heartbeat.chain(checks).filter(|&at| at > now).min()
    }

    pub fn health(&self, now: Instant) -> Health {
        if self.is_healthy(now) {
            Health::Healthy
        } else {
            Health::Unhealthy
        }
    }
}

/// The spec of the Service resource named `name`, if applied.
pub fn declared<'a>(
    resources: impl IntoIterator<Item = &'a Resource>,
    name: &str,
) -> Option<ServiceSpec> {
    resources.into_iter().find_map(|r| match r {
        Resource::Service(s) if s.metadata.name == name => Some(s.spec.clone()),
        _ => None,
    })
}

/// The `metadata.namespace` of the Service resource named `name`, or `default`.
pub fn namespace_of<'a>(resources: impl IntoIterator<Item = &'a Resource>, name: &str) -> String {
    resources
        .into_iter()
        .find_map(|r| match r {
            Resource::Service(s) if s.metadata.name == name => Some(s.metadata.namespace.clone()),
            _ => None,
        })
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string())
}

/// The TrafficPolicy whose targetRef names `service`; the first by name when several do.
pub fn policy_for<'a>(
    resources: impl IntoIterator<Item = &'a Resource>,
    service: &str,
) -> Option<TrafficPolicySpec> {
    resources
        .into_iter()
        .filter_map(|r| match r {
            Resource::TrafficPolicy(p) if p.spec.target_ref.name == service => Some(p),
            _ => None,
        })
        .min_by(|a, b| a.metadata.name.cmp(&b.metadata.name))
        .map(|p| p.spec.clone())
}

/// The RateLimitPolicy whose targetRef names `service`; the first by name when several do.
pub fn rate_limit_for<'a>(
    resources: impl IntoIterator<Item = &'a Resource>,
    service: &str,
) -> Option<RateLimitPolicyResource> {
    resources
        .into_iter()
        .filter_map(|r| match r {
            Resource::RateLimitPolicy(p) if p.spec.target_ref.name == service => Some(p),
            _ => None,
        })
        .min_by(|a, b| a.metadata.name.cmp(&b.metadata.name))
        .cloned()
}

/// HTTPRoutes whose parentRefs name `service`, sorted by name.
pub fn routes_for<'a>(
    resources: impl IntoIterator<Item = &'a Resource>,
    service: &str,
) -> Vec<HttpRouteResource> {
    let mut routes: Vec<HttpRouteResource> = resources
        .into_iter()
        .filter_map(|r| match r {
            Resource::HttpRoute(h) if h.spec.parent_refs.iter().any(|p| p.name == service) => {
                Some(h.clone())
            }
            _ => None,
        })
        .collect();
    routes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    routes
}

/// AuthorizationPolicies that govern `service` (naming it, or mesh-wide), sorted by name.
pub fn authorization_for<'a>(
    resources: impl IntoIterator<Item = &'a Resource>,
    service: &str,
) -> Vec<AuthorizationPolicyResource> {
    let mut out: Vec<AuthorizationPolicyResource> = resources
        .into_iter()
        .filter_map(|r| match r {
            Resource::AuthorizationPolicy(p) if p.spec.applies_to(service) => Some(p.clone()),
            _ => None,
        })
        .collect();
    out.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    out
}

/// RequestAuthentications that apply to `service` (naming it, or mesh-wide), sorted by name.
pub fn authentication_for<'a>(
    resources: impl IntoIterator<Item = &'a Resource>,
    service: &str,
) -> Vec<RequestAuthenticationResource> {
    let mut out: Vec<RequestAuthenticationResource> = resources
        .into_iter()
        .filter_map(|r| match r {
            Resource::RequestAuthentication(a) if a.spec.applies_to(service) => Some(a.clone()),
            _ => None,
        })
        .collect();
    out.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    out
}

/// Builds the snapshot proxies see: every service declared by a Service resource or with
/// registered instances (healthy or not), with its declared spec, policy, routes, the
/// authorization and authentication policies that apply to it, and healthy endpoints sorted by
/// instance id.
pub fn build_snapshot<'a, 'b>(
    version: u64,
    instances: impl IntoIterator<Item = &'a InstanceState>,
    resources: impl IntoIterator<Item = &'b Resource> + Clone,
) -> MeshSnapshot {
    let mut services: BTreeMap<String, ServiceView> = BTreeMap::new();
    for r in resources.clone() {
        if let Resource::Service(s) = r {
            let name = s.metadata.name.clone();
            services.entry(name.clone()).or_insert_with(|| ServiceView {
                name,
                ..ServiceView::default()
            });
        }
    }
    for inst in instances {
        let reg = &inst.registration;
        let view = services
            .entry(reg.service.clone())
            .or_insert_with(|| ServiceView {
                name: reg.service.clone(),
                ..ServiceView::default()
            });
        // The reaper's verdict (TTL and self-preservation), not the raw TTL, and the checks:
        // only passing instances are endpoints.
        if !inst.is_endpoint() {
            continue;
        }
        let Ok(address) = reg.address.parse::<IpAddr>() else {
            tracing::warn!(service = %reg.service, id = %reg.id, address = %reg.address,
                "instance address is not an IP; left out of the endpoint set");
            continue;
        };
        view.endpoints.push(Endpoint {
            instance_id: reg.id.clone(),
            address,
            port: reg.port,
            protocol: reg.protocol,
            zone: reg.zone.clone(),
            weight: reg.weight,
            labels: reg.labels.clone(),
            identity: reg.identity.clone(),
        });
    }
    for view in services.values_mut() {
        view.declared = declared(resources.clone(), &view.name);
        view.namespace = namespace_of(resources.clone(), &view.name);
        view.policy = policy_for(resources.clone(), &view.name);
        view.routes = routes_for(resources.clone(), &view.name);
        view.authorization = authorization_for(resources.clone(), &view.name);
        view.authentication = authentication_for(resources.clone(), &view.name);
        view.rate_limit = rate_limit_for(resources.clone(), &view.name);
        view.endpoints
            .sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    }
    MeshSnapshot {
        version,
        services,
        ..MeshSnapshot::default()
    }
}
