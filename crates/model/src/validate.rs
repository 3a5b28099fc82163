//! Parsing and validation of applied documents (docs/RESOURCES.md).
//!
//! A file goes through four steps, and every error of every document is collected before
//! anything is returned:
//! 1. [`split`] cuts it into documents at `---` lines, keeping each one's 1-based index;
//! 2. each document is parsed into an untyped tree (YAML syntax errors, with line and column),
//!    its `kind` and `apiVersion` are read, and the tree is checked against the kind's
//!    [`schema`] (unknown fields, missing fields, wrong types, number ranges, with full paths);
//! 3. the tree is deserialized into the typed [`Resource`] and the per-field [`rules`] run
//!    (DNS labels, header names, regexes, load-balancer options...);
//! 4. cross-references (services and subsets named by routes and policies) are checked
//!    against the file itself plus what the caller knows ([`KnownServices`]).
//!
//! The control plane calls [`parse_and_validate`]; the CLI calls [`parse_documents`] to show
//! syntax and shape errors without a server.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::Value;

use crate::{API_VERSION, Kind, Protocol, Resource};

mod faults;
mod ratelimit;
mod refs;
mod registration;
mod resilience;
mod rules;
mod schema;
mod security;
mod split;
#[cfg(test)]
mod tests;

pub use registration::validate_registration;
pub use rules::{METHODS, check_dns_label, check_header_name};

use refs::cross_check;

/// At most this many errors are listed per document; the rest are counted.
const MAX_ERRORS_PER_DOCUMENT: usize = 25;

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
    /// The service's protocol when it is known: declared by its Service resource, or
    /// registered by its instances. `None` when unknown (validation then checks nothing
    /// protocol-specific; the sidecar's rules for TCP apply, docs/RESOURCES.md).
    fn protocol(&self, service: &str) -> Option<Protocol> {
        let _ = service;
        None
    }
}

/// Knows no services: cross-references can then only point into the file itself.
pub struct NoServices;

impl KnownServices for NoServices {
    fn service_exists(&self, _name: &str) -> bool {
        false
    }
    fn subsets(&self, _service: &str) -> Vec<String> {
        Vec::new()
    }
}

/// A parsed resource with the 1-based index of its document in the file (empty documents are
/// skipped but still counted, so the index is the one the user sees).
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub index: usize,
    pub resource: Resource,
}

/// One problem at one field path, before it is tied to a file and document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Issue {
    pub field: String,
    pub reason: String,
}

impl Issue {
    pub(crate) fn new(field: &str, reason: String) -> Issue {
        Issue {
            field: field.to_string(),
            reason,
        }
    }
}

/// Parses a multi-document YAML text into resources, checking syntax, shape (unknown fields,
/// kinds, types) and per-field rules. `source` names the file in errors. Empty documents are
/// skipped. Cross-references are not checked: see [`validate`] and [`parse_and_validate`].
pub fn parse_documents(source: &str, text: &str) -> Result<Vec<Resource>, ApplyError> {
    parse_indexed(source, text).map(|docs| docs.into_iter().map(|d| d.resource).collect())
}

/// Like [`parse_documents`], keeping each resource's document index for later errors.
pub fn parse_indexed(source: &str, text: &str) -> Result<Vec<Document>, ApplyError> {
    let parsed = parse_all(source, text);
    if parsed.errors.is_empty() {
        Ok(parsed.documents)
    } else {
        Err(ApplyError {
            errors: parsed.errors,
        })
    }
}

/// Parses and validates a whole file: every syntax, shape, field and cross-reference error of
/// every document at once. This is what `POST /v1/resources` runs.
pub fn parse_and_validate(
    source: &str,
    text: &str,
    known: &dyn KnownServices,
) -> Result<Vec<Resource>, ApplyError> {
    let parsed = parse_all(source, text);
    let mut errors = parsed.errors;
    errors.extend(cross_check(
        source,
        &parsed.documents,
        known,
        &parsed.broken_services,
    ));
    if errors.is_empty() {
        Ok(parsed.documents.into_iter().map(|d| d.resource).collect())
    } else {
        errors.sort_by_key(|e| e.document);
        Err(ApplyError { errors })
    }
}

