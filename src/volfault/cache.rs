//! A volatile write cache in front of a volume, as a disk with a
//! write-back cache has, and the power cut that loses what it held
//! (docs/FAULTS.md "Volatile cache and power cuts").
//!
//! ```text
//!  write ─► writethrough? FUA? ─yes─► volume (older cached bytes there trimmed)
//!             │ no
//!             ▼
//!        CacheState (ack now) ─ full? ─► write back the oldest ─► volume
//!  FLUSH ─► write back every write acknowledged before it, oldest first,
//!           then flush the volume
//!  read  ─► volume's bytes, cached pieces laid over them in arrival order
//!  power cut ─► drop all / an ordered prefix / a random subset, write
//!               the rest back
//! ```
//!
//! One async lock (`writeback`) orders everything that writes cached
//! bytes or bytes that must win over them to the volume: one piece at a
//! time, so a power cut never waits long and never races a write-back.

use std::io::{IoSlice, IoSliceMut};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::cache_state::{CacheState, KeepPolicy, Payload, Piece, PowerCutReport};
use crate::block::{check_range, BlockDevice, BlockError, BlockResult, Durability, IoFuture};
use crate::units::ByteOffset;

/// Default cache budget (`cache_size`).
pub const DEFAULT_CACHE_SIZE: u64 = 64 << 20;

/// Most pieces written back at once. Each one in flight holds member
/// buffers, a checksum block and a ~20 KiB boxed future: 64 small writes
/// of distinct 4 KiB blocks (run side by side since RAID-0/1 lock blocks,
/// not 1 MiB regions) had ~1.5 MiB more in flight at the peak, past the
/// member pool's 128 kept 4 KiB buffers, and the aligned allocations
/// between long-lived cached pieces grew the heap by 16 MiB under an 8 MiB
/// budget (`redteam_volume_faults.rs`); 16 keeps it at 9-10 MiB.
const WRITE_BACK_BATCH: usize = 16;

/// Smallest budget a user may give.
pub const MIN_CACHE_SIZE: u64 = 64 << 10;

/// How acknowledged writes reach the volume.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    /// Before the acknowledgement (no cache: the default).
    #[default]
    Writethrough,
    /// At FLUSH, FUA or write-back; a power cut loses the rest.
    Volatile,
}

impl CacheMode {
    fn code(self) -> u8 {
        match self {
            CacheMode::Writethrough => 0,
            CacheMode::Volatile => 1,
        }
    }

    fn of(code: u8) -> CacheMode {
        if code == 1 {
            CacheMode::Volatile
        } else {
            CacheMode::Writethrough
        }
    }
}

/// The cache in `vraid status` (`cache`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStatus {
    /// Mode now.
    pub mode: CacheMode,
    /// Budget, bytes.
    pub capacity: u64,
    /// Bytes of acknowledged writes not yet on the volume.
    pub dirty_bytes: u64,
    /// Those writes.
    pub dirty_writes: u64,
    /// Flushes served.
    pub flushes: u64,
    /// Pieces written back (to make room, or by a flush).
    pub writebacks: u64,
    /// Power cuts so far.
    pub powercuts: u64,
    /// Writes they dropped, in all.
    pub dropped_writes: u64,
    /// Bytes they dropped, in all.
    pub dropped_bytes: u64,
    /// The last one (`null`: none yet).
    pub last_powercut: Option<PowerCutReport>,
}

/// Why a cache operation failed (beyond the volume's own errors).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The cache budget is too small to be of use.
    #[error("cache size {0} is below the minimum of 64K")]
    TooSmall(u64),
}

#[derive(Debug, Default)]
struct Counters {
    flushes: AtomicU64,
    writebacks: AtomicU64,
    powercuts: AtomicU64,
    dropped_writes: AtomicU64,
    dropped_bytes: AtomicU64,
}

/// The volatile cache as a [`BlockDevice`] over the volume.
pub struct WriteCache {
    inner: Arc<dyn BlockDevice>,
    mode: AtomicU8,
    capacity: AtomicU64,
    state: Mutex<CacheState>,
    /// True while `state` holds nothing: the write-through fast path
    /// checks it without taking the lock.
    empty: AtomicBool,
    writeback: tokio::sync::Mutex<()>,
    counters: Counters,
    last_cut: Mutex<Option<PowerCutReport>>,
}

