//! Mesh snapshot → Envoy xDS v3 resources for one proxy (docs/XDS.md). Pure functions: no I/O,
//! and the same snapshot and node always give the same resources.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use envoy_types::pb::envoy::config::cluster::v3::{
    Cluster, LoadBalancingPolicy,
    cluster::{
        ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbConfig, LbPolicy,
        LeastRequestLbConfig, MaglevLbConfig, RingHashLbConfig,
    },
    load_balancing_policy::Policy,
};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, HealthStatus, Http1ProtocolOptions,
    Http2ProtocolOptions, HttpProtocolOptions as CommonHttpProtocolOptions, Locality, Metadata,
    SocketAddress, TypedExtensionConfig, address, config_source::ConfigSourceSpecifier,
    socket_address::PortSpecifier,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints,
    cluster_load_assignment::Policy as ClaPolicy, lb_endpoint::HostIdentifier,
};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, Listener, filter::ConfigType,
};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds,
    http_connection_manager::{CodecType, RouteSpecifier},
    http_filter,
};
use envoy_types::pb::envoy::extensions::load_balancing_policies::least_request::v3::LeastRequest;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions,
    http_protocol_options::{
        ExplicitHttpConfig, UpstreamProtocolOptions, explicit_http_config::ProtocolConfig,
    },
};
use envoy_types::pb::google::protobuf::{
    Any, Duration, Struct, UInt32Value, UInt64Value, Value, value::Kind,
};
use envoy_types::util::pack_any;
use trellis_model::{Algorithm, LoadBalancer, LocalityFailover, Protocol, TrafficPolicySpec, wire};

use super::faults;
use super::health;
pub use super::node::NodeInfo;
use super::ratelimit;
use super::resilience;
pub use super::resources::{
    CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, Resources, same_content, short_name,
};
use super::routes::outbound_route_config;
use super::security;
use super::tcp;
use crate::snapshot::{Endpoint, MeshSnapshot, ServiceView};

pub const HCM_FILTER: &str = "envoy.filters.network.http_connection_manager";
pub const ROUTER_FILTER: &str = "envoy.filters.http.router";
pub const LEAST_REQUEST_POLICY: &str = "envoy.load_balancing_policies.least_request";
/// Key of the upstream HTTP protocol options in `Cluster.typed_extension_protocol_options`.
pub const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
pub const DEFAULT_RING_SIZE: u64 = 1024;
pub const DEFAULT_MAGLEV_TABLE_SIZE: u64 = 65537;
const CONNECT_TIMEOUT_SECS: i64 = 1;

/// Every resource the proxy `node` may subscribe to, given the mesh `snapshot`.
pub fn resources_for(snapshot: &MeshSnapshot, node: &NodeInfo) -> Resources {
    let mut out = Resources::default();

    out.insert(
        LISTENER_TYPE,
        wire::OUTBOUND.to_string(),
        pack_any(outbound_listener(node)),
    );
    if let Some(port) = node.app_port {
        let own = snapshot.services.get(&node.service);
        if let Some(listener) = inbound_listener(node, port, own) {
            out.insert(LISTENER_TYPE, wire::INBOUND.to_string(), pack_any(listener));
        }
        // The app speaks what its service speaks (as declared or registered).
        let protocol = own.map(upstream_protocol).unwrap_or_default();
        let inbound = inbound_cluster(port, protocol);
        out.insert(CLUSTER_TYPE, inbound.name.clone(), pack_any(inbound));
    }

    out.insert(
        ROUTE_TYPE,
        wire::OUTBOUND.to_string(),
        pack_any(outbound_route_config(snapshot)),
    );

    for (service, subset) in eds_clusters(snapshot) {
        let view = snapshot.services.get(&service);
        let name = wire::cluster_name(&service, subset.as_deref());
        let policy = view.and_then(|v| v.policy.as_ref());
        let lb = policy.map(|p| p.load_balancer.clone()).unwrap_or_default();
        let protocol = view.map(upstream_protocol).unwrap_or_default();
        let mut cluster = eds_cluster(&name, &lb, protocol, policy);
        let mtls = node.identity.is_some();
        cluster.health_checks =
            health::health_checks(policy, health::checks_over_h2(protocol, mtls));
        if node.identity.is_some() {
            let alpn = match protocol {
                Protocol::Tcp => &[wire::MTLS_TCP_ALPN][..],
                _ => wire::MTLS_CLIENT_ALPN,
            };
            cluster.transport_socket_matches =
                security::upstream_tls_matches(&service, &snapshot.spiffe_id(&service), alpn);
        }
        out.insert(CLUSTER_TYPE, name.clone(), pack_any(cluster));
        let endpoints = view
            .map(|v| subset_endpoints(v, subset.as_deref()))
            .unwrap_or_default();
        out.insert(
            ENDPOINT_TYPE,
            name.clone(),
            pack_any(load_assignment(
                &name,
                &endpoints,
                lb.algorithm,
                node.zone
                    .as_deref()
                    .zip(health::locality(policy, node.zone.as_deref())),
            )),
        );
    }

    out.sort();
    out
}

