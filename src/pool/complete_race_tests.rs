//! Red team (session 17) of the completer: the background task runs
//! while clients on several volumes write, zero, snapshot, delete
//! snapshots, revert and shrink/grow, on a multi-thread runtime; every
//! read is checked against a model as it goes, and at the end (queue
//! drained, committed, and again after a reopen) the pool checks clean
//! and every volume and snapshot reads its model. Images of the array
//! taken while the background task completes (a SIGKILL: writes done are
//! there, metadata as last committed) open clean with every byte.
//! Without the completer's busy mark this fails (a fill from the base
//! lands over a client's write to that granule).

use std::sync::Arc;

use crate::block::{BlockDevice, BlockResult, Durability, IoFuture};
use crate::member::memory::MemDevice;
use crate::pool::pool::CreateOptions;
use crate::pool::split_meta::tests::CS;
use crate::pool::Pool;
use crate::units::ByteOffset;

/// Clusters per volume, and volumes.
const CLUSTERS: u64 = 6;
const VOLUMES: usize = 3;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A memory array whose reads and writes yield to the scheduler first:
/// a fill's unlocked I/O lasts long enough for others to run meanwhile.
struct Yielding(MemDevice);

async fn pause() {
    for _ in 0..3 {
        tokio::task::yield_now().await;
    }
}

impl Yielding {
    async fn read_at(&self, offset: ByteOffset, buf: &mut [u8]) -> BlockResult {
        pause().await;
        self.0.read(offset, buf).await
    }
    async fn write_at(&self, offset: ByteOffset, buf: &[u8], d: Durability) -> BlockResult {
        pause().await;
        self.0.write(offset, buf, d).await
    }
}

impl BlockDevice for Yielding {
    fn name(&self) -> &str {
        "yielding"
    }
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read<'a>(&'a self, offset: ByteOffset, buf: &'a mut [u8]) -> IoFuture<'a> {
        crate::block::BoxFuture::new(self.read_at(offset, buf))
    }
    fn write<'a>(&'a self, offset: ByteOffset, buf: &'a [u8], d: Durability) -> IoFuture<'a> {
        crate::block::BoxFuture::new(self.write_at(offset, buf, d))
    }
    fn flush(&self) -> IoFuture<'_> {
        self.0.flush()
    }
    fn discard(&self, offset: ByteOffset, len: u64) -> IoFuture<'_> {
        self.0.discard(offset, len)
    }
    fn write_zeroes(&self, offset: ByteOffset, len: u64, may_unmap: bool) -> IoFuture<'_> {
        self.0.write_zeroes(offset, len, may_unmap)
    }
}

/// One client: volume `name`, its model and its snapshots' models.
struct Client {
    pool: Arc<Pool>,
    name: String,
    model: Vec<u8>,
    snaps: Vec<(String, Vec<u8>)>,
    made: usize,
    rng: Rng,
}

impl Client {
    async fn read_check(&self, name: &str, want: &[u8], what: &str) {
        let v = self.pool.open_volume(name).await.unwrap();
        assert_eq!(v.size(), want.len() as u64, "{name}: size ({what})");
        let mut got = vec![0u8; want.len()];
        v.read(ByteOffset(0), &mut got).await.unwrap();
        let bad = (0..want.len() / 512).find(|s| got[s * 512..][..512] != want[s * 512..][..512]);
        assert!(bad.is_none(), "{name}: sector {bad:?} differs ({what})");
    }

    async fn write(&mut self, op: u64) {
        let size = self.model.len() as u64;
        let len = (1 + self.rng.below(128)) * 512;
        let at = self.rng.below((size - len) / 512 + 1) * 512;
        let v = self.pool.open_volume(&self.name).await.unwrap();
        let range = at as usize..(at + len) as usize;
        if op.is_multiple_of(4) {
            let whole = self.rng.below(2) == 0;
            let (at, len) = if whole {
                (self.rng.below(size / CS) * CS, CS)
            } else {
                (at, len)
            };
            v.write_zeroes(ByteOffset(at), len, true).await.unwrap();
            self.model[at as usize..(at + len) as usize].fill(0);
        } else {
            let byte = (op % 250) as u8 + 1;
            let d = if op.is_multiple_of(3) {
                Durability::Fua
            } else {
                Durability::Normal
            };
            v.write(ByteOffset(at), &vec![byte; len as usize], d)
                .await
                .unwrap();
            self.model[range].fill(byte);
        }
    }

