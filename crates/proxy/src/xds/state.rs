//! The accepted xDS state of one sidecar: the last valid translation of each resource type,
//! and how it becomes a live [`Snapshot`]. A rejected update changes nothing here.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;
use trellis_model::wire;

use self::security::SecurityBuilder;
use super::translate::{
    self, Assignment, ClusterConfig, DEFAULT_OVERPROVISIONING, Endpoint, EndpointSource,
};
use super::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, routes};
use crate::authn::JwksOptions;
use crate::metrics::Metrics;
use crate::security::InboundSecurity;
use crate::snapshot::{Routes, Snapshot};
use crate::upstream::{
    BalancerFactory, ClientCache, LbSettings, Priorities, UpstreamCluster, effective_algorithm,
    endpoint_metas,
};

mod security;

#[derive(Debug)]
pub(crate) struct XdsState {
    pub listeners: Option<Vec<String>>,
    /// This proxy's inbound security from the last accepted `inbound` Listener; `None` before
    /// one is accepted, or when the accepted listeners hold none (fail closed).
    pub inbound: Option<Arc<InboundSecurity>>,
    security: SecurityBuilder,
    pub clusters: Option<Vec<ClusterConfig>>,
    pub routes: Option<Arc<Routes>>,
    /// EDS assignments by cluster (service) name.
    pub assignments: HashMap<String, Assignment>,
    pub endpoints_seen: bool,
    build: BalancerFactory,
}

impl XdsState {
    pub fn new(build: BalancerFactory) -> Self {
        XdsState {
            listeners: None,
            inbound: None,
            security: SecurityBuilder::new(JwksOptions::default()),
            clusters: None,
            routes: None,
            assignments: HashMap::new(),
            endpoints_seen: false,
            build,
        }
    }

    /// Validates a response's resources and, when all are valid, makes them the accepted state
    /// of their type. `Err` names every invalid resource; the state is then unchanged.
    pub fn apply(
        &mut self,
        type_url: &str,
        resources: &[Any],
        metrics: &Metrics,
    ) -> Result<(), String> {
        match type_url {
            LISTENER_TYPE => {
                let set = translate::listeners(resources)?;
                let inbound = match &set.inbound {
                    Some(config) => Some(
                        self.security
                            .build(config)
                            .map_err(|e| format!("Listener `{}`: {e}", wire::INBOUND))?,
                    ),
                    None => None,
                };
                self.inbound = inbound;
                self.listeners = Some(set.names);
            }
            CLUSTER_TYPE => {
                let clusters = translate::clusters(resources)?;
                let eds: BTreeSet<&str> = clusters.iter().filter_map(eds_name).collect();
                self.assignments.retain(|k, _| eds.contains(k.as_str()));
                self.clusters = Some(clusters);
            }
            ROUTE_TYPE => {
                let configs = routes::route_configs(resources)?;
                if let Some((_, table)) = configs.into_iter().find(|(n, _)| n == wire::OUTBOUND) {
                    self.routes = Some(Arc::new(Routes::new(table, metrics)));
                }
            }
            ENDPOINT_TYPE => {
                for (name, assignment) in translate::load_assignments(resources)? {
                    self.assignments.insert(name, assignment);
                }
                self.endpoints_seen = true;
            }
            other => return Err(format!("unexpected resource type `{other}`")),
        }
        Ok(())
    }

    /// The EDS resource names to subscribe to (sorted, unique).
    pub fn eds_names(&self) -> Vec<String> {
        let set: BTreeSet<&str> = self
            .clusters
            .iter()
            .flatten()
            .filter_map(eds_name)
            .collect();
        set.into_iter().map(str::to_string).collect()
    }

    /// Listeners, clusters and routes accepted, and endpoints too when any cluster uses EDS.
    pub fn complete(&self) -> bool {
        self.listeners.is_some()
            && self.clusters.is_some()
            && self.routes.is_some()
            && (self.endpoints_seen || self.eds_names().is_empty())
    }

    /// The live snapshot for the accepted state. Clusters whose algorithm, timeout and
    /// endpoints are unchanged from `previous` are reused as they are (balancer state kept).
    pub fn snapshot(&self, previous: &Snapshot, clients: &ClientCache) -> Snapshot {
        let routes = self.routes.clone().unwrap_or_default();
        let clusters = self.clusters.iter().flatten().map(|cc| {
            let (eps, overprovisioning): (&[Endpoint], u32) = match &cc.endpoints {
                EndpointSource::Static(v) => (v, DEFAULT_OVERPROVISIONING),
                EndpointSource::Eds(n) => self
                    .assignments
                    .get(n)
                    .map_or((&[], DEFAULT_OVERPROVISIONING), |a| {
                        (a.endpoints.as_slice(), a.overprovisioning)
                    }),
            };
            let lb = LbSettings {
                health_check: cc.health_check.clone(),
                panic_threshold: cc.panic_threshold,
                overprovisioning,
            };
            let algorithm = effective_algorithm(&cc.algorithm, eps);
            let idle = cc.idle_timeout.unwrap_or(crate::pool::IDLE_TIMEOUT);
            if let Some(old) = previous.clusters.get(cc.name.as_str())
                && old.same_config(
                    &algorithm,
                    cc.connect_timeout,
                    eps,
                    cc.tls.as_ref(),
                    &cc.policy,
                    &lb,
                )
                && old.clients.idle_timeout == idle
            {
                return old.clone();
            }
            let balancer = (self.build)(&algorithm, &endpoint_metas(eps));
            let priorities = Priorities::build(eps, &algorithm, self.build);
            let previous = previous.clusters.get(cc.name.as_str()).map(|c| &**c);
            Arc::new(
                UpstreamCluster::new(
                    &cc.name,
                    algorithm,
                    cc.connect_timeout,
                    eps.to_vec(),
                    balancer,
                    clients.get_with_idle(cc.connect_timeout, idle),
                )
                .with_tls(cc.tls.clone())
                .with_policy(cc.policy.clone(), std::time::Instant::now())
                .with_lb(lb, priorities, previous),
            )
        });
        let mut snapshot = Snapshot::new(routes, clusters.collect::<Vec<_>>());
        snapshot.inbound = self.inbound.clone();
        snapshot
    }
}

fn eds_name(c: &ClusterConfig) -> Option<&str> {
    match &c.endpoints {
        EndpointSource::Eds(n) => Some(n.as_str()),
        EndpointSource::Static(_) => None,
    }
}

#[cfg(test)]
mod security_tests;
#[cfg(test)]
mod tests;