/// `(service, subset)` of every EDS cluster: each service, plus every cluster an HTTPRoute
/// backend references (a subset, or a service not otherwise known, which gets no endpoints),
/// so that the route configuration never names a missing cluster.
fn eds_clusters(snapshot: &MeshSnapshot) -> BTreeSet<(String, Option<String>)> {
    let mut set: BTreeSet<(String, Option<String>)> = snapshot
        .services
        .keys()
        .map(|s| (s.clone(), None))
        .collect();
    for view in snapshot.services.values() {
        for route in &view.routes {
            for rule in &route.spec.rules {
                for b in &rule.backend_refs {
                    set.insert((b.name.clone(), b.subset.clone()));
                }
            }
        }
    }
    set
}

/// The service's endpoints, or those of one subset: instances whose labels include all of the
/// subset's labels. An undeclared subset selects nothing.
fn subset_endpoints<'a>(view: &'a ServiceView, subset: Option<&str>) -> Vec<&'a Endpoint> {
    let Some(subset) = subset else {
        return view.endpoints.iter().collect();
    };
    let Some(def) = view
        .declared
        .as_ref()
        .and_then(|d| d.subsets.iter().find(|s| s.name == subset))
    else {
        return Vec::new();
    };
    view.endpoints
        .iter()
        .filter(|e| def.labels.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
        .collect()
}

/// The protocol callers speak to a service's instances (their sidecars' inbound listeners,
/// which accept HTTP/1.1 and h2c): TCP when the Service declares `tcp` (or, without a Service
/// resource, an instance registered as `tcp`); HTTP/2 when the Service declares `http2` or
/// `grpc` or any instance registered as such (gRPC needs HTTP/2 end to end), else HTTP/1.1.
pub fn upstream_protocol(view: &ServiceView) -> Protocol {
    let declared = view.declared.as_ref().map(|d| d.protocol);
    let registered_tcp = || view.endpoints.iter().any(|e| e.protocol == Protocol::Tcp);
    if declared == Some(Protocol::Tcp) || (declared.is_none() && registered_tcp()) {
        return Protocol::Tcp;
    }
    let h2 = |p: Protocol| matches!(p, Protocol::Http2 | Protocol::Grpc);
    if let Some(p) = declared.filter(|p| h2(*p)) {
        return p;
    }
    view.endpoints
        .iter()
        .map(|e| e.protocol)
        .find(|p| h2(*p))
        .unwrap_or(Protocol::Http)
}