    async fn snapshot_op(&mut self) {
        if self.snaps.len() == 2 || (!self.snaps.is_empty() && self.rng.below(3) == 0) {
            let (name, want) = self.snaps.remove(0);
            self.read_check(&name, &want, "before its delete").await;
            self.pool.delete_volume(&name).await.unwrap();
            return;
        }
        let name = format!("{}-s{}", self.name, self.made);
        self.made += 1;
        self.pool.snapshot(&self.name, &name).await.unwrap();
        self.snaps.push((name, self.model.clone()));
    }

    async fn revert_or_resize(&mut self) {
        if let Some((name, want)) = self.snaps.last().cloned() {
            if self.rng.below(2) == 0 {
                self.pool.revert(&self.name, &name).await.unwrap();
                self.model = want;
                return;
            }
        }
        let size = self.model.len() as u64;
        self.pool.resize(&self.name, size - CS).await.unwrap();
        self.pool.resize(&self.name, size).await.unwrap();
        self.model[(size - CS) as usize..].fill(0);
    }

    async fn run(mut self, ops: usize) -> Self {
        for n in 0..ops {
            match self.rng.below(20) {
                0..=11 => self.write(n as u64).await,
                12..=14 => {
                    let (name, want) = (self.name.clone(), self.model.clone());
                    self.read_check(&name, &want, &format!("op {n}")).await;
                }
                15..=16 => self.snapshot_op().await,
                17 => self.revert_or_resize().await,
                _ => self.pool.flush().await.unwrap(),
            }
            tokio::task::yield_now().await;
        }
        self
    }
}

async fn check_all(pool: &Arc<Pool>, clients: &[Client], what: &str) {
    let report = pool.check().await.unwrap();
    assert!(report.clean(), "{what}: {:?}", report.problems);
    for c in clients {
        c.read_check(&c.name, &c.model, what).await;
        for (s, want) in &c.snaps {
            c.read_check(s, want, what).await;
        }
    }
}

/// What a client's volume and snapshots must read.
type Models = Vec<(String, Vec<u8>, Vec<(String, Vec<u8>)>)>;

/// Opens `dev` (a pool image) and checks it against `models`.
async fn check_image(dev: Arc<dyn BlockDevice>, models: &Models, what: &str) {
    let pool = Pool::open(dev, 64).await.unwrap();
    let clients: Vec<Client> = models
        .iter()
        .map(|(name, model, snaps)| Client {
            pool: pool.clone(),
            name: name.clone(),
            model: model.clone(),
            snaps: snaps.clone(),
            made: 0,
            rng: Rng(1),
        })
        .collect();
    check_all(&pool, &clients, what).await;
}

async fn new_pool() -> (Arc<Yielding>, Arc<Pool>) {
    let dev = Arc::new(Yielding(MemDevice::new("array", 64 << 20)));
    let opts = CreateOptions {
        cluster_size: CS,
        split: true,
        ..Default::default()
    };
    Pool::create(dev.as_ref(), opts).await.unwrap();
    let pool = Pool::open(dev.clone(), 64).await.unwrap();
    pool.start_completer();
    (dev, pool)
}

/// The clients' run beside an unthrottled completer (besides the
/// background one: the steps meet the clients' writes far more often).
async fn run_clients(pool: &Arc<Pool>, seed: u64) -> Vec<Client> {
    let mut tasks = Vec::new();
    for i in 0..VOLUMES {
        let name = format!("v{i}");
        pool.create_volume(&name, CLUSTERS * CS).await.unwrap();
        let c = Client {
            pool: pool.clone(),
            name,
            model: vec![0; (CLUSTERS * CS) as usize],
            snaps: Vec::new(),
            made: 0,
            rng: Rng(seed * 7919 + i as u64 + 1),
        };
        tasks.push(tokio::spawn(c.run(300)));
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (p, st) = (pool.clone(), stop.clone());
    let driver = tokio::spawn(async move {
        while !st.load(std::sync::atomic::Ordering::Relaxed) {
            p.complete_queued().await.unwrap();
            tokio::task::yield_now().await;
        }
    });
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.expect("client task"));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    driver.await.expect("completer driver");
    clients
}

