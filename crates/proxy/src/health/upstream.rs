//! Active health checks of upstream endpoints, by this (calling) sidecar (Envoy's
//! `Cluster.health_checks`): every endpoint of a cluster with a check is probed every
//! `interval` over the same transport as real traffic — its mTLS connection, with this
//! sidecar's identity, when it serves mTLS — and the results go through the same threshold
//! state machine as the app check ([`CheckState`]). An endpoint whose verdict is not passing
//! is unavailable to the balancer, like an ejected one (and counts the same way for the panic
//! threshold and the priority loads).
//!
//! Health state is kept per (cluster, address) across config updates, so a cluster rebuilt
//! for another endpoint's sake keeps what it knows. [`Prober::sync`] starts a probe task for
//! each new endpoint (its first probe jittered by up to `initial_jitter`) and stops those of
//! endpoints that left. A cluster without a check has no state and no task: its picks cost
//! what they did.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use tokio::task::AbortHandle;
use trellis_model::CheckStatus;

use super::probe::{grpc_outcome, grpc_request, http_outcome, http_request};
use super::{CheckState, Outcome, Probe, within};
use crate::body::{Replay, ReqBody};
use crate::http::{Target, UpstreamError};
use crate::mtls::connect::prepare_h2;
use crate::shared::Shared;
use crate::snapshot::Snapshot;
use crate::upstream::{UpstreamCluster, UpstreamEndpoint};
use crate::xds::health::ActiveCheck;

const UNCHECKED: u8 = 0;
const HEALTHY: u8 = 1;
const UNHEALTHY: u8 = 2;
const RETIRED: u8 = 3;

/// Largest health answer body read.
const MAX_BODY: usize = 64 * 1024;

/// One endpoint's active health, shared by every build of its cluster while it stays.
#[derive(Debug)]
pub(crate) struct HostHealth {
    state: AtomicU8,
    /// The unhealthy hosts of the cluster (shared by all its hosts).
    unhealthy: Arc<AtomicUsize>,
    /// What the last check saw.
    output: Mutex<String>,
}

impl HostHealth {
    fn new(unhealthy: Arc<AtomicUsize>) -> Self {
        HostHealth {
            state: AtomicU8::new(UNCHECKED),
            unhealthy,
            output: Mutex::new(String::new()),
        }
    }

    pub fn is_unhealthy(&self) -> bool {
        self.state.load(Ordering::Relaxed) == UNHEALTHY
    }

