//! xDS: translation of mesh snapshots into Envoy v3 resources, and the ADS gRPC server.
//! docs/XDS.md is the contract.

mod ads;
mod faults;
pub mod health;
mod node;
mod proxies;
pub mod ratelimit;
mod resilience;
mod resources;
mod routes;
pub mod security;
pub mod tcp;
pub mod translate;

pub use ads::{AdsServer, ads_server};
pub use node::{NodeError, NodeInfo};
pub use proxies::{Nack, ProxyStatus, ProxyTable};
pub use resources::{
    CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, Resources, short_name,
};
pub use translate::resources_for;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod fixtures;
