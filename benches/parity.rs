//! Parity XOR throughput for 3–8 member RAID-5 stripes, beside a plain
//! `copy_from_slice` of the same number of bytes (the memory-bandwidth
//! yardstick), in the same run.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use vraid::raid::parity::xor_sources;

fn parity(c: &mut Criterion) {
    for chunk in [64usize << 10, 256 << 10, 1 << 20] {
        let mut group = c.benchmark_group(format!("parity_{}k", chunk >> 10));
        for members in 3usize..=8 {
            let k = members - 1;
            let sources: Vec<Vec<u8>> = (0..k)
                .map(|i| (0..chunk).map(|b| (b * 31 + i) as u8).collect())
                .collect();
            let refs: Vec<&[u8]> = sources.iter().map(Vec::as_slice).collect();
            let mut dst = vec![0u8; chunk];
            group.throughput(Throughput::Bytes((k * chunk) as u64));
            group.bench_with_input(BenchmarkId::new("xor", members), &refs, |b, refs| {
                b.iter(|| xor_sources(black_box(&mut dst), black_box(refs)))
            });
            let src = vec![7u8; k * chunk];
            let mut out = vec![0u8; k * chunk];
            group.bench_with_input(BenchmarkId::new("copy", members), &src, |b, src| {
                b.iter(|| black_box(&mut out).copy_from_slice(black_box(src)))
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = parity
}
criterion_main!(benches);
