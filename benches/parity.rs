//! Parity XOR throughput for 3–8 member RAID-5 stripes, beside a plain
//! `copy_from_slice` of the same number of bytes (the memory-bandwidth
//! yardstick), in the same run; then RAID-6 P+Q generation beside XOR over
//! the same data blocks (issue 12's goal: syndrome ≥ 0.5× XOR) and the
//! recovery of two lost data blocks. At the end, `ratio` times XOR and P+Q
//! in alternated rounds over the same blocks and prints the ratio (median
//! of the rounds) and the two-failure recovery rate in GB/s.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use vraid::raid::parity::xor_sources;
use vraid::raid::syndrome::{gen_syndrome, recover, Lost};

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

fn syndrome(c: &mut Criterion) {
    let chunk = 64usize << 10;
    let mut group = c.benchmark_group("raid6_64k");
    for data_disks in [4usize, 8, 14] {
        let sources: Vec<Vec<u8>> = (0..data_disks)
            .map(|i| (0..chunk).map(|b| (b * 31 + i * 7) as u8).collect())
            .collect();
        let refs: Vec<&[u8]> = sources.iter().map(Vec::as_slice).collect();
        let (mut p, mut q) = (vec![0u8; chunk], vec![0u8; chunk]);
        group.throughput(Throughput::Bytes((data_disks * chunk) as u64));
        group.bench_with_input(BenchmarkId::new("xor", data_disks), &refs, |b, refs| {
            b.iter(|| xor_sources(black_box(&mut p), black_box(refs)))
        });
        group.bench_with_input(BenchmarkId::new("pq", data_disks), &refs, |b, refs| {
            b.iter(|| gen_syndrome(black_box(&mut p), &mut q, black_box(refs)))
        });
        gen_syndrome(&mut p, &mut q, &refs);
        let mut lost = sources.clone();
        let mut scratch = vec![0u8; chunk];
        group.bench_function(BenchmarkId::new("recover2", data_disks), |b| {
            b.iter(|| {
                let mut blocks: Vec<&mut [u8]> = lost.iter_mut().map(Vec::as_mut_slice).collect();
                recover(&mut blocks, &p, &q, Lost::TwoData(0, 1), &mut scratch)
            })
        });
    }
    group.finish();
}

/// GB/s of `f` over `bytes` per call, timed over `iters` calls.
fn rate(bytes: usize, iters: u32, mut f: impl FnMut()) -> f64 {
    let t = std::time::Instant::now();
    for _ in 0..iters {
        f();
    }
    (bytes as f64 * f64::from(iters)) / t.elapsed().as_secs_f64() / 1e9
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// XOR, P+Q and two-data recovery over the same 64 KiB blocks, in
/// alternated rounds; prints medians and the P+Q / XOR ratio.
fn ratio() {
    let chunk = 64usize << 10;
    for data_disks in [4usize, 8, 14] {
        let sources: Vec<Vec<u8>> = (0..data_disks)
            .map(|i| (0..chunk).map(|b| (b * 31 + i * 7) as u8).collect())
            .collect();
        let refs: Vec<&[u8]> = sources.iter().map(Vec::as_slice).collect();
        let (mut p, mut q) = (vec![0u8; chunk], vec![0u8; chunk]);
        let bytes = data_disks * chunk;
        let (mut xor, mut pq, mut rec) = (Vec::new(), Vec::new(), Vec::new());
        gen_syndrome(&mut p, &mut q, &refs);
        let (p0, q0) = (p.clone(), q.clone());
        let mut lost = sources.clone();
        let mut scratch = vec![0u8; chunk];
        for _ in 0..15 {
            xor.push(rate(bytes, 200, || {
                xor_sources(black_box(&mut p), black_box(&refs))
            }));
            pq.push(rate(bytes, 200, || {
                gen_syndrome(black_box(&mut p), &mut q, black_box(&refs))
            }));
            rec.push(rate(bytes, 200, || {
                let mut blocks: Vec<&mut [u8]> = lost.iter_mut().map(Vec::as_mut_slice).collect();
                recover(&mut blocks, &p0, &q0, Lost::TwoData(0, 1), &mut scratch)
            }));
        }
        let (x, s, r) = (median(xor), median(pq), median(rec));
        println!(
            "raid6 ratio, {data_disks} data x 64 KiB: xor {x:.2} GB/s, p+q {s:.2} GB/s, \
             p+q/xor {:.2}x (goal >= 0.5x), two-failure recovery {r:.2} GB/s",
            s / x
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = parity, syndrome
}

fn main() {
    benches();
    ratio();
    Criterion::default().configure_from_args().final_summary();
}