/// Checks cross-references of `resources` (services and subsets named by routes and policies)
/// against `known` plus the resources themselves. Errors number documents by position in
/// `resources` (1-based); use [`validate_documents`] to keep the file's own indices.
pub fn validate(
    source: &str,
    resources: &[Resource],
    known: &dyn KnownServices,
) -> Result<(), ApplyError> {
    let docs: Vec<Document> = resources
        .iter()
        .enumerate()
        .map(|(i, r)| Document {
            index: i + 1,
            resource: r.clone(),
        })
        .collect();
    validate_documents(source, &docs, known)
}

/// Checks cross-references of parsed documents against `known` plus the documents themselves.
pub fn validate_documents(
    source: &str,
    docs: &[Document],
    known: &dyn KnownServices,
) -> Result<(), ApplyError> {
    let errors = cross_check(source, docs, known, &BTreeSet::new());
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApplyError { errors })
    }
}

/// `Kind name` of a resource, as used in error subjects: `HTTPRoute catalog-canary`.
pub fn kind_and_name(r: &Resource) -> String {
    format!("{} {}", r.kind(), r.name())
}

struct Parsed {
    documents: Vec<Document>,
    errors: Vec<DocumentError>,
    /// Services declared by Service documents that failed to parse: references to them are
    /// not reported as dangling (the document's own errors already are).
    broken_services: BTreeSet<String>,
}

fn parse_all(source: &str, text: &str) -> Parsed {
    let mut out = Parsed {
        documents: Vec::new(),
        errors: Vec::new(),
        broken_services: BTreeSet::new(),
    };
    let mut seen: BTreeMap<(Kind, String), usize> = BTreeMap::new();
    for chunk in split::split(text) {
        if chunk.is_blank() {
            continue;
        }
        let mut report = |subject: Option<String>, issues: Vec<Issue>| {
            for issue in issues {
                out.errors.push(DocumentError {
                    source: source.to_string(),
                    document: chunk.index,
                    subject: subject.clone(),
                    field: issue.field,
                    reason: issue.reason,
                });
            }
        };
        let value: Value = match serde_saphyr::from_str(&chunk.text) {
            Ok(Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                report(None, vec![yaml_issue(&e, chunk.first_line)]);
                continue;
            }
        };
        let (kind, subject, mut issues) = read_header(&value);
        let Some(kind) = kind else {
            report(subject, issues);
            continue;
        };
        if let Some(name) = value.pointer("/metadata/name").and_then(Value::as_str) {
            match seen.get(&(kind, name.to_string())) {
                Some(first) => issues.push(Issue::new(
                    "metadata.name",
                    format!(
                        "{kind} `{}` is also defined in document {first}: each resource may appear once per file",
                        schema::shorten(name)
                    ),
                )),
                None => {
                    seen.insert((kind, name.to_string()), chunk.index);
                }
            }
        }
        let shape = match kind {
            Kind::Service => &schema::SERVICE,
            Kind::TrafficPolicy => &schema::TRAFFIC_POLICY,
            Kind::HttpRoute => &schema::HTTP_ROUTE,
            Kind::AuthorizationPolicy => &schema::AUTHORIZATION_POLICY,
            Kind::RequestAuthentication => &schema::REQUEST_AUTHENTICATION,
            Kind::RateLimitPolicy => &ratelimit::RATE_LIMIT_POLICY,
        };
        let shape_errors = {
            let before = issues.len();
            schema::check(&value, shape, "", &mut issues);
            issues.len() > before
        };
        let service_name = (kind == Kind::Service)
            .then(|| value.pointer("/metadata/name").and_then(Value::as_str))
            .flatten()
            .map(str::to_string);
        let typed = match serde_json::from_value::<Resource>(value) {
            Ok(resource) => {
                rules::check_resource(&resource, &mut issues);
                Some(resource)
            }
            Err(e) => {
                if !shape_errors {
                    issues.push(Issue::new("", e.to_string()));
                }
                None
            }
        };
        match typed {
            Some(resource) if issues.is_empty() => out.documents.push(Document {
                index: chunk.index,
                resource,
            }),
            _ => {
                if let Some(name) = service_name {
                    out.broken_services.insert(name);
                }
                report(subject, dedupe_and_cap(issues));
            }
        }
    }
    out
}

