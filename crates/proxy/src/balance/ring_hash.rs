//! Ring hash (Envoy's ketama-style consistent hashing).
//!
//! Every endpoint is hashed onto a 64-bit ring at several points, by its stable `id` (XXH64 of
//! the id with the replica number as seed), never by its position in the list; a request goes
//! to the owner of the first point at or after its hash, wrapping around. A key therefore keeps
//! its endpoint as long as that endpoint stays, and removing one of N endpoints only moves the
//! keys it owned (about 1/N).
//!
//! Ring size: each unit of weight gets `ceil(min_ring_size / 4)` points, so the ring holds at
//! least `min_ring_size` points from four units of weight on (Envoy's default 1024 gives 256
//! points per endpoint, a load spread within a few percent). Unlike Envoy, which divides
//! `min_ring_size` among the current endpoints, the per-endpoint count does not depend on the
//! other endpoints: dividing it would add points to every survivor when one leaves, and those new
//! points would take about another 1/N of the keys. The ring is capped at [`MAX_RING`] points
//! (Envoy's default maximum); only beyond that does membership change the per-endpoint count.

use super::hash::xxh64;
use super::{Balance, EndpointMeta, LoadGuard, Picked, random_index};

/// Points per unit of weight are `min_ring_size / RING_SPREAD`.
const RING_SPREAD: u64 = 4;
/// Most points on one ring (Envoy's `maximum_ring_size` default); 12 bytes each, so 96 MiB.
pub(crate) const MAX_RING: u64 = 8 * 1024 * 1024;

#[derive(Debug)]
pub(crate) struct RingHash {
    len: usize,
    /// Sorted point hashes; `owners[i]` is the endpoint index of `points[i]`.
    points: Vec<u64>,
    owners: Vec<u32>,
    /// `buckets[b]` is the first point whose top `64 - shift` bits are `>= b` (one more entry at
    /// the end: `points.len()`), so a lookup searches only the few points of one bucket instead
    /// of the whole ring (a ring of 1000 endpoints has 256k points, 18 cache-missing steps).
    buckets: Vec<u32>,
    shift: u32,
}

/// Points per bucket of the lookup index, on average.
const POINTS_PER_BUCKET: usize = 4;

/// The bucket index over sorted `points`: `(buckets, shift)`.
fn index(points: &[u64]) -> (Vec<u32>, u32) {
    let bits = (points.len() / POINTS_PER_BUCKET).max(2).ilog2();
    let shift = 64 - bits;
    let mut buckets = Vec::with_capacity((1 << bits) + 1);
    let mut at = 0;
    for bucket in 0..1u64 << bits {
        while at < points.len() && (points[at] >> shift) < bucket {
            at += 1;
        }
        buckets.push(u32::try_from(at).unwrap_or(u32::MAX));
    }
    buckets.push(u32::try_from(points.len()).unwrap_or(u32::MAX));
    (buckets, shift)
}

impl RingHash {
    pub(crate) fn new(endpoints: &[EndpointMeta], min_ring_size: u64) -> Self {
        let total_weight: u64 = endpoints.iter().map(|e| u64::from(e.weight.max(1))).sum();
        let per_weight = min_ring_size
            .div_ceil(RING_SPREAD)
            .min(MAX_RING / total_weight.max(1))
            .max(1);
        let mut ring: Vec<(u64, u32)> = Vec::new();
        for (index, endpoint) in endpoints.iter().enumerate() {
            let owner = u32::try_from(index).unwrap_or(u32::MAX);
            let replicas = u64::from(endpoint.weight.max(1)) * per_weight;
            ring.extend((0..replicas).map(|r| (xxh64(endpoint.id.as_bytes(), r), owner)));
        }
        ring.sort_unstable();
        let (points, owners): (Vec<u64>, Vec<u32>) = ring.into_iter().unzip();
        let (buckets, shift) = index(&points);
        RingHash {
            len: endpoints.len(),
            points,
            owners,
            buckets,
            shift,
        }
    }
}

impl Balance for RingHash {
    fn pick(&self, hash: Option<u64>) -> Option<Picked> {
        if self.len == 0 {
            return None;
        }
        let index = match hash {
            None => random_index(self.len),
            Some(hash) => {
                // The first point at or after `hash` is in its bucket, or is the first point of
                // a later bucket: exactly where the search stops if the bucket has none.
                let bucket = (hash >> self.shift) as usize;
                let (from, to) = (self.buckets[bucket], self.buckets[bucket + 1]);
                let candidates = &self.points[from as usize..to as usize];
                let at = from as usize + candidates.partition_point(|&p| p < hash);
                let at = if at == self.points.len() { 0 } else { at };
                self.owners[at] as usize
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
