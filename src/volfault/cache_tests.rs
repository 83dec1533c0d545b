//! The volatile cache: unit tests of the device, and proptests that after
//! a power cut the image is everything flushed plus the kept writes.

use std::collections::BTreeSet;
use std::sync::Arc;

use proptest::prelude::*;

use super::cache::{CacheMode, WriteCache};
use super::cache_state::{CacheState, KeepPolicy, Payload};
use crate::block::{BlockDevice, Durability};
use crate::member::memory::MemDevice;
use crate::units::ByteOffset;

const BLOCK: u64 = 512;
const BLOCKS: u64 = 32;

/// One client operation of a generated sequence.
#[derive(Clone, Debug)]
enum Op {
    Write {
        at: u64,
        n: u64,
        fill: u8,
        fua: bool,
    },
    Zero {
        at: u64,
        n: u64,
    },
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..BLOCKS, 1..4u64, 1..=255u8, prop::bool::weighted(0.15))
            .prop_map(|(at, n, fill, fua)| Op::Write { at, n: n.min(BLOCKS - at), fill, fua }),
        1 => (0..BLOCKS, 1..4u64).prop_map(|(at, n)| Op::Zero { at, n: n.min(BLOCKS - at) }),
        1 => Just(Op::Flush),
    ]
}

fn policy() -> impl Strategy<Value = KeepPolicy> {
    prop_oneof![
        Just(KeepPolicy::None),
        Just(KeepPolicy::OrderedPrefix),
        Just(KeepPolicy::RandomSubset)
    ]
}

/// Applies op `o` to a plain image.
fn apply(img: &mut [u8], o: &Op) {
    match *o {
        Op::Write { at, n, fill, .. } => {
            img[(at * BLOCK) as usize..((at + n) * BLOCK) as usize].fill(fill)
        }
        Op::Zero { at, n } => img[(at * BLOCK) as usize..((at + n) * BLOCK) as usize].fill(0),
        Op::Flush => {}
    }
}

/// The image with every op applied except those at indexes in `skip`.
fn image_without(ops: &[Op], skip: &BTreeSet<usize>) -> Vec<u8> {
    let mut img = vec![0u8; (BLOCKS * BLOCK) as usize];
    for (i, o) in ops.iter().enumerate() {
        if !skip.contains(&i) {
            apply(&mut img, o);
        }
    }
    img
}

/// Indexes of the volatile (droppable) writes after the last flush.
fn droppable(ops: &[Op]) -> Vec<usize> {
    let last_flush = ops.iter().rposition(|o| matches!(o, Op::Flush));
    let from = last_flush.map_or(0, |i| i + 1);
    (from..ops.len())
        .filter(|&i| !matches!(ops[i], Op::Flush | Op::Write { fua: true, .. }))
        .collect()
}

/// Drives the pure model as the device does, the volume a plain image;
/// `evict_every`: write back the oldest piece after every N-th op.
fn run_model(ops: &[Op], evict_every: usize) -> (CacheState, Vec<u8>, Vec<Option<u64>>) {
    let mut st = CacheState::new();
    let mut vol = vec![0u8; (BLOCKS * BLOCK) as usize];
    let mut seqs = Vec::new();
    // As the device: batches of whole, mutually independent writes, each
    // batch's pieces applied in reverse (any order must do).
    let write_back = |st: &mut CacheState, vol: &mut Vec<u8>, bound: u64| loop {
        let batch = st.oldest_batch(bound, 3);
        if batch.is_empty() {
            break;
        }
        for p in batch.iter().rev() {
            p.overlay(
                &mut vol[p.offset as usize..(p.offset + p.len) as usize],
                p.offset,
            );
            st.remove((p.seq, p.offset));
        }
    };
    for (i, o) in ops.iter().enumerate() {
        let seq = match *o {
            Op::Write {
                at,
                n,
                fill,
                fua: false,
            } => {
                let data: Arc<[u8]> = vec![fill; (n * BLOCK) as usize].into();
                Some(st.insert(at * BLOCK, n * BLOCK, Payload::Data { data, start: 0 }))
            }
            Op::Write {
                at, n, fua: true, ..
            } => {
                let seq = st.next_seq();
                apply(&mut vol, o);
                st.trim(at * BLOCK, n * BLOCK, seq);
                Some(seq)
            }
            Op::Zero { at, n } => {
                Some(st.insert(at * BLOCK, n * BLOCK, Payload::Zero { unmap: true }))
            }
            Op::Flush => {
                let bound = st.seq_bound();
                write_back(&mut st, &mut vol, bound);
                None
            }
        };
        seqs.push(seq);
        if evict_every > 0 && i % evict_every == 0 {
            if let Some(p) = st.oldest_below(u64::MAX) {
                write_back(&mut st, &mut vol, p.seq + 1);
            }
        }
    }
    (st, vol, seqs)
}

