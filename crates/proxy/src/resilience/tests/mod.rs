//! Table-style tests of the pure resilience decisions.

mod breaker;
mod budget;
mod outlier;
mod retry;
mod timeout;
