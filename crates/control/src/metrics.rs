//! The control plane's Prometheus metrics (served on `GET /metrics` in OpenMetrics text).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    pub service: String,
    pub health: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    pub route: String,
    pub status: String,
}

/// Every metric the control plane exports. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Instances per service and health, refreshed at scrape time.
    pub instances: Family<InstanceLabels, Gauge>,
    pub snapshot_version: Gauge,
    pub registrations: Counter,
    pub heartbeats: Counter,
    pub api_requests: Family<ApiLabels, Counter>,
    /// Instances whose heartbeats lapsed but that self-preservation keeps as endpoints.
    pub instances_held: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let instances = Family::<InstanceLabels, Gauge>::default();
        let snapshot_version = Gauge::default();
        let registrations = Counter::default();
        let heartbeats = Counter::default();
        let api_requests = Family::<ApiLabels, Counter>::default();
        registry.register(
            "trellis_control_instances",
            "Registered instances by service and health",
            instances.clone(),
        );
        registry.register(
            "trellis_control_snapshot_version",
            "Version of the last mesh snapshot published to proxies",
            snapshot_version.clone(),
        );
        // prometheus-client appends `_total` to counters.
        registry.register(
            "trellis_control_registrations",
            "Instance registrations accepted",
            registrations.clone(),
        );
        registry.register(
            "trellis_control_heartbeats",
            "Heartbeats accepted",
            heartbeats.clone(),
        );
        registry.register(
            "trellis_control_api_requests",
            "Admin API requests by route and status",
            api_requests.clone(),
        );
        let instances_held = Gauge::default();
        registry.register(
            "trellis_control_instances_held",
            "Instances kept as endpoints by self-preservation although their heartbeats lapsed",
            instances_held.clone(),
        );
        Metrics {
            instances_held,
            registry,
            instances,
            snapshot_version,
            registrations,
            heartbeats,
            api_requests,
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }

    pub fn set_snapshot_version(&self, version: u64) {
        self.snapshot_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
    }
}
