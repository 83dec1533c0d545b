//! The on-disk write-intent bitmap (docs/FORMAT.md §1, §5): one bit per
//! region of the data area, the same image in every present member's
//! bitmap area. It implements [`crate::raid::WriteIntent`].
//!
//! ```text
//!  mark(span) ─► regions in flight += 1 ─► all bits durable? ─► go
//!                 └─ else: want |= bits ─► writer lock ─► still not durable?
//!                     ─► write `want` to every member + flush ─► durable = want
//!  done(span) ─► regions in flight -= 1, remember when
//!  clear_idle() (every second): array whole? ─► writer lock
//!     ─► idle regions (no write in flight for IDLE, not pinned): clear want+durable
//!     ─► before-clear hook (block checksums: write back dirty pages)
//!     ─► flush every member (their data is durable) ─► write `want` + flush
//!  clear_all() at clean shutdown: the same for every region.
//! ```
//!
//! Concurrent writers of a clean region wait for the same bitmap write (one
//! flush per batch). Regions loaded dirty at assembly are *pinned* until the
//! resync or recovery that covers them calls [`DiskBitmap::synced`]. While
//! the array is not whole, no bit is cleared: the bits then record what a
//! missing member missed, so it can be re-added by replaying them.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;

use super::bitmap_image;
use super::update::ArrayMetadata;
use super::written::{WrittenMap, WRITTEN_OFFSET};
use super::MetaLayout;
use crate::block::{BlockError, BlockResult, BoxFuture, Durability};
use crate::raid::WriteIntent;
use crate::units::ByteOffset;

/// How long a region must see no write before its bit is cleared.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(5);

/// The write-intent bitmap of one running array.
pub struct DiskBitmap {
    meta: Arc<ArrayMetadata>,
    offset: u64,
    len: u64,
    shift: u32,
    regions: u64,
    data_size: u64,
    idle: Duration,
    inner: Mutex<Inner>,
    writer: tokio::sync::Mutex<()>,
    /// Bitmap writes issued (each one write + flush per member).
    pub writes: AtomicU64,
    /// Runs before bits are cleared (the block checksums' write-back).
    before_clear: Option<BeforeClear>,
    /// `inner.pinned.len()`: lets [`DiskBitmap::settled`] (called on every
    /// verified read) skip the lock when nothing is pinned.
    pinned_len: AtomicUsize,
    /// Woken when the last pinned region is synced.
    unpinned: tokio::sync::Notify,
    /// The written-region map set with each bitmap write (FORMAT.md §10).
    written: Option<Arc<WrittenMap>>,
}

/// What must be durable before write-intent bits are cleared, besides the
/// data (the block checksums of the regions: docs/FORMAT.md §8).
pub type BeforeClear = Arc<dyn Fn() -> BoxFuture<'static, BlockResult> + Send + Sync>;

impl std::fmt::Debug for DiskBitmap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskBitmap")
            .field("regions", &self.regions)
            .field("shift", &self.shift)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Inner {
    /// Bits that must be on disk.
    want: Vec<u8>,
    /// Bits known to be on disk.
    durable: Vec<u8>,
    in_flight: HashMap<u64, u32>,
    last_done: HashMap<u64, Instant>,
    pinned: BTreeSet<u64>,
}

fn get(bits: &[u8], r: u64) -> bool {
    bits.get((r / 8) as usize)
        .is_some_and(|b| b & (1 << (r % 8)) != 0)
}

fn set(bits: &mut [u8], r: u64, on: bool) {
    if let Some(b) = bits.get_mut((r / 8) as usize) {
        if on {
            *b |= 1 << (r % 8);
        } else {
            *b &= !(1 << (r % 8));
        }
    }
}

/// Undoes the in-flight count of a `mark` that did not complete.
struct MarkGuard<'a> {
    bitmap: &'a DiskBitmap,
    span: (u64, u64),
    armed: bool,
}

impl Drop for MarkGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.bitmap.release(self.span.0, self.span.1);
        }
    }
}