    /// `unchecked`, `healthy` or `unhealthy` (for the admin dump).
    pub fn state(&self) -> &'static str {
        match self.state.load(Ordering::Relaxed) {
            HEALTHY => "healthy",
            UNHEALTHY => "unhealthy",
            RETIRED => "removed",
            _ => "unchecked",
        }
    }

    pub fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sets the verdict; returns whether it changed. A retired host stays retired.
    fn set(&self, healthy: bool) -> bool {
        let to = if healthy { HEALTHY } else { UNHEALTHY };
        let Ok(from) = self
            .state
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                (s != RETIRED && s != to).then_some(to)
            })
        else {
            return false;
        };
        if to == UNHEALTHY {
            self.unhealthy.fetch_add(1, Ordering::Relaxed);
        } else if from == UNHEALTHY {
            self.unhealthy.fetch_sub(1, Ordering::Relaxed);
        }
        true
    }

    /// The endpoint left its cluster: it no longer counts.
    fn retire(&self) {
        if self.state.swap(RETIRED, Ordering::Relaxed) == UNHEALTHY {
            self.unhealthy.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The active health of one build of a cluster: its check and one [`HostHealth`] per
/// endpoint (same indexes).
#[derive(Debug)]
pub(crate) struct ClusterHealth {
    pub check: ActiveCheck,
    unhealthy: Arc<AtomicUsize>,
    pub hosts: Box<[Arc<HostHealth>]>,
}

impl ClusterHealth {
    /// Health for `endpoints`, keeping the state of those `previous` (the cluster's last
    /// build) already knew.
    pub fn new(
        check: ActiveCheck,
        endpoints: &[UpstreamEndpoint],
        previous: Option<(&ClusterHealth, &[UpstreamEndpoint])>,
    ) -> Self {
        let known: HashMap<SocketAddr, &Arc<HostHealth>> = previous
            .map(|(h, eps)| {
                eps.iter()
                    .map(|e| e.endpoint.addr)
                    .zip(h.hosts.iter())
                    .collect()
            })
            .unwrap_or_default();
        let unhealthy = previous.map_or_else(Default::default, |(h, _)| h.unhealthy.clone());
        let hosts = endpoints
            .iter()
            .map(|e| match known.get(&e.endpoint.addr) {
                Some(h) => Arc::clone(h),
                None => Arc::new(HostHealth::new(unhealthy.clone())),
            })
            .collect();
        ClusterHealth {
            check,
            unhealthy,
            hosts,
        }
    }

    /// Whether any endpoint is unhealthy: the cheap first check of every pick.
    pub fn any_unhealthy(&self) -> bool {
        self.unhealthy.load(Ordering::Relaxed) > 0
    }

    pub fn is_unhealthy(&self, i: usize) -> bool {
        self.hosts.get(i).is_some_and(|h| h.is_unhealthy())
    }
}

/// A probe task's identity: the cluster and the endpoint's address.
type TaskId = (Arc<str>, SocketAddr);

/// The running probe tasks, by (cluster, endpoint address).
#[derive(Debug, Default)]
pub(crate) struct Prober {
    tasks: Mutex<HashMap<TaskId, Running>>,
}

#[derive(Debug)]
struct Running {
    host: Arc<HostHealth>,
    /// What the task was started with: a change restarts it.
    key: TaskKey,
    task: AbortHandle,
}

#[derive(Debug, Clone, PartialEq)]
struct TaskKey {
    check: ActiveCheck,
    /// The transport: the endpoint's pools (they change with the cluster's TLS settings).
    pool: usize,
    mtls: Option<usize>,
}

fn task_key(check: &ActiveCheck, e: &UpstreamEndpoint) -> TaskKey {
    TaskKey {
        check: check.clone(),
        pool: Arc::as_ptr(&e.pool) as usize,
        mtls: e.mtls.as_ref().map(|m| Arc::as_ptr(m) as usize),
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        for r in self
            .tasks
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            r.task.abort();
        }
    }
}

impl Prober {
    /// Makes the probe tasks match the health-checked endpoints of `snap`.
    pub fn sync(&self, snap: &Snapshot, shared: &Arc<Shared>) {
        let mut wanted: HashMap<TaskId, (&Arc<UpstreamCluster>, usize)> = HashMap::new();
        for c in snap.clusters.values() {
            if c.health.is_some() {
                for (i, e) in c.endpoints.iter().enumerate() {
                    wanted.insert((c.name.clone(), e.endpoint.addr), (c, i));
                }
            }
        }
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|k, r| {
            let keep = wanted.get(k).and_then(|(c, i)| {
                let h = c.health.as_ref()?;
                let same_host = Arc::ptr_eq(&h.hosts[*i], &r.host);
                Some((
                    same_host,
                    same_host && task_key(&h.check, &c.endpoints[*i]) == r.key,
                ))
            });
            match keep {
                Some((_, true)) => true,
                Some((true, false)) => {
                    r.task.abort();
                    false
                }
                _ => {
                    r.task.abort();
                    r.host.retire();
                    false
                }
            }
        });
        for (k, (c, i)) in wanted {
            if tasks.contains_key(&k) {
                continue;
            }
            let Some(h) = &c.health else { continue };
            let host = h.hosts[i].clone();
            let endpoint = &c.endpoints[i];
            let key = task_key(&h.check, endpoint);
            let target = ProbeTarget {
                cluster: c.name.clone(),
                endpoint: endpoint.endpoint.id.clone(),
                authority: endpoint.authority.clone(),
                pool: endpoint.pool.clone(),
                mtls: endpoint.mtls.clone(),
                h2: c.clients.h2.clone(),
            };
            let task = tokio::spawn(run(h.check.clone(), target, host.clone(), shared.clone()));
            tasks.insert(
                k,
                Running {
                    host,
                    key,
                    task: task.abort_handle(),
                },
            );
        }
        shared
            .metrics
            .set_unhealthy_endpoints(snap.clusters.values().filter_map(|c| {
                Some((
                    &*c.name,
                    c.health.as_ref()?.unhealthy.load(Ordering::Relaxed),
                ))
            }));
    }
}

/// What one probe task talks to.
struct ProbeTarget {
    cluster: Arc<str>,
    endpoint: String,
    authority: http::uri::Authority,
    pool: Arc<crate::pool::EndpointPool>,
    mtls: Option<Arc<crate::mtls::connect::MtlsEndpoint>>,
    h2: crate::http::HttpClient,
}

