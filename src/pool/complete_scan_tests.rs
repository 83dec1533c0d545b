//! Tests of the completer's walk of the split pages (FORMAT.md §11
//! "Completion", P-30, P-31): splits made before a restart are found and
//! completed, their bases' space returns and the pool checks clean; with
//! a queue too small for the splits made, the places it dropped are
//! completed by the walk the overflow makes due, none forgotten; a
//! corrupt split page is skipped and counted, never a panic (P-27).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::block::{BlockDevice, Durability};
use crate::member::memory::MemDevice;
use crate::pool::split::{full_mask, Entry};
use crate::pool::split_meta::tests::{pool_with_v, CS};
use crate::pool::tests::read_all as read;
use crate::pool::Pool;
use crate::units::ByteOffset;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Volume "w" of `n` clusters of byte 1, snapshot "s", then 4 KiB of byte
/// 5 into each cluster (a split of each); committed. The bytes of w.
async fn splits(n: u64, queue_max: usize) -> (Arc<MemDevice>, Arc<Pool>, Vec<u8>) {
    let (dev, pool) = pool_with_v(true).await;
    pool.queue_max.store(queue_max, Ordering::Relaxed);
    // The walk due at open (nothing to find yet).
    assert_eq!(pool.complete_scanned().await.unwrap().unwrap().completed, 0);
    pool.create_volume("w", n * CS).await.unwrap();
    let w = pool.open_volume("w").await.unwrap();
    let mut want = vec![1u8; (n * CS) as usize];
    w.write(ByteOffset(0), &want, Durability::Fua)
        .await
        .unwrap();
    pool.snapshot("w", "s").await.unwrap();
    for c in 0..n as usize {
        let at = c * CS as usize + 4096;
        w.write(ByteOffset(at as u64), &[5u8; 4096], Durability::Normal)
            .await
            .unwrap();
        want[at..at + 4096].fill(5);
    }
    pool.flush().await.unwrap();
    (dev, pool, want)
}

/// How many of w's `n` clusters are split entries whose record still
/// has a base (a plain entry is a converted, complete one).
async fn incomplete(pool: &Arc<Pool>, n: u64) -> usize {
    let mut m = pool.meta.lock().await;
    let i = m.find("w").unwrap();
    let mut open = 0;
    for vc in 0..n {
        let e = m.lookup_read(i, vc).await.unwrap().unwrap();
        if let Ok(Entry::Split(r)) = Entry::decode(e) {
            let rec = m.record(r).await.unwrap();
            assert!(rec.base != 0 || rec.mask == full_mask(CS), "{rec:?}");
            open += usize::from(rec.base != 0);
        }
    }
    open
}

#[test]
fn splits_made_before_a_restart_are_completed_and_their_space_returns() {
    rt().block_on(async {
        // Arrange: three splits, committed; the pool closed (dropped) and
        // opened again; the snapshot the bases belong to deleted.
        let (dev, pool, want) = splits(3, crate::pool::complete::QUEUE_MAX).await;
        drop(pool);
        let pool = Pool::open(dev, 64).await.unwrap();
        pool.delete_volume("s").await.unwrap();
        pool.flush().await.unwrap();
        let before = pool.space().await.free_bytes;
        // The queue knows nothing of them (the gap this walk closes).
        assert_eq!(pool.complete_queued().await.unwrap(), (0, 0));
        assert_eq!(incomplete(&pool, 3).await, 3);

        // Act
        let walked = pool.complete_scanned().await.unwrap().expect("due at open");
        pool.flush().await.unwrap();

        // Assert: each record complete, its base's cluster free again.
        assert_eq!(walked.completed, 3);
        assert_eq!(incomplete(&pool, 3).await, 0);
        assert_eq!(pool.space().await.free_bytes, before + 3 * CS);
        assert_eq!(read(&pool, "w").await, want);
        let report = pool.check().await.unwrap();
        assert!(report.clean(), "{:?}", report.problems);
        assert_eq!(
            pool.complete_scanned().await.unwrap(),
            None,
            "not due again"
        );
    });
}

#[test]
fn a_full_queue_makes_a_walk_due_and_every_split_is_completed() {
    rt().block_on(async {
        // Arrange: a queue of 2 places, 6 splits since open (the walk due
        // at open done first, so only the overflow makes one due).
        let (_dev, pool, want) = splits(6, 2).await;
        assert!(pool.rescan.load(Ordering::Acquire), "overflow noted");
        assert_eq!(incomplete(&pool, 6).await, 6);

        // Act
        let (queued, _) = pool.complete_queued().await.unwrap();
        let walked = pool.complete_scanned().await.unwrap().expect("due");
        pool.flush().await.unwrap();

        // Assert: 2 by their place, the 4 dropped by the walk.
        assert_eq!((queued, walked.completed), (2, 4));
        assert_eq!(incomplete(&pool, 6).await, 0);
        assert_eq!(read(&pool, "w").await, want);
        assert_eq!(read(&pool, "s").await, vec![1u8; 6 * CS as usize]);
        let report = pool.check().await.unwrap();
        assert!(report.clean(), "{:?}", report.problems);
    });
}

#[test]
fn a_corrupt_split_page_is_skipped_by_the_walk_not_a_panic() {
    rt().block_on(async {
        // Arrange: two splits, committed; the pool opened again (the
        // journal replayed), then their split page's bytes overwritten on
        // the array (open does not read split pages).
        let (dev, pool, _) = splits(2, crate::pool::complete::QUEUE_MAX).await;
        let block = {
            let mut m = pool.meta.lock().await;
            let i = m.find("w").unwrap();
            let e = m.lookup_read(i, 0).await.unwrap().unwrap();
            let Ok(Entry::Split(r)) = Entry::decode(e) else {
                panic!("not a split: {e:#x}")
            };
            r.block
        };
        drop(pool);
        let pool = Pool::open(dev.clone(), 64).await.unwrap();
        dev.write(ByteOffset(block * 4096), &[0xa5; 4096], Durability::Fua)
            .await
            .unwrap();

        // Act
        let walked = pool.complete_scanned().await.unwrap().expect("due at open");

        // Assert: the page is counted as corrupt, nothing completed (P-27).
        assert_eq!((walked.corrupt, walked.completed), (1, 0));
    });
}
