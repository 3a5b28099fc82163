//! xDS Listener / Cluster / ClusterLoadAssignment resources → typed, validated config.
//! Pure functions: a response's whole resource set translates or fails with a message naming
//! every bad resource (the client NACKs with it and keeps its last accepted config).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, LbConfig, LbPolicy,
};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, HealthStatus};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::google::protobuf::{Any, value::Kind};
use prost::Message;
use trellis_model::wire;

use super::health::ActiveCheck;
use super::security::{self, InboundConfig};
use crate::balance::Algorithm;
use crate::resilience::ClusterPolicy;
use crate::security::TlsPolicy;

/// Default `connect_timeout` when a Cluster does not set one.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Peak-EWMA decay (the Cluster carries no parameter; linkerd's default).
pub(crate) const PEAK_EWMA_DECAY: Duration = Duration::from_secs(10);

/// One upstream cluster as configured by CDS.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ClusterConfig {
    pub name: String,
    /// As decoded; `RoundRobin` turns into `Weighted` when endpoint weights differ
    /// (docs/XDS.md: both are `ROUND_ROBIN`, Weighted carries the instance weights).
    pub algorithm: Algorithm,
    pub connect_timeout: Duration,
    pub endpoints: EndpointSource,
    /// Upstream mTLS for endpoints that serve it (docs/XDS.md, "Security"); `None`: plaintext.
    pub tls: Option<TlsPolicy>,
    /// Circuit breakers, retry budget, outlier detection (docs/XDS.md, "Failure recovery").
    pub policy: ClusterPolicy,
    /// `common_http_protocol_options.idle_timeout`; `None`: the default (90s).
    pub idle_timeout: Option<Duration>,
    /// The active health check of the endpoints (`health_checks`); `None`: none.
    pub health_check: Option<ActiveCheck>,
    /// `common_lb_config.healthy_panic_threshold` (percent).
    pub panic_threshold: u32,
}

/// One ClusterLoadAssignment: its usable endpoints and how priorities share the load.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Assignment {
    pub endpoints: Vec<Endpoint>,
    /// `policy.overprovisioning_factor` (Envoy's default 140).
    pub overprovisioning: u32,
}

/// Envoy's default `overprovisioning_factor`.
pub(crate) const DEFAULT_OVERPROVISIONING: u32 = 140;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum EndpointSource {
    /// Endpoints come from the ClusterLoadAssignment with this name.
    Eds(String),
    /// Endpoints given inline (`STATIC`).
    Static(Vec<Endpoint>),
}

/// One endpoint of a cluster (its sidecar's inbound listener).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub addr: SocketAddr,
    pub weight: u32,
    /// The instance id from `filter_metadata["trellis"].instance_id`, else the address.
    pub id: String,
    pub zone: Option<String>,
    /// Its locality's `priority` (0 is the most preferred).
    pub priority: u32,
    /// The endpoint serves mTLS (`filter_metadata["envoy.transport_socket_match"].tlsMode ==
    /// "mtls"`): connect with the cluster's [`ClusterConfig::tls`].
    pub mtls: bool,
}

/// Decodes one resource, checking its type URL.
pub(crate) fn decode<T: Message + Default>(any: &Any, type_url: &str) -> Result<T, String> {
    if any.type_url != type_url {
        return Err(format!(
            "resource of type `{}` in a `{type_url}` response",
            any.type_url
        ));
    }
    T::decode(any.value.as_slice()).map_err(|e| format!("cannot decode `{type_url}`: {e}"))
}

/// Runs `f` over every resource and joins all errors, so one NACK names every bad resource.
pub(crate) fn translate_all<T>(
    resources: &[Any],
    mut f: impl FnMut(&Any) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    let mut out = Vec::with_capacity(resources.len());
    let mut errors = Vec::new();
    for r in resources {
        match f(r) {
            Ok(v) => out.push(v),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors.join("; "))
    }
}

/// What LDS configures. The sidecar binds its own listeners from flags; the `inbound` Listener
/// carries this proxy's inbound security (docs/XDS.md, "Security"), the others only their
/// names (shown in the config dump).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ListenerSet {
    pub names: Vec<String>,
    /// From the `inbound` Listener; `None` when the response has none.
    pub inbound: Option<InboundConfig>,
}