impl DiskBitmap {
    /// Reads the bitmap of the members present in `meta` (the union of their
    /// images) for a data area of `data_size` bytes. With `trust_disk` false
    /// (the bitmap was not maintained), no bit is loaded.
    pub async fn load(
        meta: Arc<ArrayMetadata>,
        layout: &MetaLayout,
        data_size: u64,
        trust_disk: bool,
    ) -> DiskBitmap {
        let shift = layout.bitmap_region_shift;
        let regions = data_size.div_ceil(1 << shift);
        let bytes = bitmap_image::image_len(regions, layout.bitmap_len);
        let mut image = vec![0u8; bytes];
        if trust_disk {
            for dev in meta.present_devices().await {
                let mut buf = vec![0u8; bytes];
                match dev.read(ByteOffset(layout.bitmap_offset), &mut buf).await {
                    Ok(()) => bitmap_image::merge_into(&mut image, &buf),
                    Err(e) => tracing::warn!(device = dev.name(), %e, "cannot read bitmap"),
                }
            }
            bitmap_image::mask_tail(&mut image, regions);
        }
        DiskBitmap {
            meta,
            offset: layout.bitmap_offset,
            len: layout.bitmap_len,
            shift,
            regions,
            data_size,
            idle: DEFAULT_IDLE,
            inner: Mutex::new(Inner {
                want: image.clone(),
                durable: image,
                ..Inner::default()
            }),
            writer: tokio::sync::Mutex::new(()),
            writes: AtomicU64::new(0),
            before_clear: None,
            pinned_len: AtomicUsize::new(0),
            unpinned: tokio::sync::Notify::new(),
            written: None,
        }
    }

    /// Makes every clearing step run `hook` (and succeed) before any bit
    /// is cleared on disk.
    pub fn with_before_clear(self, hook: BeforeClear) -> DiskBitmap {
        DiskBitmap {
            before_clear: Some(hook),
            ..self
        }
    }

    /// Makes every bitmap write first set (and write) the written-region
    /// bits of its regions, so they are durable before the data writes.
    pub fn with_written(self, written: Arc<WrittenMap>) -> DiskBitmap {
        DiskBitmap {
            written: Some(written),
            ..self
        }
    }

    /// The written-region map kept with this bitmap.
    pub fn written(&self) -> Option<&Arc<WrittenMap>> {
        self.written.as_ref()
    }

    /// Writes the written-region map to every present member (one that
    /// joined or was re-added holds a stale image or none), under the
    /// writer lock: an older image never lands after a newer one.
    pub async fn share_written(&self) -> BlockResult {
        let Some(w) = &self.written else {
            return Ok(());
        };
        let _w = self.writer.lock().await;
        w.persist(&self.meta).await
    }

    /// False while the region of member data offset `offset` is pinned
    /// (dirty at assembly, not yet resynced): its block checksums may be
    /// torn from their data and must not be trusted.
    pub fn settled(&self, offset: u64) -> bool {
        if self.pinned_len.load(Ordering::Acquire) == 0 {
            return true;
        }
        let r = offset >> self.shift;
        !self.lock().pinned.contains(&r)
    }

    /// Changes how long a region must be idle before its bit is cleared.
    pub fn with_idle(mut self, idle: Duration) -> DiskBitmap {
        self.idle = idle;
        self
    }

