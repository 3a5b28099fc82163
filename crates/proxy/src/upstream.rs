//! Upstream clusters as the request path sees them: endpoints, their balancer and the pooled
//! clients, immutable once built. A new config builds new [`UpstreamCluster`]s only for
//! clusters whose endpoints or policy changed; clients are shared by connect timeout and live
//! for the whole process, so connection pools survive every update.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::uri::Authority;

use crate::balance::{Algorithm, Balance, EndpointMeta, Picked};
use crate::health::upstream::ClusterHealth;
use crate::http::HttpClients;
use crate::mtls::connect::MtlsEndpoint;
use crate::pool::EndpointPool;
use crate::resilience::{Breaker, ClusterPolicy, OutlierDetector, RetryBudget};
use crate::security::TlsPolicy;
use crate::xds::health::{ActiveCheck, DEFAULT_PANIC_THRESHOLD};
use crate::xds::translate::{DEFAULT_OVERPROVISIONING, Endpoint};

mod priority;

use priority::Level;

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
    /// The active health check, panic threshold and overprovisioning factor.
    pub lb: LbSettings,
    /// One balancer per priority level, when the endpoints have more than one level.
    pub priorities: Option<Priorities>,
    /// The endpoints' active health; `None` without a health check.
    pub health: Option<ClusterHealth>,
}

/// How availability shapes picks (docs/XDS.md, "Active health checks", "Locality failover").
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LbSettings {
    pub health_check: Option<ActiveCheck>,
    /// Below this percentage of available endpoints, availability is ignored.
    pub panic_threshold: u32,
    pub overprovisioning: u32,
}

impl Default for LbSettings {
    fn default() -> Self {
        LbSettings {
            health_check: None,
            panic_threshold: DEFAULT_PANIC_THRESHOLD,
            overprovisioning: DEFAULT_OVERPROVISIONING,
        }
    }
}

/// The priority levels of a cluster, most preferred first.
#[derive(Debug)]
pub(crate) struct Priorities {
    pub levels: Vec<PriorityLevel>,
}

#[derive(Debug)]
pub(crate) struct PriorityLevel {
    pub priority: u32,
    /// Indexes into the cluster's endpoints.
    pub indexes: Box<[usize]>,
    /// Over those endpoints (its indexes are positions in `indexes`).
    pub balancer: Arc<dyn Balance>,
}

impl PriorityLevel {
    fn pick_excluding(
        &self,
        hash: Option<u64>,
        now: Instant,
        skip: &dyn Fn(usize) -> bool,
    ) -> Option<Picked> {
        let picked = self
            .balancer
            .pick_excluding(hash, now, &|local| skip(self.indexes[local]))?;
        Some(Picked {
            index: self.indexes[picked.index],
            load: picked.load,
        })
    }
}

