//! The registry: instances and resources in memory, mirrored to the [`Store`], and the
//! [`MeshSnapshot`]s it publishes to the xDS server.
//!
//! Writes go to the store first (one transaction each) and only then to memory, under one
//! async write lock, so memory never holds what the store does not. Heartbeats are memory only.
//! A reaper task turns instances unhealthy after their TTL and removes them after
//! `remove_after`, sleeping until the next of those moments (an idle registry does not wake);
//! a publisher task coalesces changes and publishes at most once per
//! `push_debounce`, only when what proxies see changed.

mod build;
pub mod checks;
mod describe;
mod identity;
pub mod preservation;
mod view;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use trellis_model::{ApplyError, CheckReport, InstanceRegistration, Kind, KnownServices, Resource};

pub use build::{
    InstanceState, authentication_for, authorization_for, build_snapshot, declared, namespace_of,
    policy_for, rate_limit_for, routes_for,
};

pub use describe::ServiceDescription;
pub use identity::check_identity;
pub use view::InstanceView;
use view::view_of;

use crate::metrics::Metrics;
use crate::snapshot::MeshSnapshot;
use crate::store::{Store, StoreError, StoredInstance};

/// Snapshot versions are reserved on disk in blocks of this size, so a restart never reuses one.
const VERSION_BLOCK: u64 = 1000;

#[derive(Debug, Clone)]
pub struct RegistryConfig {
    pub restart_grace: Duration,
    pub remove_after: Duration,
    pub push_debounce: Duration,
    /// The shortest time between two reaper passes: the reaper sleeps until the next TTL
    /// falls due, and takes a burst of registrations within this window together. TTLs are
    /// acted on within it.
    pub reap_interval: Duration,
    /// The mesh CA's trust domain: published in snapshots, and the domain a registration's
    /// `identity` must be in.
    pub trust_domain: String,
    /// Self-preservation: at most this fraction of all instances is marked unhealthy at once
    /// for missed heartbeats ([`preservation`]); 1.0 turns it off.
    pub max_eviction_fraction: f64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            restart_grace: Duration::from_secs(10),
            remove_after: Duration::from_secs(60),
            push_debounce: Duration::from_millis(100),
            reap_interval: Duration::from_millis(50),
            trust_domain: crate::ca::DEFAULT_TRUST_DOMAIN.to_string(),
            max_eviction_fraction: 0.5,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A bad request; the message names the field.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Rejected(ApplyError),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSummary {
    pub name: String,
    pub declared: bool,
    pub instances: usize,
    pub healthy: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Created,
    Configured,
    Unchanged,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub kind: Kind,
    pub name: String,
    pub action: Action,
}

type InstanceKey = (String, String);
type ResourceKey = (Kind, String);

#[derive(Default)]
struct State {
    instances: BTreeMap<InstanceKey, InstanceState>,
    resources: BTreeMap<ResourceKey, Resource>,
}

impl KnownServices for State {
    fn service_exists(&self, name: &str) -> bool {
        self.resources
            .contains_key(&(Kind::Service, name.to_string()))
            || self.instances.keys().any(|(s, _)| s == name)
    }

    fn subsets(&self, service: &str) -> Vec<String> {
        declared(self.resources.values(), service)
            .map(|s| s.subsets.into_iter().map(|s| s.name).collect())
            .unwrap_or_default()
    }

