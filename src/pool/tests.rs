//! Pool tests: unit cases and the conformance property test against a
//! model (a byte vector per volume; snapshots and clones as copies),
//! through writes, trims, flushes, snapshots, clones, deletes, resizes,
//! clean restarts and crashes (reopen without a flush).

use std::collections::HashMap;
use std::sync::Arc;

use proptest::prelude::*;

use crate::block::{BlockDevice, Durability};
use crate::member::memory::MemDevice;
use crate::pool::pool::CreateOptions;
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

async fn new_pool(size: u64) -> (Arc<MemDevice>, Arc<Pool>) {
    let opts = CreateOptions {
        cluster_size: CS,
        ..Default::default()
    };
    new_pool_with(size, opts).await
}

async fn new_pool_with(size: u64, opts: CreateOptions) -> (Arc<MemDevice>, Arc<Pool>) {
    let dev = Arc::new(MemDevice::new("array", size));
    Pool::create(dev.as_ref(), opts).await.unwrap();
    let pool = Pool::open(dev.clone(), 256).await.unwrap();
    (dev, pool)
}

/// The whole of volume `name`, read through the pool.
pub(super) async fn read_all(pool: &Arc<Pool>, name: &str) -> Vec<u8> {
    let v = pool.open_volume(name).await.unwrap();
    let mut buf = vec![0u8; v.size() as usize];
    v.read(ByteOffset(0), &mut buf).await.unwrap();
    buf
}

#[test]
fn thin_volume_reads_holes_as_zero_and_keeps_flushed_writes_across_reopen() {
    rt().block_on(async {
        let (dev, pool) = new_pool(ARRAY).await;
        pool.create_volume("a", 1 << 20).await.unwrap();
        let v = pool.open_volume("a").await.unwrap();
        v.write(ByteOffset(70_000), &[7u8; 5000], Durability::Normal)
            .await
            .unwrap();
        v.flush().await.unwrap();
        assert_eq!(
            v.allocation(0, 1 << 20).await.unwrap(),
            vec![(CS, false), (CS, true), ((1 << 20) - 2 * CS, false)]
        );
        drop(v);
        drop(pool);
        let pool = Pool::open(dev, 256).await.unwrap();
        let data = read_all(&pool, "a").await;
        assert!(data[..70_000].iter().all(|b| *b == 0));
        assert!(data[70_000..75_000].iter().all(|b| *b == 7));
        assert!(data[75_000..].iter().all(|b| *b == 0));
        assert!(pool.check().await.unwrap().clean());
    });
}

#[test]
fn full_pool_fails_only_the_allocating_write_and_freed_space_is_reusable() {
    rt().block_on(async {
        let (_dev, pool) = new_pool(ARRAY).await;
        let total = pool.space().await.free_bytes;
        pool.create_volume("big", 2 * total).await.unwrap();
        pool.create_volume("other", CS).await.unwrap();
        let other = pool.open_volume("other").await.unwrap();
        other
            .write(ByteOffset(0), &[1u8; 4096], Durability::Normal)
            .await
            .unwrap();
        let big = pool.open_volume("big").await.unwrap();
        let chunk = vec![9u8; CS as usize];
        let mut at = 0;
        let err = loop {
            match big.write(ByteOffset(at), &chunk, Durability::Normal).await {
                Ok(()) => at += CS,
                Err(e) => break e,
            }
        };
        assert!(err.is_no_space(), "{err}");
        assert_eq!(at, total - CS);
        other
            .write(ByteOffset(4096), &[2u8; 4096], Durability::Normal)
            .await
            .unwrap();
        big.write(ByteOffset(0), &[3u8; 512], Durability::Normal)
            .await
            .unwrap();
        big.discard(ByteOffset(CS), CS).await.unwrap();
        big.write(ByteOffset(at), &chunk, Durability::Normal)
            .await
            .unwrap();
        assert!(pool.check().await.unwrap().clean());
    });
}

#[test]
fn corrupt_directory_page_is_refused_naming_the_block() {
    rt().block_on(async {
        // A fresh pool has no journal records that would rewrite the page.
        let (dev, pool) = new_pool(ARRAY).await;
        let geo = pool.geo;
        drop(pool);
        let at = ByteOffset(geo.dir_start() * 4096 + 100);
        dev.write(at, &[0xff; 8], Durability::Normal).await.unwrap();
        let err = Pool::open(dev, 256).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("block {}", geo.dir_start())),
            "{text}"
        );
    });
}