/// `typed_extension_protocol_options` pinning the upstream HTTP version: explicit HTTP/2 for
/// `http2` and `grpc`, explicit HTTP/1.1 for `http`, none for `tcp` (no HTTP upstream).
fn protocol_options(
    protocol: Protocol,
    idle_timeout: Option<Duration>,
) -> std::collections::HashMap<String, Any> {
    let config = match protocol {
        Protocol::Tcp => return Default::default(),
        Protocol::Http => ProtocolConfig::HttpProtocolOptions(Http1ProtocolOptions::default()),
        Protocol::Http2 | Protocol::Grpc => {
            ProtocolConfig::Http2ProtocolOptions(Http2ProtocolOptions::default())
        }
    };
    let options = HttpProtocolOptions {
        common_http_protocol_options: idle_timeout.map(|idle| CommonHttpProtocolOptions {
            idle_timeout: Some(idle),
            ..Default::default()
        }),
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(config),
            },
        )),
        ..Default::default()
    };
    [(HTTP_PROTOCOL_OPTIONS.to_string(), pack_any(options))].into()
}

fn socket_address(ip: IpAddr, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

fn ads_config_source() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

/// The HttpConnectionManager network filter: `http_filters` then the router.
/// `idle_timeout`: the downstream connections' (`common_http_protocol_options.idle_timeout`);
/// `None` leaves Envoy's default (1h).
fn hcm_filter(
    name: &str,
    route: RouteSpecifier,
    mut http_filters: Vec<HttpFilter>,
    idle_timeout: Option<Duration>,
) -> Filter {
    http_filters.push(HttpFilter {
        name: ROUTER_FILTER.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
            Router::default(),
        ))),
        ..Default::default()
    });
    let hcm = HttpConnectionManager {
        stat_prefix: name.to_string(),
        codec_type: CodecType::Auto as i32,
        route_specifier: Some(route),
        http_filters,
        common_http_protocol_options: idle_timeout.map(|idle| CommonHttpProtocolOptions {
            idle_timeout: Some(idle),
            ..Default::default()
        }),
        ..Default::default()
    };
    Filter {
        name: HCM_FILTER.to_string(),
        config_type: Some(ConfigType::TypedConfig(pack_any(hcm))),
    }
}

