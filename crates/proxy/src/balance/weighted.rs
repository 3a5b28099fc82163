//! Weighted: smooth weighted round robin, lock-free on the hot path.
//!
//! The common case (the sum of the weights, after dividing by their gcd, is at most
//! [`MAX_SCHEDULE`]) precomputes one cycle of picks at build time and walks it with an atomic
//! counter, so a pick is a `fetch_add` and a load, and every full cycle honours the weights
//! exactly. The cycle is a stride (earliest-deadline-first) schedule: endpoint `i`'s `k`-th
//! slot sits at `(k + phase_i) / w_i`, so its picks are evenly spaced — in any window of the
//! cycle it gets its share within one pick, and there are no long runs of one endpoint. The
//! phases are spread by the golden ratio so light endpoints do not all land in the same gap
//! (weights 5:1:1 give `a b a a a c a`, runs of at most 3 even across cycles, where equal phases
//! would give `a a a b c a a`, a run of 5 across the cycle boundary).
//!
//! A larger total (weights in the tens of thousands that share no factor) would make the table
//! too big, so it falls back to Vose's alias method: an O(1) random pick that respects the
//! weights in expectation, without the deterministic spread.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Balance, EndpointMeta, LoadGuard, Picked, random_f64, random_index};

/// Longest precomputed cycle (entries are `u16`, 128 KiB at most). Every endpoint has at least
/// one slot, so a schedule never holds more than `u16::MAX + 1` endpoints.
const MAX_SCHEDULE: u64 = 1 << 16;

#[derive(Debug)]
pub(crate) struct Weighted {
    len: usize,
    plan: Plan,
}

#[derive(Debug)]
enum Plan {
    Schedule {
        slots: Vec<u16>,
        next: AtomicUsize,
    },
    Alias {
        /// Probability of keeping the drawn column rather than taking its alias.
        keep: Vec<f64>,
        alias: Vec<usize>,
    },
}

impl Weighted {
    pub(crate) fn new(endpoints: &[EndpointMeta]) -> Self {
        let weights: Vec<u64> = endpoints
            .iter()
            .map(|e| u64::from(e.weight.max(1)))
            .collect();
        let divisor = weights.iter().copied().fold(0, gcd).max(1);
        let weights: Vec<u64> = weights.iter().map(|w| w / divisor).collect();
        let total: u64 = weights.iter().sum();
        let plan = if total <= MAX_SCHEDULE {
            Plan::Schedule {
                slots: schedule(&weights),
                next: AtomicUsize::new(0),
            }
        } else {
            let (keep, alias) = alias_table(&weights, total);
            Plan::Alias { keep, alias }
        };
        Weighted {
            len: endpoints.len(),
            plan,
        }
    }
}

impl Balance for Weighted {
    fn pick(&self, _hash: Option<u64>) -> Option<Picked> {
        if self.len == 0 {
            return None;
        }
        let index = match &self.plan {
            Plan::Schedule { slots, next } => {
                let ticket = next.fetch_add(1, Ordering::Relaxed);
                usize::from(slots[ticket % slots.len()])
            }
            Plan::Alias { keep, alias } => {
                let column = random_index(keep.len());
                if random_f64() < keep[column] {
                    column
                } else {
                    alias[column]
                }
            }
        };
        Some(Picked {
            index,
            load: LoadGuard::none(),
        })
    }

    fn len(&self) -> usize {
        self.len
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// One cycle of the stride schedule: `sum(weights)` slots, endpoint `i` in `weights[i]` of them.
/// Callers guarantee the sum is at most [`MAX_SCHEDULE`], so indices fit in `u16`.
fn schedule(weights: &[u64]) -> Vec<u16> {
    const GOLDEN: f64 = 0.618_033_988_749_894_9;
    let mut slots: Vec<(f64, u16)> = Vec::new();
    for (i, &w) in weights.iter().enumerate() {
        let phase = (0.5 + i as f64 * GOLDEN).fract();
        let index = u16::try_from(i).unwrap_or(u16::MAX);
        for k in 0..w {
            slots.push(((k as f64 + phase) / w as f64, index));
        }
    }
    slots.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    slots.into_iter().map(|(_, i)| i).collect()
}

/// Vose's alias table for `weights` summing to `total`.
fn alias_table(weights: &[u64], total: u64) -> (Vec<f64>, Vec<usize>) {
    let n = weights.len();
    // Scaled so the average column holds exactly 1.
    let mut scaled: Vec<f64> = weights
        .iter()
        .map(|&w| w as f64 * n as f64 / total as f64)
        .collect();
    let mut keep = vec![1.0; n];
    let mut alias: Vec<usize> = (0..n).collect();
    let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| scaled[i] < 1.0);
    while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
        keep[s] = scaled[s];
        alias[s] = l;
        scaled[l] -= 1.0 - scaled[s];
        if scaled[l] < 1.0 {
            large.pop();
            small.push(l);
        }
    }
    // Whatever is left is 1 up to rounding error: keep it.
    (keep, alias)
}
