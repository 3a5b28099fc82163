//! Names shared by the control plane and the sidecar on the xDS wire (docs/XDS.md).
//! Constants only: both sides must agree on them.

/// The outbound listener and its RouteConfiguration.
pub const OUTBOUND: &str = "outbound";
/// The inbound listener.
pub const INBOUND: &str = "inbound";
/// Extension name of the Peak-EWMA load-balancing policy, and the type URL inside its
/// `xds.type.v3.TypedStruct` wrapper (docs/XDS.md).
pub const PEAK_EWMA_NAME: &str = "trellis.peak_ewma";
pub const PEAK_EWMA_TYPE_URL: &str = "type.googleapis.com/trellis.lb.v1.PeakEwma";
/// `filter_metadata` key on endpoints.
pub const METADATA_NAMESPACE: &str = "trellis";

/// Node metadata keys.
pub const NODE_SERVICE: &str = "TRELLIS_SERVICE";
pub const NODE_INSTANCE_ID: &str = "TRELLIS_INSTANCE_ID";
pub const NODE_APP_PORT: &str = "TRELLIS_APP_PORT";
pub const NODE_OUTBOUND_PORT: &str = "TRELLIS_OUTBOUND_PORT";
pub const NODE_INBOUND_PORT: &str = "TRELLIS_INBOUND_PORT";

/// Cluster name of a service, or of one of its subsets: `catalog`, `catalog|v1`.
pub fn cluster_name(service: &str, subset: Option<&str>) -> String {
    match subset {
        Some(s) => format!("{service}|{s}"),
        None => service.to_string(),
    }
}

/// The cluster for the local app behind a sidecar's inbound listener.
pub fn inbound_cluster_name(app_port: u16) -> String {
    format!("inbound|{app_port}")
}
