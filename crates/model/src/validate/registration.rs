//! Validation of instance registrations (`POST /v1/instances`).

use std::net::IpAddr;

use crate::InstanceRegistration;

use super::{check_dns_label, schema};

/// Checks a registration: service name a DNS label, id 1..=128 characters of
/// `[A-Za-z0-9._-]`, address an IP, port non-zero, weight 1..=128, ttl 100ms..=1h, label keys
/// non-empty. The error names the field, e.g.
/// `weight: 0 is out of range: must be between 1 and 128`.
pub fn validate_registration(r: &InstanceRegistration) -> Result<(), String> {
    let mut errors = Vec::new();
    if let Err(e) = check_dns_label(&r.service) {
        errors.push(format!("service: {e}"));
    }
    if r.id.is_empty() || r.id.len() > 128 {
        errors.push(format!(
            "id: must be 1 to 128 characters long, got {}",
            r.id.len()
        ));
    } else if let Some(c) =
        r.id.chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        errors.push(format!(
            "id: `{}` contains {c:?}: only letters, digits, `.`, `_` and `-` are allowed",
            schema::shorten(&r.id)
        ));
    }
    if r.address.parse::<IpAddr>().is_err() {
        errors.push(format!(
            "address: `{}` is not an IP address (e.g. 127.0.0.1 or ::1)",
            schema::shorten(&r.address)
        ));
    }
    if let Some(c) = &r.check
        && let Err(e) = crate::check_report(c)
    {
        errors.push(e);
    }
    if r.port == 0 {
        errors.push("port: must not be 0".to_string());
    }
    if !(1..=128).contains(&r.weight) {
        errors.push(format!(
            "weight: {} is out of range: must be between 1 and 128",
            r.weight
        ));
    }
    if !(100..=3_600_000).contains(&r.ttl_ms) {
        errors.push(format!(
            "ttl_ms: {} is out of range: must be between 100 and 3600000",
            r.ttl_ms
        ));
    }
    if r.labels.keys().any(String::is_empty) {
        errors.push("labels: keys must not be empty".to_string());
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}
