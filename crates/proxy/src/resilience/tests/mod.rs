//! Table-style tests of the pure resilience decisions.

mod breaker;
mod budget;
mod fault;
mod outlier;
mod retry;
mod timeout;