/// Splits in every cluster of every volume (a snapshot, then 4 KiB into
/// each cluster), committed: work queued for the background completer.
async fn queue_tail_splits(pool: &Arc<Pool>, clients: &mut [Client]) {
    for c in clients.iter_mut() {
        if c.snaps.len() == 2 {
            let (name, _) = c.snaps.remove(0);
            pool.delete_volume(&name).await.unwrap();
        }
        let name = format!("{}-tail", c.name);
        pool.snapshot(&c.name, &name).await.unwrap();
        c.snaps.push((name, c.model.clone()));
        let v = pool.open_volume(&c.name).await.unwrap();
        for k in 0..CLUSTERS {
            let at = k * CS + 8192;
            v.write(ByteOffset(at), &[0xc0; 4096], Durability::Normal)
                .await
                .unwrap();
            c.model[at as usize..at as usize + 4096].fill(0xc0);
        }
    }
    pool.flush().await.unwrap();
}

/// Images of the array taken while the background completer drains the
/// tail splits (a SIGKILL at each: every write done is there, metadata
/// as last committed), until its queue is empty.
async fn images_while_completing(dev: &Yielding, pool: &Arc<Pool>) -> Vec<Vec<u8>> {
    let mut images = Vec::new();
    loop {
        let left = pool.completions.lock().unwrap().len();
        images.push(dev.0.snapshot());
        if left == 0 || images.len() == 12 {
            return images;
        }
        // Not a wait for an event: only spaces the crash moments out.
        tokio::time::sleep(std::time::Duration::from_millis(40)).await;
    }
}

/// What NBD would report of every volume: `base:allocation` and, per
/// snapshot, `qemu:dirty-bitmap:SNAP` (changed against it).
async fn maps(pool: &Arc<Pool>, clients: &[Client]) -> Vec<Vec<(u64, bool)>> {
    let id = |name: String| {
        let pool = pool.clone();
        async move {
            let m = pool.meta.lock().await;
            m.slots[m.find(&name).unwrap()].rec.id
        }
    };
    let mut out = Vec::new();
    for c in clients {
        let v = pool.open_volume(&c.name).await.unwrap();
        out.push(v.allocation(0, v.size()).await.unwrap());
        let a = id(c.name.clone()).await;
        for (s, _) in &c.snaps {
            let b = id(s.clone()).await;
            out.push(pool.changed(a, b, 0, v.size()).await.unwrap());
        }
    }
    out
}

/// One seed: a fresh pool, the race, the tail, SIGKILL images, drain.
fn race(seed: u64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (dev, pool) = new_pool().await;
        let mut clients = run_clients(&pool, seed).await;
        check_all(&pool, &clients, "live").await;
        queue_tail_splits(&pool, &mut clients).await;
        let reported = maps(&pool, &clients).await;
        let images = images_while_completing(&dev, &pool).await;
        assert!(images.len() > 2, "the completer ended before it was seen");
        pool.complete_queued().await.unwrap();
        pool.flush().await.unwrap();
        check_all(&pool, &clients, "drained").await;
        assert_eq!(
            maps(&pool, &clients).await,
            reported,
            "maps changed by completion"
        );
        let models: Models = clients
            .drain(..)
            .map(|c| (c.name, c.model, c.snaps))
            .collect();
        for (n, image) in images.iter().enumerate() {
            let mem = MemDevice::new("image", image.len() as u64);
            mem.write(ByteOffset(0), image, Durability::Normal)
                .await
                .unwrap();
            check_image(Arc::new(mem), &models, &format!("seed {seed}, image {n}")).await;
        }
    });
}

#[test]
fn completer_racing_writes_snapshots_reverts_and_resizes_keeps_every_byte() {
    for seed in 1..=4 {
        race(seed);
    }
}
