//! [`CsumStore`]: the checksum entries of one member's data area, in a
//! bounded cache of 4 KiB pages written back to the member's checksum
//! area (docs/FORMAT.md §8, "Page cache").
//!
//! ```text
//!  entries(block..) ─► page resident? ─► hit: read the atomics
//!                        └─ miss: over budget? make_room ─► load the page
//!                           (fresh store, page not made writable yet:
//!                            reserve it, all unknown, dirty)
//!  set(block.., crcs) ─► page made writable this run? else reserve its
//!                        4 KiB on the member ─► atomics ─► page dirty
//!  make_room (writer lock): CLOCK sweep ─► clean, unused, unreferenced
//!      pages dropped ─► too few: a batch of dirty candidates written
//!      back (concurrently; later misses find them clean), swept again
//!  write_pages(dur) (writer lock): every dirty page: clear flag ─►
//!      snapshot ─► write (a member flush or FUA write follows)
//!  writeback() = write_pages + flush
//! ```
//!
//! Memory is the budget (shared by the stores of one array), plus one
//! sparse bit per page made writable in this run: nothing is sized by the
//! member's capacity.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::OnceCell;

use super::cache::{CacheBudget, PageSet};
use super::page::{decode_page, encode_page, PAGE_BYTES, PAGE_ENTRIES, UNKNOWN};
use crate::block::{BlockDevice, BlockError, BlockResult, Durability};
use crate::units::ByteOffset;

/// Dirty pages written back concurrently when making room.
const WRITEBACK_BATCH: usize = 64;

struct Page {
    entries: Box<[AtomicU32]>,
    dirty: AtomicBool,
    /// Used since the CLOCK hand last passed (a second chance).
    referenced: AtomicBool,
}

impl Page {
    fn new(entries: &[u32], dirty: bool) -> Page {
        Page {
            entries: entries.iter().map(|&e| AtomicU32::new(e)).collect(),
            dirty: AtomicBool::new(dirty),
            referenced: AtomicBool::new(true),
        }
    }
}

/// A resident page: initialized once by its loader. A cell is dropped
/// from the map only while the map holds its only reference (nobody is
/// loading, reading or updating it) and it is clean.
type Cell = Arc<OnceCell<Page>>;

#[derive(Default)]
struct Resident {
    pages: HashMap<u64, Cell>,
    /// The CLOCK: resident page indexes, the hand at the front.
    clock: VecDeque<u64>,
    /// Pages reserved on the member in this run.
    writable: PageSet,
    /// Fresh store: pages created in this run (all unknown), whose copy is
    /// in memory or, once evicted (written back first), on disk.
    created: PageSet,
    /// Pages held by requests in flight ([`CsumStore::hold`]), with the
    /// number of holds: never dropped, resident or not yet.
    held: HashMap<u64, u32>,
}

/// A hold on pages of a [`CsumStore`] ([`CsumStore::hold`]), released
/// when dropped.
#[derive(Debug)]
pub struct PageHold {
    store: Arc<CsumStore>,
    pages: std::ops::Range<u64>,
}

impl Drop for PageHold {
    fn drop(&mut self) {
        self.store.release(self.pages.clone());
    }
}

/// The checksum entries of one member.
pub struct CsumStore {
    raw: Arc<dyn BlockDevice>,
    area: u64,
    blocks: u64,
    fresh: bool,
    page_count: u64,
    resident: Mutex<Resident>,
    budget: Arc<CacheBudget>,
    /// Set with every page flag (after it), cleared by a write-back before
    /// its scan: a flush with nothing to write skips the scan of every page.
    any_dirty: AtomicBool,
    /// Held by every write of pages (flush write-backs and evictions), so
    /// a write-back that returns has no page write of this store behind it.
    writer: tokio::sync::Mutex<()>,
    /// Eviction write-back batches done (plain writes, not durable until
    /// the member's next flush): a FUA write compares it.
    eviction_writes: AtomicU64,
    /// Its member was dropped from the array ([`CsumStore::retire`]): no
    /// page is written again.
    retired: AtomicBool,
}

