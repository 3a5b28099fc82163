//! Raw TCP connection metrics (services with `protocol: tcp`): touched once per connection and
//! once per finished copy, never per byte.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::Direction;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabels {
    direction: &'static str,
    service: Arc<str>,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    direction: &'static str,
    service: Arc<str>,
    /// `to_upstream` (toward the app, or the peer sidecar) or `to_downstream`.
    flow: &'static str,
}

/// Why a TCP connection ended up where it did (the `result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TcpResult {
    /// Connected to the upstream (outbound: a peer sidecar; inbound: the app).
    Forwarded,
    /// Inbound: an authorization policy denied the caller; closed before reaching the app.
    Denied,
    /// Inbound: no inbound config yet, or the service is not TCP.
    NotReady,
    /// Inbound: the service is HTTP: raw streams are refused.
    NotTcp,
    /// Outbound: the upstream's service is not known (no cluster of that name).
    UnknownService,
    /// Outbound: the cluster has no endpoints.
    NoEndpoints,
    /// Outbound: an endpoint serves mTLS and this sidecar has no certificate.
    NoIdentity,
    /// Every connect attempt failed (the peer sidecar, or the app).
    ConnectFailed,
}

impl TcpResult {
    pub fn as_str(self) -> &'static str {
        match self {
            TcpResult::Forwarded => "forwarded",
            TcpResult::Denied => "denied",
            TcpResult::NotReady => "not_ready",
            TcpResult::NotTcp => "not_tcp",
            TcpResult::UnknownService => "unknown_service",
            TcpResult::NoEndpoints => "no_endpoints",
            TcpResult::NoIdentity => "no_identity",
            TcpResult::ConnectFailed => "connect_failed",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct TcpMetrics {
    connections: Family<ConnectionLabels, Counter>,
    bytes: Family<BytesLabels, Counter>,
}

impl TcpMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let connections = Family::<ConnectionLabels, Counter>::default();
        let bytes = Family::<BytesLabels, Counter>::default();
        registry.register(
            "trellis_tcp_connections",
            "Raw TCP connections (protocol: tcp), by direction, service and result",
            connections.clone(),
        );
        registry.register(
            "trellis_tcp_bytes",
            "Bytes copied on raw TCP connections once they ended, by direction, service and flow",
            bytes.clone(),
        );
        TcpMetrics { connections, bytes }
    }

    pub fn connection(&self, direction: Direction, service: &Arc<str>, result: TcpResult) {
        self.connections
            .get_or_create(&ConnectionLabels {
                direction: direction.as_str(),
                service: service.clone(),
                result: result.as_str(),
            })
            .inc();
    }

    /// Bytes copied on one finished connection.
    pub fn copied(&self, direction: Direction, service: &Arc<str>, up: u64, down: u64) {
        for (flow, n) in [("to_upstream", up), ("to_downstream", down)] {
            self.bytes
                .get_or_create(&BytesLabels {
                    direction: direction.as_str(),
                    service: service.clone(),
                    flow,
                })
                .inc_by(n);
        }
    }
}
