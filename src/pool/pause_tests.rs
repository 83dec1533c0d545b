//! Pause tests of pools (issue 11, session 11): a snapshot drains only
//! its source volume's writes, its commit runs with the metadata lock
//! released (other volumes read and write while its FLUSH is stuck), and
//! copy-on-write writers racing on shared clusters keep every byte;
//! session 12: it waits for in-place writes of its source only, not for
//! fills or copies in flight (P-19).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};

use crate::block::{BlockDevice, BlockResult, Durability, IoFuture};
use crate::member::memory::MemDevice;
use crate::pool::pool::CreateOptions;
use crate::pool::Pool;
use crate::units::ByteOffset;

const CS: u64 = 64 << 10;
const ARRAY: u64 = 32 << 20;
const WAIT: Duration = Duration::from_secs(10);

/// A device that, once armed, stops the first matching operation (a write
/// in `hold`, or a FLUSH) until released; counts FLUSHes.
#[derive(Debug)]
pub(super) struct Stall {
    inner: MemDevice,
    pub(super) hold: std::sync::Mutex<Option<std::ops::Range<u64>>>,
    pub(super) flushes: AtomicBool,
    pub(super) flush_count: std::sync::atomic::AtomicU64,
    pub(super) arrived: Notify,
    pub(super) release: Semaphore,
}

impl Stall {
    fn new() -> Arc<Stall> {
        Stall::sized(ARRAY)
    }

    pub(super) fn sized(bytes: u64) -> Arc<Stall> {
        Arc::new(Stall {
            inner: MemDevice::new("stall", bytes),
            hold: std::sync::Mutex::new(None),
            flushes: AtomicBool::new(false),
            flush_count: std::sync::atomic::AtomicU64::new(0),
            arrived: Notify::new(),
            release: Semaphore::new(0),
        })
    }

    async fn stop(&self) {
        self.arrived.notify_one();
        self.release.acquire().await.expect("open").forget();
    }

    async fn write_at(&self, offset: ByteOffset, buf: &[u8]) -> BlockResult {
        let hit = {
            let mut h = self.hold.lock().unwrap();
            let hit = h.as_ref().is_some_and(|r| r.contains(&offset.get()));
            if hit {
                *h = None;
            }
            hit
        };
        if hit {
            self.stop().await;
        }
        self.inner.write(offset, buf, Durability::Normal).await
    }

    async fn flush_at(&self) -> BlockResult {
        self.flush_count.fetch_add(1, Ordering::SeqCst);
        if self.flushes.swap(false, Ordering::SeqCst) {
            self.stop().await;
        }
        self.inner.flush().await
    }
}

impl BlockDevice for Stall {
    fn name(&self) -> &str {
        "stall"
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
        crate::block::BoxFuture::new(self.flush_at())
    }
    fn discard(&self, offset: ByteOffset, len: u64) -> IoFuture<'_> {
        self.inner.discard(offset, len)
    }
    fn write_zeroes(&self, offset: ByteOffset, len: u64, may_unmap: bool) -> IoFuture<'_> {
        self.inner.write_zeroes(offset, len, may_unmap)
    }
}

pub(super) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A pool with volumes "a" and "b", each with its first cluster written.
async fn two_volumes() -> (Arc<Stall>, Arc<Pool>) {
    let dev = Stall::new();
    let opts = CreateOptions {
        cluster_size: CS,
        ..Default::default()
    };
    Pool::create(dev.as_ref(), opts).await.unwrap();
    let pool = Pool::open(dev.clone(), 256).await.unwrap();
    for (name, byte) in [("a", 1u8), ("b", 2u8)] {
        pool.create_volume(name, 4 * CS).await.unwrap();
        let v = pool.open_volume(name).await.unwrap();
        v.write(ByteOffset(0), &[byte; 4096], Durability::Normal)
            .await
            .unwrap();
    }
    pool.flush().await.unwrap();
    (dev, pool)
}

async fn cluster_of(pool: &Arc<Pool>, name: &str) -> u64 {
    let mut m = pool.meta.lock().await;
    let i = m.find(name).unwrap();
    m.lookup(i, 0).await.unwrap().cluster.unwrap()
}

async fn read4k(pool: &Arc<Pool>, name: &str, at: u64) -> Vec<u8> {
    let v = pool.open_volume(name).await.unwrap();
    let mut buf = vec![0u8; 4096];
    v.read(ByteOffset(at), &mut buf).await.unwrap();
    buf
}

