//! [`ChecksumDevice`]: verifies every read of a member's data area against
//! its [`CsumStore`] and records the checksum of every write.
//!
//! ```text
//!  read  ─► widen to 4 KiB ─► inner read ─► entries ─► mismatch in a
//!           trusted block? ─► re-read once ─► still: count, Corrupt
//!  write ─► unaligned edge: kept by the last small write of it (EdgeCache)
//!           or read it (verify; bad: entry kept mismatching)
//!           ─► CRCs ─► inner write ─► entries (good edges kept)
//!  discard/zeroes ─► inner ─► whole blocks: zero CRC, edges: re-read + seal
//!  flush ─► write back dirty pages ─► inner flush (FUA write: pages FUA)
//! ```
//!
//! Vectored reads and writes of whole 4 KiB blocks (offset and every
//! segment's length multiples of 4 KiB) are checked and sealed in the
//! caller's segments and passed down as they are; others go through a
//! contiguous copy. A vectored write's bytes may change while it runs
//! (guest memory): after the write the blocks are hashed again, and those
//! that changed are read back and sealed as the member holds them.
//!
//! It sits below the member's counters and above its fault rules:
//! Volume ─► StatsDevice ─► ChecksumDevice ─► FaultDevice ─► Window.

use std::io::{IoSlice, IoSliceMut};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use super::beside;
use super::edge_cache::EdgeCache;
use super::inflight::Inflight;
use super::page::{bad_blocks, block_entry, entries_of, hull, seal, zero_entry, BLOCK, UNKNOWN};
use super::reported::{warn_bad_edge, Reported};
use super::store::CsumStore;
use crate::block::{check_range, BlockDevice, BlockError, BlockResult, BoxFuture, Durability};
use crate::units::ByteOffset;

/// Says whether a member data offset may be verified (false while the
/// region is dirty from a crash and not yet resynced).
pub type Trusted = Arc<dyn Fn(u64) -> bool + Send + Sync>;

/// An edge block of a partial write and its range in the merged buffer.
type Edge = Option<(u64, std::ops::Range<usize>)>;

/// A member data area whose blocks are checksummed.
pub struct ChecksumDevice {
    inner: Arc<dyn BlockDevice>,
    store: Arc<CsumStore>,
    trusted: Trusted,
    /// Blocks counted bad and not rewritten since.
    reported: Reported,
    /// Edge blocks of the last small writes, as the member holds them.
    edges: EdgeCache,
    /// Writes in flight: a read's mismatch raced one, or is corruption.
    inflight: Inflight,
}

