//! Listener, cluster and endpoint translation: decode the packed resources and assert fields.

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, http_filter,
};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use serde_json::json;

use super::*;
use crate::xds::fixtures::*;

// ---- listeners ------------------------------------------------------------------------------

#[test]
fn outbound_listener_uses_rds_over_ads_and_router() {
    let res = resources_for(&snapshot(vec![]), &node(None));
    assert_eq!(names(&res, LISTENER_TYPE), vec!["outbound"]);
    let l: Listener = decode(&res, LISTENER_TYPE, "outbound");
    assert_eq!(socket(&l.address), ("127.0.0.1".into(), 15001));
    let hcm = hcm(&l);
    match &hcm.route_specifier {
        Some(RouteSpecifier::Rds(rds)) => {
            assert_eq!(rds.route_config_name, "outbound");
            let src = rds.config_source.as_ref().expect("config source");
            assert!(matches!(
                src.config_source_specifier,
                Some(ConfigSourceSpecifier::Ads(_))
            ));
        }
        other => panic!("expected RDS, got {other:?}"),
    }
    // The (empty) fault filter, then the router (see xds/faults/tests.rs).
    assert_eq!(hcm.http_filters.len(), 2);
    assert_eq!(hcm.http_filters[1].name, ROUTER_FILTER);
    match &hcm.http_filters[1].config_type {
        Some(http_filter::ConfigType::TypedConfig(any)) => assert_eq!(
            any.type_url,
            "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
        ),
        other => panic!("router has no typed config: {other:?}"),
    }
    // No app port: no inbound side.
    assert!(
        !names(&res, CLUSTER_TYPE)
            .iter()
            .any(|n| n.starts_with("inbound|"))
    );
}

#[test]
fn app_port_adds_inbound_listener_and_static_cluster() {
    let res = resources_for(&snapshot(vec![]), &node(Some(8080)));
    assert_eq!(names(&res, LISTENER_TYPE), vec!["inbound", "outbound"]);
    let l: Listener = decode(&res, LISTENER_TYPE, "inbound");
    assert_eq!(socket(&l.address), ("0.0.0.0".into(), 15006));
    let rc = match hcm(&l).route_specifier {
        Some(RouteSpecifier::RouteConfig(rc)) => rc,
        other => panic!("expected inline routes, got {other:?}"),
    };
    let r = &rc.virtual_hosts[0].routes[0];
    let spec = action(r).cluster_specifier.as_ref().expect("cluster");
    assert_eq!(route_cluster(spec), vec![("inbound|8080".to_string(), 1)]);

    let c: Cluster = decode(&res, CLUSTER_TYPE, "inbound|8080");
    assert_eq!(
        c.cluster_discovery_type,
        Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32
        ))
    );
    let cla = c.load_assignment.expect("static endpoints");
    match &cla.endpoints[0].lb_endpoints[0].host_identifier {
        Some(lb_endpoint::HostIdentifier::Endpoint(e)) => {
            assert_eq!(socket(&e.address), ("127.0.0.1".into(), 8080))
        }
        other => panic!("unexpected host {other:?}"),
    }
}

// ---- clusters -------------------------------------------------------------------------------

