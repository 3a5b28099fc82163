//! Maglev consistent hashing (Google's Maglev paper, as in Envoy).
//!
//! A lookup table of a prime size `M` is filled by letting the endpoints take turns claiming
//! their next free slot along a permutation of `0..M` derived from their `id`: it starts at
//! `XXH64(id, 1) % M` and steps by `XXH64(id, 2) % (M - 1) + 1` (a step below a prime `M`
//! visits every slot). Each endpoint ends up with `M / N` slots (weighted: in proportion to its
//! weight, Envoy's way: an endpoint of weight `w` takes a turn in `w / max_weight` of the
//! rounds), a pick is one table read, and because the permutations depend only on the ids,
//! removing one of N endpoints moves little more than its own 1/N of the keys.
//!
//! `table_size` is rounded up to a prime (and to at least the endpoint count), and capped at
//! [`MAX_TABLE`], Envoy's limit.

use super::hash::xxh64;
use super::{Balance, EndpointMeta, LoadGuard, Picked, random_index};

/// Largest table (Envoy's limit for `maglev_lb_config.table_size`), a prime.
pub(crate) const MAX_TABLE: u64 = 5_000_011;

const OFFSET_SEED: u64 = 1;
const SKIP_SEED: u64 = 2;

#[derive(Debug)]
pub(crate) struct Maglev {
    len: usize,
    table: Vec<u32>,
}

/// One endpoint's walk along its permutation while the table fills.
struct Walk {
    position: u64,
    skip: u64,
    weight: u128,
    /// The round from which the endpoint may take its next turn, scaled by the largest weight.
    target: u128,
}

impl Maglev {
    pub(crate) fn new(endpoints: &[EndpointMeta], table_size: u64) -> Self {
        if endpoints.is_empty() {
            return Maglev {
                len: 0,
                table: Vec::new(),
            };
        }
        let size = next_prime(table_size.max(endpoints.len() as u64).clamp(2, MAX_TABLE));
        // Turns are taken in id order, not list order, so every proxy builds the same table
        // whatever order EDS lists the endpoints in.
        let mut order: Vec<usize> = (0..endpoints.len()).collect();
        order.sort_by(|&a, &b| endpoints[a].id.cmp(&endpoints[b].id).then(a.cmp(&b)));
        let mut walks: Vec<Walk> = order
            .iter()
            .map(|&i| &endpoints[i])
            .map(|e| Walk {
                position: xxh64(e.id.as_bytes(), OFFSET_SEED) % size,
                skip: xxh64(e.id.as_bytes(), SKIP_SEED) % (size - 1) + 1,
                weight: u128::from(e.weight.max(1)),
                target: 0,
            })
            .collect();
        let max_weight = walks.iter().map(|w| w.weight).max().unwrap_or(1);
        let mut table = vec![u32::MAX; size as usize];
        let mut filled = 0usize;
        let mut round: u128 = 0;
        'fill: loop {
            for (&index, walk) in order.iter().zip(walks.iter_mut()) {
                // The heaviest endpoint takes every turn, one of a third its weight every third.
                if round * walk.weight < walk.target {
                    continue;
                }
                walk.target += max_weight;
                // The permutation visits every slot, so a free one turns up before it repeats.
                while table[walk.position as usize] != u32::MAX {
                    walk.position = (walk.position + walk.skip) % size;
                }
                table[walk.position as usize] = u32::try_from(index).unwrap_or(u32::MAX);
                filled += 1;
                if filled == table.len() {
                    break 'fill;
                }
            }
            round += 1;
        }
        Maglev {
            len: endpoints.len(),
            table,
        }
    }
}

impl Balance for Maglev {
    fn pick(&self, hash: Option<u64>) -> Option<Picked> {
        if self.len == 0 {
            return None;
        }
        let index = match hash {
            None => random_index(self.len),
            Some(hash) => self.table[(hash % self.table.len() as u64) as usize] as usize,
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

/// The smallest prime `>= n` (`n >= 2`). Trial division: tables are at most a few million.
pub(crate) fn next_prime(n: u64) -> u64 {
    let is_prime = |n: u64| {
        let mut odd_divisors = (3..).step_by(2).take_while(|d| d * d <= n);
        n == 2 || (n > 2 && !n.is_multiple_of(2) && odd_divisors.all(|d| !n.is_multiple_of(d)))
    };
    (n..).find(|&c| is_prime(c)).unwrap_or(n)
}