impl std::fmt::Debug for CsumStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CsumStore")
            .field("device", &self.raw.name())
            .field("blocks", &self.blocks)
            .field("fresh", &self.fresh)
            .finish_non_exhaustive()
    }
}

impl Drop for CsumStore {
    fn drop(&mut self) {
        let n = self.lock().pages.len() as u64;
        self.budget.remove_pages(n);
    }
}

impl CsumStore {
    /// The store of a member whose checksum area starts at `area` of `raw`
    /// (the whole member) and covers `blocks` 4 KiB data blocks, with a
    /// budget of its own (the default). A `fresh` store (a new member: its
    /// area may hold anything) starts all unknown without reading, and
    /// writes back every page it touches.
    pub fn new(raw: Arc<dyn BlockDevice>, area: u64, blocks: u64, fresh: bool) -> CsumStore {
        CsumStore::with_budget(raw, area, blocks, fresh, Arc::default())
    }

    /// Like [`CsumStore::new`], its pages counted against `budget`.
    pub fn with_budget(
        raw: Arc<dyn BlockDevice>,
        area: u64,
        blocks: u64,
        fresh: bool,
        budget: Arc<CacheBudget>,
    ) -> CsumStore {
        CsumStore {
            raw,
            area,
            blocks,
            fresh,
            page_count: blocks.div_ceil(PAGE_ENTRIES as u64),
            resident: Mutex::new(Resident::default()),
            budget,
            any_dirty: AtomicBool::new(false),
            writer: tokio::sync::Mutex::new(()),
            eviction_writes: AtomicU64::new(0),
            retired: AtomicBool::new(false),
        }
    }

    /// Data blocks covered.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Whether this store started fresh (it then writes back on flush).
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    fn lock(&self) -> MutexGuard<'_, Resident> {
        self.resident.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn page_at(&self, index: u64) -> u64 {
        self.area + index * PAGE_BYTES as u64
    }

    /// The resident cell of page `index`, inserted (room made first) on a
    /// miss; the caller initializes it.
    async fn cell(&self, index: u64) -> BlockResult<Cell> {
        if index >= self.page_count {
            return Err(BlockError::OutOfRange {
                offset: index,
                len: 1,
                size: self.page_count,
            });
        }
        if let Some(c) = self.lock().pages.get(&index) {
            if let Some(p) = c.get() {
                p.referenced.store(true, Ordering::Relaxed);
                self.budget.hit();
            }
            return Ok(c.clone());
        }
        self.budget.miss();
        self.make_room().await?;
        let mut r = self.lock();
        if let Some(c) = r.pages.get(&index) {
            return Ok(c.clone());
        }
        let c = Cell::default();
        r.pages.insert(index, c.clone());
        r.clock.push_back(index);
        self.budget.add_page();
        Ok(c)
    }

    /// Page `index`, loaded if needed; made writable (reserved on the
    /// member) first when `write`.
    async fn page(&self, index: u64, write: bool) -> BlockResult<Cell> {
        if write && !self.lock().writable.contains(index) {
            self.reserve(index).await?;
        }
        let cell = self.cell(index).await?;
        cell.get_or_try_init(|| self.load(index)).await?;
        Ok(cell)
    }

    /// Reserves page `index` on the member, so its write-backs cannot run
    /// out of space (the checksum area is allocated on demand, before the
    /// first data write a page describes: docs/FORMAT.md §1). One page a
    /// call: reserving groups of 256 saved the `fallocate` per random
    /// write (each waits for the member file's direct I/O on a
    /// filesystem), but random writes over 4 x 4 TiB then allocated 16 GB
    /// of checksum area for pages never written and held a `writable`
    /// entry for each (`scale_memory.rs`).
    async fn reserve(&self, index: u64) -> BlockResult {
        self.raw
            .reserve(ByteOffset(self.page_at(index)), PAGE_BYTES as u64)
            .await?;
        self.lock().writable.insert(index);
        Ok(())
    }