/// Spawns a write of 9s at 8192 into volume "a" whose array I/O in
/// `held` stalls (until `dev.release`); returns once it reached the array.
async fn stuck_write_of_a(
    dev: &Arc<Stall>,
    pool: &Arc<Pool>,
    held: std::ops::Range<u64>,
    what: &str,
) -> tokio::task::JoinHandle<BlockResult> {
    *dev.hold.lock().unwrap() = Some(held);
    let a = pool.open_volume("a").await.unwrap();
    let stuck = tokio::spawn(async move {
        a.write(ByteOffset(8192), &[9u8; 4096], Durability::Normal)
            .await
    });
    tokio::time::timeout(WAIT, dev.arrived.notified())
        .await
        .expect(what);
    stuck
}

#[test]
fn snapshot_waits_only_for_writes_of_its_own_volume() {
    rt().block_on(async {
        let (dev, pool) = two_volumes().await;
        let c = cluster_of(&pool, "a").await * CS;
        let stuck = stuck_write_of_a(&dev, &pool, c..c + CS, "a's write reached the array").await;
        // Before session 11 this waited for a's write (the pool's gate).
        tokio::time::timeout(WAIT, pool.snapshot("b", "b-snap"))
            .await
            .expect("snapshot of b while a's write is stuck")
            .unwrap();
        dev.release.add_permits(1);
        stuck.await.unwrap().unwrap();
        assert_eq!(read4k(&pool, "a", 8192).await, vec![9u8; 4096]);
        assert_eq!(read4k(&pool, "b-snap", 0).await, vec![2u8; 4096]);
        assert!(pool.check().await.unwrap().clean());
    });
}

#[test]
fn reads_and_writes_go_on_while_a_snapshot_commit_is_flushing() {
    rt().block_on(async {
        let (dev, pool) = two_volumes().await;
        dev.flushes.store(true, Ordering::SeqCst);
        let p = pool.clone();
        let snap = tokio::spawn(async move { p.snapshot("a", "a-snap").await });
        tokio::time::timeout(WAIT, dev.arrived.notified())
            .await
            .expect("the snapshot's commit reached its FLUSH");
        // Before session 11 these waited for the FLUSH (metadata lock).
        let b = pool.open_volume("b").await.unwrap();
        let io = async {
            b.write(ByteOffset(0), &[5u8; 4096], Durability::Normal)
                .await
                .unwrap();
            (read4k(&pool, "b", 0).await, read4k(&pool, "a", 0).await)
        };
        let (rb, ra) = tokio::time::timeout(WAIT, io).await.expect("I/O went on");
        assert_eq!((rb, ra), (vec![5u8; 4096], vec![1u8; 4096]));
        assert!(!snap.is_finished(), "the snapshot returns once durable");
        dev.release.add_permits(1);
        snap.await.unwrap().unwrap();
        drop(b);
        drop(pool);
        let pool = Pool::open(dev.clone(), 256).await.unwrap();
        assert_eq!(read4k(&pool, "a-snap", 0).await, vec![1u8; 4096]);
        assert!(pool.check().await.unwrap().clean());
    });
}

