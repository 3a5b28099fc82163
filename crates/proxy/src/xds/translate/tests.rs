use std::collections::HashMap;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbConfig, LbPolicy, RingHashLbConfig,
};
use envoy_types::pb::envoy::config::cluster::v3::load_balancing_policy::Policy;
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, LoadBalancingPolicy};
use envoy_types::pb::envoy::config::core::v3::{
    Address, HealthStatus, Locality, Metadata, SocketAddress, TypedExtensionConfig, address,
    socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as PbEndpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::{
    ConnectionProperties, PolicySpecifier,
};
use envoy_types::pb::envoy::config::route::v3::route_action::{ClusterSpecifier, HashPolicy};
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::weighted_cluster::ClusterWeight;
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::{
    Any, Duration as PbDuration, Struct, UInt32Value, UInt64Value, Value, value,
};
use envoy_types::util::pack_any;
use http::{HeaderMap, HeaderValue, Method};
use prost::Name;

use super::*;
use crate::xds::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, routes};

#[test]
fn type_urls_match_envoy_types() {
    assert_eq!(LISTENER_TYPE, Listener::type_url());
    assert_eq!(CLUSTER_TYPE, Cluster::type_url());
    assert_eq!(ROUTE_TYPE, RouteConfiguration::type_url());
    assert_eq!(ENDPOINT_TYPE, ClusterLoadAssignment::type_url());
}

fn eds_cluster(name: &str, policy: LbPolicy) -> Cluster {
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig::default()),
        connect_timeout: Some(PbDuration {
            seconds: 0,
            nanos: 250_000_000,
        }),
        lb_policy: policy as i32,
        ..Default::default()
    }
}

#[test]
fn clusters_translate_algorithms() {
    let mut ring = eds_cluster("ring", LbPolicy::RingHash);
    ring.lb_config = Some(LbConfig::RingHashLbConfig(RingHashLbConfig {
        minimum_ring_size: Some(UInt64Value { value: 2048 }),
        ..Default::default()
    }));
    let mut ewma = eds_cluster("ewma", LbPolicy::LeastRequest);
    ewma.load_balancing_policy = Some(LoadBalancingPolicy {
        policies: vec![Policy {
            typed_extension_config: Some(TypedExtensionConfig {
                name: wire::PEAK_EWMA_NAME.to_string(),
                typed_config: Some(Any {
                    type_url: wire::PEAK_EWMA_TYPE_URL.to_string(),
                    value: vec![],
                }),
            }),
        }],
    });
    let resources = vec![
        pack_any(eds_cluster("rr", LbPolicy::RoundRobin)),
        pack_any(eds_cluster("random", LbPolicy::Random)),
        pack_any(eds_cluster("lr", LbPolicy::LeastRequest)),
        pack_any(eds_cluster("maglev", LbPolicy::Maglev)),
        pack_any(ring),
        pack_any(ewma),
    ];
    let got = clusters(&resources).expect("valid clusters");
    let algs: Vec<(&str, &Algorithm)> = got
        .iter()
        .map(|c| (c.name.as_str(), &c.algorithm))
        .collect();
    assert_eq!(
        algs,
        vec![
            ("rr", &Algorithm::RoundRobin),
            ("random", &Algorithm::Random),
            ("lr", &Algorithm::LeastRequest),
            ("maglev", &Algorithm::Maglev { table_size: 65537 }),
            (
                "ring",
                &Algorithm::RingHash {
                    min_ring_size: 2048
                }
            ),
            (
                "ewma",
                &Algorithm::PeakEwma {
                    decay: PEAK_EWMA_DECAY
                }
            ),
        ]
    );
    assert_eq!(got[0].connect_timeout, Duration::from_millis(250));
    assert_eq!(got[0].endpoints, EndpointSource::Eds("rr".to_string()));
}

#[test]
fn invalid_clusters_are_all_named() {
    let mut provided = eds_cluster("bad-policy", LbPolicy::ClusterProvided);
    provided.lb_policy = LbPolicy::ClusterProvided as i32;
    let mut dns = eds_cluster("dns", LbPolicy::RoundRobin);
    dns.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32));
    let mut zero = eds_cluster("zero-timeout", LbPolicy::RoundRobin);
    zero.connect_timeout = Some(PbDuration::default());
    let resources = vec![
        pack_any(eds_cluster("fine", LbPolicy::RoundRobin)),
        pack_any(provided),
        pack_any(dns),
        pack_any(zero),
    ];
    let err = clusters(&resources).expect_err("must be rejected");
    assert!(
        err.contains("Cluster `bad-policy`: lb_policy CLUSTER_PROVIDED"),
        "{err}"
    );
    assert!(
        err.contains("Cluster `dns`: discovery type STRICT_DNS"),
        "{err}"
    );
    assert!(
        err.contains("Cluster `zero-timeout`: connect_timeout"),
        "{err}"
    );
    assert!(!err.contains("fine"), "{err}");
}