    /// Bytes of member data one bit covers.
    pub fn region_size(&self) -> u64 {
        1 << self.shift
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The set regions as member data ranges, merged when adjacent.
    pub fn dirty_ranges(&self) -> Vec<(u64, u64)> {
        let inner = self.lock();
        let mut out: Vec<(u64, u64)> = Vec::new();
        for r in (0..self.regions).filter(|&r| get(&inner.want, r)) {
            let (a, b) = (r << self.shift, ((r + 1) << self.shift).min(self.data_size));
            match out.last_mut() {
                Some(last) if last.1 == a => last.1 = b,
                _ => out.push((a, b)),
            }
        }
        out
    }

    /// Sets every bit (a full resync is pending).
    pub fn set_all(&self) {
        let mut inner = self.lock();
        for r in 0..self.regions {
            set(&mut inner.want, r, true);
        }
    }

    /// Keeps every set bit until [`DiskBitmap::synced`] covers it.
    pub fn pin_dirty(&self) {
        let mut inner = self.lock();
        inner.pinned = (0..self.regions).filter(|&r| get(&inner.want, r)).collect();
        self.pinned_len.store(inner.pinned.len(), Ordering::Release);
    }

    /// Regions still pinned (a resync or recovery is unfinished).
    pub fn pinned(&self) -> usize {
        self.lock().pinned.len()
    }

    /// Waits until no region is pinned (at once when none is).
    pub async fn wait_unpinned(&self) {
        loop {
            let notified = self.unpinned.notified();
            tokio::pin!(notified);
            // Registered before the check, so a wake-up between the check
            // and the await is not missed.
            notified.as_mut().enable();
            if self.pinned_len.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// The regions of `start..end` are in sync again; they may be cleared.
    pub fn synced(&self, start: u64, end: u64) {
        let (r0, r1) = (start >> self.shift, end.saturating_sub(1) >> self.shift);
        let now = Instant::now();
        let mut inner = self.lock();
        inner.pinned.retain(|r| !(r0..=r1).contains(r));
        self.pinned_len.store(inner.pinned.len(), Ordering::Release);
        if inner.pinned.is_empty() {
            self.unpinned.notify_waiters();
        }
        for r in r0..=r1 {
            inner.last_done.insert(r, now);
        }
    }

    /// Writes the wanted image now (after loading or setting bits).
    pub async fn persist(&self) -> BlockResult {
        let _w = self.writer.lock().await;
        self.write_image().await
    }

    fn span(&self, start: ByteOffset, end: ByteOffset) -> (u64, u64) {
        let last = end.get().saturating_sub(1).max(start.get());
        (
            (start.get() >> self.shift).min(self.regions.saturating_sub(1)),
            (last >> self.shift).min(self.regions.saturating_sub(1)),
        )
    }

    fn release(&self, r0: u64, r1: u64) {
        let now = Instant::now();
        let mut inner = self.lock();
        for r in r0..=r1 {
            if let Some(n) = inner.in_flight.get_mut(&r) {
                *n -= 1;
                if *n == 0 {
                    inner.in_flight.remove(&r);
                    inner.last_done.insert(r, now);
                }
            }
        }
    }

    async fn mark_regions(&self, r0: u64, r1: u64) -> BlockResult {
        let mut guard = MarkGuard {
            bitmap: self,
            span: (r0, r1),
            armed: true,
        };
        // The written bits first (FORMAT.md §10): only writes set them, not
        // the bits a full resync sets; a bitmap write that carries the want
        // bit below carries them too.
        let (a, b) = (r0 << self.shift, (r1 + 1) << self.shift);
        let unwritten = self.written.as_ref().is_some_and(|w| w.note(a, b));
        let durable = {
            let mut inner = self.lock();
            let mut durable = !unwritten;
            for r in r0..=r1 {
                *inner.in_flight.entry(r).or_insert(0) += 1;
                set(&mut inner.want, r, true);
                durable &= get(&inner.durable, r);
            }
            durable
        };
        if !durable {
            let _w = self.writer.lock().await;
            let missing = self.written.as_ref().is_some_and(|w| w.missing(a, b));
            let still = missing || (r0..=r1).any(|r| !get(&self.lock().durable, r));
            if still {
                self.write_image().await?;
            }
        }
        guard.armed = false;
        Ok(())
    }

    /// Writes `want` to every present member and flushes; caller holds
    /// the writer lock. Succeeds if at least one member took it.
    async fn write_image(&self) -> BlockResult {
        let image = self.lock().want.clone();
        let mut block = vec![0u8; image.len().div_ceil(4096).max(1) * 4096];
        block[..image.len()].copy_from_slice(&image);
        block.truncate(block.len().min(self.len as usize));
        let devices = self.meta.present_devices().await;
        self.writes.fetch_add(1, Ordering::Relaxed);
        let block = &block;
        // A new written bit goes first; the same flush makes both durable.
        let written = self.written.as_ref().and_then(|w| w.pending());
        let written = &written;
        let results = join_all(devices.iter().map(|d| async move {
            if let Some(w) = written {
                d.write(ByteOffset(WRITTEN_OFFSET), &w.bytes, Durability::Normal)
                    .await?;
            }
            d.write(ByteOffset(self.offset), block, Durability::Normal)
                .await?;
            d.flush().await
        }))
        .await;
        let every = super::written::any_took(&devices, results, "bitmap", "bitmap")?;
        // Everywhere only once every member took it: a member that missed
        // it gets it again with the next bitmap write (FORMAT.md §10).
        if let (Some(w), Some(image)) = (&self.written, written) {
            w.wrote(image, every);
        }
        self.lock().durable = image;
        Ok(())
    }

    /// Clears the bits of regions idle for the idle time, once their data
    /// is flushed. Does nothing while the array is not whole. Returns the
    /// number of bits cleared.
    pub async fn clear_idle(&self) -> BlockResult<usize> {
        self.clear_where(false).await
    }

    /// Clears every bit not in flight or pinned (clean shutdown).
    pub async fn clear_all(&self) -> BlockResult<usize> {
        self.clear_where(true).await
    }

    async fn clear_where(&self, all: bool) -> BlockResult<usize> {
        if !self.meta.is_whole().await {
            return Ok(0);
        }
        let _w = self.writer.lock().await;
        // A member may have failed while this waited for the writer: the
        // bits of regions written since then are what its re-add catches
        // up, so nothing is cleared unless the array is still whole.
        if !self.meta.is_whole().await {
            return Ok(0);
        }
        let cleared = self.take_clearable(all);
        if cleared.is_empty() {
            return Ok(0);
        }
        if let Err(e) = self.before_clearing().await {
            // Nothing may be cleared: put the bits back. They are still
            // on disk (writes wanting them wait for the writer lock).
            self.restore(&cleared);
            return Err(e);
        }
        // The writes of those regions completed; make them durable before
        // the bits that cover them go.
        let devices = self.meta.present_devices().await;
        let flushed = join_all(devices.iter().map(|d| d.flush())).await;
        if let Some(e) = flushed.into_iter().find_map(|r| r.err()) {
            // A member that did not flush may lack those writes.
            self.restore(&cleared);
            return Err(e);
        }
        if !self.meta.is_whole().await {
            self.restore(&cleared);
            return Ok(0);
        }
        self.write_image().await?;
        tracing::debug!(cleared = cleared.len(), "write-intent bits cleared");
        Ok(cleared.len())
    }

    /// Takes the bits that may go (idle for the idle time, or `all`; none
    /// in flight or pinned) out of the in-memory images. Returns each
    /// region with whether its bit was durable, for [`Self::restore`].
    fn take_clearable(&self, all: bool) -> Vec<(u64, bool)> {
        let now = Instant::now();
        let mut inner = self.lock();
        let candidates: Vec<u64> = (0..self.regions)
            .filter(|&r| get(&inner.durable, r) || get(&inner.want, r))
            .filter(|r| !inner.in_flight.contains_key(r) && !inner.pinned.contains(r))
            .filter(|r| {
                all || inner
                    .last_done
                    .get(r)
                    .is_none_or(|t| now.duration_since(*t) >= self.idle)
            })
            .collect();
        let mut was = Vec::with_capacity(candidates.len());
        for &r in &candidates {
            was.push((r, get(&inner.durable, r)));
            set(&mut inner.want, r, false);
            set(&mut inner.durable, r, false);
            inner.last_done.remove(&r);
        }
        was
    }

    /// Puts back bits [`Self::take_clearable`] took (the clear did not
    /// happen). The writer lock is held: they are still on disk.
    fn restore(&self, cleared: &[(u64, bool)]) {
        let mut inner = self.lock();
        for &(r, durable) in cleared {
            set(&mut inner.want, r, true);
            set(&mut inner.durable, r, durable);
        }
    }

    /// `events_cleared` recorded, then the owner's hook (checksum pages
    /// written back) before any bit goes.
    async fn before_clearing(&self) -> BlockResult<()> {
        self.meta.clearing_allowed().await.map_err(|e| {
            BlockError::io(
                "write-intent bitmap: recording events_cleared",
                std::io::Error::other(e.to_string()),
            )
        })?;
        match self.before_clear.as_ref() {
            Some(hook) => hook().await,
            None => Ok(()),
        }
    }

    /// Runs [`DiskBitmap::clear_idle`] every `period` until the bitmap is dropped.
    pub fn spawn_cleaner(self: &Arc<Self>, period: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(bitmap) = weak.upgrade() else {
                    return;
                };
                if let Err(e) = bitmap.clear_idle().await {
                    tracing::warn!(%e, "clearing write-intent bits failed");
                }
            }
        });
    }
}

impl WriteIntent for DiskBitmap {
    fn mark(&self, start: ByteOffset, end: ByteOffset) -> BoxFuture<'_, BlockResult> {
        let (r0, r1) = self.span(start, end);
        crate::block::BoxFuture::new(self.mark_regions(r0, r1))
    }

    fn done(&self, start: ByteOffset, end: ByteOffset) {
        let (r0, r1) = self.span(start, end);
        self.release(r0, r1);
    }

    fn keep(&self, start: ByteOffset, end: ByteOffset) {
        let (r0, r1) = self.span(start, end);
        let mut inner = self.lock();
        inner.pinned.extend(r0..=r1);
        self.pinned_len.store(inner.pinned.len(), Ordering::Release);
    }

    fn settled(&self, offset: ByteOffset) -> bool {
        DiskBitmap::settled(self, offset.get())
    }
}

#[cfg(test)]
#[path = "bitmap_tests.rs"]
mod tests;
