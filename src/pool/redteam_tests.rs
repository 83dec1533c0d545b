//! Red-team tests of pools: a crash after every prefix of the array
//! writes (the last one torn) of a sequence of management operations and
//! writes; valid-looking corrupt metadata (bytes changed and the CRC
//! recomputed) never panics; two writers racing for one hole.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use crate::block::{BlockDevice, BlockError, BlockResult, Durability, IoFuture};
use crate::member::memory::MemDevice;
use crate::pool::pool::CreateOptions;
use crate::pool::{Pool, PoolError};
use crate::units::ByteOffset;

const CS: u64 = 64 << 10;
const ARRAY: u64 = 32 << 20;

/// A device whose writes stop after a budget: the write that exhausts it
/// lands torn (its first 4 KiB only), every later one fails unapplied.
/// A SIGKILL between two writes (or in the middle of one).
#[derive(Debug)]
struct Cut {
    inner: Arc<MemDevice>,
    budget: AtomicI64,
}

impl Cut {
    fn dead(&self) -> BlockError {
        BlockError::io("cut", std::io::Error::from_raw_os_error(libc::EIO))
    }

    fn spend(&self) -> i64 {
        self.budget.fetch_sub(1, Ordering::SeqCst)
    }

    async fn write_at(&self, offset: ByteOffset, buf: &[u8]) -> BlockResult {
        match self.spend() {
            n if n > 1 => self.inner.write(offset, buf, Durability::Normal).await,
            1 => {
                let torn = &buf[..buf.len().min(4096)];
                self.inner.write(offset, torn, Durability::Normal).await?;
                Err(self.dead())
            }
            _ => Err(self.dead()),
        }
    }

    async fn clear(&self, offset: ByteOffset, len: u64) -> BlockResult {
        match self.spend() {
            n if n > 0 => self.inner.write_zeroes(offset, len, false).await,
            _ => Err(self.dead()),
        }
    }
}

