//! Cost of one layout mapping call: splitting a request into extents and
//! the inverse member → volume lookup.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use vraid::raid::layout::{ChunkSize, Geometry, MemberIndex};
use vraid::raid::Level;
use vraid::units::ByteOffset;

fn layout(c: &mut Criterion) {
    let chunk = ChunkSize::new(64 << 10).unwrap();
    let mut group = c.benchmark_group("extents");
    for (level, members) in [(Level::Raid0, 4), (Level::Raid5, 5), (Level::Raid1, 2)] {
        let g = Geometry::new(level, members, chunk, 1 << 30).unwrap();
        for len in [4096u64, 1 << 20] {
            group.throughput(Throughput::Elements(1));
            let id = BenchmarkId::new(format!("{level}x{members}"), len);
            group.bench_with_input(id, &len, |b, &len| {
                let mut at = 12_345u64;
                b.iter(|| {
                    at = (at + 7 * 4096 + 512) % (g.volume_size() - len);
                    g.extents(black_box(ByteOffset(at)), len)
                        .map(|e| e.member_offset.get())
                        .fold(0, u64::wrapping_add)
                })
            });
        }
    }
    group.finish();
    let g = Geometry::new(Level::Raid5, 5, chunk, 1 << 30).unwrap();
    c.bench_function("locate_raid5x5", |b| {
        let mut at = 0u64;
        b.iter(|| {
            at = (at + 4096 * 13 + 1) % (1 << 30);
            g.locate(black_box(MemberIndex(3)), ByteOffset(at))
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = layout
}
criterion_main!(benches);
