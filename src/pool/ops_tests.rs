//! Tests of revert, shrink, the changed-blocks walk and `check --repair`
//! (docs/FORMAT.md §11; crash cases P-13..P-15 are in `redteam_tests`).

use std::sync::Arc;

use crate::block::{BlockDevice, Durability};
use crate::member::memory::MemDevice;
use crate::pool::pool::CreateOptions;
use crate::pool::tests::read_all;
use crate::pool::{Pool, PoolError};
use crate::units::ByteOffset;

const CS: u64 = 64 << 10;
const ARRAY: u64 = 32 << 20;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn new_pool() -> (Arc<MemDevice>, Arc<Pool>) {
    let dev = Arc::new(MemDevice::new("array", ARRAY));
    let opts = CreateOptions {
        cluster_size: CS,
        ..Default::default()
    };
    Pool::create(dev.as_ref(), opts).await.unwrap();
    let pool = Pool::open(dev.clone(), 256).await.unwrap();
    (dev, pool)
}

async fn write(pool: &Arc<Pool>, name: &str, at: u64, byte: u8, len: usize) {
    let v = pool.open_volume(name).await.unwrap();
    v.write(ByteOffset(at), &vec![byte; len], Durability::Normal)
        .await
        .unwrap();
}

async fn id(pool: &Arc<Pool>, name: &str) -> u32 {
    let vs = pool.volumes().await;
    vs.iter().find(|v| v.name == name).unwrap().id
}

/// Dirty virtual clusters of `a` against `b` over all of `a`, asking
/// again where a reply stops short (as an NBD client does).
pub(crate) async fn dirty_clusters(pool: &Arc<Pool>, a: u32, b: u32, size: u64) -> Vec<u64> {
    let cs = pool.cluster_size();
    let (mut at, mut out) = (0, Vec::new());
    while at < size {
        let runs = pool.changed(a, b, at, size - at).await.unwrap();
        assert!(!runs.is_empty() && runs[0].0 > 0, "no progress at {at}");
        for (n, dirty) in runs {
            if dirty {
                out.extend((at / cs)..(at + n).div_ceil(cs));
            }
            at += n;
        }
    }
    out.dedup();
    out
}

/// The same set by looking every cluster up in both maps.
pub(crate) async fn dirty_by_lookup(pool: &Arc<Pool>, a: u32, b: u32, size: u64) -> Vec<u64> {
    let mut m = pool.meta.lock().await;
    let (ia, ib) = (m.by_id(a).unwrap(), m.by_id(b).unwrap());
    let cap = |m: &crate::pool::meta::Meta, i: usize| 508u64.pow(m.slots[i].rec.depth);
    let mut out = Vec::new();
    for vc in 0..size.div_ceil(pool.cluster_size()) {
        let x = m.lookup(ia, vc).await.unwrap().cluster;
        let y = match vc < cap(&m, ib) {
            true => m.lookup(ib, vc).await.unwrap().cluster,
            false => None,
        };
        let (sa, sb) = (m.slots[ia].rec.size, m.slots[ib].rec.size);
        let cs = pool.cluster_size();
        let edge = sa > sb && !sb.is_multiple_of(cs) && vc == sb / cs && x.is_some();
        if x != y || edge {
            out.push(vc);
        }
    }
    out
}

#[test]
fn changed_blocks_are_the_clusters_written_or_trimmed_since_the_snapshot() {
    rt().block_on(async {
        let (_dev, pool) = new_pool().await;
        pool.create_volume("v", 600 * CS).await.unwrap();
        for k in 0..10 {
            write(&pool, "v", k * CS, 1, 4096).await;
        }
        pool.snapshot("v", "s").await.unwrap();
        write(&pool, "v", 3 * CS + 8192, 2, 512).await;
        write(&pool, "v", 520 * CS, 3, 4096).await;
        let v = pool.open_volume("v").await.unwrap();
        v.discard(ByteOffset(5 * CS), CS).await.unwrap();
        // Grown past one map level: the snapshot's tree is shallower.
        let big = 508 * 508 * CS + 10 * CS;
        pool.resize("v", big).await.unwrap();
        write(&pool, "v", big - CS, 4, 4096).await;
        let (a, b) = (id(&pool, "v").await, id(&pool, "s").await);

        let dirty = dirty_clusters(&pool, a, b, big).await;
        let back = dirty_clusters(&pool, b, a, 600 * CS).await;

        let last = big / CS - 1;
        assert_eq!(dirty, vec![3, 5, 520, last]);
        assert_eq!(back, vec![3, 5, 520]);
        assert_eq!(dirty, dirty_by_lookup(&pool, a, b, big).await);
        let part = pool.changed(a, b, 3 * CS + 100, 10).await.unwrap();
        assert_eq!(part, vec![(10, true)]);
    });
}

#[test]
fn revert_gives_the_snapshot_back_and_frees_what_was_written_since() {
    rt().block_on(async {
        let (_dev, pool) = new_pool().await;
        pool.create_volume("v", 8 * CS).await.unwrap();
        write(&pool, "v", 0, 1, 3 * CS as usize).await;
        pool.snapshot("v", "s").await.unwrap();
        pool.create_volume("w", CS).await.unwrap();
        pool.snapshot("w", "ws").await.unwrap();
        let free0 = pool.space().await.free_bytes;
        write(&pool, "v", CS, 2, 4 * CS as usize).await;
        pool.resize("v", 16 * CS).await.unwrap();

        let refused = [
            pool.revert("v", "ws").await,
            pool.revert("s", "s").await,
            pool.revert("v", "w").await,
        ];
        pool.revert("v", "s").await.unwrap();

        for r in refused {
            assert!(matches!(r, Err(PoolError::Invalid(_))), "{r:?}");
        }
        assert_eq!(read_all(&pool, "v").await, read_all(&pool, "s").await);
        assert_eq!(pool.open_volume("v").await.unwrap().size(), 8 * CS);
        assert_eq!(pool.space().await.free_bytes, free0);
        assert!(pool.check().await.unwrap().clean());
        write(&pool, "v", 0, 3, 512).await;
        assert_eq!(read_all(&pool, "s").await[..512], [1u8; 512]);
        assert!(pool.check().await.unwrap().clean());
    });
}

