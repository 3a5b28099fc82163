//! Builders and decoders shared by the translation tests.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{
    Address, Metadata, address, socket_address::PortSpecifier,
};
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{Route, RouteAction, route, route_action};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::google::protobuf::value::Kind;
use prost::{Message, Name};
use serde_json::json;
use trellis_model::wire;
use trellis_model::{HttpRouteResource, ServiceSpec, Subset, TrafficPolicySpec};

use super::translate::{HCM_FILTER, NodeInfo, Resources};
use crate::snapshot::{Endpoint, MeshSnapshot, ServiceView};

/// The SPIFFE ID of service `name` in namespace `default` of the default trust domain.
pub(crate) fn spiffe(name: &str) -> String {
    format!("spiffe://cluster.local/ns/default/svc/{name}")
}

/// A Trellis sidecar of service `web` holding its mesh certificate.
pub(crate) fn node(app_port: Option<u16>) -> NodeInfo {
    NodeInfo {
        id: "web~web-1".into(),
        cluster: "web".into(),
        service: "web".into(),
        instance_id: "web-1".into(),
        app_port,
        outbound_port: 15001,
        inbound_port: 15006,
        identity: Some(spiffe("web")),
        zone: None,
    }
}

/// A proxy of service `web` without a mesh certificate (a stock Envoy).
pub(crate) fn plain_node(app_port: Option<u16>) -> NodeInfo {
    NodeInfo {
        identity: None,
        ..node(app_port)
    }
}

pub(crate) fn endpoint(
    id: &str,
    zone: Option<&str>,
    weight: u32,
    labels: &[(&str, &str)],
) -> Endpoint {
    Endpoint {
        instance_id: id.into(),
        address: "10.0.0.1".parse().expect("literal ip"),
        port: 8000 + u16::try_from(id.len()).unwrap_or(0),
        protocol: Default::default(),
        zone: zone.map(str::to_string),
        weight,
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        identity: None,
    }
}

pub(crate) fn view(name: &str, endpoints: Vec<Endpoint>) -> ServiceView {
    ServiceView {
        name: name.into(),
        endpoints,
        ..Default::default()
    }
}

pub(crate) fn policy(lb: serde_json::Value) -> Option<TrafficPolicySpec> {
    let spec = json!({ "targetRef": { "name": "x" }, "loadBalancer": lb });
    Some(serde_json::from_value(spec).expect("valid policy literal"))
}

pub(crate) fn http_route(name: &str, parent: &str, rules: serde_json::Value) -> HttpRouteResource {
    let doc = json!({
        "apiVersion": "trellis.dev/v1alpha1",
        "metadata": { "name": name },
        "spec": { "parentRefs": [{ "name": parent }], "rules": rules },
    });
    serde_json::from_value(doc).expect("valid route literal")
}

pub(crate) fn snapshot(views: Vec<ServiceView>) -> MeshSnapshot {
    MeshSnapshot {
        version: 7,
        services: views.into_iter().map(|v| (v.name.clone(), v)).collect(),
        ..MeshSnapshot::default()
    }
}

pub(crate) fn decode<T: Message + Default + Name>(
    res: &Resources,
    type_url: &str,
    name: &str,
) -> T {
    let (_, any) = res
        .get(type_url)
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no {type_url} named {name}"));
    assert_eq!(any.type_url, T::type_url());
    T::decode(any.value.as_slice()).expect("decodes")
}

pub(crate) fn names(res: &Resources, type_url: &str) -> Vec<String> {
    res.get(type_url).iter().map(|(n, _)| n.clone()).collect()
}

pub(crate) fn hcm(listener: &Listener) -> HttpConnectionManager {
    let filter = &listener.filter_chains[0].filters[0];
    assert_eq!(filter.name, HCM_FILTER);
    match &filter.config_type {
        Some(filter::ConfigType::TypedConfig(any)) => {
            HttpConnectionManager::decode(any.value.as_slice()).expect("hcm decodes")
        }
        other => panic!("unexpected filter config {other:?}"),
    }
}

pub(crate) fn socket(addr: &Option<Address>) -> (String, u32) {
    match addr.as_ref().and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(s)) => match s.port_specifier {
            Some(PortSpecifier::PortValue(p)) => (s.address.clone(), p),
            _ => panic!("no port"),
        },
        other => panic!("not a socket address: {other:?}"),
    }
}

pub(crate) fn route_cluster(action: &route_action::ClusterSpecifier) -> Vec<(String, u32)> {
    match action {
        route_action::ClusterSpecifier::Cluster(c) => vec![(c.clone(), 1)],
        route_action::ClusterSpecifier::WeightedClusters(w) => w
            .clusters
            .iter()
            .map(|c| (c.name.clone(), c.weight.map(|w| w.value).unwrap_or(0)))
            .collect(),
        other => panic!("unexpected cluster specifier {other:?}"),
    }
}

pub(crate) fn action(r: &Route) -> &RouteAction {
    match &r.action {
        Some(route::Action::Route(a)) => a,
        other => panic!("not a route action: {other:?}"),
    }
}

pub(crate) fn catalog_with_routes(lb: Option<serde_json::Value>) -> MeshSnapshot {
    let mut catalog = view("catalog", vec![]);
    catalog.policy = lb.and_then(policy);
    catalog.declared = Some(ServiceSpec {
        subsets: vec![
            Subset {
                name: "v1".into(),
                labels: BTreeMap::from([("version".into(), "v1".into())]),
            },
            Subset {
                name: "v2".into(),
                labels: BTreeMap::from([("version".into(), "v2".into())]),
            },
        ],
        ..Default::default()
    });
    catalog.routes = vec![http_route(
        "catalog-canary",
        "catalog",
        json!([
            {
                "matches": [
                    { "path": { "type": "Exact", "value": "/health" },
                      "headers": [{ "name": "x-env", "value": "qa" },
                                  { "type": "RegularExpression", "name": "x-user", "value": "^a.*" }],
                      "method": "GET" },
                    { "path": { "type": "RegularExpression", "value": "^/v[0-9]+/" } }
                ],
                "backendRefs": [{ "name": "catalog", "subset": "v1" }]
            },
            {
                "matches": [{ "path": { "type": "PathPrefix", "value": "/api/" } }],
                "backendRefs": [
                    { "name": "catalog", "subset": "v1", "weight": 90 },
                    { "name": "catalog", "subset": "v2", "weight": 10 }
                ]
            }
        ]),
    )];
    snapshot(vec![catalog, view("web", vec![])])
}

pub(crate) fn instance_id(m: &Metadata) -> String {
    match m.filter_metadata[wire::METADATA_NAMESPACE].fields["instance_id"]
        .kind
        .as_ref()
    {
        Some(Kind::StringValue(s)) => s.clone(),
        other => panic!("instance_id is {other:?}"),
    }
}
