//! [`InlineDevice`]: a member data area in the inline checksum layout
//! (docs/FORMAT.md §8 "Inline layout"): each 4 KiB block is followed by its
//! 512-byte tag sector, written and read in the same member I/O. It plays
//! the role [`super::ChecksumDevice`] plays for the separate layout and
//! presents the logical data area upward, so the RAID layer is unchanged.
//!
//! ```text
//!  Volume ─► StatsDevice ─► InlineDevice ─► FaultDevice ─► Window (physical)
//!  read  ─► one member read of n × 4608 ─► tags ─► mismatch in a trusted
//!           block? ─► re-read once ─► still: count, Corrupt
//!  write ─► whole blocks: data + tags, one member write
//!           partial edge: read its 4608 bytes (verify), merge, one write
//!  discard/zeroes ─► whole blocks cleared (tags too: unknown); edges: zero-write
//! ```
//!
//! The [`super::super::member::fault::FaultDevice`] below it is told the
//! layout: its rules keep meaning logical data-area offsets.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use super::page::{block_entry, hull, seal, zero_entry, BLOCK};
use super::reported::{warn_bad_edge, Reported};
use super::tag::{decode_tag, encode_tag, logical_len, Tag, STRIDE};
use super::Trusted;
use crate::block::{check_range, BlockDevice, BlockResult, BoxFuture, Durability};
use crate::member::buf::AlignedBuf;
use crate::raid::checksum::Verdict;
use crate::units::ByteOffset;

/// A member data area in the inline layout, seen as its logical blocks.
pub struct InlineDevice {
    inner: Arc<dyn BlockDevice>,
    size: u64,
    trusted: Trusted,
    /// Blocks counted bad and not rewritten since.
    reported: Reported,
}

impl std::fmt::Debug for InlineDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InlineDevice")
            .field("inner", &self.inner.name())
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// The data of block `i` of a member image.
fn data_of(raw: &[u8], i: usize) -> &[u8] {
    let at = i * STRIDE as usize;
    &raw[at..at + BLOCK as usize]
}

/// The tag of block `i` of a member image.
fn tag_of(raw: &[u8], i: usize) -> &[u8] {
    let at = i * STRIDE as usize + BLOCK as usize;
    &raw[at..at + (STRIDE - BLOCK) as usize]
}

/// The verdict of a block against its tag.
fn judge(data: &[u8], tag: Tag) -> Verdict {
    match tag {
        Tag::Unknown => Verdict::Unknown,
        Tag::Entry(e) if e == block_entry(data) => Verdict::Good,
        Tag::Entry(_) | Tag::Invalid => Verdict::Bad,
    }
}

/// A member image of blocks `b0..` from their logical `data` (whole
/// blocks) and entries.
/// It is built in an aligned, pooled buffer: no allocator call per write.
fn image(b0: u64, data: &[u8], entries: impl Iterator<Item = u32>) -> AlignedBuf {
    let mut raw = AlignedBuf::new(data.len() / BLOCK as usize * STRIDE as usize);
    let units = raw.as_mut_slice().chunks_mut(STRIDE as usize);
    for (((i, block), e), unit) in data
        .chunks(BLOCK as usize)
        .enumerate()
        .zip(entries)
        .zip(units)
    {
        let (head, tag) = unit.split_at_mut(BLOCK as usize);
        head.copy_from_slice(block);
        tag.copy_from_slice(&encode_tag(b0 + i as u64, e));
    }
    raw
}

impl InlineDevice {
    /// Wraps the physical data area `inner`; reads verify blocks where
    /// `trusted` says so, bad blocks found by reads are added to `errors`.
    pub fn new(inner: Arc<dyn BlockDevice>, trusted: Trusted, errors: Arc<AtomicU64>) -> Self {
        InlineDevice {
            size: logical_len(inner.size()),
            inner,
            trusted,
            reported: Reported::new(errors),
        }
    }

    /// The member image (data and tags) of blocks `b0..b1`, one read. The
    /// buffer is aligned for O_DIRECT, so a file member reads straight into
    /// it (no bounce copy) and it comes from the members' pool.
    async fn read_raw(&self, b0: u64, b1: u64) -> BlockResult<AlignedBuf> {
        let mut raw = AlignedBuf::new(((b1 - b0) * STRIDE) as usize);
        self.inner
            .read(ByteOffset(b0 * STRIDE), raw.as_mut_slice())
            .await?;
        Ok(raw)
    }

