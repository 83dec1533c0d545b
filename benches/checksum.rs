//! Block checksum cost: the sealed CRC32 (`crc32fast`) of 4 KiB blocks, and
//! verifying a 64 KiB read against its 16 entries, beside a plain copy of
//! the same bytes (the memory-bandwidth yardstick), in the same run.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vraid::integrity::page::{bad_blocks, block_entry, entries_of};

fn checksum(c: &mut Criterion) {
    let block: Vec<u8> = (0..4096usize).map(|i| (i * 31) as u8).collect();
    let mut group = c.benchmark_group("csum_4k");
    group.throughput(Throughput::Bytes(4096));
    group.bench_function("crc32_seal", |b| b.iter(|| block_entry(black_box(&block))));
    let mut out = vec![0u8; 4096];
    group.bench_function("copy", |b| {
        b.iter(|| black_box(&mut out).copy_from_slice(black_box(&block)))
    });
    group.finish();

    let read: Vec<u8> = (0..65536usize).map(|i| (i * 7) as u8).collect();
    let entries = entries_of(&read);
    let mut group = c.benchmark_group("csum_verify_64k");
    group.throughput(Throughput::Bytes(65536));
    group.bench_function("verify", |b| {
        b.iter(|| bad_blocks(black_box(&entries), black_box(&read)))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = checksum
}
criterion_main!(benches);