#[test]
fn lb_policy_per_algorithm() {
    use cluster::{LbConfig, LbPolicy};
    let cases = [
        (json!({}), LbPolicy::RoundRobin, "none"),
        (json!({ "algorithm": "Random" }), LbPolicy::Random, "none"),
        (
            json!({ "algorithm": "Weighted" }),
            LbPolicy::RoundRobin,
            "none",
        ),
        (
            json!({ "algorithm": "LeastRequest" }),
            LbPolicy::LeastRequest,
            "choice:2",
        ),
        (
            json!({ "algorithm": "PeakEwma" }),
            LbPolicy::LeastRequest,
            "ewma",
        ),
        (
            json!({ "algorithm": "RingHash", "hashKey": { "header": "h" } }),
            LbPolicy::RingHash,
            "ring:1024",
        ),
        (
            json!({ "algorithm": "RingHash", "hashKey": { "header": "h" }, "ringSize": 4096 }),
            LbPolicy::RingHash,
            "ring:4096",
        ),
        (
            json!({ "algorithm": "Maglev", "hashKey": { "sourceIp": true } }),
            LbPolicy::Maglev,
            "maglev:65537",
        ),
        (
            json!({ "algorithm": "Maglev", "hashKey": { "sourceIp": true }, "tableSize": 251 }),
            LbPolicy::Maglev,
            "maglev:251",
        ),
    ];
    for (lb, want_policy, want_extra) in cases {
        let mut v = view("catalog", vec![]);
        v.policy = policy(lb.clone());
        let res = resources_for(&snapshot(vec![v]), &node(None));
        let c: Cluster = decode(&res, CLUSTER_TYPE, "catalog");
        assert_eq!(c.lb_policy, want_policy as i32, "{lb}");
        assert_eq!(
            c.cluster_discovery_type,
            Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32
            ))
        );
        assert!(c.eds_cluster_config.and_then(|e| e.eds_config).is_some());
        assert_eq!(c.connect_timeout.map(|d| d.seconds), Some(1));
        let extra = match (&c.lb_config, &c.load_balancing_policy) {
            (None, None) => "none".to_string(),
            (Some(LbConfig::LeastRequestLbConfig(l)), None) => {
                format!("choice:{}", l.choice_count.map(|c| c.value).unwrap_or(0))
            }
            (Some(LbConfig::RingHashLbConfig(r)), None) => {
                format!("ring:{}", r.minimum_ring_size.map(|c| c.value).unwrap_or(0))
            }
            (Some(LbConfig::MaglevLbConfig(m)), None) => {
                format!("maglev:{}", m.table_size.map(|c| c.value).unwrap_or(0))
            }
            (None, Some(p)) => {
                let exts: Vec<(String, String)> = p
                    .policies
                    .iter()
                    .map(|p| {
                        let t = p.typed_extension_config.clone().expect("typed extension");
                        let any = t.typed_config.expect("typed config");
                        if t.name == wire::PEAK_EWMA_NAME {
                            // A TypedStruct naming the Trellis type, so Envoy can show it.
                            assert_eq!(any.type_url, TYPED_STRUCT_TYPE_URL);
                            let ts = <TypedStruct as prost::Message>::decode(&any.value[..])
                                .expect("TypedStruct");
                            return (t.name, ts.type_url);
                        }
                        (t.name, any.type_url)
                    })
                    .collect();
                assert_eq!(
                    exts,
                    vec![
                        (wire::PEAK_EWMA_NAME.to_string(), wire::PEAK_EWMA_TYPE_URL.to_string()),
                        (
                            LEAST_REQUEST_POLICY.to_string(),
                            "type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest".to_string()
                        ),
                    ]
                );
                "ewma".to_string()
            }
            other => panic!("unexpected lb config {other:?}"),
        };
        assert_eq!(extra, want_extra, "{lb}");
    }
}

#[test]
fn subset_clusters_select_instances_by_labels() {
    let mut snap = catalog_with_routes(None);
    let catalog = snap.services.get_mut("catalog").expect("catalog");
    catalog.endpoints = vec![
        endpoint("a", None, 1, &[("version", "v1"), ("tier", "gold")]),
        endpoint("bb", None, 1, &[("version", "v2")]),
        endpoint("ccc", None, 1, &[]),
    ];
    let res = resources_for(&snap, &node(None));
    assert_eq!(
        names(&res, CLUSTER_TYPE),
        vec!["catalog", "catalog|v1", "catalog|v2", "web"]
    );
    assert_eq!(names(&res, ENDPOINT_TYPE), names(&res, CLUSTER_TYPE));
    let members = |name: &str| -> Vec<String> {
        let cla: ClusterLoadAssignment = decode(&res, ENDPOINT_TYPE, name);
        cla.endpoints
            .iter()
            .flat_map(|l| &l.lb_endpoints)
            .map(|e| instance_id(e.metadata.as_ref().expect("metadata")))
            .collect()
    };
    assert_eq!(members("catalog"), vec!["a", "bb", "ccc"]);
    assert_eq!(members("catalog|v1"), vec!["a"]);
    assert_eq!(members("catalog|v2"), vec!["bb"]);
    assert!(members("web").is_empty());
}