async fn run(check: ActiveCheck, target: ProbeTarget, host: Arc<HostHealth>, shared: Arc<Shared>) {
    if !check.initial_jitter.is_zero() {
        let jitter = check.initial_jitter.mul_f64(rand::random::<f64>());
        tokio::time::sleep(jitter).await;
    }
    let mut state = CheckState::new(check.config.thresholds);
    let mut tick = tokio::time::interval(check.config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let outcome = within(check.config.timeout, probe_once(&check, &target, &shared)).await;
        let passed = outcome.status == CheckStatus::Passing;
        shared.metrics.health_check(&target.cluster, passed);
        *host.output.lock().unwrap_or_else(|p| p.into_inner()) =
            trellis_model::sanitize_output(&outcome.output);
        let Some(status) = state.observe(outcome.status) else {
            continue;
        };
        if host.set(status == CheckStatus::Passing) {
            tracing::info!(
                cluster = %target.cluster,
                endpoint = %target.endpoint,
                address = %target.authority,
                health = host.state(),
                output = %outcome.output,
                "upstream endpoint health changed"
            );
            shared.metrics.set_unhealthy_endpoints(std::iter::once((
                &*target.cluster,
                host.unhealthy.load(Ordering::Relaxed),
            )));
        }
    }
}

fn critical(output: String) -> Outcome {
    Outcome {
        status: CheckStatus::Critical,
        output,
    }
}

/// One check of the endpoint, over the transport real requests use.
async fn probe_once(check: &ActiveCheck, t: &ProbeTarget, shared: &Shared) -> Outcome {
    let authority = t.authority.as_str();
    let (req, path) = match &check.config.probe {
        Probe::Tcp => return tcp_check(t, shared).await,
        Probe::Http { path, .. } => (http_request(path, authority, check.h2), path.as_str()),
        Probe::Grpc { .. } => (grpc_request_for(check, authority), ""),
    };
    let req = match req {
        Ok(r) => r.map(|b| ReqBody::Replay(Replay::new(b, None))),
        Err(e) => return critical(format!("cannot build the check request: {e}")),
    };
    let resp = match send(req, t, shared).await {
        Ok(r) => r,
        Err(e) => return critical(e),
    };
    match &check.config.probe {
        Probe::Http { expected, .. } => {
            let status = resp.status();
            // Read the answer to its end, so an HTTP/1.1 connection goes back to its pool.
            let _ = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await;
            http_outcome(path, status, expected.as_deref())
        }
        Probe::Grpc { service } => grpc_outcome(service, resp).await,
        Probe::Tcp => critical("unreachable".into()),
    }
}

fn grpc_request_for(check: &ActiveCheck, authority: &str) -> Result<Request<Bytes>, String> {
    match &check.config.probe {
        Probe::Grpc { service } => grpc_request(service, authority),
        _ => Err("not a gRPC check".into()),
    }
}

async fn send(
    mut req: Request<ReqBody>,
    t: &ProbeTarget,
    shared: &Shared,
) -> Result<http::Response<crate::pool::UpstreamBody>, String> {
    let now = Instant::now();
    if let Some(mtls) = &t.mtls {
        let Some(tls) = shared.tls.get() else {
            return Err("this sidecar has no workload certificate for the mTLS endpoint".into());
        };
        prepare_h2(&mut req, &t.authority).map_err(|e| e.to_string())?;
        // Health checks are not traffic: no circuit breaker counts them (as in Envoy).
        return mtls
            .send(tls, req, now, None)
            .await
            .map_err(|e| crate::outbound::error_chain(&e));
    }
    let to = Target {
        pool: &t.pool,
        authority: &t.authority,
        h2: &t.h2,
        breaker: None,
    };
    crate::http::send(req, to, now)
        .await
        .map_err(|e: UpstreamError| crate::outbound::error_chain(&e))
}

/// A TCP check: a connection (and the mTLS handshake, to an mTLS endpoint).
async fn tcp_check(t: &ProbeTarget, shared: &Shared) -> Outcome {
    let addr = t.authority.as_str();
    if let Some(mtls) = &t.mtls {
        let Some(tls) = shared.tls.get() else {
            return critical(
                "this sidecar has no workload certificate for the mTLS endpoint".into(),
            );
        };
        return match mtls.handshake(tls).await {
            Ok(()) => Outcome {
                status: CheckStatus::Passing,
                output: format!("mTLS handshake with {addr}: ok"),
            },
            Err(e) => critical(crate::outbound::error_chain(&e)),
        };
    }
    match tokio::net::TcpStream::connect(addr).await {
        Ok(_) => Outcome {
            status: CheckStatus::Passing,
            output: format!("TCP connect {addr}: ok"),
        },
        Err(e) => critical(format!("connect {addr}: {e}")),
    }
}

#[cfg(test)]
mod tests;