    async fn load(&self, index: u64) -> BlockResult<Page> {
        if self.fresh && !self.lock().created.contains(index) {
            // Never written in this run: the area may hold garbage. It
            // starts unknown and dirty, so it is written before any flush
            // completes (and before an eviction drops it).
            if !self.lock().writable.contains(index) {
                self.reserve(index).await?;
            }
            self.lock().created.insert(index);
            self.any_dirty.store(true, Ordering::Release);
            return Ok(Page::new(&[UNKNOWN; PAGE_ENTRIES], true));
        }
        let mut buf = vec![0u8; PAGE_BYTES];
        self.raw
            .read(ByteOffset(self.page_at(index)), &mut buf)
            .await?;
        self.budget.loaded();
        Ok(Page::new(&decode_page(&buf), false))
    }

    fn check(&self, first: u64, n: u64) -> BlockResult {
        crate::block::check_range(ByteOffset(first), n, self.blocks)
    }

    /// The pages of blocks `first..first + n`, each with the range of
    /// its entries and the offset of that range in the request.
    fn pages_of(first: u64, n: u64) -> impl Iterator<Item = (u64, std::ops::Range<usize>, usize)> {
        let per = PAGE_ENTRIES as u64;
        let end = first + n;
        let start_page = first / per;
        let end_page = end.div_ceil(per);
        (start_page..end_page).map(move |p| {
            let lo = first.max(p * per);
            let hi = end.min((p + 1) * per);
            let range = (lo - p * per) as usize..(hi - p * per) as usize;
            (p, range, (lo - first) as usize)
        })
    }

    /// Entries of blocks `first..first + n`.
    pub async fn entries(&self, first: u64, n: u64) -> BlockResult<Vec<u32>> {
        let mut out = vec![0; n as usize];
        self.entries_into(first, &mut out).await?;
        Ok(out)
    }

    /// Entries of blocks `first..first + out.len()`, into `out` (a
    /// caller's buffer: nothing allocated on a page hit).
    pub async fn entries_into(&self, first: u64, out: &mut [u32]) -> BlockResult {
        self.check(first, out.len() as u64)?;
        for (p, range, at) in Self::pages_of(first, out.len() as u64) {
            let cell = self.page(p, false).await?;
            let page = cell.get().expect("initialized by page()");
            let n = range.len();
            for (o, e) in out[at..at + n].iter_mut().zip(&page.entries[range]) {
                *o = e.load(Ordering::Acquire);
            }
        }
        Ok(())
    }

    /// Sets the entries of blocks `first..first + values.len()`.
    pub async fn set(&self, first: u64, values: &[u32]) -> BlockResult {
        self.check(first, values.len() as u64)?;
        for (p, range, at) in Self::pages_of(first, values.len() as u64) {
            self.update(p, range, |i| values[at + i]).await?;
        }
        Ok(())
    }

    /// Sets `n` entries from `first` to the same value.
    pub async fn fill(&self, first: u64, n: u64, value: u32) -> BlockResult {
        self.check(first, n)?;
        for (p, range, _) in Self::pages_of(first, n) {
            self.update(p, range, |_| value).await?;
        }
        Ok(())
    }