#[test]
fn shrink_frees_the_tail_keeps_snapshots_and_grown_space_reads_zero() {
    rt().block_on(async {
        let (dev, pool) = new_pool().await;
        pool.create_volume("v", 1200 * CS).await.unwrap();
        for k in [0, 1, 2, 600, 1100, 1199] {
            write(&pool, "v", k * CS, 7, CS as usize).await;
        }
        pool.snapshot("v", "s").await.unwrap();
        write(&pool, "v", 1100 * CS, 8, 4096).await;
        let free0 = pool.space().await.free_bytes;

        pool.resize("v", CS + 4096).await.unwrap();
        let after = pool.space().await.free_bytes;
        let refused = pool.resize("s", CS).await;
        pool.resize("v", 3 * CS).await.unwrap();
        drop(pool);
        let pool = Pool::open(dev, 256).await.unwrap();

        assert!(matches!(refused, Err(PoolError::Invalid(_))), "{refused:?}");
        // The clusters only v held (1100, written since the snapshot) came back.
        assert_eq!(after, free0 + CS);
        let v = read_all(&pool, "v").await;
        assert_eq!(v.len() as u64, 3 * CS);
        assert!(v[..(CS + 4096) as usize].iter().all(|b| *b == 7));
        assert!(v[(CS + 4096) as usize..].iter().all(|b| *b == 0));
        let s = read_all(&pool, "s").await;
        assert!(s[1199 * CS as usize..].iter().all(|b| *b == 7));
        let vols = pool.volumes().await;
        let mapped = vols.iter().find(|x| x.name == "v").unwrap().mapped_bytes;
        assert_eq!(mapped, 2 * CS);
        assert!(pool.check().await.unwrap().clean());
    });
}

/// Sets the stored count of data cluster `c` and commits (a corrupt count
/// that passes every checksum).
async fn forge_count(pool: &Arc<Pool>, c: u64, v: u32) {
    let mut m = pool.meta.lock().await;
    let (block, i) = m.geo().cluster_count_at(c);
    m.store.page_mut(block).await.unwrap().set_count(i, v);
    m.commit().await.unwrap();
}

async fn cluster_of(pool: &Arc<Pool>, name: &str, vc: u64) -> u64 {
    let mut m = pool.meta.lock().await;
    let i = m.find(name).unwrap();
    m.lookup(i, vc).await.unwrap().cluster.unwrap()
}

#[test]
fn repair_reclaims_leaks_and_lowers_high_counts_but_refuses_low_ones_without_force() {
    rt().block_on(async {
        let (dev, pool) = new_pool().await;
        pool.create_volume("v", 8 * CS).await.unwrap();
        write(&pool, "v", 0, 1, 2 * CS as usize).await;
        pool.snapshot("v", "s").await.unwrap();
        write(&pool, "v", 4 * CS, 1, 4096).await;
        let (shared, own) = (
            cluster_of(&pool, "v", 0).await,
            cluster_of(&pool, "v", 4).await,
        );
        let free0 = pool.space().await.free_bytes;
        let g = pool.geo;
        let unused = g.first_data_cluster + g.clusters - 1;
        forge_count(&pool, unused, 1).await;
        forge_count(&pool, own, 3).await;
        drop(pool);
        let pool = Pool::open(dev.clone(), 256).await.unwrap();

        let before = pool.check().await.unwrap();
        let repaired = pool.repair(false).await.unwrap();
        forge_count(&pool, shared, 0).await;
        let low = pool.repair(false).await;
        let low_check = pool.check().await.unwrap();
        let forced = pool.repair(true).await.unwrap();

        assert_eq!(before.problems.len(), 3, "{:?}", before.problems);
        assert!(before.problems.iter().any(|p| p.contains("leaked")));
        assert!(repaired.clean(), "{:?}", repaired.problems);
        assert_eq!(repaired.repaired.len(), 2, "{:?}", repaired.repaired);
        assert_eq!(pool.space().await.free_bytes, free0);
        let msg = low.unwrap_err().to_string();
        assert!(
            msg.contains("below their references") && msg.contains("--force"),
            "{msg}"
        );
        assert!(!low_check.clean(), "the refused repair changed nothing");
        assert!(forced.clean(), "{:?}", forced.problems);
        write(&pool, "v", 0, 9, 512).await;
        assert_eq!(read_all(&pool, "s").await[..512], [1u8; 512]);
        assert!(pool.check().await.unwrap().clean());
    });
}

/// A new pool holds 1984 volumes (64 directory pages of 31), all listed
/// again after a reopen; one more is refused with a clear error.
#[test]
fn directory_holds_1984_volumes() {
    rt().block_on(async {
        let (dev, pool) = new_pool().await;
        for n in 0..1984 {
            pool.create_volume(&format!("v{n}"), CS).await.unwrap();
        }
        let e = pool.create_volume("one-more", CS).await.unwrap_err();
        assert!(e.to_string().contains("directory is full"), "{e}");
        drop(pool);
        let pool = Pool::open(dev, 256).await.unwrap();
        let vs = pool.volumes().await;
        assert_eq!(vs.len(), 1984);
        assert!(vs.iter().any(|v| v.name == "v1983"));
    });
}
