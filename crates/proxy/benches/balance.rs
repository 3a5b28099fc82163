//! Micro-benchmarks of `Balance::pick` (plus ending the request) for every algorithm at 3, 100
//! and 1000 endpoints. Targets: round robin, least request and peak EWMA under 100 ns at 100.
//! `<algorithm>_skip/100`: `pick_excluding` with one endpoint in ten ejected (the path taken only
//! while outlier detection has ejected something).

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use trellis_proxy::balance::{
    Algorithm, EndpointMeta, MAGLEV_DEFAULT_TABLE_SIZE, PEAK_EWMA_DEFAULT_DECAY,
    RING_HASH_DEFAULT_MIN_RING_SIZE, build, hash_key,
};

fn endpoints(n: usize) -> Vec<EndpointMeta> {
    (0..n)
        .map(|i| EndpointMeta {
            addr: SocketAddr::from(([10, 0, (i / 256) as u8, (i % 256) as u8], 8080)),
            weight: 1 + (i % 5) as u32,
            id: format!("instance-{i}"),
        })
        .collect()
}

fn picks(c: &mut Criterion) {
    let algorithms = [
        ("round_robin", Algorithm::RoundRobin),
        ("random", Algorithm::Random),
        ("weighted", Algorithm::Weighted),
        ("least_request", Algorithm::LeastRequest),
        (
            "peak_ewma",
            Algorithm::PeakEwma {
                decay: PEAK_EWMA_DEFAULT_DECAY,
            },
        ),
        (
            "ring_hash",
            Algorithm::RingHash {
                min_ring_size: RING_HASH_DEFAULT_MIN_RING_SIZE,
            },
        ),
        (
            "maglev",
            Algorithm::Maglev {
                table_size: MAGLEV_DEFAULT_TABLE_SIZE,
            },
        ),
    ];
    for (name, algorithm) in algorithms {
        let mut group = c.benchmark_group(name);
        for n in [3usize, 100, 1000] {
            let balancer = build(&algorithm, &endpoints(n));
            let mut key = 0u64;
            group.bench_function(BenchmarkId::from_parameter(n), |b| {
                b.iter(|| {
                    key = key.wrapping_add(1);
                    let hash = algorithm.uses_hash().then(|| hash_key(&key.to_le_bytes()));
                    if let Some(picked) = balancer.pick(black_box(hash)) {
                        black_box(picked.index);
                        picked.load.complete_with(Duration::from_millis(5));
                    }
                })
            });
        }
        group.finish();
        let mut group = c.benchmark_group(format!("{name}_skip"));
        let balancer = build(&algorithm, &endpoints(100));
        let now = std::time::Instant::now();
        let mut key = 0u64;
        group.bench_function(BenchmarkId::from_parameter(100), |b| {
            b.iter(|| {
                key = key.wrapping_add(1);
                let hash = algorithm.uses_hash().then(|| hash_key(&key.to_le_bytes()));
                let skip = |i: usize| i % 10 == 3;
                if let Some(picked) = balancer.pick_excluding(black_box(hash), now, &skip) {
                    black_box(picked.index);
                    picked.load.complete_with(Duration::from_millis(5));
                }
            })
        });
        group.finish();
    }
}

criterion_group!(benches, picks);
criterion_main!(benches);