    /// Writes the member image of blocks `b0..`.
    async fn write_raw(&self, b0: u64, raw: &[u8], dur: Durability) -> BlockResult {
        self.inner.write(ByteOffset(b0 * STRIDE), raw, dur).await
    }

    /// Verdicts of blocks `b0..` of a member image.
    fn verdicts_of(b0: u64, raw: &[u8]) -> Vec<Verdict> {
        (0..raw.len() / STRIDE as usize)
            .map(|i| judge(data_of(raw, i), decode_tag(tag_of(raw, i), b0 + i as u64)))
            .collect()
    }

    /// Blocks of `b0..b1` (relative) failing their tag where trusted.
    fn bad_trusted(&self, b0: u64, raw: &[u8]) -> Vec<usize> {
        Self::verdicts_of(b0, raw)
            .into_iter()
            .enumerate()
            .filter(|&(i, v)| v == Verdict::Bad && (self.trusted)((b0 + i as u64) * BLOCK))
            .map(|(i, _)| i)
            .collect()
    }

    async fn read_verified(&self, offset: ByteOffset, buf: &mut [u8]) -> BlockResult {
        check_range(offset, buf.len() as u64, self.size)?;
        if buf.is_empty() {
            return Ok(());
        }
        let (b0, b1) = hull(offset.get(), buf.len() as u64);
        let mut raw = self.read_raw(b0, b1).await?;
        let mut bad = self.bad_trusted(b0, raw.as_slice());
        if !bad.is_empty() {
            // A write of the same block may have raced this read (readers
            // take no lock): look once more before calling it corrupt.
            tokio::task::yield_now().await;
            raw = self.read_raw(b0, b1).await?;
            bad = self.bad_trusted(b0, raw.as_slice());
        }
        self.reported.check(self.inner.name(), b0, &bad)?;
        let mut pos = offset.get();
        let mut out = 0;
        while out < buf.len() {
            let i = (pos / BLOCK - b0) as usize;
            let at = (pos % BLOCK) as usize;
            let n = (BLOCK as usize - at).min(buf.len() - out);
            buf[out..out + n].copy_from_slice(&data_of(raw.as_slice(), i)[at..at + n]);
            out += n;
            pos += n as u64;
        }
        Ok(())
    }

    /// Old bytes of edge block `block` into `old`; false when they fail
    /// their tag (verified there or not: §8 "Writes").
    async fn edge(&self, block: u64, old: &mut [u8]) -> BlockResult<bool> {
        let raw = self.read_raw(block, block + 1).await?;
        old.copy_from_slice(data_of(raw.as_slice(), 0));
        let ok = judge(old, decode_tag(tag_of(raw.as_slice(), 0), block)) != Verdict::Bad;
        if !ok && (self.trusted)(block * BLOCK) {
            warn_bad_edge(self.inner.name(), block);
        }
        Ok(ok)
    }

    async fn write_sealed(&self, offset: ByteOffset, buf: &[u8], dur: Durability) -> BlockResult {
        check_range(offset, buf.len() as u64, self.size)?;
        if buf.is_empty() {
            return Ok(());
        }
        let (b0, b1) = hull(offset.get(), buf.len() as u64);
        let head = (offset.get() - b0 * BLOCK) as usize;
        if head == 0 && buf.len() as u64 == (b1 - b0) * BLOCK {
            let raw = image(b0, buf, buf.chunks(BLOCK as usize).map(block_entry));
            self.write_raw(b0, raw.as_slice(), dur).await?;
            self.reported.forget(b0, b1);
            return Ok(());
        }
        // Unaligned: merge into the old edge blocks. Writers of one block
        // are serialized by the RAID layer's locks.
        let mut wide = vec![0u8; ((b1 - b0) * BLOCK) as usize];
        let mut good = vec![true; (b1 - b0) as usize];
        good[0] = self.edge(b0, &mut wide[..BLOCK as usize]).await?;
        if b1 - b0 > 1 {
            let last = wide.len() - BLOCK as usize;
            let n = good.len();
            good[n - 1] = self.edge(b1 - 1, &mut wide[last..]).await?;
        }
        wide[head..head + buf.len()].copy_from_slice(buf);
        // Never bless bad bytes, never forget them: an entry that cannot
        // match keeps the block reported until redundancy rewrites it.
        let entries = wide.chunks(BLOCK as usize).zip(&good).map(|(b, &ok)| {
            if ok {
                block_entry(b)
            } else {
                seal(!block_entry(b))
            }
        });
        let raw = image(b0, &wide, entries);
        self.write_raw(b0, raw.as_slice(), dur).await?;
        self.reported.forget_good(b0, &good);
        Ok(())
    }

