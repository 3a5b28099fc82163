//! Leasing this sidecar's share of its service's global rate limits from the control plane
//! (`POST /v1/ratelimit/lease`, docs/RESOURCES.md "Global rate limits"): at once when a new
//! limiter with global rules is installed, then every lease interval, reporting the demand
//! seen since the last lease. When the control plane has not answered for three intervals the
//! share falls back to the rule's rate divided by the service's endpoints this sidecar knows
//! (static stability: each sidecar then allows its equal share).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use trellis_model::{LeaseGrant, LeaseRequest};

use crate::control_tls::ControlHttp;
use crate::security::InboundSecurity;
use crate::shared::Shared;

/// The lease interval unless the control plane says otherwise.
const DEFAULT_LEASE: Duration = Duration::from_millis(500);

pub(crate) async fn run(shared: Arc<Shared>) {
    let http = match ControlHttp::new(
        shared.control.clone(),
        Duration::from_secs(1),
        Duration::from_secs(2),
    ) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "global rate limits: no control-plane client; using equal shares");
            return;
        }
    };
    let url = format!(
        "{}/v1/ratelimit/lease",
        shared.config.control_url.trim_end_matches('/')
    );
    let mut current: Option<Arc<InboundSecurity>> = None;
    let mut seen: HashMap<String, (u64, Instant)> = HashMap::new();
    let mut next = Instant::now();
    let mut interval = DEFAULT_LEASE;
    let mut last_grant = Instant::now();
    let mut changes = shared.live_changes();
    loop {
        // Marked seen before the load: a config published after it wakes the wait below.
        changes.borrow_and_update();
        let snap = shared.live.load();
        let leased = snap.inbound.as_ref().and_then(|security| {
            let limiter = security.ratelimit.as_ref()?;
            let rules = limiter.global_rules();
            (!rules.is_empty()).then_some((security, limiter, rules))
        });
        let Some((security, limiter, rules)) = leased else {
            // Nothing to lease: sleep until the next config, with no timer armed.
            current = None;
            if changes.changed().await.is_err() {
                return;
            }
            continue;
        };
        let fresh = current.as_ref().is_none_or(|c| !Arc::ptr_eq(c, security));
        let now = Instant::now();
        if !fresh && now < next {
            // Until the next lease is due, or sooner if the limiter is replaced or removed.
            tokio::select! {
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(next)) => {}
                changed = changes.changed() => if changed.is_err() { return },
            }
            continue;
        }
        if fresh {
            current = Some(Arc::clone(security));
            seen.clear();
            last_grant = now;
        }
        for rule in &rules {
            let (before, at) = seen.get(&rule.name).copied().unwrap_or((0, now));
            let elapsed = now.saturating_duration_since(at).as_secs_f64();
            let demand = if elapsed > 0.0 {
                rule.seen.saturating_sub(before) as f64 / elapsed
            } else {
                0.0
            };
            seen.insert(rule.name.clone(), (rule.seen, now));
            let req = LeaseRequest {
                service: shared.config.service.clone(),
                instance: shared.config.instance_id.clone(),
                rule: rule.name.clone(),
                demand,
            };
            match lease(&http, &url, &req).await {
                Ok(grant) => {
                    limiter.set_share(&rule.name, grant.tokens_per_second, grant.burst);
                    interval = Duration::from_millis(grant.lease_ms.clamp(50, 10_000));
                    last_grant = Instant::now();
                }
                Err(e) => {
                    tracing::debug!(error = %e, rule = %rule.name, "rate-limit lease failed");
                    if last_grant.elapsed() >= 3 * interval {
                        let n = snap
                            .clusters
                            .get(shared.config.service.as_str())
                            .map_or(1, |c| c.endpoints.len().max(1));
                        let burst = u32::try_from((rule.burst as usize).div_ceil(n)).unwrap_or(1);
                        limiter.set_share(&rule.name, rule.rate / n as f64, burst);
                    }
                }
            }
        }
        next = now + interval;
    }
}

async fn lease(http: &ControlHttp, url: &str, req: &LeaseRequest) -> Result<LeaseGrant, String> {
    let resp = http.get().post(url).json(req).send().await.map_err(|e| {
        http.refresh();
        format!("POST {url}: {e}")
    })?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        return Err(format!("POST {url}: status {status}: {body}"));
    }
    resp.json()
        .await
        .map_err(|e| format!("POST {url}: unexpected answer: {e}"))
}
