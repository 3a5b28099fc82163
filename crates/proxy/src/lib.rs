//! The Trellis sidecar: the data plane.

#![forbid(unsafe_code)]

pub mod balance;
