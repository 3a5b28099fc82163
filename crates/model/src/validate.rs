//! Parsing and validation of applied documents. (Being written: see docs/RESOURCES.md.)

use std::fmt;

use crate::{InstanceRegistration, Resource};

/// One problem in one document, naming the file, document, field and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentError {
    /// File name (or `-` for stdin, or whatever the caller names the source).
    pub source: String,
    /// 1-based index of the document in the file.
    pub document: usize,
    /// `Kind name` when known, e.g. `HTTPRoute catalog-canary`.
    pub subject: Option<String>,
    /// Field path, e.g. `spec.rules[0].backendRefs[1].weight`; empty for whole-document errors.
    pub field: String,
    pub reason: String,
}

impl fmt::Display for DocumentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.source, self.document)?;
        if let Some(s) = &self.subject {
            write!(f, " ({s})")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// Every error found in a file. When this is returned, nothing was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyError {
    pub errors: Vec<DocumentError>,
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.errors {
            writeln!(f, "{e}")?;
        }
        write!(f, "{} error(s); nothing was applied", self.errors.len())
    }
}

impl std::error::Error for ApplyError {}

/// What validation needs to know about services outside the file being applied.
pub trait KnownServices {
    /// True when the service is declared by a stored Service resource or has registered instances.
    fn service_exists(&self, name: &str) -> bool;
    /// Subset names declared by the stored Service resource of that name, if any.
    fn subsets(&self, service: &str) -> Vec<String>;
}

/// Parses a multi-document YAML text into resources, checking syntax, shape (unknown fields,
/// kinds, types) and per-field rules. `source` names the file in errors.
pub fn parse_documents(source: &str, text: &str) -> Result<Vec<Resource>, ApplyError> {
    let _ = (source, text);
    unimplemented!("parse_documents")
}

/// Checks cross-references of `resources` (services and subsets named by routes and policies)
/// against `known` plus the resources themselves.
pub fn validate(
    source: &str,
    resources: &[Resource],
    known: &dyn KnownServices,
) -> Result<(), ApplyError> {
    let _ = (source, resources, known);
    unimplemented!("validate")
}

/// Checks a registration: service name a DNS label, id non-empty, address an IP, port non-zero,
/// weight 1..=128, ttl 100ms..=1h. The error names the field.
pub fn validate_registration(r: &InstanceRegistration) -> Result<(), String> {
    let _ = r;
    unimplemented!("validate_registration")
}
