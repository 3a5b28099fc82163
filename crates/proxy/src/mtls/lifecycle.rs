//! The sidecar's identity lifecycle: with a join token, obtain the first certificate from the
//! control plane's CA before registering (retried with capped backoff, each failure logged),
//! publish it in `Shared::tls`, then keep it renewed at about 2/3 of its life. Rotation swaps
//! the certificate inside the [`Identity`]; the rustls configs read it at every handshake, so
//! established connections keep working and new handshakes show the new certificate.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::Tls;
use crate::identity::{CaClient, Identity, RotationOptions};
use crate::shared::Shared;

/// Retry timing for the first certificate and for renewals; the trust bundle as configured.
fn options(shared: &Shared) -> RotationOptions {
    RotationOptions {
        retry_base: Duration::from_millis(200),
        retry_max: Duration::from_secs(10),
        bundle_refresh: shared.config.trust_bundle_refresh,
        ..RotationOptions::default()
    }
}

/// The background tasks keeping the identity current; stopped when dropped.
#[derive(Debug)]
pub(crate) struct Rotation {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Rotation {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Obtains the workload certificate (waiting as long as it takes), publishes it and starts
/// its rotation.
pub(crate) async fn establish(shared: &Arc<Shared>, client: CaClient) -> Rotation {
    tracing::info!(
        control = client.base_url(),
        service = %shared.config.service,
        "requesting a workload certificate with the join token"
    );
    let options = options(shared);
    let tls = loop {
        let identity = Identity::bootstrap(&client, &options).await;
        match Tls::new(identity, shared.metrics.tls.clone()) {
            Ok(tls) => break Arc::new(tls),
            Err(e) => {
                tracing::error!(error = %e, "the workload certificate is unusable for mTLS; retrying");
                tokio::time::sleep(options.retry_max).await;
            }
        }
    };
    let identity = tls.identity.clone();
    let creds = identity.credentials();
    tracing::info!(
        spiffe_id = identity.spiffe_id(),
        serial = %creds.serial,
        not_after = ?creds.not_after,
        "mTLS identity ready: inbound connections need a mesh certificate"
    );
    if shared.tls.set(tls.clone()).is_err() {
        tracing::warn!("an identity was already installed; keeping it");
    }
    let rotation = identity.spawn_rotation(client, options);
    let metrics = tls.metrics.clone();
    let mut changes = identity.watch();
    let counter = tokio::spawn(async move {
        let mut seen = changes.borrow_and_update().cert;
        while changes.changed().await.is_ok() {
            let cert = changes.borrow_and_update().cert;
            if cert != seen {
                seen = cert;
                metrics.certificate_renewed();
            }
        }
    });
    Rotation {
        tasks: vec![rotation, counter],
    }
}
