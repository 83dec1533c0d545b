//! Fresh clusters and the durable `zeroed_from` (docs/FORMAT.md §11,
//! P-32; issue 11, session 18): a write into a fresh cluster waits only
//! until the raise covering it is durable — not for a commit of its own,
//! not for a snapshot's FLUSH when a raise made ahead of need covers it —
//! and never writes a cluster above the durable `zeroed_from`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::block::{BlockDevice, Durability};
use crate::pool::pause_tests::{rt, Stall};
use crate::pool::pool::CreateOptions;
use crate::pool::Pool;
use crate::units::ByteOffset;

const CS: u64 = 64 << 10;
/// Room for ~1780 data clusters of 64 KiB past the 16 MiB journal.
const ARRAY: u64 = 128 << 20;
const WAIT: Duration = Duration::from_secs(10);

async fn pool_with(dev: &Arc<Stall>, clusters: u64) -> Arc<Pool> {
    let opts = CreateOptions {
        cluster_size: CS,
        ..Default::default()
    };
    Pool::create(dev.as_ref(), opts).await.unwrap();
    let pool = Pool::open(dev.clone(), 256).await.unwrap();
    pool.create_volume("a", clusters * CS).await.unwrap();
    pool
}

/// Writes 4 KiB of `byte` at the start of virtual clusters `vcs`, at once.
async fn first_writes(pool: &Arc<Pool>, vcs: std::ops::Range<u64>, byte: u8) {
    let mut tasks = Vec::new();
    for vc in vcs {
        let v = pool.open_volume("a").await.unwrap();
        tasks.push(tokio::spawn(async move {
            v.write(ByteOffset(vc * CS), &[byte; 4096], Durability::Normal)
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
}

/// Before session 18 the 257th fresh cluster (the first past the raise
/// made by the first write) raised `zeroed_from` and committed before its
/// data: a copy-on-write right after a snapshot waited for the
/// snapshot's FLUSH, then for a FLUSH of its own.
#[test]
fn a_copy_on_write_after_a_snapshot_does_not_wait_for_the_snapshots_flush() {
    rt().block_on(async {
        let dev = Stall::sized(ARRAY);
        let pool = pool_with(&dev, 300).await;
        for k in 0..16 {
            first_writes(&pool, k * 16..(k + 1) * 16, 1).await;
        }
        pool.flush().await.unwrap();
        dev.flushes.store(true, Ordering::SeqCst);
        let p = pool.clone();
        let snap = tokio::spawn(async move { p.snapshot("a", "s").await });
        tokio::time::timeout(WAIT, dev.arrived.notified())
            .await
            .expect("the snapshot's commit reached its FLUSH");
        let a = pool.open_volume("a").await.unwrap();
        let cow = a.write(ByteOffset(0), &[7u8; 4096], Durability::Normal);
        tokio::time::timeout(WAIT, cow)
            .await
            .expect("the copy-on-write went on while the snapshot's FLUSH was stuck")
            .unwrap();
        assert!(!snap.is_finished(), "the snapshot returns once durable");
        dev.release.add_permits(1);
        snap.await.unwrap().unwrap();
        pool.flush().await.unwrap();
        drop(a);
        drop(pool);
        let pool = Pool::open(dev.clone(), 256).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let a = pool.open_volume("a").await.unwrap();
        a.read(ByteOffset(0), &mut buf).await.unwrap();
        assert_eq!(buf, vec![7u8; 4096]);
        let s = pool.open_volume("s").await.unwrap();
        s.read(ByteOffset(0), &mut buf).await.unwrap();
        assert_eq!(buf, vec![1u8; 4096]);
        assert!(pool.check().await.unwrap().clean());
    });
}

/// Before session 18 every writer waiting for one raise committed again
/// after the commit carrying it (a FLUSH each, one after another): eight
/// first writes into a fresh pool made eight FLUSHes; now they share one.
#[test]
fn writers_waiting_for_one_raise_share_its_flush() {
    rt().block_on(async {
        let dev = Stall::sized(ARRAY);
        let pool = pool_with(&dev, 300).await;
        pool.flush().await.unwrap();
        dev.flushes.store(true, Ordering::SeqCst);
        let before = dev.flush_count.load(Ordering::SeqCst);
        let p = pool.clone();
        let writes = tokio::spawn(async move { first_writes(&p, 0..8, 3).await });
        tokio::time::timeout(WAIT, dev.arrived.notified())
            .await
            .expect("the raise's commit reached its FLUSH");
        // All eight have their cluster and wait (no data written yet).
        let all_reserved = async {
            while pool.meta.lock().await.reserved.len() < 8 {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(WAIT, all_reserved)
            .await
            .expect("eight reserved");
        let first = pool.meta.lock().await.geo().first_data_cluster;
        let mut buf = vec![0u8; 4096];
        for k in 0..8 {
            dev.read(ByteOffset((first + k) * CS), &mut buf)
                .await
                .unwrap();
            assert_eq!(
                buf,
                vec![0u8; 4096],
                "cluster {k} written before its raise was durable"
            );
        }
        dev.release.add_permits(1);
        tokio::time::timeout(WAIT, writes).await.unwrap().unwrap();
        let flushes = dev.flush_count.load(Ordering::SeqCst) - before;
        assert_eq!(flushes, 1, "FLUSHes for one raise");
        for vc in 0..8 {
            let a = pool.open_volume("a").await.unwrap();
            a.read(ByteOffset(vc * CS), &mut buf).await.unwrap();
            assert_eq!(buf, vec![3u8; 4096]);
        }
        pool.flush().await.unwrap();
        assert!(pool.check().await.unwrap().clean());
    });
}
