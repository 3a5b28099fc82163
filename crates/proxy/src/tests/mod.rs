//! Listener tests: real listeners, real backends, a snapshot built directly (forwarding;
//! inbound admission).
mod forwarding;
mod inbound_policy;
mod reasons;
