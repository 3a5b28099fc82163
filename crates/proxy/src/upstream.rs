//! Upstream clusters as the request path sees them: endpoints, their balancer and the pooled
//! clients, immutable once built. A new config builds new [`UpstreamCluster`]s only for
//! clusters whose endpoints or policy changed; clients are shared by connect timeout and live
//! for the whole process, so connection pools survive every update.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::uri::Authority;

use crate::balance::{Algorithm, Balance, EndpointMeta, Picked};
use crate::http::HttpClients;
use crate::mtls::connect::MtlsEndpoint;
use crate::pool::EndpointPool;
use crate::resilience::{Breaker, ClusterPolicy, OutlierDetector, RetryBudget};
use crate::security::TlsPolicy;
use crate::xds::translate::Endpoint;

/// Builds a balancer; `balance::build` in production.
pub(crate) type BalancerFactory = fn(&Algorithm, &[EndpointMeta]) -> Arc<dyn Balance>;

#[derive(Debug)]
pub(crate) struct UpstreamCluster {
    pub name: Arc<str>,
    pub algorithm: Algorithm,
    pub connect_timeout: Duration,
    pub endpoints: Vec<UpstreamEndpoint>,
    pub balancer: Arc<dyn Balance>,
    pub clients: HttpClients,
    /// Upstream mTLS for the endpoints that serve it; `None`: plaintext to every endpoint.
    pub tls: Option<TlsPolicy>,
    /// The circuit breakers, retry budget and outlier detection configured for this cluster.
    pub policy: ClusterPolicy,
    /// Their live state; `None` when `policy` is empty (requests then skip these layers).
    pub resilience: Option<Arc<ClusterResilience>>,
}

/// The live state of a cluster's resilience layers (rebuilt with the cluster).
#[derive(Debug)]
pub(crate) struct ClusterResilience {
    pub breaker: Option<Arc<Breaker>>,
    pub budget: Option<RetryBudget>,
    pub outlier: Option<OutlierDetector>,
}

impl ClusterResilience {
    pub fn new(policy: &ClusterPolicy, endpoints: usize, now: Instant) -> Option<Self> {
        (!policy.is_empty()).then(|| ClusterResilience {
            breaker: policy.breakers.map(|l| Arc::new(Breaker::new(l))),
            budget: policy.budget.map(|b| RetryBudget::new(b, now)),
            outlier: policy
                .outlier
                .clone()
                .map(|o| OutlierDetector::new(o, endpoints, now)),
        })
    }
}

#[derive(Debug)]
pub(crate) struct UpstreamEndpoint {
    pub endpoint: Endpoint,
    /// `ip:port`, pre-built so rewriting a request's URI does not allocate.
    pub authority: Authority,
    /// Its HTTP/1.1 connections (shared with other clusters that have the same address).
    pub pool: Arc<EndpointPool>,
    /// Its mTLS connections, when the endpoint serves mTLS and the cluster has a
    /// [`TlsPolicy`]; `None`: plaintext.
    pub mtls: Option<Arc<MtlsEndpoint>>,
}

impl UpstreamCluster {
    /// A cluster with an explicit balancer (whose indexes refer to `endpoints`).
    pub fn new(
        name: &str,
        algorithm: Algorithm,
        connect_timeout: Duration,
        endpoints: Vec<Endpoint>,
        balancer: Arc<dyn Balance>,
        clients: HttpClients,
    ) -> Self {
        let endpoints = endpoints
            .into_iter()
            .map(|endpoint| UpstreamEndpoint {
                authority: authority(endpoint.addr),
                pool: clients.h1.endpoint(endpoint.addr),
                mtls: None,
                endpoint,
            })
            .collect();
        UpstreamCluster {
            name: Arc::from(name),
            algorithm,
            connect_timeout,
            endpoints,
            balancer,
            clients,
            tls: None,
            policy: ClusterPolicy::default(),
            resilience: None,
        }
    }

    /// The same cluster with circuit breakers, a retry budget and outlier detection.
    pub fn with_policy(mut self, policy: ClusterPolicy, now: Instant) -> Self {
        self.resilience = ClusterResilience::new(&policy, self.endpoints.len(), now).map(Arc::new);
        self.policy = policy;
        self
    }