#[test]
fn undeclared_subset_or_unknown_backend_gets_an_empty_cluster() {
    let mut web = view("web", vec![endpoint("w", None, 1, &[("version", "v1")])]);
    web.routes = vec![http_route(
        "web-split",
        "web",
        json!([{ "backendRefs": [{ "name": "web", "subset": "v9" }, { "name": "ghost" }] }]),
    )];
    let res = resources_for(&snapshot(vec![web]), &node(None));
    assert_eq!(names(&res, CLUSTER_TYPE), vec!["ghost", "web", "web|v9"]);
    for name in ["ghost", "web|v9"] {
        let cla: ClusterLoadAssignment = decode(&res, ENDPOINT_TYPE, name);
        assert!(cla.endpoints.is_empty(), "{name}");
    }
}

// ---- endpoints ------------------------------------------------------------------------------

#[test]
fn endpoints_grouped_by_zone_with_weights_only_for_weighted() {
    let eps = vec![
        endpoint("a", Some("zone-b"), 5, &[("version", "v1")]),
        endpoint("bb", Some("zone-a"), 3, &[]),
        endpoint("ccc", None, 2, &[]),
        endpoint("dddd", Some("zone-b"), 7, &[]),
    ];
    for (algorithm, weighted) in [
        ("Weighted", true),
        ("RoundRobin", false),
        ("PeakEwma", false),
    ] {
        let mut v = view("catalog", eps.clone());
        v.policy = policy(json!({ "algorithm": algorithm }));
        let res = resources_for(&snapshot(vec![v]), &node(None));
        let cla: ClusterLoadAssignment = decode(&res, ENDPOINT_TYPE, "catalog");
        assert_eq!(cla.cluster_name, "catalog");
        let got: Vec<(String, Vec<(String, u32)>)> = cla
            .endpoints
            .iter()
            .map(|l| {
                let zone = l.locality.clone().unwrap_or_default().zone;
                let eps = l
                    .lb_endpoints
                    .iter()
                    .map(|e| {
                        assert_eq!(e.health_status, 1, "HEALTHY");
                        let w = e.load_balancing_weight.map(|w| w.value).unwrap_or(0);
                        (instance_id(e.metadata.as_ref().expect("metadata")), w)
                    })
                    .collect();
                (zone, eps)
            })
            .collect();
        let w = |n: u32| if weighted { n } else { 1 };
        assert_eq!(
            got,
            vec![
                (String::new(), vec![("ccc".into(), w(2))]),
                ("zone-a".into(), vec![("bb".into(), w(3))]),
                (
                    "zone-b".into(),
                    vec![("a".into(), w(5)), ("dddd".into(), w(7))]
                ),
            ],
            "{algorithm}"
        );
        // Address and label metadata of one endpoint.
        let first = &cla.endpoints[2].lb_endpoints[0];
        match &first.host_identifier {
            Some(lb_endpoint::HostIdentifier::Endpoint(e)) => {
                assert_eq!(socket(&e.address), ("10.0.0.1".into(), 8001))
            }
            other => panic!("unexpected host {other:?}"),
        }
        let md: &Struct = &first.metadata.as_ref().expect("md").filter_metadata["trellis"];
        assert_eq!(
            md.fields.get("version"),
            Some(&Value {
                kind: Some(Kind::StringValue("v1".into()))
            })
        );
    }
}

