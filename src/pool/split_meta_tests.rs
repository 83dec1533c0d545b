//! Tests of split records in an open version-3 pool: a hand-made split
//! (any mask and chain) reads per granule from its record chain, before
//! and after a reopen (kind-8 pages accepted in the map area); a corrupt
//! reference fails the read with an error, never a panic (P-27); counts
//! through snapshots, whole copies and deletes; check and repair of
//! record counts; a version-2 pool still refuses a tagged entry.

use std::sync::Arc;

use crate::block::{BlockDevice, Durability};
use crate::member::memory::MemDevice;
use crate::pool::format::Kind;
use crate::pool::pool::CreateOptions;
use crate::pool::split::{granule_size, Entry, SplitRecord, SplitRef};
use crate::pool::Pool;
use crate::units::ByteOffset;

pub(crate) const CS: u64 = 256 << 10;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A pool of `CS` clusters (version 3 with `split`) on a 64 MiB memory
/// array, with an empty volume "v" of 4 clusters.
pub(crate) async fn pool_with_v(split: bool) -> (Arc<MemDevice>, Arc<Pool>) {
    let dev = Arc::new(MemDevice::new("array", 64 << 20));
    let opts = CreateOptions {
        cluster_size: CS,
        split,
        ..Default::default()
    };
    Pool::create(dev.as_ref(), opts).await.unwrap();
    let pool = Pool::open(dev.clone(), 64).await.unwrap();
    pool.create_volume("v", 4 * CS).await.unwrap();
    (dev, pool)
}

async fn pool(split: bool) -> (Arc<MemDevice>, Arc<Pool>) {
    let (dev, pool) = pool_with_v(split).await;
    let v = pool.open_volume("v").await.unwrap();
    v.write(ByteOffset(CS), &vec![1u8; CS as usize], Durability::Normal)
        .await
        .unwrap();
    (dev, pool)
}

/// Makes virtual cluster 1 of "v" a split whose granules `mask` come
/// from a fresh cluster holding byte 2 (the others from the cluster it
/// had, byte 1); `rec` adjusts the record before it is stored. Returns
/// the split reference.
async fn hand_split(pool: &Arc<Pool>, mask: u64, rec: impl Fn(&mut SplitRecord)) -> SplitRef {
    let mut m = pool.meta.lock().await;
    let i = m.find("v").unwrap();
    let old = m.lookup_read(i, 1).await.unwrap().unwrap();
    let fresh = m.alloc_cluster().await.unwrap().cluster;
    let dev = m.store.dev().clone();
    dev.write(
        ByteOffset(fresh * CS),
        &vec![2u8; CS as usize],
        Durability::Normal,
    )
    .await
    .unwrap();
    let block = m.alloc_map(Kind::Split).await.unwrap();
    let r = SplitRef { block, slot: 5 };
    let mut record = SplitRecord {
        new: fresh,
        base: old,
        mask,
        count: 1,
        depth: 1,
    };
    rec(&mut record);
    record.write(m.store.page_mut(block).await.unwrap(), r.slot);
    let (leaf, k) = m.own_path(i, 1, false).await.unwrap().unwrap();
    m.store
        .page_mut(leaf)
        .await
        .unwrap()
        .set_entry(k, Entry::Split(r).encode());
    m.commit().await.unwrap();
    r
}

async fn read_cluster_1(pool: &Arc<Pool>) -> crate::block::BlockResult<Vec<u8>> {
    let v = pool.open_volume("v").await.unwrap();
    let mut buf = vec![0u8; CS as usize + 8192];
    v.read(ByteOffset(CS - 4096), &mut buf).await?;
    Ok(buf)
}

#[test]
fn a_split_entry_reads_each_granule_from_its_record_before_and_after_reopen() {
    rt().block_on(async {
        let (dev, pool) = pool(true).await;
        hand_split(&pool, 0b0101, |_| {}).await;
        let gs = granule_size(CS) as usize;
        let want: Vec<u8> = (0..CS as usize + 8192)
            .map(|x| match x {
                x if x < 4096 || x >= 4096 + CS as usize => 0,
                x => [2, 1][((x - 4096) / gs) % 2],
            })
            .collect();
        assert_eq!(read_cluster_1(&pool).await.unwrap(), want);
        let v = pool.open_volume("v").await.unwrap();
        let runs = v.allocation(0, 4 * CS).await.unwrap();
        assert_eq!(runs, vec![(CS, false), (CS, true), (2 * CS, false)]);
        drop((v, pool));
        let pool = Pool::open(dev, 64).await.unwrap();
        assert_eq!(read_cluster_1(&pool).await.unwrap(), want);
    });
}

#[test]
fn a_corrupt_split_reference_fails_the_read_naming_it() {
    rt().block_on(async {
        // A free slot (count 0), a record that names itself (a cycle),
        // a depth past 16.
        let (_d, p1) = pool(true).await;
        hand_split(&p1, 0b1, |r| *r = SplitRecord::default()).await;
        let (_d, p2) = pool(true).await;
        let cyc = hand_split(&p2, 0b1, |_| {}).await;
        {
            let mut m = p2.meta.lock().await;
            let page = m.store.page_mut(cyc.block).await.unwrap();
            let mut r = SplitRecord::read(page, cyc.slot);
            (r.base, r.depth) = (Entry::Split(cyc).encode(), 2);
            r.write(page, cyc.slot);
        }
        let (_d, p3) = pool(true).await;
        hand_split(&p3, 0b1, |r| r.depth = 17).await;
        for (p, what) in [(p1, "free slot"), (p2, "cycle"), (p3, "depth 17")] {
            let e = format!("{:?}", read_cluster_1(&p).await.unwrap_err());
            assert!(e.contains("split record"), "{what}: {e}");
        }
    });
}

