//! Tests of the completer (FORMAT.md §11 "Completion"): every granule
//! filled and the base released, space back after the snapshot goes, the
//! record converted to a plain entry when exclusive and kept when shared;
//! a crash (the pool dropped without a commit, reopened) before and after
//! each transaction — a granule's bit (P-22), the completion (P-24), the
//! conversion (P-24) — leaves a pool that checks clean and reads right.

use std::sync::Arc;

use crate::block::{BlockDevice, Durability};
use crate::member::memory::MemDevice;
use crate::pool::complete::Step;
use crate::pool::split::{full_mask, Entry, SplitRecord};
use crate::pool::split_meta::is_split;
use crate::pool::Pool;
use crate::units::ByteOffset;

use crate::pool::split_meta::tests::CS;
use crate::pool::tests::read_all as read;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Volume "v" of 4 clusters of byte 1, snapshot "s", then 4 KiB of byte 5
/// at 4 KiB into cluster 1 (a split of it); committed. The bytes of v.
async fn split_one() -> (Arc<MemDevice>, Arc<Pool>, Vec<u8>) {
    let (dev, pool) = crate::pool::split_meta::tests::pool_with_v(true).await;
    let v = pool.open_volume("v").await.unwrap();
    let mut want = vec![1u8; 4 * CS as usize];
    v.write(ByteOffset(0), &want, Durability::Fua)
        .await
        .unwrap();
    pool.snapshot("v", "s").await.unwrap();
    let at = CS as usize + 4096;
    v.write(ByteOffset(at as u64), &[5u8; 4096], Durability::Fua)
        .await
        .unwrap();
    want[at..at + 4096].fill(5);
    pool.flush().await.unwrap();
    (dev, pool, want)
}

async fn entry(pool: &Arc<Pool>, name: &str, vc: u64) -> u64 {
    let mut m = pool.meta.lock().await;
    let i = m.find(name).unwrap();
    m.lookup_read(i, vc).await.unwrap().unwrap()
}

async fn record(pool: &Arc<Pool>, e: u64) -> SplitRecord {
    let Ok(Entry::Split(r)) = Entry::decode(e) else {
        panic!("not a split: {e:#x}")
    };
    pool.meta.lock().await.record(r).await.unwrap()
}

async fn v_id(pool: &Arc<Pool>) -> u32 {
    let m = pool.meta.lock().await;
    m.slots[m.find("v").unwrap()].rec.id
}

/// Drops the pool without a commit (a crash) and opens it again: it
/// checks clean and `v` reads `want`.
async fn crash(dev: Arc<MemDevice>, pool: Arc<Pool>, want: &[u8]) -> Arc<Pool> {
    drop(pool);
    let pool = Pool::open(dev, 64).await.unwrap();
    let report = pool.check().await.unwrap();
    assert!(report.clean(), "{:?}", report.problems);
    assert_eq!(read(&pool, "v").await, want);
    pool
}

#[test]
fn completion_fills_the_record_releases_its_base_and_space_returns_after_the_snapshot_goes() {
    rt().block_on(async {
        // Arrange
        let (_dev, pool, want) = split_one().await;
        let rec = record(&pool, entry(&pool, "v", 1).await).await;
        pool.delete_volume("s").await.unwrap();
        pool.flush().await.unwrap();
        let before = pool.space().await.free_bytes;

        // Act
        let (done, converted) = pool.complete_queued().await.unwrap();
        pool.flush().await.unwrap();

        // Assert: one place completed and converted; the base's cluster
        // is free again; v reads the same, the pool checks clean.
        assert_eq!((done, converted), (1, 1));
        assert_eq!(entry(&pool, "v", 1).await, rec.new, "a plain entry");
        assert_eq!(pool.space().await.free_bytes, before + CS);
        assert_eq!(read(&pool, "v").await, want);
        let report = pool.check().await.unwrap();
        assert!(report.clean(), "{:?}", report.problems);
        assert_eq!(report.split_records, 0);
    });
}

#[test]
fn a_shared_record_is_completed_but_not_converted() {
    rt().block_on(async {
        // Arrange: a second snapshot shares the record.
        let (_dev, pool, want) = split_one().await;
        pool.snapshot("v", "s2").await.unwrap();
        let e = entry(&pool, "v", 1).await;

        // Act
        let (done, converted) = pool.complete_queued().await.unwrap();

        // Assert
        assert_eq!((done, converted), (1, 0));
        assert_eq!(entry(&pool, "v", 1).await, e, "still the record");
        let rec = record(&pool, e).await;
        assert_eq!((rec.base, rec.mask), (0, full_mask(CS)));
        assert_eq!(read(&pool, "v").await, want);
        assert_eq!(read(&pool, "s2").await, want);
        assert_eq!(read(&pool, "s").await, vec![1u8; 4 * CS as usize]);
        let report = pool.check().await.unwrap();
        assert!(report.clean(), "{:?}", report.problems);
    });
}