#[test]
fn wrong_type_url_is_rejected() {
    let err = clusters(&[pack_any(RouteConfiguration::default())]).expect_err("wrong type");
    assert!(err.contains("RouteConfiguration"), "{err}");
}

fn lb_endpoint(ip: &str, port: u32, weight: u32, id: &str, health: HealthStatus) -> LbEndpoint {
    let mut fields = HashMap::new();
    fields.insert(
        "instance_id".to_string(),
        Value {
            kind: Some(value::Kind::StringValue(id.to_string())),
        },
    );
    let mut filter_metadata = HashMap::new();
    filter_metadata.insert(wire::METADATA_NAMESPACE.to_string(), Struct { fields });
    LbEndpoint {
        health_status: health as i32,
        metadata: Some(Metadata {
            filter_metadata,
            ..Default::default()
        }),
        load_balancing_weight: Some(UInt32Value { value: weight }),
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(PbEndpoint {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: ip.to_string(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        })),
    }
}

fn cla(name: &str, eps: Vec<LbEndpoint>) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: vec![LocalityLbEndpoints {
            locality: Some(Locality {
                zone: "z1".to_string(),
                ..Default::default()
            }),
            lb_endpoints: eps,
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[test]
fn load_assignments_keep_usable_endpoints() {
    let resources = vec![pack_any(cla(
        "catalog",
        vec![
            lb_endpoint("127.0.0.1", 41000, 3, "catalog-a", HealthStatus::Healthy),
            lb_endpoint("127.0.0.1", 41001, 1, "catalog-b", HealthStatus::Unhealthy),
        ],
    ))];
    let got = load_assignments(&resources).expect("valid");
    assert_eq!(
        got,
        vec![(
            "catalog".to_string(),
            Assignment {
                endpoints: vec![Endpoint {
                    mtls: false,
                    addr: "127.0.0.1:41000".parse().expect("addr"),
                    weight: 3,
                    id: "catalog-a".to_string(),
                    zone: Some("z1".to_string()),
                    priority: 0,
                }],
                overprovisioning: DEFAULT_OVERPROVISIONING,
            }
        )]
    );
}

#[test]
fn bad_endpoints_are_rejected() {
    let resources = vec![
        pack_any(cla(
            "host",
            vec![lb_endpoint(
                "example.com",
                80,
                1,
                "x",
                HealthStatus::Healthy,
            )],
        )),
        pack_any(cla(
            "port",
            vec![lb_endpoint(
                "127.0.0.1",
                70000,
                1,
                "y",
                HealthStatus::Healthy,
            )],
        )),
    ];
    let err = load_assignments(&resources).expect_err("invalid");
    assert!(
        err.contains("ClusterLoadAssignment `host`: endpoint address `example.com`"),
        "{err}"
    );
    assert!(err.contains("ClusterLoadAssignment `port`"), "{err}");
}

fn route_to(name: &str, path: PathSpecifier, cluster: ClusterSpecifier) -> Route {
    Route {
        name: name.to_string(),
        r#match: Some(RouteMatch {
            path_specifier: Some(path),
            ..Default::default()
        }),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(cluster),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn outbound(routes: Vec<Route>) -> RouteConfiguration {
    RouteConfiguration {
        name: "outbound".to_string(),
        virtual_hosts: vec![VirtualHost {
            name: "catalog".to_string(),
            domains: vec!["catalog".to_string(), "catalog:*".to_string()],
            routes,
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[test]
fn routes_translate() {
    let mut canary = route_to(
        "canary",
        PathSpecifier::PathSeparatedPrefix("/api".to_string()),
        ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: vec![
                ClusterWeight {
                    name: "catalog|v1".to_string(),
                    weight: Some(UInt32Value { value: 80 }),
                    ..Default::default()
                },
                ClusterWeight {
                    name: "catalog|v2".to_string(),
                    weight: Some(UInt32Value { value: 20 }),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }),
    );
    if let Some(m) = canary.r#match.as_mut() {
        m.headers = vec![
            HeaderMatcher {
                name: ":method".to_string(),
                header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
                    match_pattern: Some(string_matcher::MatchPattern::Exact("GET".to_string())),
                    ignore_case: false,
                })),
                ..Default::default()
            },
            HeaderMatcher {
                name: "x-user".to_string(),
                header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
                    match_pattern: Some(string_matcher::MatchPattern::SafeRegex(RegexMatcher {
                        regex: "b.*".to_string(),
                        ..Default::default()
                    })),
                    ignore_case: false,
                })),
                ..Default::default()
            },
        ];
    }
    let mut default = route_to(
        "default",
        PathSpecifier::Prefix("/".to_string()),
        ClusterSpecifier::Cluster("catalog".to_string()),
    );
    if let Some(Action::Route(a)) = default.action.as_mut() {
        a.hash_policy = vec![HashPolicy {
            policy_specifier: Some(PolicySpecifier::ConnectionProperties(
                ConnectionProperties { source_ip: true },
            )),
            terminal: false,
        }];
    }
    let tables =
        routes::route_configs(&[pack_any(outbound(vec![canary, default]))]).expect("valid");
    let (name, table) = &tables[0];
    assert_eq!(name, "outbound");
    let (_, vh) = table.find("catalog:9000").expect("vhost");
    let mut h = HeaderMap::new();
    h.insert("x-user", HeaderValue::from_static("bob"));
    let r = vh.route(&Method::GET, "/api/items", &h).expect("route");
    assert_eq!(r.name, "canary");
    assert_eq!(r.action.total_weight, 100);
    assert_eq!(&**r.action.pick_cluster(79), "catalog|v1");
    assert_eq!(&**r.action.pick_cluster(80), "catalog|v2");
    let r = vh.route(&Method::POST, "/api/items", &h).expect("route");
    assert_eq!(r.name, "default");
    assert_eq!(r.action.hash, Some(crate::routing::HashPolicy::SourceIp));
    h.insert("x-user", HeaderValue::from_static("alice"));
    assert_eq!(
        vh.route(&Method::GET, "/api", &h).map(|r| r.name.as_str()),
        Some("default")
    );
}