pub(crate) fn listeners(resources: &[Any]) -> Result<ListenerSet, String> {
    let parsed = translate_all(resources, |any| {
        let l: Listener = decode(any, super::LISTENER_TYPE)?;
        if l.name.is_empty() {
            return Err("Listener with an empty name".to_string());
        }
        let inbound = if l.name == wire::INBOUND {
            Some(security::inbound_config(&l).map_err(|e| format!("Listener `{}`: {e}", l.name))?)
        } else {
            None
        };
        Ok((l.name, inbound))
    })?;
    let mut set = ListenerSet::default();
    for (name, inbound) in parsed {
        if inbound.is_some() {
            if set.inbound.is_some() {
                return Err(format!("Listener `{name}` appears twice"));
            }
            set.inbound = inbound;
        }
        set.names.push(name);
    }
    Ok(set)
}

pub(crate) fn clusters(resources: &[Any]) -> Result<Vec<ClusterConfig>, String> {
    translate_all(resources, |any| {
        let c: Cluster = decode(any, super::CLUSTER_TYPE)?;
        cluster(&c).map_err(|e| format!("Cluster `{}`: {e}", c.name))
    })
}

pub(crate) fn cluster(c: &Cluster) -> Result<ClusterConfig, String> {
    if c.name.is_empty() {
        return Err("name must not be empty".to_string());
    }
    let connect_timeout = match &c.connect_timeout {
        None => DEFAULT_CONNECT_TIMEOUT,
        Some(d) if d.seconds < 0 || d.nanos < 0 || (d.seconds == 0 && d.nanos == 0) => {
            return Err(format!(
                "connect_timeout = {}s {}ns: must be positive",
                d.seconds, d.nanos
            ));
        }
        Some(d) => Duration::new(d.seconds as u64, d.nanos as u32),
    };
    let endpoints = match &c.cluster_discovery_type {
        None | Some(ClusterDiscoveryType::Type(0)) => {
            // STATIC
            let cla = c.load_assignment.as_ref().ok_or_else(|| {
                "STATIC cluster without load_assignment: give the endpoints inline".to_string()
            })?;
            EndpointSource::Static(endpoints(cla)?)
        }
        Some(ClusterDiscoveryType::Type(t)) if *t == DiscoveryType::Eds as i32 => {
            let service_name = c
                .eds_cluster_config
                .as_ref()
                .map(|e| e.service_name.as_str())
                .filter(|s| !s.is_empty())
                .unwrap_or(&c.name);
            EndpointSource::Eds(service_name.to_string())
        }
        Some(ClusterDiscoveryType::Type(t)) => {
            let name = DiscoveryType::try_from(*t)
                .map(|d| d.as_str_name().to_string())
                .unwrap_or_else(|_| t.to_string());
            return Err(format!(
                "discovery type {name} is not supported (expected EDS or STATIC)"
            ));
        }
        Some(ClusterDiscoveryType::ClusterType(ct)) => {
            return Err(format!(
                "custom cluster type `{}` is not supported (expected EDS or STATIC)",
                ct.name
            ));
        }
    };
    Ok(ClusterConfig {
        name: c.name.clone(),
        algorithm: algorithm(c)?,
        connect_timeout,
        endpoints,
        tls: security::cluster_tls(c)?,
        policy: super::resilience::cluster_policy(c)?,
        idle_timeout: super::resilience::idle_timeout(c)?,
        health_check: super::health::active_check(c)?,
        panic_threshold: super::health::panic_threshold(c)?,
    })
}

/// The balancing algorithm per docs/XDS.md: the Trellis Peak-EWMA policy when listed in
/// `load_balancing_policy`, else `lb_policy` with its config.
fn algorithm(c: &Cluster) -> Result<Algorithm, String> {
    if let Some(lbp) = &c.load_balancing_policy {
        for p in &lbp.policies {
            let Some(ext) = &p.typed_extension_config else {
                continue;
            };
            let type_url = ext.typed_config.as_ref().map(|a| a.type_url.as_str());
            if ext.name == wire::PEAK_EWMA_NAME || type_url == Some(wire::PEAK_EWMA_TYPE_URL) {
                return Ok(Algorithm::PeakEwma {
                    decay: PEAK_EWMA_DECAY,
                });
            }
        }
    }
    let policy = LbPolicy::try_from(c.lb_policy)
        .map_err(|_| format!("lb_policy = {}: unknown value", c.lb_policy))?;
    Ok(match policy {
        LbPolicy::RoundRobin => Algorithm::RoundRobin,
        LbPolicy::Random => Algorithm::Random,
        LbPolicy::LeastRequest => Algorithm::LeastRequest,
        LbPolicy::RingHash => Algorithm::RingHash {
            min_ring_size: match &c.lb_config {
                Some(LbConfig::RingHashLbConfig(r)) => r
                    .minimum_ring_size
                    .as_ref()
                    .map(|v| v.value)
                    .unwrap_or(1024),
                _ => 1024,
            },
        },
        LbPolicy::Maglev => Algorithm::Maglev {
            table_size: match &c.lb_config {
                Some(LbConfig::MaglevLbConfig(m)) => {
                    m.table_size.as_ref().map(|v| v.value).unwrap_or(65537)
                }
                _ => 65537,
            },
        },
        other => {
            return Err(format!(
                "lb_policy {} is not supported (expected ROUND_ROBIN, RANDOM, LEAST_REQUEST, \
                 RING_HASH, MAGLEV, or the `{}` load_balancing_policy)",
                other.as_str_name(),
                wire::PEAK_EWMA_NAME
            ));
        }
    })
}

