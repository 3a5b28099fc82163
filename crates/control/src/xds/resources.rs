//! The xDS resource set for one proxy: per type URL, the named resources packed as `Any`.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

pub const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT_TYPE: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// The types served, in the order Envoy wants them applied (CDS, EDS, LDS, RDS).
pub const TYPE_URLS: [&str; 4] = [CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE];

/// The short name of a served type (`Listener`, `Cluster`, ...), as shown in the proxy table;
/// `None` for a type this control plane does not serve.
pub fn short_name(type_url: &str) -> Option<&'static str> {
    match type_url {
        LISTENER_TYPE => Some("Listener"),
        ROUTE_TYPE => Some("RouteConfiguration"),
        CLUSTER_TYPE => Some("Cluster"),
        ENDPOINT_TYPE => Some("ClusterLoadAssignment"),
        _ => None,
    }
}

/// Whether an empty `resource_names` list subscribes to every resource of the type.
pub fn is_wildcard_type(type_url: &str) -> bool {
    type_url == LISTENER_TYPE || type_url == CLUSTER_TYPE
}

/// Named, packed resources per type URL; each list sorted by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    pub by_type: BTreeMap<String, Vec<(String, Any)>>,
}

impl Resources {
    /// Every resource of a type, sorted by name (empty for unknown types).
    pub fn get(&self, type_url: &str) -> &[(String, Any)] {
        self.by_type.get(type_url).map(Vec::as_slice).unwrap_or(&[])
    }

    /// What a state-of-the-world response carries for a subscription: everything when
    /// `wildcard`, else the requested names that exist (in name order).
    pub fn select(&self, type_url: &str, names: &[String], wildcard: bool) -> Vec<(String, Any)> {
        self.get(type_url)
            .iter()
            .filter(|(n, _)| wildcard || names.iter().any(|want| want == n))
            .cloned()
            .collect()
    }

    pub(crate) fn insert(&mut self, type_url: &str, name: String, any: Any) {
        self.by_type
            .entry(type_url.to_string())
            .or_default()
            .push((name, any));
    }

    pub(crate) fn sort(&mut self) {
        for list in self.by_type.values_mut() {
            list.sort_by(|a, b| a.0.cmp(&b.0));
        }
    }
}

/// Whether two resource lists of one type carry the same configuration. Encoded bytes can
/// differ for equal messages (protobuf maps such as `Struct` fields encode in hash order), so
/// differing bytes are decoded and compared as messages.
pub fn same_content(type_url: &str, a: &[(String, Any)], b: &[(String, Any)]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((na, aa), (nb, ab))| {
            na == nb
                && aa.type_url == ab.type_url
                && (aa.value == ab.value || decoded_equal(type_url, &aa.value, &ab.value))
        })
}

fn decoded_equal(type_url: &str, a: &[u8], b: &[u8]) -> bool {
    match type_url {
        LISTENER_TYPE => eq_as::<Listener>(a, b),
        ROUTE_TYPE => eq_as::<RouteConfiguration>(a, b),
        CLUSTER_TYPE => eq_as::<Cluster>(a, b),
        ENDPOINT_TYPE => eq_as::<ClusterLoadAssignment>(a, b),
        _ => false,
    }
}

fn eq_as<T: Message + Default + PartialEq>(a: &[u8], b: &[u8]) -> bool {
    match (T::decode(a), T::decode(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}
