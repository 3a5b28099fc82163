//! Connection lifecycle metrics: connections closed by an idle timeout, the open pooled mTLS
//! connections to other sidecars, and access log records dropped. Touched per connection or
//! per dropped record, never per request.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Direction;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IdleLabels {
    direction: &'static str,
    protocol: &'static str,
}

#[derive(Debug, Clone)]
pub(crate) struct ConnMetrics {
    idle: Family<IdleLabels, Counter>,
    /// Open HTTP/2 mTLS connections to peer sidecars (the outbound pools).
    pub mtls_upstream_open: Gauge,
    /// Access log records dropped because the writer fell behind.
    pub access_log_dropped: Counter,
}

impl ConnMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let m = ConnMetrics {
            idle: Family::default(),
            mtls_upstream_open: Gauge::default(),
            access_log_dropped: Counter::default(),
        };
        registry.register(
            "trellis_idle_timeouts",
            "Connections closed after their idle timeout, by direction (outbound: this \
             sidecar's pooled connection to a peer; inbound: a caller's connection to the \
             inbound listener) and protocol (http, tcp)",
            m.idle.clone(),
        );
        registry.register(
            "trellis_mtls_upstream_connections",
            "Open HTTP/2 mTLS connections from this sidecar to peer sidecars",
            m.mtls_upstream_open.clone(),
        );
        registry.register(
            "trellis_access_log_dropped",
            "Access log records dropped because the writer could not keep up",
            m.access_log_dropped.clone(),
        );
        m
    }

    /// One connection closed by its idle timeout.
    pub fn idle_timeout(&self, direction: Direction, protocol: &'static str) {
        self.idle
            .get_or_create(&IdleLabels {
                direction: direction.as_str(),
                protocol,
            })
            .inc();
    }
}
