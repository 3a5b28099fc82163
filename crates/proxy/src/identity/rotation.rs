//! Keeping the identity current: renewal at about 2/3 of the certificate's lifetime (jittered,
//! retried with capped backoff while the old certificate stays in use) and periodic re-reads
//! of the trust bundle.

use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{CaClient, Identity, IdentityError};
use crate::backoff::Backoff;

/// When and how often to renew.
#[derive(Debug, Clone, PartialEq)]
pub struct RotationOptions {
    /// Renew at this fraction of the certificate's lifetime (default 2/3).
    pub renew_fraction: f64,
    /// Spread of the renewal moment, as a fraction of the lifetime either side (default 0.05),
    /// so that sidecars started together do not renew together.
    pub jitter: f64,
    /// First retry delay after a failed renewal (doubles up to `retry_max`).
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Re-read `GET /v1/trust-bundle` this often between renewals.
    pub bundle_refresh: Duration,
}

impl Default for RotationOptions {
    fn default() -> Self {
        RotationOptions {
            renew_fraction: 2.0 / 3.0,
            jitter: 0.05,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            bundle_refresh: Duration::from_secs(60),
        }
    }
}

/// The moment to renew a certificate valid from `not_before` to `not_after`:
/// `not_before + lifetime * (fraction + jitter * spread)`, with `spread` in `[-1, 1]`, kept
/// inside the validity period.
pub fn renew_at(
    not_before: SystemTime,
    not_after: SystemTime,
    options: &RotationOptions,
    spread: f64,
) -> SystemTime {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    let fraction =
        (options.renew_fraction + options.jitter * spread.clamp(-1.0, 1.0)).clamp(0.0, 1.0);
    not_before + lifetime.mul_f64(fraction)
}

/// The tokio instant of a wall-clock moment (now if it is past).
fn instant_of(at: SystemTime) -> Instant {
    Instant::now() + at.duration_since(SystemTime::now()).unwrap_or_default()
}

impl Identity {
    /// Obtains an identity from the control plane, retrying with capped backoff until it
    /// succeeds (a refused join token is retried too, slowly, and logged as an error: the
    /// operator may still create the token). Wrap it in a timeout or a select with shutdown.
    pub async fn bootstrap(client: &CaClient, options: &RotationOptions) -> Identity {
        let mut backoff = Backoff::new(options.retry_base, options.retry_max);
        loop {
            match Identity::request(client).await {
                Ok(identity) => {
                    tracing::info!(
                        spiffe_id = identity.spiffe_id(),
                        "workload certificate obtained"
                    );
                    return identity;
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    if matches!(e, IdentityError::Unauthorized { .. }) {
                        tracing::error!(error = %e, retry_in = ?delay, "cannot obtain a workload certificate");
                    } else {
                        tracing::warn!(error = %e, retry_in = ?delay, "cannot obtain a workload certificate");
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Starts the rotation task: renews at [`renew_at`] (and again when the certificate is
    /// replaced by someone else, the schedule follows the new one), retries failures with
    /// backoff while the current certificate stays in use, and re-reads the trust bundle every
    /// `bundle_refresh`. Abort the handle to stop it.
    pub fn spawn_rotation(&self, client: CaClient, options: RotationOptions) -> JoinHandle<()> {
        let identity = self.clone();
        tokio::spawn(async move { identity.rotate(client, options).await })
    }

    async fn rotate(self, client: CaClient, options: RotationOptions) {
        let mut changes = self.watch();
        let mut seen_cert = changes.borrow_and_update().cert;
        let mut backoff = Backoff::new(options.retry_base, options.retry_max);
        let schedule = |identity: &Identity| {
            let creds = identity.credentials();
            let spread = rand::random::<f64>() * 2.0 - 1.0;
            instant_of(renew_at(
                creds.not_before,
                creds.not_after,
                &options,
                spread,
            ))
        };
        let mut next_renew = schedule(&self);
        let mut next_bundle = Instant::now() + options.bundle_refresh;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next_renew.min(next_bundle)) => {}
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let cert = changes.borrow_and_update().cert;
                    if cert != seen_cert {
                        seen_cert = cert;
                        backoff.reset();
                        next_renew = schedule(&self);
                    }
                    continue;
                }
            }
            let now = Instant::now();
            if now >= next_renew {
                match self.renew(&client).await {
                    Ok(()) => {
                        seen_cert = changes.borrow_and_update().cert;
                        backoff.reset();
                        next_renew = schedule(&self);
                        next_bundle = Instant::now() + options.bundle_refresh;
                        let creds = self.credentials();
                        tracing::info!(spiffe_id = %creds.spiffe_id, serial = %creds.serial,
                            not_after = ?creds.not_after, "workload certificate renewed");
                    }
                    Err(e) => {
                        let delay = backoff.next_delay();
                        let expired = self.credentials().not_after <= SystemTime::now();
                        tracing::warn!(error = %e, retry_in = ?delay, expired,
                            "certificate renewal failed; keeping the current certificate");
                        next_renew = Instant::now() + delay;
                    }
                }
            } else {
                // The CA lists its signing root first: when that changes, renew at once, so
                // the old root can be removed without waiting out a certificate's life.
                let signing = self.trust_bundle().roots().first().cloned();
                match self.refresh_trust_bundle(&client).await {
                    Ok(true) => {
                        let bundle = self.trust_bundle();
                        tracing::info!(roots = bundle.roots().len(), "trust bundle updated");
                        if bundle.roots().first() != signing.as_ref() {
                            tracing::info!("the CA switched its signing root; renewing now");
                            next_renew = Instant::now();
                        }
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "trust bundle refresh failed"),
                }
                next_bundle = Instant::now() + options.bundle_refresh;
            }
        }
    }
}