#[test]
fn a_crash_before_or_after_a_granule_bit_commits_leaves_the_record_consistent() {
    rt().block_on(async {
        // Arrange
        let (dev, pool, want) = split_one().await;
        let (id, e) = (v_id(&pool).await, entry(&pool, "v", 1).await);
        let mask = record(&pool, e).await.mask;

        // Act: one granule filled, not committed; crash (P-22).
        assert_eq!(pool.complete_step(id, 1).await.unwrap(), Step::Filled);
        let pool = crash(dev.clone(), pool, &want).await;

        // Assert: the bit is not durable; the fill is done again.
        assert_eq!(record(&pool, e).await.mask, mask);
        assert_eq!(pool.complete_step(id, 1).await.unwrap(), Step::Filled);
        pool.flush().await.unwrap();
        let pool = crash(dev, pool, &want).await;
        let filled = record(&pool, e).await.mask;
        assert_eq!(filled.count_ones(), mask.count_ones() + 1, "{filled:#b}");
    });
}

#[test]
fn a_crash_before_or_after_completion_or_conversion_leaves_the_pool_consistent() {
    rt().block_on(async {
        // Arrange: every granule but the last filled and committed.
        let (dev, pool, want) = split_one().await;
        let (id, e) = (v_id(&pool).await, entry(&pool, "v", 1).await);
        let rec = record(&pool, e).await;
        let short = full_mask(CS).count_ones() - rec.mask.count_ones() - 1;
        for _ in 0..short {
            assert_eq!(pool.complete_step(id, 1).await.unwrap(), Step::Filled);
        }
        pool.flush().await.unwrap();
        // Act: the completion (last bit + base release) not committed (P-24).
        assert_eq!(pool.complete_step(id, 1).await.unwrap(), Step::Completed);
        let pool = crash(dev.clone(), pool, &want).await;
        // Assert: the base is still held, the mask one short.
        let base = rec.base;
        let rec = record(&pool, e).await;
        assert_eq!(rec.base, base);
        assert_eq!(rec.mask.count_ones() + 1, full_mask(CS).count_ones());

        // Act: completed and committed, then a crash.
        assert_eq!(pool.complete_step(id, 1).await.unwrap(), Step::Completed);
        pool.flush().await.unwrap();
        let pool = crash(dev.clone(), pool, &want).await;
        assert_eq!(record(&pool, e).await.base, 0);
        assert_eq!(pool.complete_step(id, 1).await.unwrap(), Step::Nothing);

        // Act: converted (the snapshot gone first), not committed; crash.
        pool.delete_volume("s").await.unwrap();
        pool.flush().await.unwrap();
        assert_eq!(pool.convert_complete(&[(id, 1)]).await.unwrap(), 1);
        assert!(!is_split(entry(&pool, "v", 1).await));
        let pool = crash(dev.clone(), pool, &want).await;
        assert_eq!(
            entry(&pool, "v", 1).await,
            e,
            "the conversion was lost whole"
        );

        // Act: converted and committed; crash.
        assert_eq!(pool.convert_complete(&[(id, 1)]).await.unwrap(), 1);
        pool.flush().await.unwrap();
        let pool = crash(dev, pool, &want).await;
        assert!(!is_split(entry(&pool, "v", 1).await));
        assert_eq!(pool.check().await.unwrap().split_records, 0);
    });
}

#[test]
fn a_client_write_during_completion_is_kept() {
    rt().block_on(async {
        // Arrange
        let (_dev, pool, mut want) = split_one().await;
        let id = v_id(&pool).await;
        assert_eq!(pool.complete_step(id, 1).await.unwrap(), Step::Filled);

        // Act: a write between two granule fills, to a granule not filled
        // yet (a writer's own fill, case 3) and to one filled (in place).
        let v = pool.open_volume("v").await.unwrap();
        let at = 2 * CS as usize - 4096;
        v.write(ByteOffset(at as u64), &[9u8; 4096], Durability::Normal)
            .await
            .unwrap();
        want[at..at + 4096].fill(9);
        pool.complete_queued().await.unwrap();

        // Assert
        assert_eq!(read(&pool, "v").await, want);
        let mut raw = vec![0u8; 4096];
        let c = entry(&pool, "v", 1).await;
        let rec_new = if is_split(c) {
            record(&pool, c).await.new
        } else {
            c
        };
        dev_read(&pool, rec_new * CS + CS - 4096, &mut raw).await;
        assert_eq!(raw, vec![9u8; 4096]);
        let report = pool.check().await.unwrap();
        assert!(report.clean(), "{:?}", report.problems);
    });
}

async fn dev_read(pool: &Arc<Pool>, at: u64, buf: &mut [u8]) {
    pool.dev.read(ByteOffset(at), buf).await.unwrap();
}
