//! What the two binaries share: `trellis` (control plane, sidecar, CLI and demo in one) and
//! `trellis-proxy` (the sidecar alone, for sidecar images: it links none of the control plane,
//! so it maps less code). Both only parse flags, set up logging and the runtime, and dispatch;
//! the work lives in the library crates.

#![forbid(unsafe_code)]

pub mod proxy_cmd;
pub mod ready;
pub mod startup;
