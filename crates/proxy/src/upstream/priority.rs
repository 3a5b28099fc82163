//! Envoy's priority load (docs/XDS.md, "Locality failover"): each priority level gets
//! `min(100, healthy% × overprovisioning_factor / 100)` of the traffic that the levels before
//! it left, so a level keeps everything while its available share stays above
//! `10000 / factor` percent and spills the rest to the next levels below that. When the levels
//! together are less than 100% healthy (after the factor), their shares are scaled up to sum
//! to 100 (Envoy's normalized total health). Pure: counts in, percentages out.

/// Available and total endpoints of one priority level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Level {
    pub available: usize,
    pub total: usize,
}

/// The share of traffic (percent, summing to 100) of each level. With no available endpoint
/// anywhere, everything goes to the first level (the caller's panic rule then decides).
pub(crate) fn priority_loads(levels: &[Level], overprovisioning: u32) -> Vec<f64> {
    let factor = f64::from(overprovisioning.max(1)) / 100.0;
    let health: Vec<f64> = levels
        .iter()
        .map(|l| {
            if l.total == 0 {
                0.0
            } else {
                (100.0 * factor * l.available as f64 / l.total as f64).min(100.0)
            }
        })
        .collect();
    let total_health = health.iter().sum::<f64>().min(100.0);
    let mut loads = vec![0.0; levels.len()];
    if total_health <= 0.0 {
        if let Some(first) = loads.first_mut() {
            *first = 100.0;
        }
        return loads;
    }
    let mut remaining = 100.0_f64;
    for (load, h) in loads.iter_mut().zip(&health) {
        let share = (h * 100.0 / total_health).min(remaining);
        *load = share;
        remaining -= share;
    }
    loads
}

/// The level a uniformly random `r` in `[0, 1)` falls into, given the loads.
pub(crate) fn choose(loads: &[f64], r: f64) -> usize {
    let mut acc = 0.0;
    let target = r * 100.0;
    for (i, l) in loads.iter().enumerate() {
        acc += l;
        if *l > 0.0 && target < acc {
            return i;
        }
    }
    // Rounding: the last level that takes any load.
    loads.iter().rposition(|l| *l > 0.0).unwrap_or(0)
}

#[cfg(test)]
mod tests;