#[test]
fn invalid_routes_name_the_route() {
    let bad_regex = route_to(
        "broken",
        PathSpecifier::SafeRegex(RegexMatcher {
            regex: "/users/(".to_string(),
            ..Default::default()
        }),
        ClusterSpecifier::Cluster("catalog".to_string()),
    );
    let zero = route_to(
        "zero",
        PathSpecifier::Prefix("/".to_string()),
        ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: vec![ClusterWeight {
                name: "catalog".to_string(),
                weight: Some(UInt32Value { value: 0 }),
                ..Default::default()
            }],
            ..Default::default()
        }),
    );
    for (route, want) in [
        (
            bad_regex,
            "route `broken`: safe_regex `/users/(` is invalid",
        ),
        (zero, "route `zero`: weighted_clusters weights sum to 0"),
    ] {
        let err = routes::route_configs(&[pack_any(outbound(vec![route]))]).expect_err("invalid");
        assert!(
            err.contains("RouteConfiguration `outbound` virtual host `catalog`")
                && err.contains(want),
            "{err}"
        );
    }
}

#[test]
fn static_cluster_carries_its_endpoints() {
    let c = Cluster {
        name: "inbound|8080".to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        load_assignment: Some(cla(
            "inbound|8080",
            vec![lb_endpoint(
                "127.0.0.1",
                8080,
                1,
                "app",
                HealthStatus::Healthy,
            )],
        )),
        ..Default::default()
    };
    let got = cluster(&c).expect("valid");
    assert_eq!(got.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
    match got.endpoints {
        EndpointSource::Static(eps) => assert_eq!(eps.len(), 1),
        other => panic!("expected static endpoints, got {other:?}"),
    }
}

#[test]
fn priorities_and_the_overprovisioning_factor_are_read() {
    use envoy_types::pb::envoy::config::endpoint::v3::cluster_load_assignment::Policy as ClaPolicy;
    let mut a = cla(
        "catalog",
        vec![lb_endpoint(
            "127.0.0.1",
            41000,
            1,
            "local",
            HealthStatus::Healthy,
        )],
    );
    let mut remote = a.endpoints[0].clone();
    remote.priority = 1;
    remote.locality = Some(Locality {
        zone: "z2".into(),
        ..Default::default()
    });
    if let Some(lbe) = remote.lb_endpoints.first_mut() {
        *lbe = lb_endpoint("127.0.0.1", 41001, 1, "remote", HealthStatus::Healthy);
    }
    a.endpoints.push(remote);
    a.policy = Some(ClaPolicy {
        overprovisioning_factor: Some(UInt32Value { value: 143 }),
        ..Default::default()
    });
    let got = load_assignments(&[pack_any(a.clone())]).expect("valid");
    let (_, assignment) = &got[0];
    assert_eq!(assignment.overprovisioning, 143);
    let prios: Vec<(&str, u32)> = assignment
        .endpoints
        .iter()
        .map(|e| (e.id.as_str(), e.priority))
        .collect();
    assert_eq!(prios, [("local", 0), ("remote", 1)]);
    // Without a policy: Envoy's 140.
    a.policy = None;
    let got = load_assignments(&[pack_any(a.clone())]).expect("valid");
    assert_eq!(got[0].1.overprovisioning, 140);
    a.policy = Some(ClaPolicy {
        overprovisioning_factor: Some(UInt32Value { value: 0 }),
        ..Default::default()
    });
    let err = load_assignments(&[pack_any(a)]).expect_err("zero factor");
    assert!(
        err.contains("ClusterLoadAssignment `catalog`: policy.overprovisioning_factor = 0"),
        "{err}"
    );
}
