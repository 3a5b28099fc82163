use std::collections::HashMap;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, LbPolicy,
};
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::google::protobuf::UInt32Value;
use envoy_types::util::pack_any;

use super::*;
use crate::balance::Algorithm;

fn cluster(name: &str, policy: LbPolicy) -> Any {
    pack_any(Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        lb_policy: policy as i32,
        ..Default::default()
    })
}

fn cla(name: &str, ports: &[(u32, u32)]) -> Any {
    pack_any(ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: ports
                .iter()
                .map(|(port, weight)| LbEndpoint {
                    health_status: 1,
                    load_balancing_weight: Some(UInt32Value { value: *weight }),
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(Address {
                            address: Some(address::Address::SocketAddress(SocketAddress {
                                address: "127.0.0.1".to_string(),
                                port_specifier: Some(socket_address::PortSpecifier::PortValue(
                                    *port,
                                )),
                                ..Default::default()
                            })),
                        }),
                        ..Default::default()
                    })),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        named_endpoints: HashMap::new(),
        ..Default::default()
    })
}

#[test]
fn accepted_state_builds_snapshots_and_reuses_unchanged_clusters() {
    let metrics = Metrics::new();
    let clients = ClientCache::default();
    let mut state = XdsState::new(crate::balance::build);
    state
        .apply(
            LISTENER_TYPE,
            &[pack_any(Listener {
                name: "outbound".into(),
                ..Default::default()
            })],
            &metrics,
        )
        .expect("listeners");
    state
        .apply(
            CLUSTER_TYPE,
            &[
                cluster("a", LbPolicy::RoundRobin),
                cluster("b", LbPolicy::Random),
            ],
            &metrics,
        )
        .expect("clusters");
    assert_eq!(state.eds_names(), vec!["a".to_string(), "b".to_string()]);
    state
        .apply(
            ROUTE_TYPE,
            &[pack_any(RouteConfiguration {
                name: "outbound".into(),
                ..Default::default()
            })],
            &metrics,
        )
        .expect("routes");
    assert!(!state.complete(), "endpoints are still missing");
    state
        .apply(
            ENDPOINT_TYPE,
            &[cla("a", &[(1000, 1), (1001, 3)]), cla("b", &[(2000, 1)])],
            &metrics,
        )
        .expect("endpoints");
    assert!(state.complete());

    let first = state.snapshot(&Snapshot::default(), &clients);
    let a = first.clusters.get("a").expect("cluster a");
    assert_eq!(
        a.algorithm,
        Algorithm::Weighted,
        "ROUND_ROBIN with differing weights"
    );
    assert_eq!(a.endpoints.len(), 2);
    assert_eq!(a.balancer.len(), 2);

    // Only b's endpoints change: a is reused as is, b is rebuilt.
    state
        .apply(
            ENDPOINT_TYPE,
            &[cla("b", &[(2000, 1), (2001, 1)])],
            &metrics,
        )
        .expect("endpoints");
    let second = state.snapshot(&first, &clients);
    assert!(Arc::ptr_eq(&first.clusters["a"], &second.clusters["a"]));
    assert!(!Arc::ptr_eq(&first.clusters["b"], &second.clusters["b"]));
    assert_eq!(second.clusters["b"].endpoints.len(), 2);
}

#[test]
fn rejected_update_keeps_the_last_good_state() {
    let metrics = Metrics::new();
    let mut state = XdsState::new(crate::balance::build);
    state
        .apply(
            CLUSTER_TYPE,
            &[cluster("a", LbPolicy::RoundRobin)],
            &metrics,
        )
        .expect("clusters");
    let err = state
        .apply(
            CLUSTER_TYPE,
            &[
                cluster("a", LbPolicy::Random),
                cluster("c", LbPolicy::ClusterProvided),
            ],
            &metrics,
        )
        .expect_err("CLUSTER_PROVIDED is not supported");
    assert!(err.contains("Cluster `c`"), "{err}");
    let clusters = state.clusters.as_ref().expect("still accepted");
    assert_eq!(clusters.len(), 1);
    assert_eq!(clusters[0].algorithm, Algorithm::RoundRobin);
}

#[test]
fn removed_clusters_drop_their_assignments() {
    let metrics = Metrics::new();
    let mut state = XdsState::new(crate::balance::build);
    state
        .apply(
            CLUSTER_TYPE,
            &[
                cluster("a", LbPolicy::RoundRobin),
                cluster("b", LbPolicy::RoundRobin),
            ],
            &metrics,
        )
        .expect("clusters");
    state
        .apply(
            ENDPOINT_TYPE,
            &[cla("a", &[(1, 1)]), cla("b", &[(2, 1)])],
            &metrics,
        )
        .expect("endpoints");
    state
        .apply(
            CLUSTER_TYPE,
            &[cluster("a", LbPolicy::RoundRobin)],
            &metrics,
        )
        .expect("clusters");
    assert_eq!(state.eds_names(), vec!["a".to_string()]);
    assert!(state.assignments.contains_key("a"));
    assert!(!state.assignments.contains_key("b"));
}