#[test]
fn snapshot_keeps_old_bytes_clone_diverges_and_space_returns_after_last_delete() {
    rt().block_on(async {
        let (_dev, pool) = new_pool(ARRAY).await;
        let free0 = pool.space().await.free_bytes;
        pool.create_volume("v", 1 << 20).await.unwrap();
        let v = pool.open_volume("v").await.unwrap();
        v.write(ByteOffset(0), &[1u8; 8192], Durability::Normal)
            .await
            .unwrap();
        pool.snapshot("v", "s").await.unwrap();
        v.write(ByteOffset(0), &[2u8; 4096], Durability::Normal)
            .await
            .unwrap();
        pool.clone_volume("s", "c").await.unwrap();
        let c = pool.open_volume("c").await.unwrap();
        c.write(ByteOffset(4096), &[3u8; 4096], Durability::Normal)
            .await
            .unwrap();
        assert_eq!(read_all(&pool, "s").await[..8192], [1u8; 8192]);
        assert_eq!(read_all(&pool, "v").await[..4096], [2u8; 4096]);
        assert_eq!(read_all(&pool, "c").await[4096..8192], [3u8; 4096]);
        let s = pool.open_volume("s").await.unwrap();
        assert!(matches!(
            s.write(ByteOffset(0), &[0; 512], Durability::Normal).await,
            Err(crate::block::BlockError::ReadOnly)
        ));
        assert!(pool.check().await.unwrap().clean());
        for name in ["s", "v", "c"] {
            pool.delete_volume(name).await.unwrap();
            assert!(pool.check().await.unwrap().clean());
        }
        assert_eq!(pool.space().await.free_bytes, free0);
    });
}

#[test]
fn resize_grows_live_and_adds_map_levels() {
    rt().block_on(async {
        let (_dev, pool) = new_pool(ARRAY).await;
        pool.create_volume("v", CS).await.unwrap();
        let v = pool.open_volume("v").await.unwrap();
        v.write(ByteOffset(0), &[5u8; 512], Durability::Normal)
            .await
            .unwrap();
        pool.resize("v", 600 * CS).await.unwrap();
        assert_eq!(v.size(), 600 * CS);
        v.write(ByteOffset(599 * CS), &[6u8; 512], Durability::Normal)
            .await
            .unwrap();
        let data = read_all(&pool, "v").await;
        assert_eq!(data[..512], [5u8; 512]);
        assert_eq!(data[599 * CS as usize..599 * CS as usize + 512], [6u8; 512]);
        assert!(pool.check().await.unwrap().clean());
        pool.resize("v", CS).await.unwrap();
        assert_eq!(v.size(), CS);
        assert!(matches!(
            pool.resize("v", 1000).await,
            Err(PoolError::Invalid(_))
        ));
        assert!(pool.check().await.unwrap().clean());
    });
}

/// One step of the conformance test.
#[derive(Clone, Debug)]
enum Op {
    Write {
        vol: usize,
        sector: u64,
        sectors: u64,
        seed: u8,
    },
    Trim {
        vol: usize,
        sector: u64,
        sectors: u64,
    },
    Flush,
    Snapshot {
        vol: usize,
    },
    Clone {
        vol: usize,
    },
    Delete {
        vol: usize,
    },
    Grow {
        vol: usize,
        clusters: u64,
    },
    Shrink {
        vol: usize,
        sectors: u64,
    },
    Revert {
        vol: usize,
        snap: usize,
    },
    Reopen,
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    let vol = 0usize..8;
    prop_oneof![
        8 => (vol.clone(), 0u64..512, 1u64..300, any::<u8>())
            .prop_map(|(vol, sector, sectors, seed)| Op::Write { vol, sector, sectors, seed }),
        3 => (vol.clone(), 0u64..512, 1u64..400)
            .prop_map(|(vol, sector, sectors)| Op::Trim { vol, sector, sectors }),
        2 => Just(Op::Flush),
        1 => vol.clone().prop_map(|vol| Op::Snapshot { vol }),
        1 => vol.clone().prop_map(|vol| Op::Clone { vol }),
        1 => vol.clone().prop_map(|vol| Op::Delete { vol }),
        1 => (vol.clone(), 1u64..4).prop_map(|(vol, clusters)| Op::Grow { vol, clusters }),
        1 => (vol.clone(), 1u64..700).prop_map(|(vol, sectors)| Op::Shrink { vol, sectors }),
        1 => (vol, 0usize..8).prop_map(|(vol, snap)| Op::Revert { vol, snap }),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
    ]
}

