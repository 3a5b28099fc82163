//! SPIFFE IDs of mesh workloads: `spiffe://<trust-domain>/ns/<namespace>/svc/<service>`, and
//! the checks on their parts.

/// The namespace used when a token request names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The SPIFFE ID of `service` in `namespace`. The parts must have passed [`check_name`] and
/// [`check_trust_domain`].
pub fn workload_id(trust_domain: &str, namespace: &str, service: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/svc/{service}")
}

/// The namespace of the mesh's own components.
pub const SYSTEM_NAMESPACE: &str = "trellis-system";

/// The SPIFFE ID of the control plane's serving certificate.
pub fn control_id(trust_domain: &str) -> String {
    workload_id(trust_domain, SYSTEM_NAMESPACE, "control")
}

/// A trust domain as the SPIFFE spec allows it: lowercase letters, digits, `.`, `-`, `_`,
/// at most 255 characters.
pub fn check_trust_domain(td: &str) -> Result<(), String> {
    if td.is_empty() || td.len() > 255 {
        return Err(format!(
            "trust domain `{td}`: must be 1 to 255 characters (e.g. `cluster.local`)"
        ));
    }
    if let Some(c) = td
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!(
            "trust domain `{td}`: character `{c}` is not allowed (use lowercase letters, digits, \
             `.`, `-` and `_`)"
        ));
    }
    Ok(())
}

/// A namespace or service name: a DNS label (1 to 63 lowercase letters, digits or `-`,
/// starting and ending with a letter or digit). `field` names it in the error.
pub fn check_name(field: &str, name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(ok_char)
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{field} `{name}`: must be a DNS label: 1 to 63 lowercase letters, digits or `-`, \
             starting and ending with a letter or digit"
        ))
    }
}