    /// Stores `value(i)` in the `i`-th entry of `range` of page `p`.
    async fn update(
        &self,
        p: u64,
        range: std::ops::Range<usize>,
        value: impl Fn(usize) -> u32,
    ) -> BlockResult {
        let cell = self.page(p, true).await?;
        let page = cell.get().expect("initialized by page()");
        for (i, e) in page.entries[range].iter().enumerate() {
            e.store(value(i), Ordering::Release);
        }
        page.dirty.store(true, Ordering::Release);
        self.any_dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Makes this store ready to take entries of blocks `first..first + n`:
    /// their pages reserved on the member. A data write calls it before
    /// the write, so running out of space fails the write, not a later
    /// write-back.
    pub async fn prepare(&self, first: u64, n: u64) -> BlockResult {
        self.check(first, n)?;
        for (p, _, _) in Self::pages_of(first, n) {
            if !self.lock().writable.contains(p) {
                self.reserve(p).await?;
            }
        }
        Ok(())
    }

    /// Keeps the pages of blocks `first..first + n` resident (once loaded)
    /// until the guard drops: a read-modify-write holds the pages of its
    /// blocks from its reads to its writes, so its update finds the page
    /// its reads loaded instead of loading it again (an eviction between
    /// the two, e.g. while the write-hole journal record is written, cost
    /// a second page read per member). Out-of-range blocks hold nothing.
    pub fn hold(self: &Arc<Self>, first: u64, n: u64) -> PageHold {
        let pages = if n == 0 || self.check(first, n).is_err() {
            0..0
        } else {
            first / PAGE_ENTRIES as u64..(first + n).div_ceil(PAGE_ENTRIES as u64)
        };
        let mut r = self.lock();
        for p in pages.clone() {
            *r.held.entry(p).or_insert(0) += 1;
        }
        drop(r);
        PageHold {
            store: self.clone(),
            pages,
        }
    }

    fn release(&self, pages: std::ops::Range<u64>) {
        let mut r = self.lock();
        for p in pages {
            if let std::collections::hash_map::Entry::Occupied(mut e) = r.held.entry(p) {
                *e.get_mut() -= 1;
                if *e.get() == 0 {
                    e.remove();
                }
            }
        }
    }

    /// Pages with changes not yet written back.
    pub fn dirty_pages(&self) -> usize {
        self.lock()
            .pages
            .values()
            .filter_map(|c| c.get())
            .filter(|p| p.dirty.load(Ordering::Acquire))
            .count()
    }

    /// Never writes a page again (docs/FORMAT.md §8 crash case 87): the
    /// array dropped its member, and a later store on the same device (a
    /// re-join) owns the area; an old page written after its pages would
    /// make the entries of blocks it caught up stale. Dirty pages are
    /// forgotten, a page write already issued still lands.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.any_dirty.store(false, Ordering::Release);
        for cell in self.lock().pages.values() {
            if let Some(p) = cell.get() {
                p.dirty.store(false, Ordering::Release);
            }
        }
    }

    /// Whether [`CsumStore::retire`] was called.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// Pages held in memory.
    pub fn resident_pages(&self) -> usize {
        self.lock().pages.len()
    }

    /// Writes every dirty page to the member and flushes it. Each page's
    /// flag is cleared before its snapshot, so an update racing the write
    /// dirties it again. Returns the pages written.
    pub async fn writeback(&self) -> BlockResult<usize> {
        let written = self.write_pages(Durability::Normal).await?;
        if written > 0 {
            self.raw.flush().await?;
        }
        Ok(written)
    }

    /// Eviction write-backs so far (compare before and after an update).
    pub fn eviction_writes(&self) -> u64 {
        self.eviction_writes.load(Ordering::Acquire)
    }

    /// Makes the entries of an update durable without a full write-back
    /// flush: dirty pages written FUA, and the member flushed if an
    /// eviction wrote pages (plainly) since `epoch` (from
    /// [`CsumStore::eviction_writes`] before the update) — it may have
    /// taken the update's page.
    pub async fn write_pages_fua(&self, epoch: u64) -> BlockResult {
        self.write_pages(Durability::Fua).await?;
        if self.eviction_writes() != epoch {
            self.raw.flush().await?;
        }
        Ok(())
    }

    /// Writes every dirty page to the member with `durability`, without a
    /// flush (a flush of the member's data that follows covers them). It
    /// waits for page writes of evictions in flight too.
    pub async fn write_pages(&self, durability: Durability) -> BlockResult<usize> {
        let _w = self.writer.lock().await;
        if !self.any_dirty.swap(false, Ordering::AcqRel) {
            // Flags set after this swap belong to updates not finished
            // before this call: the next write-back takes them.
            return Ok(0);
        }
        let mut dirty: Vec<(u64, Cell)> = {
            let r = self.lock();
            r.pages
                .iter()
                .filter(|(_, c)| c.get().is_some_and(|p| p.dirty.load(Ordering::Acquire)))
                .map(|(&i, c)| (i, c.clone()))
                .collect()
        };
        dirty.sort_unstable_by_key(|(i, _)| *i);
        self.write_cells(&dirty, durability).await
    }

