//! Names shared by the control plane and the sidecar on the xDS wire (docs/XDS.md).
//! Constants only: both sides must agree on them.

/// The outbound listener and its RouteConfiguration.
pub const OUTBOUND: &str = "outbound";
/// The inbound listener.
pub const INBOUND: &str = "inbound";
/// Extension name of the Peak-EWMA load-balancing policy, and the type URL inside its
/// `xds.type.v3.TypedStruct` wrapper (docs/XDS.md).
pub const PEAK_EWMA_NAME: &str = "trellis.peak_ewma";
/// The retry host predicate that makes retries prefer endpoints not tried yet (Envoy's).
pub const PREVIOUS_HOSTS_PREDICATE: &str = "envoy.retry_host_predicates.previous_hosts";
pub const PEAK_EWMA_TYPE_URL: &str = "type.googleapis.com/trellis.lb.v1.PeakEwma";
/// `filter_metadata` key on endpoints.
pub const METADATA_NAMESPACE: &str = "trellis";

/// Node metadata keys.
pub const NODE_SERVICE: &str = "TRELLIS_SERVICE";
pub const NODE_INSTANCE_ID: &str = "TRELLIS_INSTANCE_ID";
pub const NODE_APP_PORT: &str = "TRELLIS_APP_PORT";
pub const NODE_OUTBOUND_PORT: &str = "TRELLIS_OUTBOUND_PORT";
pub const NODE_INBOUND_PORT: &str = "TRELLIS_INBOUND_PORT";
/// The SPIFFE ID of the proxy's mesh certificate; absent when it holds none.
pub const NODE_IDENTITY: &str = "TRELLIS_IDENTITY";

// ---- Security (docs/XDS.md, "Security") -----------------------------------------------------

/// `filter_metadata` key on endpoints that serve mTLS, and the match key of
/// `transport_socket_matches`.
pub const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";
/// Field of that metadata and of the match, and its value for mTLS endpoints.
pub const TLS_MODE_KEY: &str = "tlsMode";
pub const TLS_MODE_MTLS: &str = "mtls";
/// Names of the transport socket matches (clusters) and filter chains (inbound listener).
pub const MTLS_CHAIN: &str = "mtls";
pub const PLAINTEXT_CHAIN: &str = "plaintext";
/// `filter_chain_match.transport_protocol` values set by the TLS inspector.
pub const TRANSPORT_TLS: &str = "tls";
pub const TRANSPORT_RAW: &str = "raw_buffer";
/// Transport sockets and the listener filter.
pub const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";
pub const RAW_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.raw_buffer";
pub const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";
/// SDS secret names: the proxy's own certificate and the trust bundle (never sent over xDS).
pub const SDS_CERTIFICATE: &str = "default";
pub const SDS_TRUST_BUNDLE: &str = "ROOTCA";
/// ALPN offered by a sidecar's mTLS client; accepted by its mTLS server.
pub const MTLS_CLIENT_ALPN: &[&str] = &["h2"];
pub const MTLS_SERVER_ALPN: &[&str] = &["h2", "http/1.1"];
/// ALPN of a raw TCP stream between sidecars (`protocol: tcp` services): the inbound side
/// serves it as bytes, never as HTTP. Offered alone by the client; the only ALPN of the
/// inbound listener's `mtls` chain for a TCP service.
pub const MTLS_TCP_ALPN: &str = "trellis-tcp";

// ---- TCP (docs/XDS.md, "TCP services") -------------------------------------------------------

/// The network filters of a TCP service's inbound filter chains.
pub const TCP_PROXY_FILTER: &str = "envoy.filters.network.tcp_proxy";
pub const RBAC_NETWORK_FILTER: &str = "envoy.filters.network.rbac";
/// `stat_prefix` of those filters.
pub const TCP_STAT_PREFIX: &str = "inbound_tcp";
/// The inbound HTTP filters carrying the policies, and their TypedStruct type URLs.
pub const AUTHN_FILTER: &str = "trellis.authn";
pub const AUTHZ_FILTER: &str = "trellis.authz";
pub const AUTHN_TYPE_URL: &str = "type.googleapis.com/trellis.security.v1.RequestAuthentications";
pub const AUTHZ_TYPE_URL: &str = "type.googleapis.com/trellis.security.v1.AuthorizationPolicies";
/// Field of those TypedStructs' value holding the list of resources (JSON form, with `kind`).
pub const POLICIES_FIELD: &str = "policies";
/// Type URL of `xds.type.v3.TypedStruct`.
pub const TYPED_STRUCT_TYPE_URL: &str = "type.googleapis.com/xds.type.v3.TypedStruct";

/// The SPIFFE ID of a mesh workload: `spiffe://<trust-domain>/ns/<namespace>/svc/<service>`.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/svc/{service}")
}

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

/// Local rate limits (RateLimitPolicy) on the inbound HttpConnectionManager: the filter, its
/// config type, and the route metadata key (in [`METADATA_NAMESPACE`]) marking a per-source rule.
pub const RATE_LIMIT_FILTER: &str = "envoy.filters.http.local_ratelimit";
pub const RATE_LIMIT_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";
pub const RATE_LIMIT_STAT_PREFIX: &str = "inbound_rate_limit";
pub const RATE_LIMIT_PER_SOURCE: &str = "rateLimitPerSource";
/// Route metadata key marking a global rule (its rate is shared by the service's sidecars).
pub const RATE_LIMIT_GLOBAL: &str = "rateLimitGlobal";
/// The `x-trellis-reason` of a rate-limited request.
pub const RATE_LIMITED_REASON: &str = "rate_limited";

/// Fault injection (TrafficPolicy / HTTPRoute `faults`): Envoy's HTTP fault filter on the
/// outbound HttpConnectionManager, configured per virtual host and route.
pub const FAULT_FILTER: &str = "envoy.filters.http.fault";
pub const FAULT_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
/// The `x-trellis-reason` of an injected abort.
pub const FAULT_ABORT_REASON: &str = "fault_abort";