/// Reads `kind`, `apiVersion` and `metadata.name` from the untyped tree. Returns the kind when
/// it is known, the error subject, and the problems found.
fn read_header(value: &Value) -> (Option<Kind>, Option<String>, Vec<Issue>) {
    let mut issues = Vec::new();
    let known = || {
        Kind::ALL
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(map) = value.as_object() else {
        issues.push(Issue::new(
            "",
            format!(
                "expected a map with apiVersion, kind, metadata and spec, found {}",
                schema::describe(value)
            ),
        ));
        return (None, None, issues);
    };
    let name = map
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str);
    let written_kind = map.get("kind");
    let kind = match written_kind {
        None => {
            issues.push(Issue::new(
                "kind",
                format!("missing: set it to one of {}", known()),
            ));
            None
        }
        Some(Value::String(s)) => {
            let exact = Kind::ALL.into_iter().find(|k| k.as_str() == s);
            if exact.is_none() {
                let hint = Kind::parse(s)
                    .map(|k| format!(" (did you mean `{k}`?)"))
                    .unwrap_or_default();
                issues.push(Issue::new(
                    "kind",
                    format!(
                        "unknown kind `{}`: expected one of {}{hint}",
                        schema::shorten(s),
                        known()
                    ),
                ));
            }
            exact
        }
        Some(other) => {
            issues.push(Issue::new(
                "kind",
                format!(
                    "expected one of {}, found {}",
                    known(),
                    schema::describe(other)
                ),
            ));
            None
        }
    };
    let subject = match (written_kind.and_then(Value::as_str), name) {
        (Some(k), Some(n)) => Some(format!("{} {}", schema::shorten(k), schema::shorten(n))),
        (Some(k), None) => Some(schema::shorten(k)),
        (None, Some(n)) => Some(schema::shorten(n)),
        (None, None) => None,
    };
    match map.get("apiVersion") {
        Some(Value::String(v)) if v == API_VERSION => {}
        Some(Value::String(v)) => issues.push(Issue::new(
            "apiVersion",
            format!(
                "`{}` is not supported: use {API_VERSION}",
                schema::shorten(v)
            ),
        )),
        // Missing or not a string: the schema reports it.
        _ if kind.is_some() => {}
        None => issues.push(Issue::new(
            "apiVersion",
            format!("missing: set it to {API_VERSION}"),
        )),
        Some(other) => issues.push(Issue::new(
            "apiVersion",
            format!("expected {API_VERSION}, found {}", schema::describe(other)),
        )),
    }
    (kind, subject, issues)
}

/// A YAML syntax error as one line, with the line number in the whole file.
fn yaml_issue(e: &serde_saphyr::Error, first_line: usize) -> Issue {
    let rendered = e.to_string();
    let mut msg = rendered.lines().next().unwrap_or("invalid YAML").trim();
    msg = msg.strip_prefix("error:").unwrap_or(msg).trim();
    // Drop serde-saphyr's own `line N column M:` (relative to the document) for ours.
    if msg.starts_with("line ")
        && let Some((_, rest)) = msg.split_once(": ")
    {
        msg = rest;
    }
    let reason = match e.location() {
        Some(loc) if loc.line() > 0 => {
            let line = loc.line().saturating_add(first_line as u64);
            format!("invalid YAML at line {line} column {}: {msg}", loc.column())
        }
        _ => format!("invalid YAML: {msg}"),
    };
    Issue::new("", reason)
}

/// Drops repeated issues (the schema and the rules may both report a range) and keeps at most
/// [`MAX_ERRORS_PER_DOCUMENT`].
fn dedupe_and_cap(issues: Vec<Issue>) -> Vec<Issue> {
    let mut seen = BTreeSet::new();
    let mut out: Vec<Issue> = issues
        .into_iter()
        .filter(|i| seen.insert((i.field.clone(), i.reason.clone())))
        .collect();
    if out.len() > MAX_ERRORS_PER_DOCUMENT {
        let more = out.len() - MAX_ERRORS_PER_DOCUMENT;
        out.truncate(MAX_ERRORS_PER_DOCUMENT);
        out.push(Issue::new(
            "",
            format!("{more} more error(s) in this document not shown"),
        ));
    }
    out
}