    /// Writes the dirty ones of `cells` (the writer lock held), clearing
    /// each flag before its snapshot; a failed page stays dirty.
    async fn write_cells(
        &self,
        cells: &[(u64, Cell)],
        durability: Durability,
    ) -> BlockResult<usize> {
        let mut written = 0;
        for batch in cells.chunks(WRITEBACK_BATCH) {
            let writes = batch
                .iter()
                .map(|(i, c)| self.write_cell(*i, c, durability));
            let results = futures::future::join_all(writes).await;
            for r in results {
                written += usize::from(r?);
            }
        }
        Ok(written)
    }

    async fn write_cell(
        &self,
        index: u64,
        cell: &Cell,
        durability: Durability,
    ) -> BlockResult<bool> {
        let Some(page) = cell.get() else {
            return Ok(false);
        };
        if !page.dirty.swap(false, Ordering::AcqRel) || self.is_retired() {
            return Ok(false);
        }
        let snapshot: Vec<u32> = page
            .entries
            .iter()
            .map(|e| e.load(Ordering::Acquire))
            .collect();
        let image = encode_page(&snapshot);
        let at = ByteOffset(self.page_at(index));
        if let Err(e) = self.raw.write(at, &image, durability).await {
            page.dirty.store(true, Ordering::Release);
            self.any_dirty.store(true, Ordering::Release);
            return Err(e);
        }
        Ok(true)
    }

    /// Frees pages until one more fits the budget: clean pages first (a
    /// CLOCK sweep), then dirty ones after writing them back. Pages in use
    /// are skipped; a store with nothing left to drop goes over the budget
    /// rather than wait.
    async fn make_room(&self) -> BlockResult {
        if self.budget.excess_pages() == 0 {
            return Ok(());
        }
        let _w = self.writer.lock().await;
        for _ in 0..3 {
            let want = self.budget.excess_pages();
            if want == 0 {
                return Ok(());
            }
            let dirty = self.sweep(want);
            if dirty.is_empty() {
                return Ok(());
            }
            let n = self.write_cells(&dirty, Durability::Normal).await?;
            self.eviction_writes.fetch_add(1, Ordering::AcqRel);
            self.budget.written_back(n as u64);
        }
        Ok(())
    }

    /// One CLOCK sweep: drops up to `want` clean, unused, unreferenced
    /// pages and returns the dirty candidates met (a batch at most, the
    /// sweep stopping when it is full) when that was not enough.
    fn sweep(&self, want: u64) -> Vec<(u64, Cell)> {
        let mut r = self.lock();
        let Resident {
            pages, clock, held, ..
        } = &mut *r;
        let mut freed = 0u64;
        let mut dirty = Vec::new();
        let mut steps = 2 * clock.len();
        // A quarter of the store's pages at most: a batch as large as the
        // store would lap the CLOCK, clear every reference and evict the
        // pages just loaded for a read-modify-write before their update.
        let batch = WRITEBACK_BATCH.min(clock.len() / 4).max(1);
        while freed < want && steps > 0 {
            steps -= 1;
            let Some(index) = clock.pop_front() else {
                break;
            };
            let Some(cell) = pages.get(&index) else {
                continue;
            };
            let unused = Arc::strong_count(cell) == 1 && !held.contains_key(&index);
            let evict = match cell.get() {
                // A load that failed: nothing to keep.
                None => unused,
                Some(p) if p.referenced.swap(false, Ordering::Relaxed) || !unused => false,
                Some(p) if p.dirty.load(Ordering::Acquire) => {
                    // A whole batch, not just `want`: the misses that
                    // follow then find clean pages instead of each
                    // writing one page under the writer lock.
                    dirty.push((index, cell.clone()));
                    false
                }
                Some(_) => true,
            };
            if evict {
                pages.remove(&index);
                freed += 1;
            } else {
                clock.push_back(index);
            }
            if dirty.len() >= batch {
                break;
            }
        }
        self.budget.remove_pages(freed);
        self.budget.evicted(freed);
        if freed >= want {
            dirty.clear();
        }
        dirty
    }
}