proptest! {
    #[test]
    fn after_a_power_cut_the_image_is_the_flushed_writes_plus_the_kept_ones(
        ops in prop::collection::vec(op(), 1..40),
        keep in policy(),
        seed in any::<u64>(),
        evict_every in 0..5usize,
    ) {
        // Arrange
        let (mut st, mut vol, seqs) = run_model(&ops, evict_every);
        let cached: Vec<u64> = {
            let mut s: Vec<u64> = st.overlapping(0, BLOCKS * BLOCK).iter().map(|p| p.seq).collect();
            s.sort_unstable();
            s.dedup();
            s
        };
        // Act
        let cut = st.power_cut(keep, seed);
        for key in &cut.kept {
            let p = st.remove(*key).unwrap();
            p.overlay(&mut vol[p.offset as usize..(p.offset + p.len) as usize], p.offset);
        }
        // Assert: the image is every write but the dropped ones.
        let dropped: BTreeSet<usize> = seqs.iter().enumerate()
            .filter(|(_, s)| s.is_some_and(|s| cut.dropped.contains(&s)))
            .map(|(i, _)| i)
            .collect();
        prop_assert_eq!(&vol, &image_without(&ops, &dropped));
        // Only unflushed volatile writes can go, and the policy's ones.
        let allowed: BTreeSet<usize> = droppable(&ops).into_iter().collect();
        prop_assert!(dropped.is_subset(&allowed));
        prop_assert!(st.is_empty());
        match keep {
            KeepPolicy::None => prop_assert_eq!(&cut.dropped, &cached),
            KeepPolicy::OrderedPrefix => {
                let k = cached.len() - cut.dropped.len();
                prop_assert_eq!(&cut.dropped[..], &cached[k..]);
            }
            KeepPolicy::RandomSubset => prop_assert!(cut.dropped.iter().all(|s| cached.contains(s))),
        }
        prop_assert_eq!(cut.report.dropped_writes as usize, cut.dropped.len());
    }

    #[test]
    fn the_device_loses_an_in_order_suffix_of_unflushed_writes(
        ops in prop::collection::vec(op(), 1..30),
        ordered in any::<bool>(),
        small in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            // Arrange
            let mem = Arc::new(MemDevice::new("vol", BLOCKS * BLOCK));
            let cache = WriteCache::new(mem.clone());
            cache.set_mode(CacheMode::Volatile).await.unwrap();
            cache.set_capacity(if small { 2048 } else { 1 << 20 }).await.unwrap();
            let mut view = vec![0u8; (BLOCKS * BLOCK) as usize];
            for o in &ops {
                run_device(&cache, o).await;
                apply(&mut view, o);
                // Reads always see every acknowledged write.
                let mut buf = vec![0u8; view.len()];
                cache.read(ByteOffset(0), &mut buf).await.unwrap();
                prop_assert_eq!(&buf, &view);
            }
            // Act
            let keep = if ordered { KeepPolicy::OrderedPrefix } else { KeepPolicy::None };
            let report = cache.power_cut(keep, 42).await.unwrap();
            // Assert: some in-order prefix of the droppable writes survived.
            let img = mem.snapshot();
            let cands = droppable(&ops);
            let found = (0..=cands.len()).rev().find(|&k| {
                img == image_without(&ops, &cands[k..].iter().copied().collect())
            });
            prop_assert!(found.is_some(), "no prefix matches");
            if keep == KeepPolicy::None && !small {
                // Nothing was written back: every unflushed write went
                // (those superseded by a FUA write are no longer counted).
                prop_assert_eq!(&img, &image_without(&ops, &cands.iter().copied().collect()));
            }
            prop_assert!(report.dropped_writes as usize <= cands.len());
            let mut buf = vec![0u8; img.len()];
            cache.read(ByteOffset(0), &mut buf).await.unwrap();
            prop_assert_eq!(buf, img);
            Ok(())
        })?;
    }
}

async fn run_device(cache: &WriteCache, o: &Op) {
    match *o {
        Op::Write { at, n, fill, fua } => {
            let d = if fua {
                Durability::Fua
            } else {
                Durability::Normal
            };
            let buf = vec![fill; (n * BLOCK) as usize];
            cache.write(ByteOffset(at * BLOCK), &buf, d).await.unwrap()
        }
        Op::Zero { at, n } => cache
            .discard(ByteOffset(at * BLOCK), n * BLOCK)
            .await
            .unwrap(),
        Op::Flush => cache.flush().await.unwrap(),
    }
}