/// ClusterLoadAssignments → (name, assignment).
pub(crate) fn load_assignments(resources: &[Any]) -> Result<Vec<(String, Assignment)>, String> {
    translate_all(resources, |any| {
        let cla: ClusterLoadAssignment = decode(any, super::ENDPOINT_TYPE)?;
        let at = |e: String| format!("ClusterLoadAssignment `{}`: {e}", cla.cluster_name);
        let endpoints = endpoints(&cla).map_err(at)?;
        let overprovisioning = match cla.policy.as_ref().and_then(|p| p.overprovisioning_factor) {
            None => DEFAULT_OVERPROVISIONING,
            Some(f) if (1..=100_000).contains(&f.value) => f.value,
            Some(f) => {
                return Err(at(format!(
                    "policy.overprovisioning_factor = {}: must be within 1..=100000",
                    f.value
                )));
            }
        };
        Ok((
            cla.cluster_name,
            Assignment {
                endpoints,
                overprovisioning,
            },
        ))
    })
}

/// The usable endpoints of an assignment: HEALTHY, UNKNOWN or DEGRADED ones.
pub(crate) fn endpoints(cla: &ClusterLoadAssignment) -> Result<Vec<Endpoint>, String> {
    let mut out = Vec::new();
    for locality in &cla.endpoints {
        let zone = locality
            .locality
            .as_ref()
            .map(|l| l.zone.clone())
            .filter(|z| !z.is_empty());
        for lb in &locality.lb_endpoints {
            let usable = matches!(
                HealthStatus::try_from(lb.health_status),
                Ok(HealthStatus::Healthy | HealthStatus::Unknown | HealthStatus::Degraded)
            );
            if !usable {
                continue;
            }
            let Some(HostIdentifier::Endpoint(ep)) = &lb.host_identifier else {
                return Err("lb_endpoint without an endpoint address".to_string());
            };
            let addr = socket_addr(ep.address.as_ref())?;
            let weight = lb.load_balancing_weight.as_ref().map_or(1, |w| w.value);
            if weight == 0 {
                return Err(format!(
                    "endpoint {addr}: load_balancing_weight = 0: must be at least 1"
                ));
            }
            let id = lb
                .metadata
                .as_ref()
                .and_then(|m| m.filter_metadata.get(wire::METADATA_NAMESPACE))
                .and_then(|s| s.fields.get("instance_id"))
                .and_then(|v| match &v.kind {
                    Some(Kind::StringValue(s)) if !s.is_empty() => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| addr.to_string());
            out.push(Endpoint {
                addr,
                weight,
                id,
                zone: zone.clone(),
                priority: locality.priority,
                mtls: security::endpoint_mtls(lb.metadata.as_ref()),
            });
        }
    }
    Ok(out)
}

fn socket_addr(addr: Option<&Address>) -> Result<SocketAddr, String> {
    let Some(AddressKind::SocketAddress(sa)) = addr.and_then(|a| a.address.as_ref()) else {
        return Err("endpoint without a socket_address".to_string());
    };
    let ip: IpAddr = sa.address.parse().map_err(|_| {
        format!(
            "endpoint address `{}` is not an IP address (hostnames are not resolved)",
            sa.address
        )
    })?;
    let port = match &sa.port_specifier {
        Some(PortSpecifier::PortValue(p)) if (1..=65535).contains(p) => *p as u16,
        Some(PortSpecifier::PortValue(p)) => {
            return Err(format!(
                "endpoint {ip}: port_value = {p}: must be 1..=65535"
            ));
        }
        _ => return Err(format!("endpoint {ip}: port_value is required")),
    };
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests;