#[test]
fn translation_is_deterministic_and_sorted() {
    let mut snap = catalog_with_routes(Some(
        json!({ "algorithm": "RingHash", "hashKey": { "header": "x" } }),
    ));
    snap.services.get_mut("catalog").expect("catalog").endpoints = vec![
        endpoint(
            "a",
            Some("z1"),
            1,
            &[("version", "v1"), ("k1", "x"), ("k2", "y"), ("k3", "z")],
        ),
        endpoint(
            "bb",
            Some("z2"),
            1,
            &[("version", "v2"), ("k1", "x"), ("k2", "y")],
        ),
    ];
    let a = resources_for(&snap, &node(Some(9000)));
    let b = resources_for(&snap, &node(Some(9000)));
    for type_url in [LISTENER_TYPE, ROUTE_TYPE, CLUSTER_TYPE, ENDPOINT_TYPE] {
        let ns = names(&a, type_url);
        let mut sorted = ns.clone();
        sorted.sort();
        assert_eq!(ns, sorted, "{type_url} sorted");
        assert!(
            same_content(type_url, a.get(type_url), b.get(type_url)),
            "{type_url}"
        );
    }
    // A real change is detected.
    snap.services
        .get_mut("catalog")
        .expect("catalog")
        .endpoints
        .pop();
    let c = resources_for(&snap, &node(Some(9000)));
    assert!(!same_content(
        ENDPOINT_TYPE,
        a.get(ENDPOINT_TYPE),
        c.get(ENDPOINT_TYPE)
    ));
    assert!(same_content(
        LISTENER_TYPE,
        a.get(LISTENER_TYPE),
        c.get(LISTENER_TYPE)
    ));
}

// ---- upstream protocol ----------------------------------------------------------------------

/// `Some(true)` for explicit HTTP/2, `Some(false)` for explicit HTTP/1.1, `None` without options.
fn explicit_h2(c: &Cluster) -> Option<bool> {
    let any = c
        .typed_extension_protocol_options
        .get(HTTP_PROTOCOL_OPTIONS)?;
    assert_eq!(
        any.type_url,
        "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    );
    let opts = <HttpProtocolOptions as prost::Message>::decode(&any.value[..]).expect("options");
    match opts.upstream_protocol_options {
        Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(_)),
        })) => Some(true),
        Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(ProtocolConfig::HttpProtocolOptions(_)),
        })) => Some(false),
        other => panic!("unexpected upstream protocol options {other:?}"),
    }
}

#[test]
fn clusters_pin_the_upstream_http_version_from_the_service_protocol() {
    let plain = view("plain", vec![endpoint("p", None, 1, &[])]);
    let mut rpc_ep = endpoint("r", None, 1, &[("version", "v1")]);
    rpc_ep.protocol = Protocol::Grpc;
    let mut rpc = view("rpc", vec![rpc_ep]);
    rpc.declared = Some(trellis_model::ServiceSpec {
        protocol: Protocol::Http,
        subsets: vec![trellis_model::Subset {
            name: "v1".into(),
            labels: [("version".to_string(), "v1".to_string())].into(),
        }],
        ..Default::default()
    });
    rpc.routes = vec![http_route(
        "rpc-v1",
        "rpc",
        json!([{ "backendRefs": [{ "name": "rpc", "subset": "v1" }] }]),
    )];
    let mut declared = view("declared", vec![]);
    declared.declared = Some(trellis_model::ServiceSpec {
        protocol: Protocol::Http2,
        ..Default::default()
    });
    let mut web_ep = endpoint("web-1", None, 1, &[]);
    web_ep.protocol = Protocol::Grpc;
    let web = view("web", vec![web_ep]);
    let res = resources_for(
        &snapshot(vec![plain, rpc, declared, web]),
        &node(Some(8080)),
    );
    for (name, h2) in [
        ("plain", false),
        // An instance registered as grpc makes the service HTTP/2, subsets included.
        ("rpc", true),
        ("rpc|v1", true),
        ("declared", true),
        // The node's own app speaks what its service speaks.
        ("inbound|8080", true),
    ] {
        let c: Cluster = decode(&res, CLUSTER_TYPE, name);
        assert_eq!(explicit_h2(&c), Some(h2), "cluster {name}");
    }
    // A node whose service is unknown gets HTTP/1.1 to its app.
    let res = resources_for(&snapshot(vec![]), &node(Some(8080)));
    let c: Cluster = decode(&res, CLUSTER_TYPE, "inbound|8080");
    assert_eq!(explicit_h2(&c), Some(false));
}