#[tokio::test]
async fn writethrough_mode_writes_at_once_and_volatile_holds_until_flush() {
    // Arrange
    let mem = Arc::new(MemDevice::new("vol", 1 << 20));
    let cache = WriteCache::new(mem.clone());
    cache
        .write(ByteOffset(0), &[1; 512], Durability::Normal)
        .await
        .unwrap();
    assert_eq!(mem.snapshot()[0], 1);
    cache.set_mode(CacheMode::Volatile).await.unwrap();
    // Act
    cache
        .write(ByteOffset(0), &[2; 512], Durability::Normal)
        .await
        .unwrap();
    let before_flush = mem.snapshot()[0];
    let mut buf = [0u8; 512];
    cache.read(ByteOffset(0), &mut buf).await.unwrap();
    cache.flush().await.unwrap();
    // Assert
    assert_eq!(before_flush, 1);
    assert_eq!(buf, [2; 512]);
    assert_eq!(mem.snapshot()[0], 2);
    assert_eq!(cache.status().dirty_writes, 0);
}

#[tokio::test]
async fn fua_write_is_durable_and_never_overwritten_by_an_older_cached_one() {
    let mem = Arc::new(MemDevice::new("vol", 1 << 20));
    let cache = WriteCache::new(mem.clone());
    cache.set_mode(CacheMode::Volatile).await.unwrap();
    cache
        .write(ByteOffset(0), &[1; 1024], Durability::Normal)
        .await
        .unwrap();
    cache
        .write(ByteOffset(512), &[2; 512], Durability::Fua)
        .await
        .unwrap();
    assert_eq!(mem.snapshot()[512], 2, "FUA is on the volume at once");
    cache.flush().await.unwrap();
    let img = mem.snapshot();
    assert_eq!(img[..512], [1; 512]);
    assert_eq!(img[512..1024], [2; 512]);
}

#[tokio::test]
async fn power_cut_drops_unflushed_writes_and_reports_them() {
    let mem = Arc::new(MemDevice::new("vol", 1 << 20));
    let cache = WriteCache::new(mem.clone());
    cache.set_mode(CacheMode::Volatile).await.unwrap();
    cache
        .write(ByteOffset(0), &[1; 4096], Durability::Normal)
        .await
        .unwrap();
    cache.flush().await.unwrap();
    cache
        .write(ByteOffset(0), &[2; 4096], Durability::Normal)
        .await
        .unwrap();
    cache
        .write(ByteOffset(8192), &[3; 4096], Durability::Normal)
        .await
        .unwrap();
    let report = cache.power_cut(KeepPolicy::None, 7).await.unwrap();
    assert_eq!(
        (report.dropped_writes, report.dropped_bytes, report.seed),
        (2, 8192, 7)
    );
    let mut buf = [0u8; 4096];
    cache.read(ByteOffset(0), &mut buf).await.unwrap();
    assert_eq!(buf, [1; 4096]);
    cache.read(ByteOffset(8192), &mut buf).await.unwrap();
    assert_eq!(buf, [0; 4096]);
    let st = cache.status();
    assert_eq!(
        (st.powercuts, st.dropped_writes, st.dirty_writes),
        (1, 2, 0)
    );
    assert_eq!(st.last_powercut, Some(report));
}

#[tokio::test]
async fn a_full_cache_writes_back_its_oldest_writes() {
    let mem = Arc::new(MemDevice::new("vol", 1 << 20));
    let cache = WriteCache::new(mem.clone());
    cache.set_mode(CacheMode::Volatile).await.unwrap();
    cache.set_capacity(3 * 4096).await.unwrap();
    for i in 0..4u8 {
        let at = ByteOffset(u64::from(i) * 4096);
        cache
            .write(at, &[i + 1; 4096], Durability::Normal)
            .await
            .unwrap();
    }
    let img = mem.snapshot();
    assert_eq!(img[0], 1, "the oldest went to the volume");
    assert_eq!(img[3 * 4096], 0, "the newest is still cached");
    assert!(cache.status().writebacks >= 1);
    assert!(cache.status().dirty_bytes <= 3 * 4096);
}

#[test]
fn a_write_back_batch_takes_writes_whole_and_stops_at_an_overlap() {
    // Arrange: write 1 split in two by a durable write 2 in its middle,
    // write 3 elsewhere, write 4 over write 3.
    let mut st = CacheState::new();
    let data = |n: usize| -> Arc<[u8]> { vec![1u8; n].into() };
    st.insert(
        0,
        3 * BLOCK,
        Payload::Data {
            data: data(1536),
            start: 0,
        },
    );
    let fua = st.next_seq();
    st.trim(BLOCK, BLOCK, fua);
    st.insert(
        8 * BLOCK,
        BLOCK,
        Payload::Data {
            data: data(512),
            start: 0,
        },
    );
    st.insert(8 * BLOCK, BLOCK, Payload::Zero { unmap: false });
    // Act
    let small = st.oldest_batch(u64::MAX, 1);
    let all = st.oldest_batch(u64::MAX, 64);
    // Assert: both pieces of write 1 even with max 1; write 4 waits for 3.
    assert_eq!(
        small.iter().map(|p| (p.seq, p.offset)).collect::<Vec<_>>(),
        [(1, 0), (1, 2 * BLOCK)]
    );
    assert_eq!(all.len(), 3);
    assert!(all.iter().all(|p| p.seq != 4));
}
