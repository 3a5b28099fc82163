//! Tests of the balancers: exact and statistical distribution, load awareness, consistent
//! hashing, and properties over random endpoint sets.

mod distribution;
mod hashing;
pub(super) mod load;
mod props;
mod skipping;

use std::net::SocketAddr;

use super::{Algorithm, Balance, EndpointMeta};

/// `n` endpoints of weight 1 with ids `ep-0`, `ep-1`, ...
fn endpoints(n: usize) -> Vec<EndpointMeta> {
    weighted(&vec![1; n])
}

/// One endpoint per weight, ids `ep-0`, `ep-1`, ...
fn weighted(weights: &[u32]) -> Vec<EndpointMeta> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &weight)| EndpointMeta {
            addr: SocketAddr::from(([127, 0, 0, 1], 10_000 + i as u16)),
            weight,
            id: format!("ep-{i}"),
        })
        .collect()
}

/// How many of `picks` picks (guards dropped at once) land on each endpoint.
fn counts(balancer: &dyn Balance, picks: usize, hash: Option<u64>) -> Vec<usize> {
    let mut counts = vec![0; balancer.len()];
    for _ in 0..picks {
        let picked = balancer.pick(hash).expect("non-empty balancer picks");
        counts[picked.index] += 1;
    }
    counts
}

/// Every algorithm, with small hash tables so property tests stay fast.
fn all_algorithms() -> Vec<Algorithm> {
    vec![
        Algorithm::RoundRobin,
        Algorithm::Random,
        Algorithm::Weighted,
        Algorithm::LeastRequest,
        Algorithm::PeakEwma {
            decay: super::PEAK_EWMA_DEFAULT_DECAY,
        },
        Algorithm::RingHash { min_ring_size: 256 },
        Algorithm::Maglev { table_size: 1031 },
    ]
}