    /// Picks an endpoint, avoiding ejected ones (unless the cluster is in panic) and, when
    /// possible, those in `tried` (bit `i` = endpoint `i`, for retries). Without ejections and
    /// retries this is the balancer's plain pick.
    pub fn pick(&self, hash: Option<u64>, now: Instant, tried: u64) -> Option<Picked> {
        let outlier = self.resilience.as_ref().and_then(|r| r.outlier.as_ref());
        let ejecting = outlier.filter(|o| o.any_ejected() && !o.in_panic());
        if ejecting.is_none() && tried == 0 {
            return self.balancer.pick_at(hash, now);
        }
        let ejected = |i: usize| ejecting.is_some_and(|o| o.is_ejected(i, now));
        let was_tried = |i: usize| i < 64 && tried & (1 << i) != 0;
        self.balancer
            .pick_excluding(hash, now, &|i| was_tried(i) || ejected(i))
            .or_else(|| ejecting.and_then(|_| self.balancer.pick_excluding(hash, now, &ejected)))
            // Everything avoided: any endpoint rather than none (as the panic threshold does).
            .or_else(|| self.balancer.pick_at(hash, now))
    }

    /// The same cluster with upstream mTLS settings: endpoints that serve mTLS get their
    /// mTLS connections.
    pub fn with_tls(mut self, tls: Option<TlsPolicy>) -> Self {
        if let Some(policy) = &tls {
            for e in &mut self.endpoints {
                e.mtls = e
                    .endpoint
                    .mtls
                    .then(|| self.clients.mtls.endpoint(e.endpoint.addr, policy));
            }
        } else {
            for e in &mut self.endpoints {
                e.mtls = None;
            }
        }
        self.tls = tls;
        self
    }

    /// Whether this cluster already is what `(algorithm, timeout, endpoints)` would build.
    pub fn same_config(
        &self,
        algorithm: &Algorithm,
        connect_timeout: Duration,
        endpoints: &[Endpoint],
        tls: Option<&TlsPolicy>,
        policy: &ClusterPolicy,
    ) -> bool {
        self.tls.as_ref() == tls
            && self.policy == *policy
            && self.algorithm == *algorithm
            && self.connect_timeout == connect_timeout
            && self.endpoints.len() == endpoints.len()
            && self
                .endpoints
                .iter()
                .zip(endpoints)
                .all(|(a, b)| a.endpoint == *b)
    }
}

fn authority(addr: std::net::SocketAddr) -> Authority {
    // A SocketAddr always renders as a valid authority (`1.2.3.4:80`, `[::1]:80`).
    Authority::try_from(addr.to_string().as_str())
        .unwrap_or_else(|_| Authority::from_static("invalid.invalid:1"))
}

/// `RoundRobin` with differing endpoint weights is `Weighted` (both arrive as ROUND_ROBIN).
pub(crate) fn effective_algorithm(algorithm: &Algorithm, endpoints: &[Endpoint]) -> Algorithm {
    match algorithm {
        Algorithm::RoundRobin if endpoints.iter().any(|e| e.weight != 1) => Algorithm::Weighted,
        other => other.clone(),
    }
}

pub(crate) fn endpoint_metas(endpoints: &[Endpoint]) -> Vec<EndpointMeta> {
    endpoints
        .iter()
        .map(|e| EndpointMeta {
            addr: e.addr,
            weight: e.weight,
            id: e.id.clone(),
        })
        .collect()
}

/// The process-wide clients, one set per distinct (connect timeout, idle timeout).
#[derive(Debug, Default)]
pub(crate) struct ClientCache {
    by_timeout: Mutex<HashMap<(Duration, Duration), HttpClients>>,
}

impl ClientCache {
    pub fn get(&self, connect_timeout: Duration) -> HttpClients {
        self.get_with_idle(connect_timeout, crate::pool::IDLE_TIMEOUT)
    }

    pub fn get_with_idle(&self, connect_timeout: Duration, idle_timeout: Duration) -> HttpClients {
        let mut map = self
            .by_timeout
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.entry((connect_timeout, idle_timeout))
            .or_insert_with(|| HttpClients::with_idle(connect_timeout, idle_timeout))
            .clone()
    }
}