impl std::fmt::Debug for WriteCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteCache")
            .field("inner", &self.inner.name())
            .field("mode", &self.mode())
            .finish_non_exhaustive()
    }
}

impl WriteCache {
    /// A write-through cache (it holds nothing until set volatile).
    pub fn new(inner: Arc<dyn BlockDevice>) -> WriteCache {
        WriteCache {
            inner,
            mode: AtomicU8::new(CacheMode::Writethrough.code()),
            capacity: AtomicU64::new(DEFAULT_CACHE_SIZE),
            state: Mutex::new(CacheState::new()),
            empty: AtomicBool::new(true),
            writeback: tokio::sync::Mutex::new(()),
            counters: Counters::default(),
            last_cut: Mutex::new(None),
        }
    }

    fn state(&self) -> MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the state under its lock, keeping `empty` in step.
    fn mutate<R>(&self, f: impl FnOnce(&mut CacheState) -> R) -> R {
        let mut s = self.state();
        let r = f(&mut s);
        self.empty.store(s.is_empty(), Ordering::Release);
        r
    }

    fn is_empty(&self) -> bool {
        self.empty.load(Ordering::Acquire)
    }

    /// The mode now.
    pub fn mode(&self) -> CacheMode {
        CacheMode::of(self.mode.load(Ordering::Acquire))
    }

    /// Switches mode; leaving volatile mode writes everything back first.
    pub async fn set_mode(&self, mode: CacheMode) -> BlockResult {
        self.mode.store(mode.code(), Ordering::Release);
        if mode == CacheMode::Writethrough {
            self.flush().await?;
        }
        Ok(())
    }

    /// Checks a budget given by the user.
    pub fn check_capacity(bytes: u64) -> Result<(), CacheError> {
        if bytes < MIN_CACHE_SIZE {
            return Err(CacheError::TooSmall(bytes));
        }
        Ok(())
    }

    /// Sets the budget (any size: a write larger than it is written back
    /// at once); writes back what no longer fits.
    pub async fn set_capacity(&self, bytes: u64) -> BlockResult {
        self.capacity.store(bytes, Ordering::Release);
        self.make_room().await
    }

