//! The Trellis control plane: registry, store, xDS server and admin API.

#![forbid(unsafe_code)]

pub mod snapshot;
pub mod xds;
