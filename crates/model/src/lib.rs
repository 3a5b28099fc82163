//! Trellis' user-facing resources: their YAML/JSON form and their validation.
//!
//! This crate does no I/O. The control plane parses and validates what users apply
//! ([`parse_documents`], [`validate`]), stores the resulting [`Resource`]s, and the CLI
//! prints them. Field names follow Kubernetes Gateway API conventions (camelCase).

#![forbid(unsafe_code)]

mod duration;
mod faults;
mod health;
mod ratelimit;
pub mod reason;
mod registration;
mod resilience;
mod resource;
mod security;
mod validate;
pub mod wire;

pub use duration::{format_duration, parse_duration};
pub use faults::*;
pub use health::*;
pub use ratelimit::*;
pub use registration::{Health, InstanceRegistration, Protocol};
pub use resilience::*;
pub use resource::*;
pub use security::*;
pub use validate::{
    ApplyError, Document, DocumentError, KnownServices, METHODS, NoServices, check_dns_label,
    check_header_name, kind_and_name, parse_and_validate, parse_documents, parse_indexed, validate,
    validate_documents, validate_registration,
};