/// The model: bytes per volume now and at the last commit, and every
/// write since (a crash may leave any of them).
#[derive(Default)]
struct Model {
    vols: Vec<(String, bool)>,
    /// Snapshot name -> the volume it was taken of.
    parent: HashMap<String, String>,
    now: HashMap<String, Vec<u8>>,
    durable: HashMap<String, Vec<u8>>,
    since: Vec<(String, u64, Vec<u8>)>,
    next: u32,
    /// The pool's cluster size.
    cs: u64,
}

impl Model {
    fn commit(&mut self) {
        self.durable = self.now.clone();
        self.since.clear();
    }
    fn pick(&self, i: usize) -> Option<(String, bool)> {
        (!self.vols.is_empty()).then(|| self.vols[i % self.vols.len()].clone())
    }
    fn name(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}{}", self.next)
    }
    fn add(&mut self, name: String, ro: bool, data: Vec<u8>) {
        self.vols.push((name.clone(), ro));
        self.now.insert(name, data);
        self.commit();
    }
}

/// Bytes of a request at `sector` (spread over the volume's clusters as
/// on a pool of [`CS`]: larger clusters scale the offset).
fn clamp(model: &Model, name: &str, sector: u64, sectors: u64) -> Option<(u64, u64)> {
    let size = model.now[name].len() as u64;
    let off = (sector * 512 * (model.cs / CS)) % size;
    let len = (sectors * 512).min(size - off);
    (len > 0).then_some((off, len))
}

async fn apply(pool: &Arc<Pool>, model: &mut Model, op: &Op) {
    match *op {
        Op::Write {
            vol,
            sector,
            sectors,
            seed,
        } => {
            let Some((name, ro)) = model.pick(vol) else {
                return;
            };
            let (off, len) = clamp(model, &name, sector, sectors).unwrap();
            let data: Vec<u8> = (0..len)
                .map(|i| seed.wrapping_add((i / 512) as u8) | 1)
                .collect();
            let v = pool.open_volume(&name).await.unwrap();
            let r = v.write(ByteOffset(off), &data, Durability::Normal).await;
            if ro {
                assert!(r.is_err());
                return;
            }
            r.unwrap();
            model.now.get_mut(&name).unwrap()[off as usize..(off + len) as usize]
                .copy_from_slice(&data);
            model.since.push((name, off, data));
        }
        Op::Trim {
            vol,
            sector,
            sectors,
        } => {
            let Some((name, ro)) = model.pick(vol) else {
                return;
            };
            let scaled = sectors * (model.cs / CS);
            let (off, len) = clamp(model, &name, sector, scaled).unwrap();
            let v = pool.open_volume(&name).await.unwrap();
            let r = v.discard(ByteOffset(off), len).await;
            if ro {
                assert!(r.is_err());
                return;
            }
            r.unwrap();
            model.now.get_mut(&name).unwrap()[off as usize..(off + len) as usize].fill(0);
            model.since.push((name, off, vec![0; len as usize]));
        }
        Op::Flush => {
            pool.flush().await.unwrap();
            model.commit();
        }
        _ => manage(pool, model, op).await,
    }
}

async fn manage(pool: &Arc<Pool>, model: &mut Model, op: &Op) {
    match *op {
        Op::Snapshot { vol } | Op::Clone { vol } => {
            let Some((src, _)) = model.pick(vol) else {
                return;
            };
            let writable = matches!(op, Op::Clone { .. });
            let name = model.name(if writable { "c" } else { "s" });
            pool.share(&src, &name, writable).await.unwrap();
            let data = model.now[&src].clone();
            model.parent.insert(name.clone(), src);
            model.add(name, !writable, data);
        }
        Op::Delete { vol } => {
            let Some((name, _)) = model.pick(vol) else {
                return;
            };
            pool.delete_volume(&name).await.unwrap();
            model.vols.retain(|(n, _)| *n != name);
            model.now.remove(&name);
            model.commit();
        }
        Op::Grow { vol, clusters } => {
            let Some((name, _)) = model.pick(vol) else {
                return;
            };
            let size = model.now[&name].len() as u64 + clusters * model.cs;
            pool.resize(&name, size).await.unwrap();
            model.now.get_mut(&name).unwrap().resize(size as usize, 0);
            model.commit();
        }
        Op::Shrink { vol, sectors } => {
            let Some((name, ro)) = model.pick(vol) else {
                return;
            };
            let len = model.now[&name].len() as u64;
            let size = len.saturating_sub(sectors * 512).max(512);
            let r = pool.resize(&name, size).await;
            if size == len {
                assert!(r.is_ok(), "{name}: resize to its own size: {r:?}");
                return;
            }
            if ro {
                assert!(r.is_err(), "{name}: shrink of a snapshot: {r:?}");
                return;
            }
            r.unwrap();
            model.now.get_mut(&name).unwrap().truncate(size as usize);
            model.commit();
        }
        Op::Revert { vol, snap } => revert(pool, model, vol, snap).await,
        _ => unreachable!("data ops are applied by apply()"),
    }
}