impl std::fmt::Debug for ChecksumDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChecksumDevice")
            .field("inner", &self.inner.name())
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl ChecksumDevice {
    /// Wraps `inner` (the data window) with the entries of `store`; bad
    /// blocks found by reads are added to `errors`.
    pub fn new(
        inner: Arc<dyn BlockDevice>,
        store: Arc<CsumStore>,
        trusted: Trusted,
        errors: Arc<AtomicU64>,
    ) -> ChecksumDevice {
        ChecksumDevice {
            inner,
            store,
            trusted,
            reported: Reported::new(errors),
            edges: EdgeCache::default(),
            inflight: Inflight::default(),
        }
    }

    /// Bytes of blocks `b0..b1` (the last block of a device whose size is
    /// not a multiple of 4 KiB is short).
    fn span(&self, b0: u64, b1: u64) -> usize {
        ((b1 * BLOCK).min(self.size()) - b0 * BLOCK) as usize
    }

    /// Reads blocks `b0..b1` into `out` and returns the blocks (relative
    /// to `b0`) that fail a known, trusted entry.
    async fn read_checked(&self, b0: u64, b1: u64, out: &mut [u8]) -> BlockResult<Vec<usize>> {
        self.inner.read(ByteOffset(b0 * BLOCK), out).await?;
        let mut entries = Entries::new(b1 - b0);
        self.store.entries_into(b0, entries.get()).await?;
        Ok(bad_blocks(entries.get(), out)
            .into_iter()
            .filter(|&i| (self.trusted)((b0 + i as u64) * BLOCK))
            .collect())
    }

    async fn read_verified(&self, offset: ByteOffset, buf: &mut [u8]) -> BlockResult {
        check_range(offset, buf.len() as u64, self.size())?;
        if buf.is_empty() {
            return Ok(());
        }
        let (b0, b1) = hull(offset.get(), buf.len() as u64);
        let aligned = offset.get().is_multiple_of(BLOCK) && buf.len() == self.span(b0, b1);
        let mut wide = Vec::new();
        let data: &mut [u8] = if aligned {
            buf
        } else {
            wide.resize(self.span(b0, b1), 0);
            &mut wide
        };
        let mut bad = self.read_checked(b0, b1, data).await?;
        let mut tries = 0;
        // A write of the same blocks may have raced this read (readers
        // take no lock): read again until no write raced a read.
        while !bad.is_empty() {
            let Some(stamp) = self.quiet(b0, b1, &mut tries).await else {
                break;
            };
            bad = self.read_checked(b0, b1, data).await?;
            if self.inflight.quiet(b0, b1) == Some(stamp) {
                break;
            }
        }
        self.reported.check(self.inner.name(), b0, &bad)?;
        if !aligned {
            let at = (offset.get() - b0 * BLOCK) as usize;
            buf.copy_from_slice(&wide[at..at + buf.len()]);
        }
        Ok(())
    }

    /// Waits until no write of blocks `b0..b1` is in flight and returns
    /// the stamp to compare after the next read ([`Inflight::wait_quiet`]);
    /// `None` after [`RACE_TRIES`] in all (`tries`) or a write stuck for
    /// [`RACE_STUCK`]: the mismatch stands.
    async fn quiet(&self, b0: u64, b1: u64, tries: &mut u32) -> Option<u64> {
        self.inflight
            .wait_quiet(b0, b1, tries, RACE_TRIES, RACE_STUCK)
            .await
    }

    /// The blocks of `offset..+len` marked written until the guard drops.
    fn writing(&self, offset: ByteOffset, len: u64) -> super::inflight::Writing<'_> {
        let (b0, b1) = hull(offset.get(), len);
        self.inflight.begin(b0, b1)
    }

    /// True when a vectored request at `offset` is whole blocks in every
    /// segment, so it can be checked in place.
    fn whole_blocks<'s>(offset: ByteOffset, segs: impl IntoIterator<Item = &'s [u8]>) -> bool {
        offset.get().is_multiple_of(BLOCK)
            && segs
                .into_iter()
                .all(|s| (s.len() as u64).is_multiple_of(BLOCK))
    }

    /// [`Self::read_checked`] into whole-block segments.
    async fn read_checked_segments(
        &self,
        b0: u64,
        b1: u64,
        bufs: &mut [IoSliceMut<'_>],
    ) -> BlockResult<Vec<usize>> {
        self.inner
            .read_vectored(ByteOffset(b0 * BLOCK), bufs)
            .await?;
        let mut entries = Entries::new(b1 - b0);
        self.store.entries_into(b0, entries.get()).await?;
        let entries = entries.get();
        let mut bad = Vec::new();
        let mut at = 0;
        for seg in bufs.iter() {
            let n = seg.len() / BLOCK as usize;
            let found = bad_blocks(&entries[at..at + n], seg).into_iter();
            bad.extend(found.map(|i| i + at));
            at += n;
        }
        bad.retain(|&i| (self.trusted)((b0 + i as u64) * BLOCK));
        Ok(bad)
    }

    /// A vectored read of whole blocks, verified in the caller's segments.
    async fn read_verified_segments(
        &self,
        offset: ByteOffset,
        bufs: &mut [IoSliceMut<'_>],
    ) -> BlockResult {
        let len = crate::iovec::len_mut(bufs) as u64;
        check_range(offset, len, self.size())?;
        if len == 0 {
            return Ok(());
        }
        let (b0, b1) = hull(offset.get(), len);
        let mut bad = self.read_checked_segments(b0, b1, bufs).await?;
        let mut tries = 0;
        // A racing write of the same blocks: as in `read_verified`.
        while !bad.is_empty() {
            let Some(stamp) = self.quiet(b0, b1, &mut tries).await else {
                break;
            };
            bad = self.read_checked_segments(b0, b1, bufs).await?;
            if self.inflight.quiet(b0, b1) == Some(stamp) {
                break;
            }
        }
        self.reported.check(self.inner.name(), b0, &bad)
    }

    /// A vectored write of whole blocks, sealed from the caller's segments.
    async fn write_sealed_segments(
        &self,
        offset: ByteOffset,
        bufs: &[IoSlice<'_>],
        dur: Durability,
    ) -> BlockResult {
        let len = crate::iovec::len(bufs) as u64;
        check_range(offset, len, self.size())?;
        if len == 0 {
            return Ok(());
        }
        let (b0, b1) = hull(offset.get(), len);
        self.store.prepare(b0, b1 - b0).await?;
        self.edges.forget(b0, b1);
        let epoch = self.store.eviction_writes();
        let blocks = || bufs.iter().flat_map(|s| s.chunks(BLOCK as usize));
        let mut entries = Entries::new(b1 - b0);
        for (e, block) in entries.get().iter_mut().zip(blocks()) {
            *e = block_entry(block);
        }
        self.inner.write_vectored(offset, bufs, dur).await?;
        self.reseal_changed(b0, blocks(), entries.get()).await?;
        self.reported.forget(b0, b1);
        self.store.set(b0, entries.get()).await?;
        self.after_write(dur, epoch).await
    }

    /// After a write of bytes that may have changed meanwhile: blocks
    /// whose bytes no longer hash to their new entry are read back from the
    /// member and sealed as written there.
    async fn reseal_changed<'s>(
        &self,
        b0: u64,
        blocks: impl Iterator<Item = &'s [u8]>,
        entries: &mut [u32],
    ) -> BlockResult {
        let changed: Vec<usize> = blocks
            .zip(entries.iter())
            .enumerate()
            .filter(|(_, (block, &e))| block_entry(block) != e)
            .map(|(i, _)| i)
            .collect();
        for i in changed {
            let b = b0 + i as u64;
            let mut block = vec![0u8; self.span(b, b + 1)];
            self.inner.read(ByteOffset(b * BLOCK), &mut block).await?;
            entries[i] = block_entry(&block);
        }
        Ok(())
    }

    /// Reads the old bytes of an edge block into `old`; false when they
    /// fail their own (known) checksum, verified there or not.
    async fn edge(&self, block: u64, old: &mut [u8]) -> BlockResult<bool> {
        self.inner.read(ByteOffset(block * BLOCK), old).await?;
        let entry = self.store.entries(block, 1).await?[0];
        // Also where the region is not verified (dirty at a crash, not yet
        // resynced): a block failing its entry there may be corruption the
        // resync must repair from redundancy, and sealing the merge would
        // make it pass and win (§8 "Which checksum is trusted where"). A
        // torn write's block kept mismatching costs nothing: the resync
        // reseals it.
        let ok = entry == UNKNOWN || entry == block_entry(old);
        if !ok && (self.trusted)(block * BLOCK) {
            warn_bad_edge(self.inner.name(), block);
        }
        Ok(ok)
    }

    async fn write_sealed(&self, offset: ByteOffset, buf: &[u8], dur: Durability) -> BlockResult {
        check_range(offset, buf.len() as u64, self.size())?;
        if buf.is_empty() {
            return Ok(());
        }
        let (b0, b1) = hull(offset.get(), buf.len() as u64);
        let head = (offset.get() - b0 * BLOCK) as usize;
        // Pages the entries go to are reserved before the data is written:
        // running out of space fails this write, not a later write-back.
        self.store.prepare(b0, b1 - b0).await?;
        let epoch = self.store.eviction_writes();
        if head == 0 && buf.len() == self.span(b0, b1) {
            self.edges.forget(b0, b1);
            let mut entries = Entries::new(b1 - b0);
            let blocks = buf.chunks(BLOCK as usize);
            for (e, block) in entries.get().iter_mut().zip(blocks) {
                *e = block_entry(block);
            }
            self.inner.write(offset, buf, dur).await?;
            self.reported.forget(b0, b1);
            self.store.set(b0, entries.get()).await?;
            return self.after_write(dur, epoch).await;
        }
        self.write_partial(offset, buf, dur, (b0, b1), epoch).await
    }

    /// A write covering part of a block (`b0..b1` its hull): merges the new
    /// bytes into the old edge blocks to know the blocks' checksums.
    /// Writers of one block are serialized by the RAID layer's locks, so
    /// the edges cannot change meanwhile.
    async fn write_partial(
        &self,
        offset: ByteOffset,
        buf: &[u8],
        dur: Durability,
        (b0, b1): (u64, u64),
        epoch: u64,
    ) -> BlockResult {
        let head = (offset.get() - b0 * BLOCK) as usize;
        let mut wide = vec![0u8; self.span(b0, b1)];
        let mut good = vec![true; (b1 - b0) as usize];
        let edges = self.edge_blocks(b0, b1);
        let mut missing = [false; 2];
        for (m, e) in missing.iter_mut().zip(&edges) {
            if let Some((block, r)) = e {
                *m = !self.edges.get(*block, &mut wide[r.clone()]);
            }
        }
        // Forgotten before the write starts: a failed or cancelled write
        // leaves no kept block the member may not hold.
        self.edges.forget(b0, b1);
        let (mut unknown, mut read_err) = ([false; 2], None);
        if missing.iter().any(|&m| m) && beside::fits(offset.get(), buf.len()) {
            let at = (offset, buf, dur);
            (unknown, read_err) = self
                .write_beside(at, b0, (&edges, missing), &mut wide, &mut good)
                .await?;
        } else {
            for (k, e) in edges.iter().enumerate() {
                if let (Some((block, r)), true) = (e, missing[k]) {
                    let i = (block - b0) as usize;
                    good[i] = self.edge(*block, &mut wide[r.clone()]).await?;
                }
            }
            self.inner.write(offset, buf, dur).await?;
        }
        wide[head..head + buf.len()].copy_from_slice(buf);
        let mut entries = entries_of(&wide);
        for (e, ok) in entries.iter_mut().zip(&good) {
            if !ok {
                // Never bless bad bytes, and do not forget them either: an
                // entry that cannot match makes the next read of the block
                // report it, so the RAID layer rewrites it from redundancy.
                *e = seal(!*e);
            }
        }
        // An edge whose read failed beside a write that landed: its bytes
        // are not known, nor is its checksum (case 155).
        for (e, _) in edges.iter().zip(unknown).filter(|(_, u)| *u) {
            if let Some((block, _)) = e {
                entries[(block - b0) as usize] = UNKNOWN;
            }
        }
        self.keep_edges(b0, b1, &wide, &good);
        // Edge blocks that were bad keep a mismatching entry: forget only
        // the blocks that are now whole and good.
        self.reported.forget_good(b0, &good);
        self.store.set(b0, &entries).await?;
        if let Some(err) = read_err {
            return Err(err);
        }
        self.after_write(dur, epoch).await
    }

    /// The edge blocks of a partial write over `b0..b1`, each with its
    /// range in the merged buffer: the first block, and the last if other.
    fn edge_blocks(&self, b0: u64, b1: u64) -> [Edge; 2] {
        let first = Some((b0, 0..self.span(b0, b0 + 1)));
        let last = (b1 - b0 > 1).then(|| {
            let at = ((b1 - 1 - b0) * BLOCK) as usize;
            (b1 - 1, at..self.span(b0, b1))
        });
        [first, last]
    }

    /// The data write and the reads of the `missing` edge blocks, at once
    /// (module `beside`): the reads fill `wide` and their verdicts `good`.
    /// Returns the edges whose read failed (the write landed: their
    /// entries are unknown) and the error to answer with.
    async fn write_beside(
        &self,
        (offset, buf, dur): (ByteOffset, &[u8], Durability),
        b0: u64,
        (edges, missing): (&[Edge; 2], [bool; 2]),
        wide: &mut [u8],
        good: &mut [bool],
    ) -> BlockResult<([bool; 2], Option<BlockError>)> {
        let split = edges[0].as_ref().map_or(0, |(_, r)| r.end);
        let (lo, hi) = wide.split_at_mut(split);
        let first = edges[0].as_ref().filter(|_| missing[0]);
        let first = first.map(|(b, r)| (*b, &mut lo[r.clone()]));
        let last = edges[1].as_ref().filter(|_| missing[1]);
        let last = last.map(|(b, r)| (*b, &mut hi[r.start - split..r.end - split]));
        let (r0, r1, w) = tokio::join!(
            self.edge_opt(first, offset, buf),
            self.edge_opt(last, offset, buf),
            self.inner.write(offset, buf, dur),
        );
        w?;
        let (mut unknown, mut err) = ([false; 2], None);
        for (k, r) in [r0, r1].into_iter().enumerate() {
            let (Some((block, _)), Some(r)) = (&edges[k], r) else {
                continue;
            };
            let i = (block - b0) as usize;
            match r {
                Ok(ok) => good[i] = ok,
                Err(e) => (good[i], unknown[k], err) = (false, true, Some(e)),
            }
        }
        Ok((unknown, err))
    }

    /// [`Self::edge_beside`] of an edge to read, if any.
    async fn edge_opt(
        &self,
        edge: Option<(u64, &mut [u8])>,
        offset: ByteOffset,
        buf: &[u8],
    ) -> Option<BlockResult<bool>> {
        let (block, old) = edge?;
        Some(self.edge_beside(block, old, offset, buf).await)
    }

    /// Reads edge `block` into `old` while the write of `buf` at `offset`
    /// may be landing: false when the block failed its (known) checksum
    /// before the write, as far as the read can tell (module `beside`).
    async fn edge_beside(
        &self,
        block: u64,
        old: &mut [u8],
        offset: ByteOffset,
        buf: &[u8],
    ) -> BlockResult<bool> {
        beside::count_beside();
        self.inner.read(ByteOffset(block * BLOCK), old).await?;
        let entry = self.store.entries(block, 1).await?[0];
        if entry == UNKNOWN || entry == block_entry(old) {
            return Ok(true);
        }
        // The written range of this block, in it and in `buf`.
        let start = block * BLOCK;
        let from = offset.get().max(start);
        let to = (offset.get() + buf.len() as u64).min(start + old.len() as u64);
        let (at, n) = ((from - start) as usize, (to - from) as usize);
        let new = &buf[(from - offset.get()) as usize..][..n];
        if beside::saw_new(&old[at..at + n], new) {
            beside::count_raced();
            return Ok(true);
        }
        if (self.trusted)(block * BLOCK) {
            warn_bad_edge(self.inner.name(), block);
        }
        Ok(false)
    }

    /// Keeps the good edge blocks of the merged blocks `wide` (`b0..b1`),
    /// written now, for the next small write of them.
    fn keep_edges(&self, b0: u64, b1: u64, wide: &[u8], good: &[bool]) {
        let first = &wide[..self.span(b0, b0 + 1)];
        if good[0] {
            self.edges.keep(b0, first);
        }
        if b1 - b0 > 1 && good[good.len() - 1] {
            self.edges
                .keep(b1 - 1, &wide[((b1 - 1 - b0) * BLOCK) as usize..]);
        }
    }

    /// A FUA write is durable when it completes: so are its entries (an
    /// eviction since `epoch` may have written its page plainly).
    async fn after_write(&self, dur: Durability, epoch: u64) -> BlockResult {
        if dur == Durability::Fua {
            self.store.write_pages_fua(epoch).await?;
        }
        Ok(())
    }

    /// Reserves the pages of `offset..offset + len` before it changes.
    async fn prepare_range(&self, offset: ByteOffset, len: u64) -> BlockResult {
        check_range(offset, len, self.size())?;
        if len == 0 {
            return Ok(());
        }
        let (b0, b1) = hull(offset.get(), len);
        self.store.prepare(b0, b1 - b0).await?;
        self.edges.forget(b0, b1);
        Ok(())
    }

    /// After a discard or write-zeroes of `offset..+len`: whole blocks are
    /// zero, partial edge blocks are re-read and sealed as they now are.
    async fn after_clear(&self, offset: u64, len: u64) -> BlockResult {
        if len == 0 {
            return Ok(());
        }
        let (b0, b1) = hull(offset, len);
        self.reported.forget(b0, b1);
        let whole0 = offset.div_ceil(BLOCK);
        let whole1 = (offset + len) / BLOCK;
        if whole1 > whole0 {
            self.store
                .fill(whole0, whole1 - whole0, zero_entry())
                .await?;
        }
        for b in [b0, b1 - 1] {
            if b < whole0 || b >= whole1 {
                let mut block = vec![0u8; self.span(b, b + 1)];
                self.inner.read(ByteOffset(b * BLOCK), &mut block).await?;
                self.store.set(b, &[block_entry(&block)]).await?;
            }
        }
        Ok(())
    }
}

impl BlockDevice for ChecksumDevice {
    crate::block::forward_to!(inner => name, size, merge_limit);

    fn retire(&self) {
        self.store.retire();
    }

    fn hold(&self, offset: ByteOffset, len: u64) -> crate::block::Hold {
        if len == 0 {
            return None;
        }
        let (b0, b1) = hull(offset.get(), len);
        crate::block::hold_guard(self.store.hold(b0, b1 - b0))
    }

    fn read<'a>(&'a self, offset: ByteOffset, buf: &'a mut [u8]) -> BoxFuture<'a, BlockResult> {
        crate::block::BoxFuture::new(self.read_verified(offset, buf))
    }

    fn write<'a>(
        &'a self,
        offset: ByteOffset,
        buf: &'a [u8],
        durability: Durability,
    ) -> BoxFuture<'a, BlockResult> {
        crate::block::BoxFuture::new(async move {
            let _writing = self.writing(offset, buf.len() as u64);
            self.write_sealed(offset, buf, durability).await
        })
    }

    fn read_vectored<'a>(
        &'a self,
        offset: ByteOffset,
        bufs: &'a mut [IoSliceMut<'_>],
    ) -> BoxFuture<'a, BlockResult> {
        match bufs {
            [one] => crate::block::BoxFuture::new(self.read_verified(offset, one)),
            _ if Self::whole_blocks(offset, bufs.iter().map(|b| &**b)) => {
                crate::block::BoxFuture::new(self.read_verified_segments(offset, bufs))
            }
            _ => crate::block::read_through_copy(self, offset, bufs),
        }
    }

    fn write_vectored<'a>(
        &'a self,
        offset: ByteOffset,
        bufs: &'a [IoSlice<'a>],
        durability: Durability,
    ) -> BoxFuture<'a, BlockResult> {
        if Self::whole_blocks(offset, bufs.iter().map(|b| &**b)) {
            crate::block::BoxFuture::new(async move {
                let _writing = self.writing(offset, crate::iovec::len(bufs) as u64);
                self.write_sealed_segments(offset, bufs, durability).await
            })
        } else {
            crate::block::write_through_copy(self, offset, bufs, durability)
        }
    }

    fn flush(&self) -> BoxFuture<'_, BlockResult> {
        crate::block::BoxFuture::new(async move {
            // Every flush writes the dirty pages back first, so a flushed
            // write's entries are on disk with its data: after a crash, an
            // entry in a dirty region is never older than the last flush,
            // and a resync can trust a block that passes it (§8). A new
            // member's pages are not covered by the bitmap's settling
            // either (rebuild writes are not marked): a rebuild checkpoint
            // covers them the same way.
            self.store.write_pages(Durability::Normal).await?;
            self.inner.flush().await
        })
    }

    fn mark_lost(&self, offset: ByteOffset, len: u64) -> BoxFuture<'_, BlockResult> {
        crate::block::BoxFuture::new(async move {
            check_range(offset, len, self.size())?;
            if len == 0 {
                return Ok(());
            }
            let (b0, b1) = hull(offset.get(), len);
            let _writing = self.inflight.begin(b0, b1);
            self.store.prepare(b0, b1 - b0).await?;
            self.edges.forget(b0, b1);
            let zeros = vec![0u8; self.span(b0, b1)];
            self.inner
                .write(ByteOffset(b0 * BLOCK), &zeros, Durability::Normal)
                .await?;
            // An entry the zeroed blocks can never match: reads report them.
            self.store.fill(b0, b1 - b0, seal(!zero_entry())).await
        })
    }

    fn discard(&self, offset: ByteOffset, len: u64) -> BoxFuture<'_, BlockResult> {
        crate::block::BoxFuture::new(async move {
            let _writing = self.writing(offset, len);
            self.prepare_range(offset, len).await?;
            self.inner.discard(offset, len).await?;
            self.after_clear(offset.get(), len).await
        })
    }

    fn write_zeroes(
        &self,
        offset: ByteOffset,
        len: u64,
        may_unmap: bool,
    ) -> BoxFuture<'_, BlockResult> {
        crate::block::BoxFuture::new(async move {
            let _writing = self.writing(offset, len);
            self.prepare_range(offset, len).await?;
            self.inner.write_zeroes(offset, len, may_unmap).await?;
            self.after_clear(offset.get(), len).await
        })
    }
}

/// Reads again and waits for writes in flight, in all, before a read's
/// checksum mismatch stands though writes keep racing it.
const RACE_TRIES: u32 = 200;
/// How long a read that met a mismatch waits for a racing write to end.
const RACE_STUCK: std::time::Duration = std::time::Duration::from_secs(1);

/// Entries a read verifies in place, without an allocation: up to 128 KiB.
const INLINE_ENTRIES: usize = 32;

/// The entries of a read's blocks: inline up to [`INLINE_ENTRIES`], on the
/// heap beyond (a large read, where one allocation does not matter).
enum Entries {
    Inline([u32; INLINE_ENTRIES], usize),
    Heap(Vec<u32>),
}

impl Entries {
    fn new(n: u64) -> Entries {
        match usize::try_from(n) {
            Ok(n) if n <= INLINE_ENTRIES => Entries::Inline([0; INLINE_ENTRIES], n),
            _ => Entries::Heap(vec![0; n as usize]),
        }
    }

    fn get(&mut self) -> &mut [u32] {
        match self {
            Entries::Inline(all, n) => &mut all[..*n],
            Entries::Heap(v) => v,
        }
    }
}
