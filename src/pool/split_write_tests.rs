//! Tests of making splits: after a snapshot, a small write to a shared
//! cluster of a version-3 pool maps a split record (one granule written,
//! not the cluster), the snapshot keeps its bytes, counts check clean;
//! writes into the exclusive record go in place or fill a granule (case
//! 3), a shared one is copied whole; records share pages; a version-2
//! pool still copies whole.

use std::sync::Arc;

use crate::block::{BlockDevice, Durability};
use crate::member::memory::MemDevice;
use crate::pool::split::{granule_size, Entry};
use crate::pool::split_meta::is_split;
use crate::pool::Pool;
use crate::units::ByteOffset;

use crate::pool::split_meta::tests::CS;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A pool with volume "v" of 4 clusters, all written with byte 1, and
/// its snapshot "s".
async fn snapped(split: bool) -> (Arc<MemDevice>, Arc<Pool>) {
    let (dev, pool) = crate::pool::split_meta::tests::pool_with_v(split).await;
    let v = pool.open_volume("v").await.unwrap();
    v.write(ByteOffset(0), &vec![1u8; 4 * CS as usize], Durability::Fua)
        .await
        .unwrap();
    pool.snapshot("v", "s").await.unwrap();
    (dev, pool)
}

async fn read(pool: &Arc<Pool>, name: &str) -> Vec<u8> {
    let v = pool.open_volume(name).await.unwrap();
    let mut buf = vec![0u8; v.size() as usize];
    v.read(ByteOffset(0), &mut buf).await.unwrap();
    buf
}

async fn entry(pool: &Arc<Pool>, vc: u64) -> u64 {
    let mut m = pool.meta.lock().await;
    let i = m.find("v").unwrap();
    m.lookup_read(i, vc).await.unwrap().unwrap()
}

async fn write(pool: &Arc<Pool>, at: u64, byte: u8, len: usize) {
    let v = pool.open_volume("v").await.unwrap();
    v.write(ByteOffset(at), &vec![byte; len], Durability::Fua)
        .await
        .unwrap();
}

fn clean(report: crate::pool::CheckReport) {
    assert!(report.clean(), "{:?}", report.problems);
}

#[test]
fn a_write_after_a_snapshot_splits_the_cluster_writing_one_granule() {
    rt().block_on(async {
        let (dev, pool) = snapped(true).await;
        let gs = granule_size(CS);
        let free = pool.space().await.free_bytes;
        write(&pool, CS + 4096, 5, 4096).await;
        let e = entry(&pool, 1).await;
        assert!(is_split(e));
        let Ok(Entry::Split(r)) = Entry::decode(e) else {
            panic!("not a split: {e:#x}")
        };
        let rec = pool.meta.lock().await.record(r).await.unwrap();
        assert_eq!((rec.mask, rec.count, rec.depth), (0b1, 1, 1));
        // One granule written, not the cluster: the others of `new` were
        // never written (a fresh cluster reads zero).
        let mut new = vec![0u8; CS as usize];
        dev.read(ByteOffset(rec.new * CS), &mut new).await.unwrap();
        assert!(new[..4096].iter().all(|x| *x == 1));
        assert!(new[gs as usize..].iter().all(|x| *x == 0));
        assert_eq!(pool.space().await.free_bytes, free - CS);
        let mut want = vec![1u8; 4 * CS as usize];
        want[(CS + 4096) as usize..(CS + 8192) as usize].fill(5);
        assert_eq!(read(&pool, "v").await, want);
        assert_eq!(read(&pool, "s").await, vec![1u8; 4 * CS as usize]);
        clean(pool.check().await.unwrap());

        write(&pool, CS + 3 * gs, 6, 512).await;
        assert_eq!(entry(&pool, 1).await, e);
        let rec = pool.meta.lock().await.record(r).await.unwrap();
        assert_eq!((rec.mask, rec.count), (0b1001, 1));
        want[(CS + 3 * gs) as usize..(CS + 3 * gs + 512) as usize].fill(6);
        assert_eq!(read(&pool, "v").await, want);
        clean(pool.check().await.unwrap());
        pool.delete_volume("s").await.unwrap();
        pool.flush().await.unwrap();
        clean(pool.check().await.unwrap());
        drop(pool);
        let pool = Pool::open(dev, 64).await.unwrap();
        assert_eq!(read(&pool, "v").await, want);
    });
}

