//! Self-preservation: when many instances miss their heartbeats at once, the likelier story
//! is that the control plane is cut off from them, not that they all died. The registry then
//! marks at most a fraction of all instances unhealthy (longest silent first) and keeps the
//! rest as endpoints until their heartbeats return, so proxies never receive an empty endpoint
//! set because of a partition. While it holds any instance, the registry removes none for
//! missed heartbeats (the evicted ones stay listed, unhealthy): removing them would shrink the
//! total the limit is a fraction of, and evict the held ones in turn. Small meshes (fewer than
//! [`MIN_INSTANCES`]) are exempt: losing one of two instances is an ordinary failure.

use std::collections::BTreeSet;
use std::time::Duration;

/// Below this many registered instances every lapsed instance may be evicted.
pub const MIN_INSTANCES: usize = 3;

/// How many of `total` instances may be unhealthy at once (`max_fraction` in `0.0..=1.0`).
pub fn eviction_limit(total: usize, max_fraction: f64) -> usize {
    if total < MIN_INSTANCES {
        return total;
    }
    let limit = (total as f64 * max_fraction.clamp(0.0, 1.0)).floor();
    // `limit` is within 0..=total, so the cast is exact.
    (limit as usize).min(total)
}

/// Of the lapsed instances (key, time since their last heartbeat), those kept as endpoints:
/// all beyond the first `limit` when sorted longest silent first (ties by key).
pub fn held<K: Ord + Clone>(mut lapsed: Vec<(Duration, K)>, limit: usize) -> BTreeSet<K> {
    lapsed.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    lapsed.into_iter().skip(limit).map(|(_, k)| k).collect()
}

#[cfg(test)]
mod tests;
