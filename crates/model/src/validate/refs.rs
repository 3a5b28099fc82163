//! Cross-references: services and subsets named by routes and policies must exist, in the
//! file being applied or in what the control plane already knows.

use std::collections::{BTreeMap, BTreeSet};

use crate::{AuthorizationPolicyResource, Protocol, Resource};

use super::{Document, DocumentError, Issue, KnownServices, kind_and_name, schema};

/// The cross-reference errors of `docs`.
pub(super) fn cross_check(
    source: &str,
    docs: &[Document],
    known: &dyn KnownServices,
    broken_services: &BTreeSet<String>,
) -> Vec<DocumentError> {
    // Services declared in the batch, with their subsets (these win over the store's).
    let batch: BTreeMap<&str, Vec<&str>> = docs
        .iter()
        .filter_map(|d| match &d.resource {
            Resource::Service(s) => Some((
                s.metadata.name.as_str(),
                s.spec.subsets.iter().map(|x| x.name.as_str()).collect(),
            )),
            _ => None,
        })
        .collect();
    // Protocols declared in the batch (these win over the store's).
    let protocols: BTreeMap<&str, Protocol> = docs
        .iter()
        .filter_map(|d| match &d.resource {
            Resource::Service(s) => Some((s.metadata.name.as_str(), s.spec.protocol)),
            _ => None,
        })
        .collect();
    let protocol_of = |name: &str| {
        protocols
            .get(name)
            .copied()
            .or_else(|| known.protocol(name))
    };
    let mut errors = Vec::new();
    for doc in docs {
        let mut issues = Vec::new();
        let service = |field: &str, name: &str, issues: &mut Vec<Issue>| -> bool {
            let exists = batch.contains_key(name)
                || broken_services.contains(name)
                || known.service_exists(name);
            if !exists {
                issues.push(Issue::new(
                    field,
                    format!(
                        "service `{}` does not exist: declare it with a Service document or register an instance of it",
                        schema::shorten(name)
                    ),
                ));
            }
            exists
        };
        match &doc.resource {
            Resource::Service(_) => {}
            Resource::TrafficPolicy(p) => {
                service("spec.targetRef.name", &p.spec.target_ref.name, &mut issues);
            }
            Resource::AuthorizationPolicy(p) => {
                if let Some(target) = &p.spec.target_ref
                    && service("spec.targetRef.name", &target.name, &mut issues)
                    && protocol_of(&target.name) == Some(Protocol::Tcp)
                {
                    tcp_target(p, &target.name, &mut issues);
                }
            }
            Resource::RateLimitPolicy(p) => {
                if service("spec.targetRef.name", &p.spec.target_ref.name, &mut issues)
                    && protocol_of(&p.spec.target_ref.name) == Some(Protocol::Tcp)
                {
                    issues.push(Issue::new(
                        "spec.targetRef.name",
                        format!(
                            "service `{}` is a TCP service (protocol: tcp): rate limits count HTTP requests; limit an HTTP service",
                            p.spec.target_ref.name
                        ),
                    ));
                }
            }
            Resource::RequestAuthentication(a) => {
                if let Some(target) = &a.spec.target_ref {
                    service("spec.targetRef.name", &target.name, &mut issues);
                }
            }
            Resource::HttpRoute(h) => {
                for (i, p) in h.spec.parent_refs.iter().enumerate() {
                    service(&format!("spec.parentRefs[{i}].name"), &p.name, &mut issues);
                }
                for (r, rule) in h.spec.rules.iter().enumerate() {
                    for (b, backend) in rule.backend_refs.iter().enumerate() {
                        let at = format!("spec.rules[{r}].backendRefs[{b}]");
                        let exists = service(&format!("{at}.name"), &backend.name, &mut issues);
                        let Some(subset) = &backend.subset else {
                            continue;
                        };
                        if !exists
                            || (broken_services.contains(backend.name.as_str())
                                && !batch.contains_key(backend.name.as_str()))
                        {
                            continue;
                        }
                        let declared: Vec<String> = match batch.get(backend.name.as_str()) {
                            Some(subsets) => subsets.iter().map(|s| s.to_string()).collect(),
                            None => known.subsets(&backend.name),
                        };
                        if !declared.iter().any(|d| d == subset) {
                            let listed = if declared.is_empty() {
                                "it declares no subsets".to_string()
                            } else {
                                format!("declared: {}", declared.join(", "))
                            };
                            issues.push(Issue::new(
                                &format!("{at}.subset"),
                                format!(
                                    "subset `{}` is not declared on service `{}` ({listed}): add it to the Service's spec.subsets",
                                    schema::shorten(subset),
                                    backend.name
                                ),
                            ));
                        }
                    }
                }
            }
        }
        let subject = Some(kind_and_name(&doc.resource));
        errors.extend(issues.into_iter().map(|i| DocumentError {
            source: source.to_string(),
            document: doc.index,
            subject: subject.clone(),
            field: i.field,
            reason: i.reason,
        }));
    }
    errors
}

/// An AuthorizationPolicy whose target is a TCP service may only match on `from`: a TCP
/// connection has no method, path, header or token.
fn tcp_target(p: &AuthorizationPolicyResource, service: &str, issues: &mut Vec<Issue>) {
    let service = schema::shorten(service);
    for (r, rule) in p.spec.rules.iter().enumerate() {
        let hint = |part: &str, what: &str| {
            format!(
                "service `{service}` is a TCP service (protocol: tcp): a connection has no {what}, \
                 so `{part}` can never be checked; match callers with `from` (principals, \
                 namespaces, notPrincipals) only, or declare the service with an HTTP protocol"
            )
        };
        if !rule.to.is_empty() {
            issues.push(Issue::new(
                &format!("spec.rules[{r}].to"),
                hint("to", "method, path or headers"),
            ));
        }
        if !rule.when.is_empty() {
            issues.push(Issue::new(
                &format!("spec.rules[{r}].when"),
                hint("when", "token claims"),
            ));
        }
    }
}