#[test]
fn copy_on_write_writers_racing_on_shared_clusters_keep_every_byte() {
    rt().block_on(async {
        let (_dev, pool) = two_volumes().await;
        let a = pool.open_volume("a").await.unwrap();
        let fill: Vec<u8> = (0..4 * CS).map(|i| (i % 251) as u8).collect();
        a.write(ByteOffset(0), &fill, Durability::Normal)
            .await
            .unwrap();
        pool.snapshot("a", "s").await.unwrap();
        let mut tasks = Vec::new();
        for k in 0..32u64 {
            let v = Arc::new(pool.open_volume("a").await.unwrap());
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
        let mut want = fill.clone();
        for k in 0..32u64 {
            let at = ((k % 4) * CS + (k / 4) * 4096) as usize;
            want[at..at + 4096].fill(k as u8 + 1);
        }
        let mut got = vec![0u8; 4 * CS as usize];
        a.read(ByteOffset(0), &mut got).await.unwrap();
        assert!(got == want, "a write was lost or misplaced");
        let s = pool.open_volume("s").await.unwrap();
        s.read(ByteOffset(0), &mut got).await.unwrap();
        assert!(got == fill, "the snapshot changed");
        pool.flush().await.unwrap();
        assert!(pool.check().await.unwrap().clean());
    });
}

/// Session 12 (P-19): a snapshot waits for an in-place write of its own
/// volume (it would change a cluster the snapshot shares) and has it.
#[test]
fn snapshot_waits_for_an_in_place_write_of_its_source() {
    rt().block_on(async {
        let (dev, pool) = two_volumes().await;
        let c = cluster_of(&pool, "a").await * CS;
        let stuck = stuck_write_of_a(
            &dev,
            &pool,
            c..c + CS,
            "a's in-place write reached the array",
        )
        .await;
        let p = pool.clone();
        let mut snap = tokio::spawn(async move { p.snapshot("a", "a-snap").await });
        let early = tokio::time::timeout(Duration::from_millis(300), &mut snap).await;
        assert!(early.is_err(), "the snapshot did not wait for the write");
        dev.release.add_permits(1);
        stuck.await.unwrap().unwrap();
        snap.await.unwrap().unwrap();
        assert_eq!(read4k(&pool, "a-snap", 8192).await, vec![9u8; 4096]);
        assert!(pool.check().await.unwrap().clean());
    });
}

/// Session 12 (P-19): a copy-on-write in flight does not hold a snapshot
/// of its volume; it maps after the share, so the new snapshot keeps the
/// old bytes and the volume gets the write, across a reopen too.
#[test]
fn snapshot_goes_on_while_a_copy_on_write_of_its_source_is_stuck() {
    rt().block_on(async {
        let (dev, pool) = two_volumes().await;
        pool.snapshot("a", "s1").await.unwrap();
        let data = pool.geo.first_data_cluster * CS;
        let stuck = stuck_write_of_a(&dev, &pool, data..ARRAY, "a's copy reached the array").await;
        tokio::time::timeout(WAIT, pool.snapshot("a", "s2"))
            .await
            .expect("snapshot of a while its copy is stuck")
            .unwrap();
        dev.release.add_permits(1);
        stuck.await.unwrap().unwrap();
        pool.flush().await.unwrap();
        drop(pool);
        let pool = Pool::open(dev.clone(), 256).await.unwrap();
        assert_eq!(read4k(&pool, "a", 8192).await, vec![9u8; 4096]);
        assert_eq!(read4k(&pool, "a", 0).await, vec![1u8; 4096]);
        for s in ["s1", "s2"] {
            assert_eq!(read4k(&pool, s, 8192).await, vec![0u8; 4096], "{s}");
            assert_eq!(read4k(&pool, s, 0).await, vec![1u8; 4096], "{s}");
        }
        assert!(pool.check().await.unwrap().clean());
    });
}

/// Session 14, split clusters (write case 3): two writes to one unfilled
/// granule of an exclusive split record. The first's fill is stuck in
/// its granule write; the second waits for it (busy granule) and both
/// land. Without the busy mark the second fills from the base too and
/// the first's granule write, landing after it, drops its bytes.
#[test]
fn a_write_to_a_granule_being_filled_waits_and_both_land() {
    const SCS: u64 = 256 << 10;
    rt().block_on(async {
        let dev = Stall::new();
        let opts = CreateOptions {
            cluster_size: SCS,
            split: true,
            ..Default::default()
        };
        Pool::create(dev.as_ref(), opts).await.unwrap();
        let pool = Pool::open(dev.clone(), 256).await.unwrap();
        pool.create_volume("a", 2 * SCS).await.unwrap();
        let a = pool.open_volume("a").await.unwrap();
        let normal = Durability::Normal;
        a.write(ByteOffset(0), &vec![1u8; SCS as usize], normal)
            .await
            .unwrap();
        pool.snapshot("a", "s").await.unwrap();
        a.write(ByteOffset(0), &[3u8; 4096], normal).await.unwrap();
        pool.flush().await.unwrap();
        let new = {
            let mut m = pool.meta.lock().await;
            let i = m.find("a").unwrap();
            let e = m.lookup_read(i, 0).await.unwrap().unwrap();
            let Ok(crate::pool::split::Entry::Split(r)) = crate::pool::split::Entry::decode(e)
            else {
                panic!("no split")
            };
            m.record(r).await.unwrap().new
        };
        let gs = crate::pool::split::granule_size(SCS);
        let g1 = new * SCS + gs;
        *dev.hold.lock().unwrap() = Some(g1..g1 + gs);
        let a1 = pool.open_volume("a").await.unwrap();
        let first = tokio::spawn(async move {
            a1.write(ByteOffset(gs), &[7u8; 4096], Durability::Normal)
                .await
        });
        tokio::time::timeout(WAIT, dev.arrived.notified())
            .await
            .expect("the first fill reached its granule write");
        let a2 = pool.open_volume("a").await.unwrap();
        let second = tokio::spawn(async move {
            a2.write(ByteOffset(gs + 8192), &[8u8; 4096], Durability::Normal)
                .await
        });
        while !second.is_finished() && pool.fill_waits.load(Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        dev.release.add_permits(1);
        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
        assert_eq!(read4k(&pool, "a", gs).await, vec![7u8; 4096]);
        assert_eq!(read4k(&pool, "a", gs + 8192).await, vec![8u8; 4096]);
        assert_eq!(read4k(&pool, "a", gs + 4096).await, vec![1u8; 4096]);
        assert!(pool.check().await.unwrap().clean());
    });
}
