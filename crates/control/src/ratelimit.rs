//! Global rate limits without an external store: the sidecars of a service lease their shares
//! of a global rule from the control plane (`POST /v1/ratelimit/lease`) every
//! [`LEASE_INTERVAL`], reporting their recent demand. The rule's rate is split among the
//! sidecars that leased lately by demand, max-min fair: a sidecar wanting less than an equal
//! share gets what it wants (its demand plus 20%, at least a tenth of an equal share, so an
//! idle sidecar can still answer its first requests), the others split the rest equally. A grant never exceeds
//! what the other sharers' current leases leave free, so the shares held at any moment never
//! sum to more than the rule's rate (a sidecar whose demand grew gets more once the others
//! renew and release theirs: within two lease intervals). Accuracy and cost are in
//! docs/RESOURCES.md.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use trellis_model::{LeaseGrant, LeaseRequest};

/// How often sidecars lease.
pub const LEASE_INTERVAL: Duration = Duration::from_millis(500);

/// A sidecar that has not leased for this long no longer shares the rule.
pub const SHARER_EXPIRY: Duration = Duration::from_millis(1500);

#[derive(Debug, Clone, Copy)]
struct Sharer {
    demand: f64,
    seen: Instant,
    /// Tokens per second of its current lease.
    held: f64,
}

/// The sharers of every global rule, by (service, rule) then instance. Memory only: after a
/// restart the shares rebuild within one lease interval.
#[derive(Debug, Default)]
pub struct Leases {
    rules: Mutex<HashMap<(String, String), HashMap<String, Sharer>>>,
}

impl Leases {
    /// Records `req` at `now` and grants its share of `rate` tokens/s and `burst`.
    pub fn grant(&self, req: &LeaseRequest, rate: f64, burst: u32, now: Instant) -> LeaseGrant {
        let mut rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        // Forget rules nobody leased lately (policies deleted, services gone).
        rules.retain(|_, sharers| {
            sharers.retain(|_, s| now.saturating_duration_since(s.seen) < SHARER_EXPIRY);
            !sharers.is_empty()
        });
        let sharers = rules
            .entry((req.service.clone(), req.rule.clone()))
            .or_default();
        let demand = req.demand.max(0.0);
        sharers.insert(
            req.instance.clone(),
            Sharer {
                demand,
                seen: now,
                held: 0.0,
            },
        );
        let n = sharers.len();
        let fair = water_fill(
            rate,
            sharers
                .iter()
                .map(|(id, s)| (id.as_str(), wanted(s.demand, rate, n))),
        );
        let own_fair = fair
            .iter()
            .find(|(id, _)| *id == req.instance)
            .map_or(0.0, |(_, a)| *a);
        let others: f64 = sharers
            .iter()
            .filter(|(id, _)| **id != req.instance)
            .map(|(_, s)| s.held)
            .sum();
        let granted = own_fair.min(rate - others).max(0.0);
        if let Some(own) = sharers.get_mut(&req.instance) {
            own.held = granted;
        }
        let share = if rate > 0.0 { granted / rate } else { 0.0 };
        LeaseGrant {
            tokens_per_second: granted,
            burst: ((f64::from(burst) * share).round() as u32).max(1),
            lease_ms: u64::try_from(LEASE_INTERVAL.as_millis()).unwrap_or(500),
            sharers: n,
        }
    }
}

/// What a sharer asks for: its demand with 20% headroom (so growth shows), at least a tenth of
/// an equal share.
fn wanted(demand: f64, rate: f64, n: usize) -> f64 {
    (demand * 1.2).max(rate / (10.0 * n as f64))
}

/// Max-min fair split of `rate` (water-filling): sharers wanting less than an equal share of
/// what is left get what they want; the rest split the remainder equally; whatever nobody
/// wants is split equally among all.
fn water_fill<'a>(rate: f64, wants: impl Iterator<Item = (&'a str, f64)>) -> Vec<(&'a str, f64)> {
    let mut wants: Vec<(&str, f64)> = wants.collect();
    wants.sort_by(|a, b| a.1.total_cmp(&b.1));
    let mut left = rate;
    let mut out = Vec::with_capacity(wants.len());
    let count = wants.len();
    for (k, (id, want)) in wants.into_iter().enumerate() {
        let equal = left / (count - k) as f64;
        let a = want.min(equal);
        left -= a;
        out.push((id, a));
    }
    // Nobody wants the rest: split it equally rather than leave it unused.
    if left > 0.0 && count > 0 {
        let extra = left / count as f64;
        for (_, a) in &mut out {
            *a += extra;
        }
    }
    out
}

#[cfg(test)]
mod tests;