impl Priorities {
    /// The levels of `endpoints` (each balanced by `build`); `None` with a single level.
    pub fn build(
        endpoints: &[Endpoint],
        algorithm: &Algorithm,
        build: BalancerFactory,
    ) -> Option<Priorities> {
        let mut levels: Vec<u32> = endpoints.iter().map(|e| e.priority).collect();
        levels.sort_unstable();
        levels.dedup();
        if levels.len() < 2 {
            return None;
        }
        let levels = levels
            .into_iter()
            .map(|priority| {
                let indexes: Box<[usize]> = endpoints
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.priority == priority)
                    .map(|(i, _)| i)
                    .collect();
                let metas: Vec<Endpoint> = indexes.iter().map(|i| endpoints[*i].clone()).collect();
                PriorityLevel {
                    priority,
                    balancer: build(algorithm, &endpoint_metas(&metas)),
                    indexes,
                }
            })
            .collect();
        Some(Priorities { levels })
    }
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
            lb: LbSettings::default(),
            priorities: None,
            health: None,
        }
    }

    /// The same cluster with its priority levels, health check and thresholds; health state
    /// is carried over from `previous` (the cluster's last build) for endpoints it had.
    pub fn with_lb(
        mut self,
        lb: LbSettings,
        priorities: Option<Priorities>,
        previous: Option<&UpstreamCluster>,
    ) -> Self {
        self.health = lb.health_check.clone().map(|check| {
            let prev = previous.and_then(|p| Some((p.health.as_ref()?, p.endpoints.as_slice())));
            ClusterHealth::new(check, &self.endpoints, prev)
        });
        self.priorities = priorities;
        self.lb = lb;
        self
    }

    /// The same cluster with circuit breakers, a retry budget and outlier detection.
    pub fn with_policy(mut self, policy: ClusterPolicy, now: Instant) -> Self {
        self.resilience = ClusterResilience::new(&policy, self.endpoints.len(), now).map(Arc::new);
        self.policy = policy;
        self
    }

    /// Picks an endpoint, avoiding ejected and actively unhealthy ones (unless too few are
    /// left: the panic threshold) and, when possible, those in `tried` (bit `i` = endpoint
    /// `i`, for retries); with priority levels, the level is drawn by the priority loads first.
    /// With every endpoint available and nothing tried this is the balancer's plain pick (of
    /// the first level).
    pub fn pick(&self, hash: Option<u64>, now: Instant, tried: u64) -> Option<Picked> {
        let outlier = self
            .resilience
            .as_ref()
            .and_then(|r| r.outlier.as_ref())
            .filter(|o| o.any_ejected());
        let health = self.health.as_ref().filter(|h| h.any_unhealthy());
        if outlier.is_none() && health.is_none() && tried == 0 {
            return match &self.priorities {
                None => self.balancer.pick_at(hash, now),
                Some(p) => p.levels[0].pick_excluding(hash, now, &|_| false),
            };
        }
        let unavailable = |i: usize| {
            health.is_some_and(|h| h.is_unhealthy(i))
                || outlier.is_some_and(|o| o.is_ejected(i, now))
        };
        let was_tried = |i: usize| i < 64 && tried & (1 << i) != 0;
        let whole = PriorityLevel {
            priority: 0,
            indexes: Box::default(),
            balancer: self.balancer.clone(),
        };
        let levels: &[PriorityLevel] = match &self.priorities {
            Some(p) => &p.levels,
            None => std::slice::from_ref(&whole),
        };
        let counts: Vec<Level> = levels
            .iter()
            .map(|l| {
                let total = if l.indexes.is_empty() {
                    self.endpoints.len()
                } else {
                    l.indexes.len()
                };
                let down = if l.indexes.is_empty() {
                    (0..total).filter(|i| unavailable(*i)).count()
                } else {
                    l.indexes.iter().filter(|i| unavailable(**i)).count()
                };
                Level {
                    available: total - down,
                    total,
                }
            })
            .collect();
        let available: usize = counts.iter().map(|c| c.available).sum();
        let total: usize = counts.iter().map(|c| c.total).sum();
        let panic = available * 100 < total * self.lb.panic_threshold as usize || available == 0;
        let pick_in = |level: &PriorityLevel, skip: &dyn Fn(usize) -> bool| {
            if level.indexes.is_empty() {
                self.balancer.pick_excluding(hash, now, skip)
            } else {
                level.pick_excluding(hash, now, skip)
            }
        };
        if panic {
            // Too few available: balance over every endpoint, avoiding only the tried ones.
            return self
                .balancer
                .pick_excluding(hash, now, &was_tried)
                .or_else(|| self.balancer.pick_at(hash, now));
        }
        let loads = priority::priority_loads(&counts, self.lb.overprovisioning);
        let level = &levels[priority::choose(&loads, crate::balance::random_f64())];
        pick_in(level, &|i| was_tried(i) || unavailable(i))
            .or_else(|| pick_in(level, &unavailable))
            .or_else(|| self.balancer.pick_excluding(hash, now, &unavailable))
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
        lb: &LbSettings,
    ) -> bool {
        self.tls.as_ref() == tls
            && self.policy == *policy
            && self.lb == *lb
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