/// Reverts a writable volume to one of its snapshots (or checks the
/// refusal when the pick is not a snapshot of it).
async fn revert(pool: &Arc<Pool>, model: &mut Model, vol: usize, snap: usize) {
    let (Some((name, _)), Some((s, ro))) = (model.pick(vol), model.pick(snap)) else {
        return;
    };
    let r = pool.revert(&name, &s).await;
    let ok =
        ro && model.parent.get(&s) == Some(&name) && !model.vols.contains(&(name.clone(), true));
    assert_eq!(r.is_ok(), ok, "revert {name} to {s}: {r:?}");
    if ok {
        let data = model.now[&s].clone();
        model.now.insert(name, data);
        model.commit();
    }
}

/// After a crash: bytes written since the last commit may hold any of the
/// values written since (or zero, or the committed ones); all others the
/// committed bytes exactly.
fn reconcile(model: &mut Model, name: &str, actual: &[u8]) {
    let durable = &model.durable[name];
    for s in (0..actual.len()).step_by(512) {
        let got = &actual[s..s + 512];
        let writes: Vec<&[u8]> = model
            .since
            .iter()
            .filter(|(n, off, d)| {
                n == name && (*off as usize) <= s && s + 512 <= *off as usize + d.len()
            })
            .map(|(_, off, d)| &d[s - *off as usize..s - *off as usize + 512])
            .collect();
        let ok = got == &durable[s..s + 512]
            || (!writes.is_empty() && (writes.contains(&got) || got.iter().all(|b| *b == 0)));
        assert!(
            ok,
            "{name}: sector {} after a crash holds bytes nobody wrote",
            s / 512
        );
    }
    model.now.insert(name.to_string(), actual.to_vec());
}

async fn verify(pool: &Arc<Pool>, model: &Model) {
    for (name, _) in &model.vols {
        assert!(
            read_all(pool, name).await == model.now[name],
            "{name} differs from the model"
        );
    }
}

/// The pool a conformance run works on: version 2 with 64 KiB clusters
/// (never split), or version 3 with 256 KiB clusters of four granules.
fn setup(split: bool) -> (u64, CreateOptions) {
    let cs = if split { 256 << 10 } else { CS };
    let opts = CreateOptions {
        cluster_size: cs,
        split,
        ..Default::default()
    };
    (if split { 4 * ARRAY } else { ARRAY }, opts)
}

fn run(ops: Vec<Op>, split: bool) {
    rt().block_on(async {
        let (size, opts) = setup(split);
        let cs = opts.cluster_size;
        let (dev, mut pool) = new_pool_with(size, opts).await;
        let mut model = Model {
            cs,
            ..Model::default()
        };
        for base in ["a", "b"] {
            pool.create_volume(base, 8 * cs).await.unwrap();
            model.add(base.to_string(), false, vec![0; 8 * cs as usize]);
        }
        for op in &ops {
            match op {
                Op::Reopen | Op::Crash => {
                    if matches!(op, Op::Reopen) {
                        pool.flush().await.unwrap();
                        model.commit();
                    }
                    drop(pool);
                    pool = Pool::open(dev.clone(), 64).await.unwrap();
                    for (name, _) in model.vols.clone() {
                        let actual = read_all(&pool, &name).await;
                        reconcile(&mut model, &name, &actual);
                    }
                    model.commit();
                }
                _ => apply(&pool, &mut model, op).await,
            }
        }
        verify(&pool, &model).await;
        let report = pool.check().await.unwrap();
        assert!(report.clean(), "{:?}", report.problems);
        check_changed_blocks(&pool).await;
    });
}

