//! Prometheus metrics. Families are registered once; the request path only touches
//! pre-resolved handles ([`ServiceMetrics`], resolved per destination service when a config is
//! applied), so recording a request is a few atomic adds: no label formatting, no locks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

mod conn;
mod tcp;

pub(crate) use conn::ConnMetrics;
pub(crate) use tcp::{TcpMetrics, TcpResult};

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum Direction {
    Outbound,
    Inbound,
}

impl Direction {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct RequestLabels {
    direction: &'static str,
    destination_service: Arc<str>,
    status_code: u16,
    /// The `x-trellis-reason` of a response the proxy made itself; absent for upstream answers.
    reason: Option<&'static str>,
}

impl EncodeLabelSet for RequestLabels {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("direction", self.direction).encode(encoder.encode_label())?;
        ("destination_service", &*self.destination_service).encode(encoder.encode_label())?;
        ("status_code", self.status_code).encode(encoder.encode_label())?;
        if let Some(reason) = self.reason {
            ("reason", reason).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

/// Every `x-trellis-reason` the proxy answers with; the metric handles of locally generated
/// responses are indexed by position here (an unknown reason counts as `other`).
pub(crate) const LOCAL_REASONS: &[&str] = &[
    "other",
    "no_authority",
    "unknown_service",
    "no_route",
    "no_healthy_endpoints",
    "upstream_connect_failure",
    "upstream_tls_failure",
    "upstream_error",
    "upstream_timeout",
    "retry_budget_exhausted",
    "circuit_open",
    "no_identity",
    "bad_request",
    "not_ready",
    "bad_path",
    "unauthenticated",
    "rbac_denied",
    "app_unavailable",
    "fault_abort",
];

/// The kinds of injected faults (`trellis_faults_injected_total{kind}`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum FaultKind {
    Delay,
    Abort,
}

impl FaultKind {
    fn as_str(self) -> &'static str {
        match self {
            FaultKind::Delay => "delay",
            FaultKind::Abort => "abort",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FaultLabels {
    direction: &'static str,
    destination_service: Arc<str>,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    direction: &'static str,
    destination_service: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct XdsLabels {
    r#type: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HealthCheckLabels {
    cluster: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabels {
    cluster: String,
}

/// Service name used for requests that matched no known service (bounded cardinality).
pub(crate) const UNKNOWN_SERVICE: &str = "unknown";

/// Upper bounds of the request duration buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

type ServiceKey = (Direction, Arc<str>);

#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<ServiceLabels, AtomicHistogram>,
    connect_errors: Family<ServiceLabels, Counter>,
    retries: Family<ServiceLabels, Counter>,
    ejections: Family<ServiceLabels, Counter>,
    faults: Family<FaultLabels, Counter>,
    xds_updates: Family<XdsLabels, Counter>,
    health_checks: Family<HealthCheckLabels, Counter>,
    unhealthy_endpoints: Family<ClusterLabels, Gauge>,
    /// mTLS handshakes, plaintext inbound connections, the inbound mode, certificate renewals.
    pub tls: TlsMetrics,
    /// Raw TCP connections (services with `protocol: tcp`).
    pub tcp: TcpMetrics,
    /// Idle timeouts, open mTLS upstream connections, dropped access log records.
    pub conn: ConnMetrics,
    /// Inbound requests refused by a RateLimitPolicy (`trellis_rate_limited_total`).
    pub rate_limited: RateLimitedFamily,
    /// Config-time cache of per-service handles (never touched per request).
    services: Mutex<HashMap<ServiceKey, Arc<ServiceMetrics>>>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let durations = Family::<ServiceLabels, AtomicHistogram>::default();
        let connect_errors = Family::<ServiceLabels, Counter>::default();
        let retries = Family::<ServiceLabels, Counter>::default();
        let ejections = Family::<ServiceLabels, Counter>::default();
        let faults = Family::<FaultLabels, Counter>::default();
        let xds_updates = Family::<XdsLabels, Counter>::default();
        registry.register(
            "trellis_requests",
            "Requests proxied, by direction, destination service and response status",
            requests.clone(),
        );
        registry.register(
            "trellis_request_duration_seconds",
            "Time from receiving a request to forwarding the response head",
            durations.clone(),
        );
        registry.register(
            "trellis_upstream_connect_errors",
            "Failed connection attempts to an upstream endpoint or the local app",
            connect_errors.clone(),
        );
        registry.register(
            "trellis_upstream_retries",
            "Retries sent to an upstream service (tries after the first)",
            retries.clone(),
        );
        registry.register(
            "trellis_outlier_ejections",
            "Endpoints of an upstream service ejected by outlier detection",
            ejections.clone(),
        );
        registry.register(
            "trellis_faults_injected",
            "Faults injected into requests to an upstream service, by kind (delay: Envoy's DI \
             flag, abort: FI)",
            faults.clone(),
        );
        registry.register(
            "trellis_xds_updates",
            "xDS responses processed, by type and result (ack or nack)",
            xds_updates.clone(),
        );
        let health_checks = Family::<HealthCheckLabels, Counter>::default();
        registry.register(
            "trellis_upstream_health_checks",
            "Active health checks of upstream endpoints by this sidecar, by cluster and result",
            health_checks.clone(),
        );
        let unhealthy_endpoints = Family::<ClusterLabels, Gauge>::default();
        registry.register(
            "trellis_upstream_unhealthy_endpoints",
            "Endpoints of a cluster that this sidecar's active health check holds unhealthy",
            unhealthy_endpoints.clone(),
        );
        let rate_limited = RateLimitedFamily::default();
        registry.register(
            "trellis_rate_limited",
            "Inbound requests refused by a local rate limit (429), by service and rule",
            rate_limited.clone(),
        );
        let conn = ConnMetrics::register(&mut registry);
        let tls = TlsMetrics::register(&mut registry, conn.clone());
        let tcp = TcpMetrics::register(&mut registry);
        Metrics {
            registry,
            requests,
            durations,
            connect_errors,
            retries,
            ejections,
            faults,
            xds_updates,
            health_checks,
            unhealthy_endpoints,
            tls,
            tcp,
            conn,
            rate_limited,
            services: Mutex::new(HashMap::new()),
        }
    }

    /// The handles for one destination service (created on first use, then shared).
    pub fn service(&self, direction: Direction, service: &str) -> Arc<ServiceMetrics> {
        let mut map = self
            .services
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(m) = map.get(&(direction, Arc::from(service))) {
            return m.clone();
        }
        let name: Arc<str> = Arc::from(service);
        let labels = ServiceLabels {
            direction: direction.as_str(),
            destination_service: name.clone(),
        };
        let m = Arc::new(ServiceMetrics {
            direction,
            service: name.clone(),
            requests: self.requests.clone(),
            by_status: (0..500).map(|_| OnceLock::new()).collect(),
            duration: self.durations.get_or_create_owned(&labels),
            connect_errors: self.connect_errors.get_or_create_owned(&labels),
            local: (0..LOCAL_REASONS.len() * 2)
                .map(|_| OnceLock::new())
                .collect(),
            retries: self.retries.get_or_create_owned(&labels),
            ejections: self.ejections.get_or_create_owned(&labels),
            faults: self.faults.clone(),
            fault_counters: Default::default(),
        });
        map.insert((direction, name), m.clone());
        m
    }

    pub fn xds_update(&self, type_url: &str, accepted: bool) {
        let labels = XdsLabels {
            r#type: crate::xds::short_type(type_url),
            result: if accepted { "ack" } else { "nack" },
        };
        self.xds_updates.get_or_create(&labels).inc();
    }

    /// One active health check of an endpoint of `cluster` (a background task, not the
    /// request path).
    pub fn health_check(&self, cluster: &str, passed: bool) {
        self.health_checks
            .get_or_create(&HealthCheckLabels {
                cluster: cluster.to_string(),
                result: if passed { "success" } else { "failure" },
            })
            .inc();
    }

    /// The number of actively unhealthy endpoints of each `(cluster, count)`.
    pub fn set_unhealthy_endpoints<'a>(&self, counts: impl IntoIterator<Item = (&'a str, usize)>) {
        for (cluster, n) in counts {
            self.unhealthy_endpoints
                .get_or_create(&ClusterLabels {
                    cluster: cluster.to_string(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RateLimitLabels {
    pub service: String,
    pub rule: String,
}

pub(crate) type RateLimitedFamily = Family<RateLimitLabels, Counter>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeErrorLabels {
    direction: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabels {
    mode: &'static str,
}

/// The inbound modes a gauge is kept for (`NONE`: no inbound config accepted yet).
const MODES: [&str; 3] = ["STRICT", "PERMISSIVE", "NONE"];

/// mTLS metrics. Touched per connection (handshakes are rare with pooling), never per request.
#[derive(Debug, Clone)]
pub(crate) struct TlsMetrics {
    handshakes_in: Counter,
    handshakes_out: Counter,
    errors: Family<HandshakeErrorLabels, Counter>,
    plaintext: Family<ResultLabels, Counter>,
    mode: Family<ModeLabels, Gauge>,
    renewals: Counter,
    /// For the pooled mTLS connections' gauge and idle timeouts.
    pub conn: ConnMetrics,
}

impl TlsMetrics {
    fn register(registry: &mut Registry, conn: ConnMetrics) -> Self {
        let handshakes = Family::<HandshakeLabels, Counter>::default();
        let errors = Family::<HandshakeErrorLabels, Counter>::default();
        let plaintext = Family::<ResultLabels, Counter>::default();
        let mode = Family::<ModeLabels, Gauge>::default();
        let renewals = Counter::default();
        registry.register(
            "trellis_tls_handshakes",
            "Completed mTLS handshakes with other sidecars, by direction",
            handshakes.clone(),
        );
        registry.register(
            "trellis_tls_handshake_errors",
            "Failed mTLS handshakes, by direction and reason",
            errors.clone(),
        );
        registry.register(
            "trellis_inbound_plaintext_connections",
            "Plaintext connections to the inbound listener, by result (accepted in PERMISSIVE \
             mode, refused otherwise)",
            plaintext.clone(),
        );
        registry.register(
            "trellis_inbound_mode",
            "1 for the inbound listener's current mTLS mode (STRICT, PERMISSIVE, or NONE before \
             the inbound config arrived)",
            mode.clone(),
        );
        registry.register(
            "trellis_identity_certificate_renewals",
            "Times this sidecar's workload certificate was replaced by a renewed one",
            renewals.clone(),
        );
        let m = TlsMetrics {
            handshakes_in: handshakes.get_or_create_owned(&HandshakeLabels {
                direction: "inbound",
            }),
            handshakes_out: handshakes.get_or_create_owned(&HandshakeLabels {
                direction: "outbound",
            }),
            errors,
            plaintext,
            mode,
            renewals,
            conn,
        };
        m.set_inbound_mode(None);
        m
    }

    pub fn handshake(&self, direction: Direction) {
        match direction {
            Direction::Inbound => self.handshakes_in.inc(),
            Direction::Outbound => self.handshakes_out.inc(),
        };
    }

    pub fn handshake_error(&self, direction: Direction, reason: &'static str) {
        self.errors
            .get_or_create(&HandshakeErrorLabels {
                direction: direction.as_str(),
                reason,
            })
            .inc();
    }

    /// A plaintext inbound connection, `accepted` in PERMISSIVE mode or refused.
    pub fn plaintext(&self, accepted: bool) {
        let result = if accepted { "accepted" } else { "refused" };
        self.plaintext.get_or_create(&ResultLabels { result }).inc();
    }

    /// The inbound mode now in force (`None`: not configured yet).
    pub fn set_inbound_mode(&self, mode: Option<&'static str>) {
        let current = mode.unwrap_or("NONE");
        for m in MODES {
            self.mode
                .get_or_create(&ModeLabels { mode: m })
                .set(i64::from(m == current));
        }
    }

    pub fn certificate_renewed(&self) {
        self.renewals.inc();
    }
}

/// Pre-resolved metric handles for one (direction, destination service).
#[derive(Debug)]
pub(crate) struct ServiceMetrics {
    direction: Direction,
    service: Arc<str>,
    requests: Family<RequestLabels, Counter>,
    /// Index `status - 100`; each counter is resolved from the family on first use.
    by_status: Box<[OnceLock<Counter>]>,
    duration: AtomicHistogram,
    connect_errors: Counter,
    /// Locally generated responses: index `2 × reason + (status == 200)` (gRPC answers are 200).
    local: Box<[OnceLock<Counter>]>,
    retries: Counter,
    ejections: Counter,
    faults: Family<FaultLabels, Counter>,
    /// Index: [`FaultKind`] (delay, abort); resolved on first use, so services without
    /// faults export no series.
    fault_counters: [OnceLock<Counter>; 2],
}

impl ServiceMetrics {
    pub fn record(&self, status: http::StatusCode, elapsed: Duration) {
        let code = status.as_u16();
        let slot = &self.by_status[usize::from(code.clamp(100, 599) - 100)];
        slot.get_or_init(|| {
            self.requests.get_or_create_owned(&RequestLabels {
                direction: self.direction.as_str(),
                destination_service: self.service.clone(),
                status_code: code,
                reason: None,
            })
        })
        .inc();
        self.duration.observe(elapsed);
    }

    /// A response the proxy made itself, with its `x-trellis-reason` (no formatting: the
    /// reason is found in a short static table, and its counter resolved once).
    pub fn record_local(&self, status: http::StatusCode, reason: &'static str, elapsed: Duration) {
        let r = LOCAL_REASONS.iter().position(|&x| x == reason).unwrap_or(0);
        let code = status.as_u16();
        let slot = &self.local[2 * r + usize::from(code == 200)];
        slot.get_or_init(|| {
            self.requests.get_or_create_owned(&RequestLabels {
                direction: self.direction.as_str(),
                destination_service: self.service.clone(),
                status_code: code,
                reason: Some(LOCAL_REASONS[r]),
            })
        })
        .inc();
        self.duration.observe(elapsed);
    }

    pub fn retry(&self) {
        self.retries.inc();
    }

    pub fn ejection(&self) {
        self.ejections.inc();
    }

    /// A fault injected into a request to this service.
    pub fn fault(&self, kind: FaultKind) {
        self.fault_counters[kind as usize]
            .get_or_init(|| {
                self.faults.get_or_create_owned(&FaultLabels {
                    direction: self.direction.as_str(),
                    destination_service: self.service.clone(),
                    kind: kind.as_str(),
                })
            })
            .inc();
    }

    pub fn connect_error(&self) {
        self.connect_errors.inc();
    }
}

/// A lock-free histogram with fixed buckets ([`BUCKETS`]), encoded as a Prometheus histogram.
#[derive(Debug, Clone, Default)]
pub(crate) struct AtomicHistogram {
    inner: Arc<HistogramInner>,
}

#[derive(Debug)]
struct HistogramInner {
    /// Non-cumulative counts; the last slot is `+Inf`.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Default for HistogramInner {
    fn default() -> Self {
        HistogramInner {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

impl AtomicHistogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.inner.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.inner.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut buckets = [(0.0, 0u64); BUCKETS.len() + 1];
        for (i, slot) in buckets.iter_mut().enumerate() {
            let bound = BUCKETS.get(i).copied().unwrap_or(f64::INFINITY);
            *slot = (bound, self.inner.buckets[i].load(Ordering::Relaxed));
        }
        let count = buckets.iter().map(|(_, c)| c).sum();
        let sum = self.inner.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}