    /// The status snapshot.
    pub fn status(&self) -> CacheStatus {
        let (dirty_bytes, dirty_writes) = {
            let s = self.state();
            (s.bytes(), s.writes())
        };
        let c = &self.counters;
        CacheStatus {
            mode: self.mode(),
            capacity: self.capacity.load(Ordering::Relaxed),
            dirty_bytes,
            dirty_writes,
            flushes: c.flushes.load(Ordering::Relaxed),
            writebacks: c.writebacks.load(Ordering::Relaxed),
            powercuts: c.powercuts.load(Ordering::Relaxed),
            dropped_writes: c.dropped_writes.load(Ordering::Relaxed),
            dropped_bytes: c.dropped_bytes.load(Ordering::Relaxed),
            last_powercut: self
                .last_cut
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    /// Writes `p` to the volume.
    async fn put(&self, p: &Piece) -> BlockResult {
        let at = ByteOffset(p.offset);
        match &p.payload {
            Payload::Data { data, start } => {
                let bytes = &data[*start..*start + p.len as usize];
                self.inner.write(at, bytes, Durability::Normal).await
            }
            Payload::Zero { unmap: true } => self.inner.discard(at, p.len).await,
            Payload::Zero { unmap: false } => self.inner.write_zeroes(at, p.len, false).await,
        }
    }

    /// Writes back the oldest pieces of writes older than `bound` (a
    /// batch that overlaps nothing older, written at once); false when
    /// there is none. Fails with EIO when power was cut since `epoch`.
    async fn write_back_batch(&self, bound: u64, epoch: Option<u64>) -> BlockResult<bool> {
        let _order = self.writeback.lock().await;
        let batch = {
            let s = self.state();
            if epoch.is_some_and(|e| e != s.epoch()) {
                return Err(power_lost(self.inner.name()));
            }
            s.oldest_batch(bound, WRITE_BACK_BATCH)
        };
        if batch.is_empty() {
            return Ok(false);
        }
        let results = futures::future::join_all(batch.iter().map(|p| self.put(p))).await;
        self.mutate(|s| {
            for (p, r) in batch.iter().zip(&results) {
                if r.is_ok() {
                    s.remove((p.seq, p.offset));
                }
            }
        });
        self.counters
            .writebacks
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        results.into_iter().collect::<BlockResult<Vec<()>>>()?;
        Ok(true)
    }

    /// Writes back the oldest pieces until the cache fits its budget.
    async fn make_room(&self) -> BlockResult {
        while self.state().cost() > self.capacity.load(Ordering::Acquire) {
            if !self.write_back_batch(u64::MAX, None).await? {
                break;
            }
        }
        Ok(())
    }

    /// Caches a write (volatile mode) and makes room for it. A write whose
    /// room cannot be made (the volume fails the write-back) fails and is
    /// not kept: else a failing volume would let the cache grow past its
    /// budget by every write a client retries.
    async fn cache(&self, offset: u64, len: u64, payload: Payload) -> BlockResult {
        let seq = self.mutate(|s| s.insert(offset, len, payload));
        let made = self.make_room().await;
        if made.is_err() {
            self.mutate(|s| s.remove_write(seq));
        }
        made
    }

    /// Runs a write straight on the volume; cached bytes it overwrites
    /// are trimmed so that no write-back ever lands over it.
    async fn write_through(&self, offset: u64, len: u64, run: IoFuture<'_>) -> BlockResult {
        if self.is_empty() {
            return run.await;
        }
        let _order = self.writeback.lock().await;
        let seq = self.state().next_seq();
        run.await?;
        self.mutate(|s| s.trim(offset, len, seq));
        Ok(())
    }

    /// `vraid fault powercut`: drops the unflushed writes `keep` does not
    /// keep, writes the kept ones back, flushes the volume.
    pub async fn power_cut(&self, keep: KeepPolicy, seed: u64) -> BlockResult<PowerCutReport> {
        let cut = {
            let _order = self.writeback.lock().await;
            self.mutate(|s| s.power_cut(keep, seed))
        };
        let c = &self.counters;
        c.powercuts.fetch_add(1, Ordering::Relaxed);
        c.dropped_writes
            .fetch_add(cut.report.dropped_writes, Ordering::Relaxed);
        c.dropped_bytes
            .fetch_add(cut.report.dropped_bytes, Ordering::Relaxed);
        *self.last_cut.lock().unwrap_or_else(|e| e.into_inner()) = Some(cut.report.clone());
        for key in &cut.kept {
            let _order = self.writeback.lock().await;
            let piece = self.state().get(*key);
            if let Some(p) = piece {
                self.put(&p).await?;
                self.mutate(|s| s.remove(*key));
            }
        }
        self.inner.flush().await?;
        Ok(cut.report)
    }

    /// Reads the volume and lays the cached pieces over it.
    async fn read_overlaid(&self, offset: ByteOffset, buf: &mut [u8]) -> BlockResult {
        // Taken before the volume read: a piece written back meanwhile is
        // still laid over (with the same bytes), never missed.
        let pieces = self.state().overlapping(offset.get(), buf.len() as u64);
        self.inner.read(offset, buf).await?;
        for p in &pieces {
            p.overlay(buf, offset.get());
        }
        Ok(())
    }

    fn volatile(&self) -> bool {
        self.mode() == CacheMode::Volatile
    }
}

fn power_lost(device: &str) -> BlockError {
    BlockError::io(
        format!("{device} (power cut during the flush)"),
        std::io::Error::from_raw_os_error(libc::EIO),
    )
}

fn ready(r: BlockResult) -> IoFuture<'static> {
    crate::block::BoxFuture::new(std::future::ready(r))
}

impl BlockDevice for WriteCache {
    crate::block::forward_to!(inner => name, size, mark_lost, reserve);

