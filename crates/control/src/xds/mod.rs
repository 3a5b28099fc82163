//! xDS: translation of mesh snapshots into Envoy v3 resources, and the ADS gRPC server.
//! docs/XDS.md is the contract.

mod proxies;

pub use proxies::{ProxyStatus, ProxyTable};