#[test]
fn splits_of_several_clusters_share_a_split_page_and_survive_a_crash() {
    rt().block_on(async {
        let (dev, pool) = snapped(true).await;
        for vc in 0..4 {
            write(&pool, vc * CS + 100 * 512, 7, 8192).await;
        }
        let blocks: Vec<u64> = {
            let mut out = Vec::new();
            for vc in 0..4 {
                match Entry::decode(entry(&pool, vc).await).unwrap() {
                    Entry::Split(r) => out.push(r.block),
                    other => panic!("cluster {vc}: {other:?}"),
                }
            }
            out
        };
        assert!(blocks.iter().all(|b| *b == blocks[0]), "{blocks:?}");
        assert_eq!(pool.meta.lock().await.mcount(blocks[0]).await.unwrap(), 4);
        pool.flush().await.unwrap();
        let want = read(&pool, "v").await;
        drop(pool);
        let pool = Pool::open(dev, 64).await.unwrap();
        assert_eq!(read(&pool, "v").await, want);
        clean(pool.check().await.unwrap());
    });
}

#[test]
fn a_version_2_pool_still_copies_the_whole_cluster() {
    rt().block_on(async {
        let (_dev, pool) = snapped(false).await;
        write(&pool, CS + 4096, 5, 4096).await;
        assert!(!is_split(entry(&pool, 1).await));
        clean(pool.check().await.unwrap());
    });
}

#[test]
fn writes_to_an_exclusive_split_go_in_place_or_fill_a_granule() {
    rt().block_on(async {
        let (dev, pool) = snapped(true).await;
        let gs = granule_size(CS);
        write(&pool, CS + 4096, 5, 4096).await;
        let e = entry(&pool, 1).await;
        let Ok(Entry::Split(r)) = Entry::decode(e) else {
            panic!("not a split: {e:#x}")
        };
        pool.flush().await.unwrap();
        let free = pool.space().await.free_bytes;
        // In the mask: in place. Outside: filled, its bit set.
        write(&pool, CS + 8192, 6, 512).await;
        write(&pool, CS + 2 * gs + 100, 7, 300).await;
        assert_eq!(entry(&pool, 1).await, e);
        let rec = pool.meta.lock().await.record(r).await.unwrap();
        assert_eq!((rec.mask, rec.count), (0b101, 1));
        assert_eq!(pool.space().await.free_bytes, free);
        let mut want = vec![1u8; 4 * CS as usize];
        want[(CS + 4096) as usize..(CS + 8192) as usize].fill(5);
        want[(CS + 8192) as usize..(CS + 8704) as usize].fill(6);
        let at = (CS + 2 * gs + 100) as usize;
        want[at..at + 300].fill(7);
        assert_eq!(read(&pool, "v").await, want);
        assert_eq!(read(&pool, "s").await, vec![1u8; 4 * CS as usize]);
        clean(pool.check().await.unwrap());
        // A snapshot shares the record: the next write copies whole.
        pool.snapshot("v", "s2").await.unwrap();
        write(&pool, CS, 8, 512).await;
        assert!(!is_split(entry(&pool, 1).await));
        assert_eq!(read(&pool, "s2").await, want);
        want[CS as usize..CS as usize + 512].fill(8);
        assert_eq!(read(&pool, "v").await, want);
        clean(pool.check().await.unwrap());
        drop(pool);
        let pool = Pool::open(dev, 64).await.unwrap();
        assert_eq!(read(&pool, "v").await, want);
    });
}
