//! An instance as the API returns it: its registration, heartbeat and health state.

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use trellis_model::{CheckStatus, Health, InstanceRegistration};

use super::{InstanceState, checks};

/// An instance as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceView {
    #[serde(flatten)]
    pub registration: InstanceRegistration,
    pub health: Health,
    /// Its heartbeats lapsed, but self-preservation keeps it as an endpoint.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
    pub last_heartbeat_ms_ago: u64,
    pub registered_at_ms: u64,
    /// passing / warning / critical: the heartbeat and every check together
    /// ([`checks`]); only passing instances are endpoints.
    pub status: CheckStatus,
    /// Why it is not passing (empty when it is).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status_output: String,
    /// The sidecar's check and the app's TTL checks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<checks::CheckView>,
}

pub(super) fn view_of(i: &InstanceState, now: Instant) -> InstanceView {
    InstanceView {
        registration: i.registration.clone(),
        health: if i.healthy {
            Health::Healthy
        } else {
            Health::Unhealthy
        },
        held: i.held,
        last_heartbeat_ms_ago: u64::try_from(i.since_heartbeat(now).as_millis())
            .unwrap_or(u64::MAX),
        registered_at_ms: i.registered_at_ms,
        status: checks::status_of(i),
        status_output: checks::output_of(i),
        checks: checks::views(i, now),
    }
}
