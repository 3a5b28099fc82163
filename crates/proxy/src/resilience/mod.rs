//! Failure recovery on the outbound path, as small policies each decided by pure functions
//! and tested on their own (docs/RESOURCES.md, "Failure recovery"):
//!
//! - [`timeout`]: which deadline applies (the route's, a smaller `grpc-timeout`);
//! - [`retry`]: whether an attempt's outcome may be retried, and the backoff before it;
//! - [`budget`]: the per-cluster retry budget, so an outage never becomes a retry storm;
//! - [`outlier`]: passive outlier detection (consecutive errors, success rate), ejection
//!   times, max ejection percent and the panic threshold;
//! - [`breaker`]: per-cluster circuit breakers (concurrent requests and retries);
//! - [`fault`]: fault injection (delays and aborts for a share of the requests).
//!
//! [`crate::outbound`] dispatches a request through them only when its route or cluster has
//! a policy (or a gRPC request carries `grpc-timeout`); every other request keeps the
//! unboxed single-try fast path.

pub mod breaker;
pub mod budget;
pub mod fault;
pub mod outlier;
pub mod retry;
pub mod timeout;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

pub use breaker::Breaker;
pub use budget::RetryBudget;
pub use outlier::{OutlierConfig, OutlierDetector};
pub use retry::RetryPolicy;

/// Timeouts, retries and faults of one route (from `RouteAction` and the fault filter's
/// per-route config).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RoutePolicy {
    /// The whole request until the response head, retries included.
    pub request_timeout: Option<Duration>,
    /// One try.
    pub per_try_timeout: Option<Duration>,
    /// `None`: no retries.
    pub retry: Option<RetryPolicy>,
    /// `None`: no fault injection.
    pub faults: Option<Arc<fault::FaultPolicy>>,
}

/// Circuit breakers, retry budget and outlier detection of one cluster (from the `Cluster`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClusterPolicy {
    pub breakers: Option<breaker::Limits>,
    pub budget: Option<budget::BudgetConfig>,
    pub outlier: Option<OutlierConfig>,
}

impl ClusterPolicy {
    pub fn is_empty(&self) -> bool {
        self.breakers.is_none() && self.budget.is_none() && self.outlier.is_none()
    }
}

/// The stable `x-trellis-reason` tokens of the resilience layers.
pub mod reason {
    pub const UPSTREAM_TIMEOUT: &str = "upstream_timeout";
    pub const RETRY_BUDGET_EXHAUSTED: &str = "retry_budget_exhausted";
    pub const CIRCUIT_OPEN: &str = "circuit_open";
    pub const FAULT_ABORT: &str = trellis_model::wire::FAULT_ABORT_REASON;
}