    /// Clears `offset..+len`: whole blocks with `clear` on the member (data
    /// and tags), partial edges by writing zeroes through the write path.
    async fn clear<'a, F>(&'a self, offset: u64, len: u64, clear: F) -> BlockResult
    where
        F: FnOnce(ByteOffset, u64) -> BoxFuture<'a, BlockResult>,
    {
        check_range(ByteOffset(offset), len, self.size)?;
        if len == 0 {
            return Ok(());
        }
        let end = offset + len;
        let (w0, w1) = (offset.div_ceil(BLOCK), end / BLOCK);
        if w1 <= w0 {
            let zeros = vec![0u8; len as usize];
            return self
                .write_sealed(ByteOffset(offset), &zeros, Durability::Normal)
                .await;
        }
        clear(ByteOffset(w0 * STRIDE), (w1 - w0) * STRIDE).await?;
        self.reported.forget(w0, w1);
        for (a, b) in [(offset, w0 * BLOCK), (w1 * BLOCK, end)] {
            if b > a {
                let zeros = vec![0u8; (b - a) as usize];
                self.write_sealed(ByteOffset(a), &zeros, Durability::Normal)
                    .await?;
            }
        }
        Ok(())
    }

    /// The RAID layer vouches for `data` at the block-aligned `offset`:
    /// rewrite it with fresh tags (one member write).
    pub async fn reseal(&self, offset: u64, data: &[u8]) -> BlockResult {
        let b0 = offset / BLOCK;
        let raw = image(b0, data, data.chunks(BLOCK as usize).map(block_entry));
        self.write_raw(b0, raw.as_slice(), Durability::Normal)
            .await?;
        self.reported
            .forget(b0, b0 + (data.len() as u64).div_ceil(BLOCK));
        Ok(())
    }

    /// How each block of `data` (at the block-aligned `offset`) compares
    /// with the tag on the member (one read of the range).
    pub async fn verdicts(&self, offset: u64, data: &[u8]) -> BlockResult<Vec<Verdict>> {
        let b0 = offset / BLOCK;
        let b1 = b0 + (data.len() as u64).div_ceil(BLOCK);
        check_range(ByteOffset(b0 * BLOCK), (b1 - b0) * BLOCK, self.size)?;
        let raw = self.read_raw(b0, b1).await?;
        Ok(data
            .chunks(BLOCK as usize)
            .enumerate()
            .map(|(i, block)| judge(block, decode_tag(tag_of(raw.as_slice(), i), b0 + i as u64)))
            .collect())
    }
}

impl BlockDevice for InlineDevice {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn size(&self) -> u64 {
        self.size
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
        crate::block::BoxFuture::new(self.write_sealed(offset, buf, durability))
    }

    fn flush(&self) -> BoxFuture<'_, BlockResult> {
        // Tags travel with their data: nothing to write back.
        self.inner.flush()
    }

    fn mark_lost(&self, offset: ByteOffset, len: u64) -> BoxFuture<'_, BlockResult> {
        crate::block::BoxFuture::new(async move {
            check_range(offset, len, self.size)?;
            if len == 0 {
                return Ok(());
            }
            let (b0, b1) = hull(offset.get(), len);
            let zeros = vec![0u8; ((b1 - b0) * BLOCK) as usize];
            // A tag the zeroed blocks can never match: reads report them.
            let lost = seal(!zero_entry());
            let raw = image(b0, &zeros, std::iter::repeat(lost));
            self.write_raw(b0, raw.as_slice(), Durability::Normal).await
        })
    }

    fn reserve(&self, offset: ByteOffset, len: u64) -> BoxFuture<'_, BlockResult> {
        let (b0, b1) = hull(offset.get(), len);
        self.inner
            .reserve(ByteOffset(b0 * STRIDE), (b1 - b0) * STRIDE)
    }

    fn discard(&self, offset: ByteOffset, len: u64) -> BoxFuture<'_, BlockResult> {
        crate::block::BoxFuture::new(
            self.clear(offset.get(), len, move |o, l| self.inner.discard(o, l)),
        )
    }

    fn write_zeroes(
        &self,
        offset: ByteOffset,
        len: u64,
        may_unmap: bool,
    ) -> BoxFuture<'_, BlockResult> {
        crate::block::BoxFuture::new(self.clear(offset.get(), len, move |o, l| {
            self.inner.write_zeroes(o, l, may_unmap)
        }))
    }
}