#[test]
fn a_version_2_pool_refuses_a_tagged_entry() {
    rt().block_on(async {
        let (_d, p) = pool(false).await;
        {
            let mut m = p.meta.lock().await;
            let i = m.find("v").unwrap();
            let (leaf, k) = m.own_path(i, 1, false).await.unwrap().unwrap();
            let tagged = Entry::Split(SplitRef { block: 9, slot: 0 }).encode();
            m.store.page_mut(leaf).await.unwrap().set_entry(k, tagged);
        }
        let e = format!("{:?}", read_cluster_1(&p).await.unwrap_err());
        assert!(e.contains("outside the data area"), "{e}");
    });
}

/// Cluster 1 of `name` as read, and its expected bytes after a hand
/// split of mask 0b0101 (granules 0 and 2 hold 2, the others 1).
async fn cluster_1(pool: &Arc<Pool>, name: &str) -> Vec<u8> {
    let v = pool.open_volume(name).await.unwrap();
    let mut buf = vec![0u8; CS as usize];
    v.read(ByteOffset(CS), &mut buf).await.unwrap();
    buf
}

fn split_bytes() -> Vec<u8> {
    let gs = granule_size(CS) as usize;
    (0..CS as usize).map(|x| [2, 1][(x / gs) % 2]).collect()
}

async fn record_count(pool: &Arc<Pool>, r: SplitRef) -> u32 {
    pool.meta.lock().await.record(r).await.unwrap().count
}

#[test]
fn a_split_checks_clean_and_a_write_into_its_mask_goes_in_place() {
    rt().block_on(async {
        let (_d, pool) = pool(true).await;
        let free = pool.space().await.free_bytes;
        let r = hand_split(&pool, 0b0101, |_| {}).await;
        assert_eq!(pool.space().await.free_bytes, free - CS);
        let report = pool.check().await.unwrap();
        assert!(report.clean(), "{:?}", report.problems);

        let v = pool.open_volume("v").await.unwrap();
        v.write(ByteOffset(CS + 4096), &[3u8; 512], Durability::Fua)
            .await
            .unwrap();
        let mut want = split_bytes();
        want[4096..4608].fill(3);
        assert_eq!(cluster_1(&pool, "v").await, want);
        assert_eq!(record_count(&pool, r).await, 1);
        pool.flush().await.unwrap();
        let report = pool.check().await.unwrap();
        assert!(report.clean(), "{:?}", report.problems);
        assert_eq!(pool.space().await.free_bytes, free - CS);
    });
}

#[test]
fn a_snapshot_shares_a_split_record_until_the_last_holder_lets_go() {
    rt().block_on(async {
        let (_d, pool) = pool(true).await;
        let free = pool.space().await.free_bytes;
        let r = hand_split(&pool, 0b0101, |_| {}).await;
        pool.snapshot("v", "s").await.unwrap();
        let v = pool.open_volume("v").await.unwrap();
        v.write(ByteOffset(CS), &[4u8; 4096], Durability::Fua)
            .await
            .unwrap();
        // The write shadowed v's leaf (+1); its split on top (case 4)
        // holds the record as its base: s's leaf and that base.
        assert_eq!(record_count(&pool, r).await, 2);
        assert_eq!(cluster_1(&pool, "s").await, split_bytes());
        let report = pool.check().await.unwrap();
        assert!(report.clean(), "{:?}", report.problems);

        pool.delete_volume("s").await.unwrap();
        v.discard(ByteOffset(CS), CS).await.unwrap();
        pool.flush().await.unwrap();
        assert!(pool.meta.lock().await.record(r).await.unwrap().is_free());
        let report = pool.check().await.unwrap();
        assert!(report.clean(), "{:?}", report.problems);
        assert_eq!(pool.space().await.free_bytes, free + CS);
    });
}

#[test]
fn check_names_wrong_record_counts_and_repair_sets_them() {
    rt().block_on(async {
        let (_d, pool) = pool(true).await;
        let r = hand_split(&pool, 0b0101, |r| r.count = 3).await;
        {
            // A second record in use that nothing names: leaked.
            let mut m = pool.meta.lock().await;
            let page = m.store.page_mut(r.block).await.unwrap();
            let mut leaked = SplitRecord::read(page, r.slot);
            leaked.count = 1;
            leaked.write(page, 9);
        }
        let report = pool.check().await.unwrap();
        let lines = report.problems.join("\n");
        assert!(lines.contains(&format!(
            "split record slot 5 of page {}: count too high",
            r.block
        )));
        assert!(lines.contains(&format!("split record slot 9 of page {}: leaked", r.block)));
        let after = pool.repair(false).await.unwrap();
        assert!(after.clean(), "{:?}", after.problems);
        assert_eq!(record_count(&pool, r).await, 1);
        assert_eq!(cluster_1(&pool, "v").await, split_bytes());
    });
}
