//! [`CsumStore`]: the checksum entries of one member's data area, cached in
//! memory and written back in pages (docs/FORMAT.md §8).
//!
//! ```text
//!  entries(block..) ─► page loaded? ─► no: read its 4 KiB from the member
//!                                      (fresh store: all unknown, dirty)
//!  set(block.., crcs) ─► atomics ─► page dirty
//!  writeback() ─► per dirty page: clear flag ─► snapshot ─► write ─► flush
//!  write_pages(dur): the same without the flush (a member flush, a FUA write)
//! ```
//!
//! Pages are loaded lazily and never evicted: memory grows with the part of
//! the member touched, 1 KiB per 1 MiB of data (0.1 %).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use tokio::sync::OnceCell;

use super::page::{decode_page, encode_page, PAGE_BYTES, PAGE_ENTRIES, UNKNOWN};
use crate::block::{BlockDevice, BlockResult, Durability};
use crate::units::ByteOffset;

struct Page {
    entries: Box<[AtomicU32]>,
    dirty: AtomicBool,
}

impl Page {
    fn new(entries: &[u32], dirty: bool) -> Page {
        Page {
            entries: entries.iter().map(|&e| AtomicU32::new(e)).collect(),
            dirty: AtomicBool::new(dirty),
        }
    }
}

/// The checksum entries of one member.
pub struct CsumStore {
    raw: Arc<dyn BlockDevice>,
    area: u64,
    blocks: u64,
    fresh: bool,
    pages: Vec<OnceCell<Page>>,
    /// Set with every page flag (after it), cleared by a write-back before
    /// its scan: a flush with nothing to write skips the scan of every page.
    any_dirty: AtomicBool,
    writer: tokio::sync::Mutex<()>,
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

impl CsumStore {
    /// The store of a member whose checksum area starts at `area` of `raw`
    /// (the whole member) and covers `blocks` 4 KiB data blocks. A `fresh`
    /// store (a new member: its area may hold anything) starts all unknown
    /// without reading, and writes back every page it touches.
    pub fn new(raw: Arc<dyn BlockDevice>, area: u64, blocks: u64, fresh: bool) -> CsumStore {
        let pages = blocks.div_ceil(PAGE_ENTRIES as u64) as usize;
        CsumStore {
            raw,
            area,
            blocks,
            fresh,
            pages: (0..pages).map(|_| OnceCell::new()).collect(),
            any_dirty: AtomicBool::new(false),
            writer: tokio::sync::Mutex::new(()),
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

    async fn page(&self, index: usize) -> BlockResult<&Page> {
        let cell = self
            .pages
            .get(index)
            .ok_or(crate::block::BlockError::OutOfRange {
                offset: index as u64,
                len: 1,
                size: self.pages.len() as u64,
            })?;
        let page = cell
            .get_or_try_init(|| async {
                if self.fresh {
                    return Ok(Page::new(&[UNKNOWN; PAGE_ENTRIES], true));
                }
                let mut buf = vec![0u8; PAGE_BYTES];
                let at = self.area + index as u64 * PAGE_BYTES as u64;
                self.raw.read(ByteOffset(at), &mut buf).await?;
                Ok(Page::new(&decode_page(&buf), false))
            })
            .await?;
        if self.fresh {
            // A fresh page starts dirty (its area may hold garbage): flag
            // it only once it is in its cell, so a write-back sees it.
            self.any_dirty.store(true, Ordering::Release);
        }
        Ok(page)
    }

    fn check(&self, first: u64, n: u64) -> BlockResult {
        crate::block::check_range(ByteOffset(first), n, self.blocks)
    }

    /// Entries of blocks `first..first + n`.
    pub async fn entries(&self, first: u64, n: u64) -> BlockResult<Vec<u32>> {
        self.check(first, n)?;
        let mut out = Vec::with_capacity(n as usize);
        for b in first..first + n {
            let page = self.page((b / PAGE_ENTRIES as u64) as usize).await?;
            let e = &page.entries[(b % PAGE_ENTRIES as u64) as usize];
            out.push(e.load(Ordering::Acquire));
        }
        Ok(out)
    }

    /// Sets the entries of blocks `first..first + values.len()`.
    pub async fn set(&self, first: u64, values: &[u32]) -> BlockResult {
        self.check(first, values.len() as u64)?;
        for (b, &v) in (first..).zip(values) {
            let page = self.page((b / PAGE_ENTRIES as u64) as usize).await?;
            page.entries[(b % PAGE_ENTRIES as u64) as usize].store(v, Ordering::Release);
            page.dirty.store(true, Ordering::Release);
        }
        self.any_dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Sets `n` entries from `first` to the same value.
    pub async fn fill(&self, first: u64, n: u64, value: u32) -> BlockResult {
        self.check(first, n)?;
        for b in first..first + n {
            let page = self.page((b / PAGE_ENTRIES as u64) as usize).await?;
            page.entries[(b % PAGE_ENTRIES as u64) as usize].store(value, Ordering::Release);
            page.dirty.store(true, Ordering::Release);
        }
        self.any_dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Pages with changes not yet written back.
    pub fn dirty_pages(&self) -> usize {
        self.pages
            .iter()
            .filter_map(OnceCell::get)
            .filter(|p| p.dirty.load(Ordering::Acquire))
            .count()
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

    /// Writes every dirty page to the member with `durability`, without a
    /// flush (a flush of the member's data that follows covers them).
    pub async fn write_pages(&self, durability: Durability) -> BlockResult<usize> {
        let _w = self.writer.lock().await;
        if !self.any_dirty.swap(false, Ordering::AcqRel) {
            // Flags set after this swap belong to updates not finished
            // before this call: the next write-back takes them.
            return Ok(0);
        }
        let mut written = 0;
        for (i, cell) in self.pages.iter().enumerate() {
            let Some(page) = cell.get() else { continue };
            if !page.dirty.swap(false, Ordering::AcqRel) {
                continue;
            }
            let snapshot: Vec<u32> = page
                .entries
                .iter()
                .map(|e| e.load(Ordering::Acquire))
                .collect();
            let at = self.area + i as u64 * PAGE_BYTES as u64;
            let image = encode_page(&snapshot);
            if let Err(e) = self.raw.write(ByteOffset(at), &image, durability).await {
                page.dirty.store(true, Ordering::Release);
                self.any_dirty.store(true, Ordering::Release);
                return Err(e);
            }
            written += 1;
        }
        Ok(written)
    }
}