impl BlockDevice for Cut {
    fn name(&self) -> &str {
        "cut"
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read<'a>(&'a self, offset: ByteOffset, buf: &'a mut [u8]) -> IoFuture<'a> {
        self.inner.read(offset, buf)
    }
    fn write<'a>(&'a self, offset: ByteOffset, buf: &'a [u8], _d: Durability) -> IoFuture<'a> {
        crate::block::BoxFuture::new(self.write_at(offset, buf))
    }
    fn flush(&self) -> IoFuture<'_> {
        crate::block::BoxFuture::new(async move {
            match self.budget.load(Ordering::SeqCst) > 0 {
                true => Ok(()),
                false => Err(self.dead()),
            }
        })
    }
    fn discard(&self, offset: ByteOffset, len: u64) -> IoFuture<'_> {
        crate::block::BoxFuture::new(self.clear(offset, len))
    }
    fn write_zeroes(&self, offset: ByteOffset, len: u64, _may_unmap: bool) -> IoFuture<'_> {
        crate::block::BoxFuture::new(self.clear(offset, len))
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A device holding `bytes` (only its non-zero blocks are written, so
/// the untouched zero pages cost nothing).
async fn copy_of(bytes: &[u8]) -> Arc<MemDevice> {
    let dev = Arc::new(MemDevice::new("array", bytes.len() as u64));
    for (i, b) in bytes.chunks(4096).enumerate() {
        if b.iter().any(|x| *x != 0) {
            let at = ByteOffset(i as u64 * 4096);
            dev.write(at, b, Durability::Normal).await.unwrap();
        }
    }
    dev
}

async fn empty_pool_bytes() -> Vec<u8> {
    empty_pool_of(CS, false).await
}

/// An empty pool of clusters of `cs` bytes (`split`: version 3).
async fn empty_pool_of(cs: u64, split: bool) -> Vec<u8> {
    let dev = MemDevice::new("array", ARRAY);
    let opts = CreateOptions {
        cluster_size: cs,
        split,
        ..Default::default()
    };
    Pool::create(&dev, opts).await.unwrap();
    dev.snapshot()
}

/// One step of the crash scenario; every step ends with a commit.
#[derive(Clone, Debug)]
enum Step {
    Create(&'static str, u64),
    Write(&'static str, u64, u8, usize),
    Trim(&'static str, u64, u64),
    Snap(&'static str, &'static str),
    Clone(&'static str, &'static str),
    Resize(&'static str, u64),
    Revert(&'static str, &'static str),
    Delete(&'static str),
}

/// The steps, on a pool of clusters of `cs` bytes.
fn scenario(cs: u64) -> Vec<Step> {
    use Step::*;
    vec![
        Create("a", 4 * cs),
        Write("a", 100, 1, 5000),
        Write("a", 3 * cs + 7, 2, 4000),
        Snap("a", "s"),
        Write("a", 200, 3, 300),
        Trim("a", 3 * cs, cs),
        Clone("s", "c"),
        Write("c", cs - 10, 4, 20),
        Revert("a", "s"),
        Write("a", 3 * cs + 100, 8, 300),
        Resize("a", 509 * cs),
        Write("a", 508 * cs, 5, 4096),
        Write("a", 2 * cs, 9, cs as usize),
        Resize("a", 2 * cs + 4096),
        Resize("a", 3 * cs),
        Delete("s"),
        Trim("c", 0, 512),
        Create("b", 2 * cs),
        Write("b", 0, 6, cs as usize),
        Delete("c"),
        Delete("a"),
        Write("b", 10, 7, 10),
    ]
}

type Model = BTreeMap<&'static str, Arc<Vec<u8>>>;

fn apply_model(m: &mut Model, s: &Step) {
    match *s {
        Step::Create(n, size) => {
            m.insert(n, Arc::new(vec![0; size as usize]));
        }
        Step::Write(n, at, b, len) => {
            Arc::make_mut(m.get_mut(n).unwrap())[at as usize..][..len].fill(b)
        }
        Step::Trim(n, at, len) => {
            Arc::make_mut(m.get_mut(n).unwrap())[at as usize..][..len as usize].fill(0)
        }
        Step::Snap(src, n) | Step::Clone(src, n) => {
            let d = m[src].clone();
            m.insert(n, d);
        }
        Step::Resize(n, size) => Arc::make_mut(m.get_mut(n).unwrap()).resize(size as usize, 0),
        Step::Revert(n, snap) => {
            let d = m[snap].clone();
            m.insert(n, d);
        }
        Step::Delete(n) => {
            m.remove(n);
        }
    }
}

async fn run_step(pool: &Arc<Pool>, s: &Step) -> Result<(), PoolError> {
    let io = |e: BlockError| PoolError::Io(e);
    match *s {
        Step::Create(n, size) => pool.create_volume(n, size).await.map(drop)?,
        Step::Write(n, at, b, len) => {
            let v = pool.open_volume(n).await?;
            v.write(ByteOffset(at), &vec![b; len], Durability::Normal)
                .await
                .map_err(io)?;
        }
        Step::Trim(n, at, len) => {
            let v = pool.open_volume(n).await?;
            v.discard(ByteOffset(at), len).await.map_err(io)?;
        }
        Step::Snap(src, n) => pool.snapshot(src, n).await.map(drop)?,
        Step::Clone(src, n) => pool.clone_volume(src, n).await.map(drop)?,
        Step::Resize(n, size) => pool.resize(n, size).await.map(drop)?,
        Step::Revert(n, snap) => pool.revert(n, snap).await.map(drop)?,
        Step::Delete(n) => pool.delete_volume(n).await?,
    }
    pool.flush().await
}

async fn contents(pool: &Arc<Pool>) -> Model {
    let mut out = Model::new();
    for v in pool.volumes().await {
        let dev = pool.open_volume(&v.name).await.unwrap();
        let mut buf = vec![0u8; v.size as usize];
        dev.read(ByteOffset(0), &mut buf).await.unwrap();
        let name: &'static str = scenario(CS)
            .iter()
            .find_map(|s| match *s {
                Step::Create(n, _) | Step::Snap(_, n) | Step::Clone(_, n) if n == v.name => Some(n),
                _ => None,
            })
            .unwrap();
        out.insert(name, Arc::new(buf));
    }
    out
}

/// Runs the scenario with `budget` writes; returns the step it died in
/// (None: it finished) and the device.
async fn crash_run(base: &Image, cs: u64, budget: i64) -> (Option<usize>, Arc<MemDevice>) {
    let inner = device_of(base).await;
    let cut = Arc::new(Cut {
        inner: inner.clone(),
        budget: AtomicI64::new(budget),
    });
    let pool = match Pool::open(cut, 64).await {
        Ok(p) => p,
        Err(_) => return (Some(0), inner),
    };
    for (i, s) in scenario(cs).iter().enumerate() {
        if run_step(&pool, s).await.is_err() {
            return (Some(i), inner);
        }
    }
    (None, inner)
}

#[test]
fn sigkill_after_any_array_write_leaves_a_clean_pool_at_a_step_boundary() {
    sigkill_after_any_write(CS, false);
}

/// The same on a version-3 pool of four granules per cluster: the
/// scenario's writes after the snapshot and into the clone split
/// clusters, the revert and deletes release split records (P-20..P-25).
#[test]
fn sigkill_after_any_array_write_leaves_a_clean_split_pool_at_a_step_boundary() {
    sigkill_after_any_write(256 << 10, true);
}

fn sigkill_after_any_write(cs: u64, split: bool) {
    rt().block_on(async {
        let base = image_of(&empty_pool_of(cs, split).await);
        let steps = scenario(cs);
        let mut models = vec![Model::new()];
        for s in &steps {
            let mut m = models.last().unwrap().clone();
            apply_model(&mut m, s);
            models.push(m);
        }
        let mut budget = 1;
        loop {
            let (died, dev) = crash_run(&base, cs, budget).await;
            let pool = Pool::open(dev.clone(), 64)
                .await
                .unwrap_or_else(|e| panic!("budget {budget}: reopen failed: {e}"));
            let report = pool.check().await.unwrap();
            assert!(report.clean(), "budget {budget}: {:?}", report.problems);
            let got = contents(&pool).await;
            let Some(i) = died else {
                assert_eq!(got, models[steps.len()]);
                break;
            };
            assert!(
                got == models[i] || got == models[i + 1],
                "budget {budget}: died in step {i} ({:?}); volumes {:?}",
                steps[i],
                got.keys().collect::<Vec<_>>()
            );
            // The reopened pool goes on working.
            pool.create_volume("after", CS).await.unwrap();
            let v = pool.open_volume("after").await.unwrap();
            v.write(ByteOffset(0), &[9; 4096], Durability::Fua)
                .await
                .unwrap();
            assert!(pool.check().await.unwrap().clean(), "budget {budget}");
            budget += 1;
        }
    });
}

/// A pool with volumes, a snapshot, a clone and data, committed.
async fn populated() -> Vec<u8> {
    let dev = copy_of(&empty_pool_bytes().await).await;
    let pool = Pool::open(dev.clone(), 64).await.unwrap();
    pool.create_volume("a", 8 * CS).await.unwrap();
    let a = pool.open_volume("a").await.unwrap();
    for k in 0..4 {
        a.write(
            ByteOffset(k * CS + 5),
            &[k as u8 + 1; 777],
            Durability::Normal,
        )
        .await
        .unwrap();
    }
    pool.snapshot("a", "s").await.unwrap();
    pool.clone_volume("s", "c").await.unwrap();
    a.write(ByteOffset(0), &[9; 100], Durability::Normal)
        .await
        .unwrap();
    pool.flush().await.unwrap();
    drop((a, pool));
    // Open once more: the journal is replayed and checkpointed, so the
    // pages in place are what a later open reads.
    let dev = copy_of(&dev.snapshot()).await;
    Pool::open(dev.clone(), 64).await.unwrap();
    dev.snapshot()
}

/// Everything a client and an operator can do to an open pool; errors
/// are fine, panics are not.
async fn exercise(pool: &Arc<Pool>) {
    let _ = pool.space().await;
    for v in pool.volumes().await {
        let Ok(dev) = pool.open_volume(&v.name).await else {
            continue;
        };
        let mut buf = vec![0u8; dev.size().min(4 * CS) as usize];
        let _ = dev.read(ByteOffset(0), &mut buf).await;
        let _ = dev.write(ByteOffset(0), &[1; 4096], Durability::Fua).await;
        let _ = dev
            .write(ByteOffset(CS), &[2; 512], Durability::Normal)
            .await;
        let _ = dev.discard(ByteOffset(2 * CS), CS).await;
        let _ = dev.discard(ByteOffset(3 * CS), 4096).await;
        let _ = pool.snapshot(&v.name, "x").await;
        let _ = pool.resize(&v.name, v.size.saturating_add(600 * CS)).await;
        let _ = pool.delete_volume(&v.name).await;
    }
    let _ = pool.create_volume("n", CS).await;
    let _ = pool.flush().await;
    let _ = pool.check().await;
    let _ = pool.space().await;
}

/// The non-zero 4 KiB blocks of `bytes`, by block number.
type Image = BTreeMap<u64, Vec<u8>>;

fn image_of(bytes: &[u8]) -> Image {
    bytes
        .chunks(4096)
        .enumerate()
        .filter(|(_, b)| b.iter().any(|x| *x != 0))
        .map(|(i, b)| (i as u64, b.to_vec()))
        .collect()
}

async fn device_of(image: &Image) -> Arc<MemDevice> {
    let dev = Arc::new(MemDevice::new("array", ARRAY));
    for (b, bytes) in image {
        let at = ByteOffset(b * 4096);
        dev.write(at, bytes, Durability::Normal).await.unwrap();
    }
    dev
}

/// Changes 8 bytes at `at` of block `block` to `v` and reseals the block
/// (the header's CRC at its end, a page's at byte 4): corrupt but valid.
fn forge(image: &mut Image, block: u64, at: usize, v: u64) {
    let b = image.entry(block).or_insert_with(|| vec![0; 4096]);
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    if block < 2 {
        let crc = crc32fast::hash(&b[..4092]);
        b[4092..].copy_from_slice(&crc.to_le_bytes());
    } else {
        b[4..8].fill(0);
        let crc = crc32fast::hash(&b[..]);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Values a forged field takes: small, boundary and huge.
const FORGED: [u64; 5] = [0, 1, 7, u32::MAX as u64, u64::MAX];

#[test]
fn forged_metadata_with_valid_crcs_is_refused_or_served_never_a_panic() {
    rt().block_on(async {
        let base = image_of(&populated().await);
        let geo = Pool::open(device_of(&base).await, 64).await.unwrap().geo;
        let mut blocks = vec![
            0,
            2,
            geo.dir_start(),
            geo.ccount_start(),
            geo.mcount_start(),
        ];
        blocks.extend(geo.meta_start()..geo.meta_start() + 4);
        for block in blocks {
            let fields: Vec<usize> = match block {
                0 => (8..88).step_by(8).collect(),
                b if b == geo.dir_start() => (32..160).step_by(4).collect(),
                _ => (32..80).step_by(8).collect(),
            };
            for at in fields {
                for v in FORGED {
                    let mut image = base.clone();
                    forge(&mut image, block, at, v);
                    let dev = device_of(&image).await;
                    if let Ok(pool) = Pool::open(dev, 64).await {
                        exercise(&pool).await;
                    }
                }
            }
        }
    });
}

#[test]
fn writers_racing_for_one_hole_allocate_it_once_and_all_their_bytes_stay() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dev = copy_of(&empty_pool_bytes().await).await;
        let pool = Pool::open(dev.clone(), 64).await.unwrap();
        pool.create_volume("v", 4 * CS).await.unwrap();
        let mut tasks = Vec::new();
        for k in 0..16u64 {
            let v = Arc::new(pool.open_volume("v").await.unwrap());
            tasks.push(tokio::spawn(async move {
                let at = ByteOffset((k % 4) * CS + (k / 4) * 4096);
                v.write(at, &[k as u8 + 1; 4096], Durability::Normal)
                    .await
                    .unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let info = &pool.volumes().await[0];
        assert_eq!(info.mapped_bytes, 4 * CS, "one cluster per hole");
        let v = pool.open_volume("v").await.unwrap();
        for k in 0..16u64 {
            let mut buf = [0u8; 4096];
            let at = ByteOffset((k % 4) * CS + (k / 4) * 4096);
            v.read(at, &mut buf).await.unwrap();
            assert!(buf.iter().all(|b| *b == k as u8 + 1), "write {k} lost");
        }
        assert!(pool.check().await.unwrap().clean());
    });
}

/// Break: with both header copies damaged (a byte flipped in each, magic
/// intact) the pool read as "no pool here", so the daemon exported the
/// raw array for any client to overwrite. Now it is a corrupt pool.
#[test]
fn both_header_copies_damaged_is_a_corrupt_pool_not_no_pool() {
    rt().block_on(async {
        let mut bytes = populated().await;
        bytes[40] ^= 0xff;
        bytes[4096 + 40] ^= 0xff;
        let err = Pool::open(copy_of(&bytes).await, 64).await.unwrap_err();
        assert!(matches!(err, PoolError::Format(_)), "{err:?}");
        assert!(err.to_string().contains("pool header"), "{err}");
        // A zeroed array is still simply "no pool".
        let err = Pool::open(copy_of(&vec![0; ARRAY as usize]).await, 64)
            .await
            .unwrap_err();
        assert!(matches!(err, PoolError::NoPool(_)), "{err:?}");
    });
}

/// Break: on a full pool, a TRIM / WRITE_ZEROES of part of a shared
/// cluster (it must copy on write) failed with ENOSPC although clusters
/// freed a moment before were pending, where a WRITE of the same bytes
/// commits them and succeeds. It now frees them the same way.
#[test]
fn partial_trim_of_a_shared_cluster_on_a_full_pool_uses_space_just_freed() {
    rt().block_on(async {
        let dev = copy_of(&empty_pool_bytes().await).await;
        let pool = Pool::open(dev, 64).await.unwrap();
        let total = pool.space().await.free_bytes;
        pool.create_volume("big", 2 * total).await.unwrap();
        let big = pool.open_volume("big").await.unwrap();
        let full = vec![1u8; CS as usize];
        big.write(ByteOffset(0), &full, Durability::Normal)
            .await
            .unwrap();
        pool.snapshot("big", "s").await.unwrap();
        let mut at = CS;
        while big
            .write(ByteOffset(at), &full, Durability::Normal)
            .await
            .is_ok()
        {
            at += CS;
        }
        big.discard(ByteOffset(CS), CS).await.unwrap();
        big.discard(ByteOffset(0), 4096).await.unwrap();
        big.write_zeroes(ByteOffset(8192), 4096, false)
            .await
            .unwrap();
        let mut buf = vec![0u8; CS as usize];
        big.read(ByteOffset(0), &mut buf).await.unwrap();
        assert!(buf[..4096].iter().all(|b| *b == 0));
        assert!(buf[4096..8192].iter().all(|b| *b == 1));
        assert!(buf[8192..12288].iter().all(|b| *b == 0));
        assert!(buf[12288..].iter().all(|b| *b == 1));
        let snap = pool.open_volume("s").await.unwrap();
        snap.read(ByteOffset(0), &mut buf).await.unwrap();
        assert!(buf.iter().all(|b| *b == 1), "the snapshot keeps its bytes");
        assert!(pool.check().await.unwrap().clean());
    });
}
