//! The sidecar's xDS side: an ADS client ([`client`]) that subscribes to the subset in
//! docs/XDS.md, translation of xDS resources into typed config ([`translate`], [`routes`]),
//! and the accepted-state bookkeeping that turns them into a live snapshot ([`state`]).

pub(crate) mod client;
pub(crate) mod faults;
pub(crate) mod health;
pub(crate) mod ratelimit;
pub(crate) mod resilience;
pub(crate) mod routes;
pub(crate) mod security;
pub(crate) mod state;
pub(crate) mod tcp;
pub(crate) mod translate;

/// Type URLs of the four resource types Trellis uses.
pub(crate) const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub(crate) const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub(crate) const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub(crate) const ENDPOINT_TYPE: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// Short names used in metrics labels and the config dump.
pub(crate) fn short_type(type_url: &str) -> &'static str {
    match type_url {
        LISTENER_TYPE => "listener",
        CLUSTER_TYPE => "cluster",
        ROUTE_TYPE => "route",
        ENDPOINT_TYPE => "endpoint",
        _ => "other",
    }
}
