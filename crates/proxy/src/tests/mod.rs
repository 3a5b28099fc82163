//! Forwarding tests: real listeners, real backends, a snapshot built directly.
mod forwarding;
