//! The pool's metadata store: a bounded cache of pages over the array,
//! the transaction (pages changed since the last commit, pinned), the
//! journal commit and checkpoint, and replay at open (docs/FORMAT.md §11,
//! "Transactions, journal and commit").
//!
//! ```text
//!  page()/page_mut() ──► cache (LRU of clean pages) ◄── array read + verify
//!  commit(): dirty pages ──► journal record ─FLUSH─► in place
//!            (journal full: FLUSH, older header copy, FLUSH, back to 0)
//! ```

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

use crate::block::{BlockDevice, Durability};
use crate::pool::format::{
    decode_record, encode_record, record_count, record_head_blocks, Geometry, Header, Kind, BLOCK,
    JOURNAL_START,
};
use crate::pool::page::Page;
use crate::pool::PoolError;
use crate::units::ByteOffset;

/// Default cache budget in pages (16 MiB).
pub const DEFAULT_CACHE_PAGES: usize = 4096;

struct Cached {
    page: Page,
    used: u64,
}

/// Pages, transaction and journal of one pool.
pub struct Store {
    dev: Arc<dyn BlockDevice>,
    /// Region layout.
    pub geo: Geometry,
    header: Header,
    header_copy: u64,
    cache: HashMap<u64, Cached>,
    dirty: BTreeSet<u64>,
    clock: u64,
    capacity: usize,
    journal_pos: u64,
    next_seq: u64,
    /// Held by a commit from `prepare` until its job finished.
    lane: Arc<AsyncMutex<()>>,
    out: Arc<Mutex<Outstanding>>,
    durable: Arc<AtomicU64>,
}

/// The commit lane (one commit at a time, in order).
pub type Lane = OwnedMutexGuard<()>;

/// What commits in flight share with the store.
#[derive(Debug, Default)]
struct Outstanding {
    /// Pages whose in-place write has not landed (not evictable).
    unwritten: HashSet<u64>,
    /// A job that failed: its pages and journal place.
    failed: Option<Failed>,
}

#[derive(Debug)]
struct Failed {
    blocks: Vec<u64>,
    pos: u64,
    seq: u64,
}

struct Record {
    bytes: Vec<u8>,
    start: u64,
    pos: u64,
    seq: u64,
    blocks: Vec<u64>,
}

/// The I/O half of a commit: journal record, FLUSH, in-place writes.
/// Holds the commit lane until it is done.
#[allow(missing_debug_implementations)]
pub struct CommitJob {
    dev: Arc<dyn BlockDevice>,
    record: Option<Record>,
    out: Arc<Mutex<Outstanding>>,
    durable: Arc<AtomicU64>,
    _lane: Lane,
}

impl CommitJob {
    /// Writes the record, FLUSHes (the transaction and every data write
    /// completed before it are durable), writes the pages in place. On
    /// failure the next commit takes the pages and journal place back.
    pub async fn run(self) -> Result<(), PoolError> {
        let Some(rec) = &self.record else {
            self.dev.flush().await?;
            return Ok(());
        };
        let r = self.write(rec).await;
        let mut out = lock(&self.out);
        match r {
            Ok(()) => rec.blocks.iter().for_each(|b| {
                out.unwritten.remove(b);
            }),
            Err(_) => {
                out.failed = Some(Failed {
                    blocks: rec.blocks.clone(),
                    pos: rec.pos,
                    seq: rec.seq,
                })
            }
        }
        r
    }

    async fn write(&self, rec: &Record) -> Result<(), PoolError> {
        self.dev
            .write(at(rec.start), &rec.bytes, Durability::Normal)
            .await?;
        self.dev.flush().await?;
        self.durable.fetch_max(rec.seq, Ordering::AcqRel);
        let head = record_head_blocks(rec.blocks.len());
        for (k, b) in rec.blocks.iter().enumerate() {
            let img = &rec.bytes[(head + k) * BLOCK..(head + k + 1) * BLOCK];
            self.dev.write(at(*b), img, Durability::Normal).await?;
        }
        Ok(())
    }
}

fn lock(m: &Mutex<Outstanding>) -> std::sync::MutexGuard<'_, Outstanding> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("cached", &self.cache.len())
            .field("dirty", &self.dirty.len())
            .finish()
    }
}

fn at(block: u64) -> ByteOffset {
    ByteOffset(block * BLOCK as u64)
}

impl Store {
    /// A store over a pool whose newest header is `header`, found in copy
    /// `header_copy` (0 or 1). Call [`Store::replay`] before using it.
    pub fn new(
        dev: Arc<dyn BlockDevice>,
        header: Header,
        header_copy: u64,
        capacity: usize,
    ) -> Store {
        let durable = header.journal_seq.saturating_sub(1);
        Store {
            dev,
            geo: header.geometry,
            next_seq: header.journal_seq,
            header,
            header_copy,
            cache: HashMap::new(),
            dirty: BTreeSet::new(),
            clock: 0,
            capacity: capacity.max(64),
            journal_pos: 0,
            lane: Arc::new(AsyncMutex::new(())),
            out: Arc::new(Mutex::new(Outstanding::default())),
            durable: Arc::new(AtomicU64::new(durable)),
        }
    }