    fn protocol(&self, service: &str) -> Option<trellis_model::Protocol> {
        if let Some(spec) = declared(self.resources.values(), service) {
            return Some(spec.protocol);
        }
        self.instances
            .iter()
            .find(|((s, _), _)| s == service)
            .map(|(_, i)| i.registration.protocol)
    }
}

struct Inner {
    config: RegistryConfig,
    store: Arc<dyn Store>,
    state: Mutex<State>,
    /// Held across "store write, then memory update" so both see writes in the same order.
    writes: tokio::sync::Mutex<()>,
    changed: Notify,
    /// Wakes the reaper when a deadline may have come nearer or self-preservation may have
    /// to change: an instance registered or deregistered, a lapsed heartbeat or check renewed.
    reap: Notify,
    snapshots: watch::Sender<Arc<MeshSnapshot>>,
    metrics: Arc<Metrics>,
    /// Who shares each global rate limit now (memory only).
    leases: crate::ratelimit::Leases,
}

/// The handle the API and the runtime use. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

/// The registry's background tasks (reaper, publisher); stopped by [`RegistryTasks::shutdown`]
/// or when dropped.
pub struct RegistryTasks {
    handles: Vec<JoinHandle<()>>,
}

impl RegistryTasks {
    pub async fn shutdown(mut self) {
        for h in &self.handles {
            h.abort();
        }
        for h in self.handles.drain(..) {
            let _ = h.await;
        }
    }
}

impl Drop for RegistryTasks {
    fn drop(&mut self) {
        for h in &self.handles {
            h.abort();
        }
    }
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Registry {
    /// Loads instances and resources from the store (every instance gets a fresh heartbeat
    /// clock plus `restart_grace`), publishes the first snapshot and starts the background
    /// tasks.
    pub async fn start(
        store: Arc<dyn Store>,
        config: RegistryConfig,
        metrics: Arc<Metrics>,
    ) -> Result<(Registry, RegistryTasks), StoreError> {
        let now = Instant::now();
        let mut state = State::default();
        for s in store.list_instances().await? {
            let r = &s.registration;
            let key = (r.service.clone(), r.id.clone());
            state.instances.insert(
                key,
                InstanceState {
                    registration: s.registration,
                    registered_at_ms: s.registered_at_ms,
                    last_heartbeat: now + config.restart_grace,
                    healthy: true,
                    held: false,
                    ttl_checks: checks::TtlChecks::new(),
                },
            );
        }
        for r in store.list_resources().await? {
            state.resources.insert((r.kind(), r.name().to_string()), r);
        }
        // Never go backwards across restarts: start above both the reserved floor and the clock.
        let version = store.version_floor().await?.max(unix_ms());
        let reserved = version + VERSION_BLOCK;
        store.set_version_floor(reserved).await?;
        let mut first = build_snapshot(version, state.instances.values(), state.resources.values());
        first.trust_domain.clone_from(&config.trust_domain);
        metrics.set_snapshot_version(version);
        let (snapshots, _) = watch::channel(Arc::new(first));
        let inner = Arc::new(Inner {
            config,
            store,
            state: Mutex::new(state),
            writes: tokio::sync::Mutex::new(()),
            changed: Notify::new(),
            reap: Notify::new(),
            snapshots,
            metrics,
            leases: crate::ratelimit::Leases::default(),
        });
        let handles = vec![
            tokio::spawn(reaper(inner.clone())),
            tokio::spawn(publisher(inner.clone(), version, reserved)),
        ];
        Ok((Registry { inner }, RegistryTasks { handles }))
    }

    /// The snapshots published for proxies; the current one is available at once.
    pub fn subscribe(&self) -> watch::Receiver<Arc<MeshSnapshot>> {
        self.inner.snapshots.subscribe()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The shares of the global rate limits.
    pub fn leases(&self) -> &crate::ratelimit::Leases {
        &self.inner.leases
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.inner.state)
    }

    fn mark_changed(&self) {
        self.inner.changed.notify_one();
    }

    fn wake_reaper(&self) {
        self.inner.reap.notify_one();
    }

    /// Registers (or re-registers) an instance; counts as a heartbeat.
    pub async fn register(&self, reg: InstanceRegistration) -> Result<InstanceView, RegistryError> {
        trellis_model::validate_registration(&reg).map_err(RegistryError::Invalid)?;
        let key = (reg.service.clone(), reg.id.clone());
        let _w = self.inner.writes.lock().await;
        if let Some(identity) = &reg.identity {
            let namespace = namespace_of(self.state().resources.values(), &reg.service);
            check_identity(
                &self.inner.config.trust_domain,
                &namespace,
                &reg.service,
                identity,
            )
            .map_err(RegistryError::Invalid)?;
        }
        let existing = self
            .state()
            .instances
            .get(&key)
            .map(|i| (i.registration.clone(), i.registered_at_ms));
        let registered_at_ms = existing.as_ref().map_or_else(unix_ms, |(_, at)| *at);
        let unchanged = existing.as_ref().is_some_and(|(r, _)| *r == reg);
        if !unchanged {
            self.inner
                .store
                .put_instance(StoredInstance {
                    registration: reg.clone(),
                    registered_at_ms,
                })
                .await?;
        }
        let now = Instant::now();
        let mut st = self.state();
        let previous = st.instances.remove(&key);
        let was_endpoint = previous.as_ref().is_some_and(InstanceState::is_endpoint);
        let inst = InstanceState {
            registration: reg,
            registered_at_ms,
            last_heartbeat: now,
            healthy: true,
            held: false,
            // The app's TTL checks survive its sidecar registering again.
            ttl_checks: previous.map(|p| p.ttl_checks).unwrap_or_default(),
        };
        let is_endpoint = inst.is_endpoint();
        let view = view_of(&inst, now);
        st.instances.insert(key, inst);
        drop(st);
        self.inner.metrics.registrations.inc();
        self.wake_reaper();
        if !unchanged || was_endpoint != is_endpoint {
            self.mark_changed();
        }
        Ok(view)
    }

    /// Records a heartbeat (memory only) and, when given, the sidecar's check report. A
    /// report whose status differs from the stored one is written to the store (so a restart
    /// keeps it); publishes only when the instance's state changed.
    pub async fn heartbeat(
        &self,
        service: &str,
        id: &str,
        report: Option<CheckReport>,
    ) -> Result<InstanceView, RegistryError> {
        if let Some(r) = &report {
            trellis_model::check_report(r).map_err(RegistryError::Invalid)?;
        }
        let key = (service.to_string(), id.to_string());
        let status_changed = |st: &State| {
            report.as_ref().is_some_and(|r| {
                st.instances.get(&key).is_some_and(|i| {
                    i.registration.check.as_ref().map(|c| c.status) != Some(r.status)
                })
            })
        };
        let _w = if status_changed(&self.state()) {
            let w = self.inner.writes.lock().await;
            let stored = self.state().instances.get(&key).map(|i| StoredInstance {
                registration: InstanceRegistration {
                    check: report.clone(),
                    ..i.registration.clone()
                },
                registered_at_ms: i.registered_at_ms,
            });
            if let Some(stored) = stored {
                self.inner.store.put_instance(stored).await?;
            }
            Some(w)
        } else {
            None
        };
        let now = Instant::now();
        let mut st = self.state();
        let Some(inst) = st.instances.get_mut(&key) else {
            return Err(not_found_instance(service, id));
        };
        let before = checks::status_of(inst);
        let revived = !inst.healthy || inst.held;
        inst.last_heartbeat = now;
        inst.healthy = true;
        inst.held = false;
        if report.is_some() {
            inst.registration.check = report;
        }
        let changed = checks::status_of(inst) != before;
        let view = view_of(inst, now);
        drop(st);
        self.inner.metrics.heartbeats.inc();
        if revived {
            self.wake_reaper();
        }
        if changed {
            self.mark_changed();
        }
        Ok(view)
    }

    pub async fn deregister(&self, service: &str, id: &str) -> Result<(), RegistryError> {
        let key = (service.to_string(), id.to_string());
        let _w = self.inner.writes.lock().await;
        if !self.state().instances.contains_key(&key) {
            return Err(not_found_instance(service, id));
        }
        self.inner.store.delete_instance(service, id).await?;
        self.state().instances.remove(&key);
        self.wake_reaper();
        self.mark_changed();
        Ok(())
    }

    /// Instances sorted by service then id, optionally of one service only.
    pub fn instances(&self, service: Option<&str>) -> Vec<InstanceView> {
        let now = Instant::now();
        self.state()
            .instances
            .values()
            .filter(|i| service.is_none_or(|s| i.registration.service == s))
            .map(|i| view_of(i, now))
            .collect()
    }

    pub fn services(&self) -> Vec<ServiceSummary> {
        let st = self.state();
        let mut out: BTreeMap<String, ServiceSummary> = BTreeMap::new();
        let summary = |name: &str| ServiceSummary {
            name: name.to_string(),
            declared: false,
            instances: 0,
            healthy: 0,
        };
        for (kind, name) in st.resources.keys() {
            if *kind == Kind::Service {
                out.entry(name.clone())
                    .or_insert_with(|| summary(name))
                    .declared = true;
            }
        }
        for i in st.instances.values() {
            let name = &i.registration.service;
            let s = out.entry(name.clone()).or_insert_with(|| summary(name));
            s.instances += 1;
            if i.is_endpoint() {
                s.healthy += 1;
            }
        }
        out.into_values().collect()
    }

    /// Parses and validates every document of `text`, then stores all of them in one
    /// transaction. Nothing is applied when any document is invalid.
    pub async fn apply(&self, source: &str, text: &str) -> Result<Vec<Applied>, RegistryError> {
        let _w = self.inner.writes.lock().await;
        let mut applied = Vec::new();
        let mut changed = Vec::new();
        {
            let st = self.state();
            // Parsing is cheap next to the store write; doing it under the lock validates
            // cross-references against exactly the state the write lands on.
            let docs = trellis_model::parse_and_validate(source, text, &*st)
                .map_err(RegistryError::Rejected)?;
            for r in docs {
                let key = (r.kind(), r.name().to_string());
                let action = match st.resources.get(&key) {
                    None => Action::Created,
                    Some(old) if *old == r => Action::Unchanged,
                    Some(_) => Action::Configured,
                };
                applied.push(Applied {
                    kind: key.0,
                    name: key.1,
                    action,
                });
                if action != Action::Unchanged {
                    changed.push(r);
                }
            }
        }
        if changed.is_empty() {
            return Ok(applied);
        }
        self.inner.store.put_resources(changed.clone()).await?;
        let mut st = self.state();
        for r in changed {
            st.resources.insert((r.kind(), r.name().to_string()), r);
        }
        drop(st);
        self.mark_changed();
        Ok(applied)
    }

    /// Resources sorted by kind then name, optionally of one kind only.
    pub fn resources(&self, kind: Option<Kind>) -> Vec<Resource> {
        self.state()
            .resources
            .iter()
            .filter(|((k, _), _)| kind.is_none_or(|want| *k == want))
            .map(|(_, r)| r.clone())
            .collect()
    }

    pub fn resource(&self, kind: Kind, name: &str) -> Option<Resource> {
        self.state()
            .resources
            .get(&(kind, name.to_string()))
            .cloned()
    }

    pub async fn delete_resource(&self, kind: Kind, name: &str) -> Result<(), RegistryError> {
        let key = (kind, name.to_string());
        let _w = self.inner.writes.lock().await;
        if !self.state().resources.contains_key(&key) {
            return Err(RegistryError::NotFound(format!(
                "{kind} `{name}` does not exist"
            )));
        }
        self.inner.store.delete_resource(kind, name).await?;
        self.state().resources.remove(&key);
        self.mark_changed();
        Ok(())
    }

    /// Sets the per-service instance gauges from the current state (called at scrape time).
    pub fn refresh_gauges(&self) {
        let m = &self.inner.metrics;
        m.instances.clear();
        for s in self.services() {
            for (health, n) in [
                ("healthy", s.healthy),
                ("unhealthy", s.instances - s.healthy),
            ] {
                m.instances
                    .get_or_create(&crate::metrics::InstanceLabels {
                        service: s.name.clone(),
                        health: health.to_string(),
                    })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn not_found_instance(service: &str, id: &str) -> RegistryError {
    RegistryError::NotFound(format!(
        "instance `{id}` of service `{service}` is not registered; register it again"
    ))
}

/// Marks instances unhealthy after their TTL and removes them after `remove_after` (or the
/// TTL, when longer) without a heartbeat, within the limit of self-preservation
/// ([`preservation`]): instances it holds stay healthy, and while it holds any, no instance is
/// removed. Between passes it sleeps until the next deadline or until [`Inner::reap`] wakes it,
/// and at least `reap_interval`.
async fn reaper(inner: Arc<Inner>) {
    let mut preserving = 0usize;
    loop {
        let next = reap(&inner, &mut preserving).await;
        let earliest = Instant::now() + inner.config.reap_interval;
        match next {
            Some(at) => tokio::select! {
                () = tokio::time::sleep_until(at.max(earliest)) => {}
                () = inner.reap.notified() => {}
            },
            None => inner.reap.notified().await,
        }
        if Instant::now() < earliest {
            tokio::time::sleep_until(earliest).await;
        }
    }
}

/// One pass of the reaper; returns when the next one is due (None: only an event can change
/// anything).
async fn reap(inner: &Inner, preserving: &mut usize) -> Option<Instant> {
    let expired = |i: &InstanceState, now: Instant| i.is_expired(inner.config.remove_after, now);
    let now = Instant::now();
    let mut changed = false;
    let mut any_expired = false;
    let (held, mut next) = {
        let mut st = lock(&inner.state);
        let total = st.instances.len();
        let lapsed: Vec<_> = st
            .instances
            .iter()
            .filter(|(_, i)| !i.is_healthy(now))
            .map(|(k, i)| (i.since_heartbeat(now), k.clone()))
            .collect();
        let lapsed_count = lapsed.len();
        let limit = preservation::eviction_limit(total, inner.config.max_eviction_fraction);
        let held = preservation::held(lapsed, limit);
        if held.len() != *preserving {
            if *preserving == 0 {
                tracing::warn!(
                    lapsed = lapsed_count,
                    total,
                    held = held.len(),
                    max_fraction = inner.config.max_eviction_fraction,
                    "self-preservation: many instances missed their heartbeats at once \
                     (the control plane may be cut off from them); keeping some as \
                     endpoints instead of evicting them, and removing none until it ends"
                );
            } else if held.is_empty() {
                tracing::info!("self-preservation ended: heartbeats are back");
            }
            *preserving = held.len();
            inner
                .metrics
                .instances_held
                .set(i64::try_from(*preserving).unwrap_or(i64::MAX));
        }
        for (key, i) in st.instances.iter_mut() {
            let fresh = i.is_healthy(now);
            i.held = !fresh && held.contains(key);
            let healthy = fresh || i.held;
            if healthy != i.healthy {
                i.healthy = healthy;
                changed = true;
                tracing::info!(service = %i.registration.service, id = %i.registration.id,
                    healthy, "instance health changed");
            }
            any_expired |= !healthy && expired(i, now);
        }
        changed |= checks::expire_all(st.instances.values_mut(), now);
        let next = st
            .instances
            .values()
            .filter_map(|i| i.next_deadline(inner.config.remove_after, now))
            .min();
        (held, next)
    };
    // While self-preservation holds instances, nothing is removed: each removal would shrink
    // the total its limit is a fraction of, and so evict the held ones in turn.
    if any_expired && held.is_empty() {
        let _w = inner.writes.lock().await;
        let now = Instant::now();
        let mut removed = Vec::new();
        lock(&inner.state).instances.retain(|key, i| {
            let keep = held.contains(key) || !expired(i, now);
            if !keep {
                removed.push(key.clone());
            }
            keep
        });
        for (service, id) in removed {
            tracing::info!(%service, %id, "instance removed after missing heartbeats");
            if let Err(e) = inner.store.delete_instance(&service, &id).await {
                tracing::warn!(%service, %id, error = %e, "cannot remove instance from the store");
            }
            changed = true;
            // Fewer instances lower self-preservation's limit: the next pass re-counts at once.
            next = Some(now);
        }
    }
    if changed {
        inner.changed.notify_one();
    }
    next
}

/// Waits for a change, lets the debounce window collect more, then publishes one snapshot if
/// what proxies see differs from the last published one.
async fn publisher(inner: Arc<Inner>, mut version: u64, mut reserved: u64) {
    loop {
        inner.changed.notified().await;
        tokio::time::sleep(inner.config.push_debounce).await;
        let next = {
            let st = lock(&inner.state);
            let mut next =
                build_snapshot(version + 1, st.instances.values(), st.resources.values());
            next.trust_domain.clone_from(&inner.config.trust_domain);
            next
        };
        if next.services == inner.snapshots.borrow().services {
            continue;
        }
        if next.version >= reserved {
            let floor = next.version + VERSION_BLOCK;
            match inner.store.set_version_floor(floor).await {
                Ok(()) => reserved = floor,
                Err(e) => tracing::warn!(error = %e, "cannot persist the snapshot version floor"),
            }
        }
        version = next.version;
        inner.metrics.set_snapshot_version(version);
        tracing::debug!(
            version,
            services = next.services.len(),
            "publishing mesh snapshot"
        );
        inner.snapshots.send_replace(Arc::new(next));
    }
}

#[cfg(test)]
mod security_tests;
#[cfg(test)]
mod tests;