fn outbound_listener(node: &NodeInfo) -> Listener {
    let route = RouteSpecifier::Rds(Rds {
        config_source: Some(ads_config_source()),
        route_config_name: wire::OUTBOUND.to_string(),
    });
    Listener {
        name: wire::OUTBOUND.to_string(),
        address: Some(socket_address(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            node.outbound_port,
        )),
        filter_chains: vec![FilterChain {
            filters: vec![hcm_filter(
                wire::OUTBOUND,
                route,
                vec![faults::fault_filter()],
                None,
            )],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The inbound listener: filter chains per the service's mTLS mode, the policies' filters, an
/// inline route to the app (for a TCP service: RBAC filters and tcp_proxy to the app, see
/// [`tcp`]). `None` when the node must not get one (see [`security::inbound_chains`]).
fn inbound_listener(node: &NodeInfo, app_port: u16, own: Option<&ServiceView>) -> Option<Listener> {
    let mode = security::mtls_mode(own);
    let has_identity = node.identity.is_some();
    let (filters, alpn) = match own {
        Some(view) if upstream_protocol(view) == Protocol::Tcp => (
            tcp::inbound_filters(
                &view.authorization,
                &wire::inbound_cluster_name(app_port),
                resilience::idle_timeout(view.policy.as_ref()),
            ),
            &[wire::MTLS_TCP_ALPN][..],
        ),
        _ => (vec![inbound_hcm(app_port, own)], wire::MTLS_SERVER_ALPN),
    };
    let (listener_filters, filter_chains) =
        security::inbound_chains(mode, has_identity, filters, alpn)?;
    Some(Listener {
        name: wire::INBOUND.to_string(),
        address: Some(socket_address(
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            node.inbound_port,
        )),
        listener_filters,
        filter_chains,
        ..Default::default()
    })
}

/// The inbound HttpConnectionManager: the policy filters, an inline route to the app.
fn inbound_hcm(app_port: u16, own: Option<&ServiceView>) -> Filter {
    let route = RouteConfiguration {
        name: wire::INBOUND.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: wire::INBOUND.to_string(),
            domains: vec!["*".to_string()],
            routes: ratelimit::inbound_routes(own, &wire::inbound_cluster_name(app_port)),
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut filters = security::policy_filters(own);
    filters.extend(ratelimit::rate_limit_filter(own));
    let idle = resilience::idle_timeout(own.and_then(|v| v.policy.as_ref()));
    hcm_filter(
        wire::INBOUND,
        RouteSpecifier::RouteConfig(route),
        filters,
        idle,
    )
}

fn connect_timeout() -> Option<Duration> {
    Some(Duration {
        seconds: CONNECT_TIMEOUT_SECS,
        nanos: 0,
    })
}

fn inbound_cluster(app_port: u16, protocol: Protocol) -> Cluster {
    let name = wire::inbound_cluster_name(app_port);
    let endpoint = LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
            address: Some(socket_address(IpAddr::V4(Ipv4Addr::LOCALHOST), app_port)),
            ..Default::default()
        })),
        health_status: HealthStatus::Healthy as i32,
        ..Default::default()
    };
    Cluster {
        name: name.clone(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        typed_extension_protocol_options: protocol_options(protocol, None),
        connect_timeout: connect_timeout(),
        lb_policy: LbPolicy::RoundRobin as i32,
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name,
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![endpoint],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn eds_cluster(
    name: &str,
    lb: &LoadBalancer,
    protocol: Protocol,
    policy: Option<&TrafficPolicySpec>,
) -> Cluster {
    let mut cluster = Cluster {
        name: name.to_string(),
        typed_extension_protocol_options: protocol_options(
            protocol,
            resilience::idle_timeout(policy),
        ),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads_config_source()),
            service_name: String::new(),
        }),
        connect_timeout: connect_timeout(),
        ..Default::default()
    };
    let policy_spec = policy;
    let (policy, config) = match lb.algorithm {
        Algorithm::RoundRobin | Algorithm::Weighted => (LbPolicy::RoundRobin, None),
        Algorithm::Random => (LbPolicy::Random, None),
        Algorithm::LeastRequest => (
            LbPolicy::LeastRequest,
            Some(LbConfig::LeastRequestLbConfig(LeastRequestLbConfig {
                choice_count: Some(UInt32Value { value: 2 }),
                ..Default::default()
            })),
        ),
        Algorithm::PeakEwma => {
            cluster.load_balancing_policy = Some(peak_ewma_policy());
            (LbPolicy::LeastRequest, None)
        }
        Algorithm::RingHash => (
            LbPolicy::RingHash,
            Some(LbConfig::RingHashLbConfig(RingHashLbConfig {
                minimum_ring_size: Some(UInt64Value {
                    value: lb.ring_size.unwrap_or(DEFAULT_RING_SIZE),
                }),
                ..Default::default()
            })),
        ),
        Algorithm::Maglev => (
            LbPolicy::Maglev,
            Some(LbConfig::MaglevLbConfig(MaglevLbConfig {
                table_size: Some(UInt64Value {
                    value: lb.table_size.unwrap_or(DEFAULT_MAGLEV_TABLE_SIZE),
                }),
            })),
        ),
    };
    cluster.lb_policy = policy as i32;
    cluster.lb_config = config;
    resilience::apply_to_cluster(&mut cluster, policy_spec);
    cluster
}

/// Type URL of `xds.type.v3.TypedStruct`, the standard wrapper for an extension's config whose
/// proto the receiver may not know.
pub const TYPED_STRUCT_TYPE_URL: &str = wire::TYPED_STRUCT_TYPE_URL;

/// `xds.type.v3.TypedStruct` (envoy-types does not generate it): the extension's own type URL
/// plus its config as a `Struct`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TypedStruct {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<Struct>,
}

