//! The identity check on registrations: an instance may only claim its own service's SPIFFE
//! ID in this mesh's trust domain (docs/XDS.md, "Security").

/// A registration's `identity` must be exactly its service's SPIFFE ID in this mesh.
pub fn check_identity(
    trust_domain: &str,
    namespace: &str,
    service: &str,
    identity: &str,
) -> Result<(), String> {
    let want = trellis_model::wire::spiffe_id(trust_domain, namespace, service);
    if identity == want {
        return Ok(());
    }
    let shown = if identity.len() > 200 {
        format!("{}...", identity.chars().take(200).collect::<String>())
    } else {
        identity.to_string()
    };
    let domain = identity
        .strip_prefix("spiffe://")
        .and_then(|rest| rest.split('/').next());
    let hint = match domain {
        None => "it is not a SPIFFE ID (spiffe://<trust-domain>/ns/<namespace>/svc/<service>)"
            .to_string(),
        Some(d) if d != trust_domain => {
            format!("its trust domain `{d}` is not this mesh's (`{trust_domain}`)")
        }
        Some(_) => format!(
            "an instance of `{service}` (namespace `{namespace}`) may only claim its service's \
             identity"
        ),
    };
    Err(format!(
        "identity: `{shown}` is not the SPIFFE ID of service `{service}`: {hint}; expected \
         `{want}` (the URI SAN of the certificate the CA issues for this service)"
    ))
}