    /// The pool's UUID.
    pub fn uuid(&self) -> [u8; 16] {
        self.header.pool_uuid
    }

    /// The array underneath.
    pub fn dev(&self) -> &Arc<dyn BlockDevice> {
        &self.dev
    }

    /// True for a version-3 pool (split clusters, FORMAT.md §11): its map
    /// area also holds kind-8 split pages.
    pub fn splits(&self) -> bool {
        self.header.version == crate::pool::split::SPLIT_VERSION
    }

    /// Pages changed since the last commit.
    pub fn dirty_pages(&self) -> usize {
        self.dirty.len()
    }

    /// Pages held in memory.
    pub fn cached_pages(&self) -> usize {
        self.cache.len()
    }

    fn kinds_at(&self, b: u64) -> Result<&'static [Kind], PoolError> {
        if self.geo.is_map_block(b) {
            return Ok(match self.splits() {
                true => &[Kind::Interior, Kind::Leaf, Kind::Split],
                false => &[Kind::Interior, Kind::Leaf],
            });
        }
        match self.geo.kind_at(b) {
            Some(Kind::Summary) => Ok(&[Kind::Summary]),
            Some(Kind::Directory) => Ok(&[Kind::Directory]),
            Some(Kind::ClusterCounts) => Ok(&[Kind::ClusterCounts]),
            Some(Kind::MapCounts) => Ok(&[Kind::MapCounts]),
            _ => Err(PoolError::Corrupt(format!(
                "reference to block {b}, which holds no metadata page"
            ))),
        }
    }

    async fn load(&mut self, b: u64) -> Result<(), PoolError> {
        if self.cache.contains_key(&b) {
            return Ok(());
        }
        let kinds = self.kinds_at(b)?;
        let mut buf = vec![0u8; BLOCK];
        self.dev.read(at(b), &mut buf).await?;
        let page = Page::verify(&buf, b, kinds, &self.header.pool_uuid)?;
        self.evict();
        self.cache.insert(b, Cached { page, used: 0 });
        Ok(())
    }

    /// Drops the least recently used clean pages once over budget.
    fn evict(&mut self) {
        if self.cache.len() < self.capacity {
            return;
        }
        let out = lock(&self.out);
        let mut clean: Vec<(u64, u64)> = self
            .cache
            .iter()
            .filter(|(b, _)| !self.dirty.contains(b) && !out.unwritten.contains(b))
            .map(|(b, c)| (c.used, *b))
            .collect();
        clean.sort_unstable();
        let n = (self.cache.len() + 1).saturating_sub(self.capacity * 7 / 8);
        drop(out);
        for (_, b) in clean.into_iter().take(n) {
            self.cache.remove(&b);
        }
    }

    /// Page `b` if it is cached (no I/O, no future), marked used.
    pub fn cached(&mut self, b: u64) -> Option<&Page> {
        let c = self.cache.get_mut(&b)?;
        self.clock += 1;
        c.used = self.clock;
        Some(&c.page)
    }

    /// Page `b`, read (and verified) if not cached.
    pub async fn page(&mut self, b: u64) -> Result<&Page, PoolError> {
        self.load(b).await?;
        self.clock += 1;
        let c = self.cache.get_mut(&b).expect("loaded");
        c.used = self.clock;
        Ok(&c.page)
    }

    /// A copy of page `b` as the pool sees it, not cached if it was not
    /// (a walk over the map area leaves the working set alone). A page
    /// out of the cache is clean and written: its home copy is current.
    pub async fn peek(&mut self, b: u64) -> Result<Page, PoolError> {
        if let Some(c) = self.cache.get(&b) {
            return Ok(c.page.clone());
        }
        let kinds = self.kinds_at(b)?;
        let mut buf = vec![0u8; BLOCK];
        self.dev.read(at(b), &mut buf).await?;
        Ok(Page::verify(&buf, b, kinds, &self.header.pool_uuid)?)
    }

    /// Page `b` to change; it joins the transaction.
    pub async fn page_mut(&mut self, b: u64) -> Result<&mut Page, PoolError> {
        self.load(b).await?;
        self.clock += 1;
        self.dirty.insert(b);
        let c = self.cache.get_mut(&b).expect("loaded");
        c.used = self.clock;
        Ok(&mut c.page)
    }

    /// Puts a new page at `b` (its old contents are not read).
    pub fn put_new(&mut self, b: u64, page: Page) {
        self.evict();
        self.clock += 1;
        self.dirty.insert(b);
        self.cache.insert(
            b,
            Cached {
                page,
                used: self.clock,
            },
        );
    }

    /// Makes the transaction durable (and every data write completed
    /// before it): journal record, FLUSH, in-place writes. Flushes the
    /// array even with nothing to commit. Waits for a commit in flight.
    pub async fn commit(&mut self) -> Result<(), PoolError> {
        let lane = self.lane.clone().lock_owned().await;
        self.prepare(lane).await?.run().await
    }

    /// The commit lane if no commit is in flight (see [`Store::prepare`]).
    pub fn try_lane(&self) -> Option<Lane> {
        self.lane.clone().try_lock_owned().ok()
    }

    /// The commit lane itself (to wait for it without the metadata lock).
    pub fn lane(&self) -> Arc<AsyncMutex<()>> {
        self.lane.clone()
    }

    /// Seq of the newest durable record (changes recorded with a seq at
    /// or below it are committed).
    pub fn durable_seq(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// Seq the open transaction will be committed with.
    pub fn open_seq(&self) -> u64 {
        self.next_seq
    }

    /// First half of a commit, holding `lane` (so every earlier commit
    /// has finished): seals the transaction into a journal record and
    /// hands it to a [`CommitJob`], which can run without the metadata
    /// lock. Its pages are clean from here but stay cached (never evicted)
    /// until their in-place writes land. A job that failed earlier has
    /// its pages made dirty again and its journal place reused.
    pub async fn prepare(&mut self, lane: Lane) -> Result<CommitJob, PoolError> {
        self.absorb_failure();
        let mut job = CommitJob {
            dev: self.dev.clone(),
            record: None,
            out: self.out.clone(),
            durable: self.durable.clone(),
            _lane: lane,
        };
        if self.dirty.is_empty() {
            return Ok(job);
        }
        let blocks: Vec<u64> = self.dirty.iter().copied().collect();
        for b in &blocks {
            let c = self.cache.get_mut(b).expect("dirty pages are cached");
            c.page.seal();
        }
        let need = (record_head_blocks(blocks.len()) + blocks.len()) as u64;
        if need > u64::from(self.geo.journal_blocks) {
            return Err(PoolError::Corrupt(format!(
                "transaction of {} pages exceeds the journal",
                blocks.len()
            )));
        }
        if self.journal_pos + need > u64::from(self.geo.journal_blocks) {
            self.checkpoint().await?;
        }
        let start = JOURNAL_START + self.journal_pos;
        let pages: Vec<(u64, &Page)> = blocks.iter().map(|b| (*b, &self.cache[b].page)).collect();
        let bytes = encode_record(&self.header.pool_uuid, start, self.next_seq, &pages);
        lock(&self.out).unwritten.extend(blocks.iter().copied());
        job.record = Some(Record {
            bytes,
            start,
            pos: self.journal_pos,
            seq: self.next_seq,
            blocks,
        });
        self.journal_pos += need;
        self.next_seq += 1;
        self.dirty.clear();
        Ok(job)
    }

    /// Takes back a failed job's pages and journal place.
    fn absorb_failure(&mut self) {
        let mut out = lock(&self.out);
        if let Some(f) = out.failed.take() {
            for b in &f.blocks {
                out.unwritten.remove(b);
                self.dirty.insert(*b);
            }
            self.journal_pos = f.pos;
            self.next_seq = f.seq;
        }
    }

    /// Makes the in-place pages durable and starts the journal over.
    async fn checkpoint(&mut self) -> Result<(), PoolError> {
        self.dev.flush().await?;
        self.header.generation += 1;
        self.header.journal_seq = self.next_seq;
        self.header_copy ^= 1;
        let bytes = self.header.encode();
        self.dev
            .write(at(self.header_copy), &bytes, Durability::Normal)
            .await?;
        self.dev.flush().await?;
        self.journal_pos = 0;
        Ok(())
    }

    /// Replays every valid record from the journal's start; returns how
    /// many. Checkpoints after replaying any.
    pub async fn replay(&mut self) -> Result<u64, PoolError> {
        let mut replayed = 0;
        let jb = u64::from(self.geo.journal_blocks);
        let mut first = vec![0u8; BLOCK];
        while self.journal_pos < jb {
            let start = JOURNAL_START + self.journal_pos;
            self.dev.read(at(start), &mut first).await?;
            let room = (jb - self.journal_pos) as usize;
            let uuid = self.header.pool_uuid;
            let Some(count) = record_count(&first, &uuid, start, self.next_seq, room) else {
                break;
            };
            let need = record_head_blocks(count) + count;
            if need > room {
                break;
            }
            let mut rec = vec![0u8; need * BLOCK];
            self.dev.read(at(start), &mut rec).await?;
            if !self.apply_record(&rec, count).await? {
                break;
            }
            self.journal_pos += need as u64;
            self.next_seq += 1;
            replayed += 1;
        }
        if replayed > 0 {
            self.checkpoint().await?;
        }
        self.durable
            .store(self.next_seq.saturating_sub(1), Ordering::Release);
        self.journal_pos = 0;
        Ok(replayed)
    }

    async fn apply_record(&mut self, rec: &[u8], count: usize) -> Result<bool, PoolError> {
        let Some(pages) = decode_record(rec, count) else {
            return Ok(false);
        };
        for (target, image) in &pages {
            let kinds = self.kinds_at(*target)?;
            Page::verify(image, *target, kinds, &self.header.pool_uuid)?;
        }
        for (target, image) in pages {
            self.dev
                .write(at(target), image, Durability::Normal)
                .await?;
        }
        Ok(true)
    }
}