/// The changed-blocks walk between every two volumes equals comparing
/// each cluster's mapping, and a cluster whose bytes differ is dirty.
async fn check_changed_blocks(pool: &Arc<Pool>) {
    use crate::pool::ops_tests::{dirty_by_lookup, dirty_clusters};
    let vols = pool.volumes().await;
    let cs = pool.cluster_size() as usize;
    for a in &vols {
        let data_a = read_all(pool, &a.name).await;
        for b in &vols {
            let walk = dirty_clusters(pool, a.id, b.id, a.size).await;
            assert_eq!(walk, dirty_by_lookup(pool, a.id, b.id, a.size).await);
            let data_b = read_all(pool, &b.name).await;
            for (k, chunk) in data_a.chunks(cs).enumerate() {
                let other = data_b.get(k * cs..).unwrap_or(&[]);
                let same = chunk
                    .iter()
                    .enumerate()
                    .all(|(i, x)| *x == other.get(i).copied().unwrap_or(0));
                assert!(
                    same || walk.contains(&(k as u64)),
                    "{} vs {}: cluster {k} differs but is clean",
                    a.name,
                    b.name
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn pool_matches_model_through_writes_trims_snapshots_clones_deletes_and_restarts(
        ops in proptest::collection::vec(op(), 1..60)
    ) {
        run(ops, false);
    }

    /// The same on version-3 pools (split clusters, FORMAT.md §11).
    #[test]
    fn split_pool_matches_model_through_writes_trims_snapshots_clones_deletes_and_restarts(
        ops in proptest::collection::vec(op(), 1..60)
    ) {
        run(ops, true);
    }
}

/// The read path's lookup without I/O (`Meta::lookup_read_cached`) on a
/// reopened pool gives the answers of the lookup that reads the pages,
/// holes included.
#[test]
fn a_cached_read_lookup_answers_as_the_reading_one() {
    rt().block_on(async {
        let (dev, pool) = new_pool(ARRAY).await;
        pool.create_volume("a", 1 << 20).await.unwrap();
        let v = pool.open_volume("a").await.unwrap();
        v.write(ByteOffset(CS), &[7u8; 4096], Durability::Normal)
            .await
            .unwrap();
        v.flush().await.unwrap();
        drop((v, pool));
        let pool = Pool::open(dev, 256).await.unwrap();
        let mut m = pool.meta.lock().await;
        let i = m.by_id(m.slots[0].rec.id).unwrap();

        let read = m.lookup_read(i, 1).await.unwrap();
        let cached = m.lookup_read_cached(i, 1).expect("cached now").unwrap();
        let hole = m.lookup_read_cached(i, 2).expect("same leaf").unwrap();

        assert!(read.is_some());
        assert_eq!(cached, read);
        assert_eq!(hole, None);
    });
}

/// `split: true` lays a version-3 pool (both header copies); it opens,
/// serves and checks clean like a version-2 one; a version-2 pool keeps
/// writing version 2; an unknown version is refused by name (P-26).
#[test]
fn split_option_lays_version_3_and_other_versions_stay_refused() {
    use crate::pool::format::{FormatError, Header, BLOCK};
    rt().block_on(async {
        let (_, opts) = setup(true);
        let (dev, pool) = new_pool_with(ARRAY, opts).await;
        let (dev2, _pool2) = new_pool(ARRAY).await;
        pool.create_volume("a", 1 << 20).await.unwrap();
        let v = pool.open_volume("a").await.unwrap();
        v.write(ByteOffset(4096), &[9u8; 4096], Durability::Fua)
            .await
            .unwrap();
        drop((v, pool));
        let mut b = vec![0u8; BLOCK];
        for copy in 0..2u64 {
            dev.read(ByteOffset(copy * BLOCK as u64), &mut b)
                .await
                .unwrap();
            assert_eq!(Header::decode(&b, copy).unwrap().version, 3);
        }
        dev2.read(ByteOffset(0), &mut b).await.unwrap();
        assert_eq!(Header::decode(&b, 0).unwrap().version, 2);
        let mut h = Header::decode(&b, 0).unwrap();
        h.version = 4;
        let e = Header::decode(&h.encode(), 0).unwrap_err();
        assert!(matches!(e, FormatError::Version(4)), "{e}");

        let pool = Pool::open(dev, 64).await.unwrap();
        let data = read_all(&pool, "a").await;
        assert!(data[4096..8192].iter().all(|x| *x == 9));
        assert!(pool.check().await.unwrap().clean());
    });
}