    /// The volume's map where the cache holds nothing of the range; all
    /// data where it does (cached bytes are not on the volume yet).
    fn allocation(
        &self,
        offset: ByteOffset,
        len: u64,
    ) -> crate::block::BoxFuture<'_, BlockResult<crate::block::AllocationMap>> {
        if self.is_empty() || self.state().overlapping(offset.get(), len).is_empty() {
            return self.inner.allocation(offset, len);
        }
        let data = crate::block::AllocationExtent {
            len,
            state: crate::block::Allocation::DATA,
        };
        crate::block::BoxFuture::new(std::future::ready(Ok(vec![data])))
    }

    fn read<'a>(&'a self, offset: ByteOffset, buf: &'a mut [u8]) -> IoFuture<'a> {
        if self.is_empty() {
            return self.inner.read(offset, buf);
        }
        crate::block::BoxFuture::new(self.read_overlaid(offset, buf))
    }

    fn write<'a>(&'a self, at: ByteOffset, buf: &'a [u8], durability: Durability) -> IoFuture<'a> {
        let len = buf.len() as u64;
        if let Err(e) = check_range(at, len, self.size()) {
            return ready(Err(e));
        }
        if durability == Durability::Fua || !self.volatile() {
            let run = self.inner.write(at, buf, durability);
            return crate::block::BoxFuture::new(self.write_through(at.get(), len, run));
        }
        let payload = Payload::Data {
            data: Arc::from(buf),
            start: 0,
        };
        crate::block::BoxFuture::new(self.cache(at.get(), len, payload))
    }

    /// An empty cache reads the list straight from the volume (zero copy).
    fn read_vectored<'a>(
        &'a self,
        offset: ByteOffset,
        bufs: &'a mut [IoSliceMut<'_>],
    ) -> IoFuture<'a> {
        if self.is_empty() {
            return self.inner.read_vectored(offset, bufs);
        }
        crate::block::read_through_copy(self, offset, bufs)
    }

    /// Write-through and FUA writes go down as lists (zero copy); a
    /// cached write keeps its own copy of the bytes anyway.
    fn write_vectored<'a>(
        &'a self,
        at: ByteOffset,
        bufs: &'a [IoSlice<'a>],
        durability: Durability,
    ) -> IoFuture<'a> {
        let len = crate::iovec::len(bufs) as u64;
        if let Err(e) = check_range(at, len, self.size()) {
            return ready(Err(e));
        }
        if durability == Durability::Fua || !self.volatile() {
            let run = self.inner.write_vectored(at, bufs, durability);
            return crate::block::BoxFuture::new(self.write_through(at.get(), len, run));
        }
        crate::block::write_through_copy(self, at, bufs, durability)
    }

    fn flush(&self) -> IoFuture<'_> {
        self.counters.flushes.fetch_add(1, Ordering::Relaxed);
        if self.is_empty() {
            return self.inner.flush();
        }
        crate::block::BoxFuture::new(async move {
            let (bound, epoch) = {
                let s = self.state();
                (s.seq_bound(), s.epoch())
            };
            while self.write_back_batch(bound, Some(epoch)).await? {}
            self.inner.flush().await
        })
    }

    fn discard(&self, offset: ByteOffset, len: u64) -> IoFuture<'_> {
        if let Err(e) = check_range(offset, len, self.size()) {
            return ready(Err(e));
        }
        if !self.volatile() {
            let run = self.inner.discard(offset, len);
            return crate::block::BoxFuture::new(self.write_through(offset.get(), len, run));
        }
        crate::block::BoxFuture::new(self.cache(offset.get(), len, Payload::Zero { unmap: true }))
    }

    fn write_zeroes(&self, offset: ByteOffset, len: u64, may_unmap: bool) -> IoFuture<'_> {
        if let Err(e) = check_range(offset, len, self.size()) {
            return ready(Err(e));
        }
        if !self.volatile() {
            let run = self.inner.write_zeroes(offset, len, may_unmap);
            return crate::block::BoxFuture::new(self.write_through(offset.get(), len, run));
        }
        let zero = Payload::Zero { unmap: may_unmap };
        crate::block::BoxFuture::new(self.cache(offset.get(), len, zero))
    }
}
