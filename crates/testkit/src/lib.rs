//! Integration-test support for Trellis: start the real `trellis` processes (control plane,
//! sidecars) on `127.0.0.1:0`, read their ready lines, keep their output in a per-test log, and
//! run real test backends (HTTP/1 + h2c echo, gRPC echo, TCP echo) and a counting test client.
//!
//! Nothing here mocks a protocol: every server is hyper or tonic on a real socket.
//! Every wait has a deadline and says what it was waiting for when it gives up.

pub mod backend;
pub mod client;
pub mod control;
pub mod fixture;
pub mod grpc;
pub mod grpc_health;
pub mod log;
pub mod process;
pub mod sidecar;
pub mod wait;

pub use backend::{EchoServer, TcpEchoServer};
pub use client::{Addressing, Client, Outcomes, Reply, Req};
pub use control::{ControlOpts, ControlPlane, traffic_policy};
pub use fixture::{
    Caller, Instance, dump_algorithm, dump_cluster, dump_endpoints, wait_for_traffic_to,
};
pub use grpc::GrpcEchoServer;
pub use grpc_health::{GrpcHealthServer, ServingStatus};
pub use log::TestLog;
pub use process::Process;
pub use sidecar::{
    Sidecar, SidecarOpts, control_client, create_join_token, create_join_token_with, json_mentions,
    metric_sum, proxy_startup_error, wait_for_proxy_config,
};
pub use wait::{wait_for, wait_until};

use std::time::Duration;

/// Default deadline for a condition in an end-to-end test. Generous: a loaded 2-core machine
/// running several test binaries at once is slow, and a deadline only bounds a failure.
pub const DEADLINE: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests;
