//! Tests of making splits: after a snapshot, a small write to a shared
//! cluster of a version-3 pool maps a split record (one granule written,
//! not the cluster), the snapshot keeps its bytes, counts check clean;
//! writes into the exclusive record go in place or fill a granule (case
//! 3), a shared one gets a record on top (case 4; whole at depth 16);
//! records share pages; a version-2 pool still copies whole.

use std::sync::Arc;

use crate::block::{BlockDevice, Durability};
use crate::member::memory::MemDevice;
use crate::pool::split::{granule_size, Entry};
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
        // A snapshot shares the record: the next write splits on top.
        pool.snapshot("v", "s2").await.unwrap();
        write(&pool, CS, 8, 512).await;
        let e2 = entry(&pool, 1).await;
        let Ok(Entry::Split(r2)) = Entry::decode(e2) else {
            panic!("not a split: {e2:#x}")
        };
        let rec2 = pool.meta.lock().await.record(r2).await.unwrap();
        assert_eq!((rec2.base, rec2.mask, rec2.depth), (e, 0b1, 2));
        assert_eq!(read(&pool, "s2").await, want);
        want[CS as usize..CS as usize + 512].fill(8);
        assert_eq!(read(&pool, "v").await, want);
        clean(pool.check().await.unwrap());
        drop(pool);
        let pool = Pool::open(dev, 64).await.unwrap();
        assert_eq!(read(&pool, "v").await, want);
    });
}

/// Record of split entry `e`.
async fn record_of(pool: &Arc<Pool>, e: u64) -> crate::pool::split::SplitRecord {
    let Ok(Entry::Split(r)) = Entry::decode(e) else {
        panic!("not a split: {e:#x}")
    };
    pool.meta.lock().await.record(r).await.unwrap()
}

#[test]
fn a_write_to_a_shared_record_splits_on_top_writing_one_granule() {
    rt().block_on(async {
        let (dev, pool) = snapped(true).await;
        let gs = granule_size(CS);
        write(&pool, CS + 4096, 5, 4096).await;
        let e1 = entry(&pool, 1).await;
        pool.snapshot("v", "s2").await.unwrap();
        let free = pool.space().await.free_bytes;
        // Granule 2, in part: its other bytes come from the snapshot's
        // cluster through the record's base.
        write(&pool, CS + 2 * gs + 512, 6, 1024).await;
        let e2 = entry(&pool, 1).await;
        assert_ne!(e2, e1);
        let rec2 = record_of(&pool, e2).await;
        assert_eq!(
            (rec2.base, rec2.mask, rec2.count, rec2.depth),
            (e1, 0b100, 1, 2)
        );
        assert_eq!(
            record_of(&pool, e1).await.count,
            2,
            "s2's leaf and rec2's base"
        );
        assert_eq!(pool.space().await.free_bytes, free - CS, "one new cluster");
        let mut new = vec![0u8; CS as usize];
        dev.read(ByteOffset(rec2.new * CS), &mut new).await.unwrap();
        let g2 = 2 * gs as usize;
        assert!(
            new[..g2].iter().all(|x| *x == 0),
            "granules 0, 1 not written"
        );
        assert!(new[g2 + gs as usize..].iter().all(|x| *x == 0));
        let mut s2 = vec![1u8; 4 * CS as usize];
        s2[(CS + 4096) as usize..(CS + 8192) as usize].fill(5);
        let mut want = s2.clone();
        let at = (CS + 2 * gs + 512) as usize;
        want[at..at + 1024].fill(6);
        assert_eq!(read(&pool, "v").await, want);
        assert_eq!(read(&pool, "s2").await, s2);
        assert_eq!(read(&pool, "s").await, vec![1u8; 4 * CS as usize]);
        clean(pool.check().await.unwrap());
        // Case 3 on the new record: granule 1 filled through the chain.
        write(&pool, CS + gs + 8, 7, 8).await;
        want[(CS + gs + 8) as usize..(CS + gs + 16) as usize].fill(7);
        assert_eq!(record_of(&pool, e2).await.mask, 0b110);
        assert_eq!(read(&pool, "v").await, want);
        // Deletes in any order: the chain stays readable, counts clean.
        pool.delete_volume("s2").await.unwrap();
        assert_eq!(record_of(&pool, e1).await.count, 1, "rec2's base alone");
        clean(pool.check().await.unwrap());
        pool.flush().await.unwrap();
        drop(pool);
        let pool = Pool::open(dev, 64).await.unwrap();
        assert_eq!(read(&pool, "v").await, want);
        pool.delete_volume("s").await.unwrap();
        assert_eq!(read(&pool, "v").await, want);
        clean(pool.check().await.unwrap());
        pool.delete_volume("v").await.unwrap();
        pool.flush().await.unwrap();
        clean(pool.check().await.unwrap());
        assert_eq!(pool.space().await.used_bytes, 0, "everything released");
    });
}

#[test]
fn a_chain_stops_at_depth_16_with_a_whole_copy() {
    rt().block_on(async {
        let (dev, pool) = snapped(true).await;
        let gs = granule_size(CS);
        let mut want = vec![1u8; 4 * CS as usize];
        let mut snaps = Vec::new();
        for k in 0..17u64 {
            let at = CS + (k % (CS / gs)) * gs + 100;
            write(&pool, at, 10 + k as u8, 200).await;
            want[at as usize..at as usize + 200].fill(10 + k as u8);
            let rec = record_of(&pool, entry(&pool, 1).await).await;
            assert_eq!(rec.depth, (k + 1) as u32, "{k}: {rec:?}");
            let name = format!("c{k}");
            pool.snapshot("v", &name).await.unwrap();
            snaps.push((name, want.clone()));
            if k == 15 {
                break;
            }
        }
        // Depth 16 and shared: the next write copies the cluster whole.
        write(&pool, CS, 99, 512).await;
        want[CS as usize..CS as usize + 512].fill(99);
        assert!(!is_split(entry(&pool, 1).await));
        assert_eq!(read(&pool, "v").await, want);
        clean(pool.check().await.unwrap());
        // Every snapshot reads its own bytes, before and after a reopen
        // and while the others go (odd ones first, then the rest).
        pool.flush().await.unwrap();
        drop(pool);
        let pool = Pool::open(dev, 64).await.unwrap();
        for (name, bytes) in &snaps {
            assert_eq!(&read(&pool, name).await, bytes, "{name}");
        }
        let order = snaps
            .iter()
            .skip(1)
            .step_by(2)
            .chain(snaps.iter().step_by(2));
        for (name, _) in order {
            pool.delete_volume(name).await.unwrap();
            for (other, bytes) in &snaps {
                if pool.open_volume(other).await.is_ok() {
                    assert_eq!(&read(&pool, other).await, bytes, "{other}");
                }
            }
            clean(pool.check().await.unwrap());
        }
        pool.delete_volume("s").await.unwrap();
        pool.flush().await.unwrap();
        clean(pool.check().await.unwrap());
        assert_eq!(read(&pool, "v").await, want);
    });
}