/// Peak EWMA first (the Trellis sidecar uses it), least request second (what Envoy, which
/// skips the unknown first entry, falls back to). The Peak EWMA config travels as a
/// `TypedStruct` naming `trellis.lb.v1.PeakEwma`: Envoy finds no factory for that type and skips
/// the entry, and, unlike a bare `Any` of an unknown type, can still render it in its admin
/// `/config_dump`.
fn peak_ewma_policy() -> LoadBalancingPolicy {
    let typed_struct = TypedStruct {
        type_url: wire::PEAK_EWMA_TYPE_URL.to_string(),
        value: Some(Struct::default()),
    };
    LoadBalancingPolicy {
        policies: vec![
            Policy {
                typed_extension_config: Some(TypedExtensionConfig {
                    name: wire::PEAK_EWMA_NAME.to_string(),
                    typed_config: Some(Any {
                        type_url: TYPED_STRUCT_TYPE_URL.to_string(),
                        value: prost::Message::encode_to_vec(&typed_struct),
                    }),
                }),
            },
            Policy {
                typed_extension_config: Some(TypedExtensionConfig {
                    name: LEAST_REQUEST_POLICY.to_string(),
                    typed_config: Some(pack_any(LeastRequest::default())),
                }),
            },
        ],
    }
}

/// One `LocalityLbEndpoints` per zone (instances without a zone share the empty zone), in
/// zone order; endpoints keep the snapshot's instance-id order. With `locality` (the caller's
/// zone and its failover settings), the caller's zone is priority 0 and the others priority
/// 1, and `policy.overprovisioning_factor` says when traffic spills; when the caller's zone
/// has no endpoint, every zone is priority 0 (priorities stay contiguous, as Envoy wants).
fn load_assignment(
    name: &str,
    endpoints: &[&Endpoint],
    algorithm: Algorithm,
    locality: Option<(&str, &LocalityFailover)>,
) -> ClusterLoadAssignment {
    let mut by_zone: BTreeMap<&str, Vec<LbEndpoint>> = BTreeMap::new();
    for e in endpoints {
        let weight = match algorithm {
            Algorithm::Weighted => e.weight.max(1),
            _ => 1,
        };
        by_zone
            .entry(e.zone.as_deref().unwrap_or(""))
            .or_default()
            .push(LbEndpoint {
                host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
                    address: Some(socket_address(e.address, e.port)),
                    ..Default::default()
                })),
                health_status: HealthStatus::Healthy as i32,
                load_balancing_weight: Some(UInt32Value { value: weight }),
                metadata: Some(endpoint_metadata(e)),
            });
    }
    let local = locality.filter(|(zone, _)| by_zone.contains_key(zone));
    ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: by_zone
            .into_iter()
            .map(|(zone, lb_endpoints)| LocalityLbEndpoints {
                priority: local.map_or(0, |(caller, _)| health::priority(caller, zone)),
                locality: Some(Locality {
                    zone: zone.to_string(),
                    ..Default::default()
                }),
                lb_endpoints,
                ..Default::default()
            })
            .collect(),
        policy: locality.map(|(_, l)| ClaPolicy {
            overprovisioning_factor: Some(UInt32Value {
                value: l.overprovisioning_factor(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `filter_metadata["trellis"]`: `instance_id` plus each label as its own string field; and
/// `filter_metadata["envoy.transport_socket_match"] = {tlsMode: "mtls"}` when the instance
/// registered an identity (its sidecar serves mTLS).
fn endpoint_metadata(e: &Endpoint) -> Metadata {
    let string = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_string())),
    };
    let mut fields: std::collections::HashMap<String, Value> = e
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), string(v)))
        .collect();
    fields.insert("instance_id".to_string(), string(&e.instance_id));
    let mut filter_metadata: std::collections::HashMap<String, Struct> =
        [(wire::METADATA_NAMESPACE.to_string(), Struct { fields })].into();
    if e.identity.is_some() {
        filter_metadata.insert(
            wire::TRANSPORT_SOCKET_MATCH.to_string(),
            security::tls_mode_struct(),
        );
    }
    Metadata {
        filter_metadata,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
