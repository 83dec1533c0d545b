//! RAID-5 data path: reads, degraded reconstruction and clears.
//!
//! ```text
//!  read ─► per-chunk extents ─► member read (no lock)
//!                                   │ member down or erroring
//!                                   ▼
//!          stripe lock ─► XOR of the other members ─► rewrite if alive
//!  write ─► per stripe, concurrently: lock it ─► raid5_write::write_stripe
//!  discard/zeroes ─► whole stripes: every member incl. parity
//!                    partial stripes: written as zeroes (parity stays right)
//! ```

use futures::future::{join_all, try_join_all};

use super::layout::{Extent, MemberIndex, StripeIndex};
use super::level::{Clear, Io, LevelIo, LostBlocks, MemberOp, RebuildRead, ScrubCheck, StepResult};
use super::parity::xor_into;
use super::raid5_sync;
use super::raid5_write::write_stripe;
use super::scrub::{Read, BLOCK};
use super::striped::{read_extents, write_stripes};
use super::volume::Volume;
use crate::block::{BlockError, BlockResult, BoxFuture, Durability};
use crate::units::ByteOffset;

/// Most whole stripes cleared under one batch of locks.
const CLEAR_BATCH: u64 = 64;

/// RAID-5's [`LevelIo`].
pub(super) struct Raid5;

impl LevelIo for Raid5 {
    /// Whole stripes on every member, partial stripes as zeroes ([`clear`]).
    fn clear<'a>(&self, vol: &'a Volume, at: ByteOffset, len: u64, how: Clear) -> Io<'a> {
        crate::block::BoxFuture::new(clear(vol, at, len, how))
    }

    fn resync_step<'a>(&self, vol: &'a Volume, a: u64, b: u64) -> StepResult<'a, u64> {
        crate::block::BoxFuture::new(raid5_sync::resync_parity_step(vol, a, b))
    }

    /// The XOR of the others; block by block when that fails.
    fn rebuild_read<'a>(&self, vol: &'a Volume, r: RebuildRead<'a>) -> StepResult<'a, LostBlocks> {
        crate::block::BoxFuture::new(async move {
            if raid5_sync::reconstruct_quiet(vol, r.member, ByteOffset(r.a), r.buf, r.sources)
                .await
                .is_ok()
            {
                return Ok(Vec::new());
            }
            raid5_sync::reconstruct_by_block(vol, r).await
        })
    }

    /// The XOR of the block on every other member, when all read it well.
    fn scrub_rebuild_block(
        &self,
        _vol: &Volume,
        _a: u64,
        reads: &[Read],
        m: usize,
        block: usize,
    ) -> Option<Vec<u8>> {
        let others = (0..reads.len()).filter(|&k| k != m);
        others.clone().all(|k| reads[k].good(block)).then(|| {
            let mut x = vec![0u8; BLOCK];
            for k in others {
                xor_into(&mut x, reads[k].block(block));
            }
            x
        })
    }

    fn scrub_check<'a>(&self, vol: &'a Volume, c: ScrubCheck<'a>) -> BoxFuture<'a, ()> {
        crate::block::BoxFuture::new(raid5_sync::check_parity(
            vol, c.a, c.reads, c.members, c.repair,
        ))
    }

    /// Parity changes only at the in-chunk offsets the request wrote:
    /// those are the member ranges of its extents.
    fn distrust_after_no_space(&self, vol: &Volume, at: ByteOffset, len: u64) {
        for e in vol.geometry().extents(at, len) {
            let (start, len) = vol.block_hull(e.member_offset, e.len);
            vol.distrust_parity(start.get(), start.get() + len);
        }
    }

    fn takes_parity_log(&self) -> bool {
        true
    }
}

/// Reads by chunk extent, concurrently; a member that cannot serve its
/// extent has it rebuilt from the others.
pub(super) async fn read(vol: &Volume, at: ByteOffset, buf: &mut [u8]) -> BlockResult {
    read_extents(vol, at, buf, read_extent).await
}

/// Reads a scatter-gather list: each extent into its own sub-list of the
/// caller's segments; an extent whose member read fails is recovered
/// through a buffer of its own ([`read_extent`]).
pub(super) async fn read_segments(
    vol: &Volume,
    at: ByteOffset,
    bufs: &mut [std::io::IoSliceMut<'_>],
) -> BlockResult {
    let len = crate::iovec::len_mut(bufs) as u64;
    let extents: Vec<Extent> = vol.geometry().extents(at, len).collect();
    let mut lists = crate::iovec::split_mut(bufs, extents.iter().map(|e| e.len as usize));
    let reads = extents
        .iter()
        .zip(lists.iter_mut())
        .map(|(e, list)| read_extent_segments(vol, *e, list));
    try_join_all(reads).await.map(drop)
}

async fn read_extent_segments(
    vol: &Volume,
    e: Extent,
    list: &mut [std::io::IoSliceMut<'_>],
) -> BlockResult {
    if let [one] = list {
        return read_extent(vol, e, one).await;
    }
    if vol.reads_unverified(e.member_offset, e.len) {
        let mut piece = vec![0u8; crate::iovec::len_mut(list)];
        read_extent(vol, e, &mut piece).await?;
        crate::iovec::scatter(&piece, list);
        return Ok(());
    }
    let direct = vol.read_member_segments(e.member, e.member_offset, list);
    if direct.await.is_ok() {
        return Ok(());
    }
    let mut piece = vec![0u8; crate::iovec::len_mut(list)];
    read_extent(vol, e, &mut piece).await?;
    crate::iovec::scatter(&piece, list);
    Ok(())
}

async fn read_extent(vol: &Volume, e: Extent, piece: &mut [u8]) -> BlockResult {
    let unverified = vol.reads_unverified(e.member_offset, piece.len() as u64);
    if unverified && super::dirty_read::raid5_extent(vol, e, piece).await {
        return Ok(());
    }
    let error = match vol.read_member(e.member, e.member_offset, piece).await {
        Ok(()) => return Ok(()),
        Err(error) => error,
    };
    if error.is_none() && vol.read_rebuilt(e.member, e.member_offset, piece).await {
        return Ok(());
    }
    let _guard = vol.locks().lock(e.stripe).await;
    if let Some(BlockError::Corrupt { .. }) = &error {
        // Rebuild and rewrite the whole bad blocks, then serve the piece.
        let (hull, len) = vol.block_hull(e.member_offset, piece.len() as u64);
        let mut blocks = vec![0u8; len as usize];
        if reconstruct(vol, e.member, hull, &mut blocks).await.is_err() {
            return Err(vol.data_lost());
        }
        let at = (e.member_offset.get() - hull.get()) as usize;
        piece.copy_from_slice(&blocks[at..at + piece.len()]);
        let op = MemberOp::Write(hull, &blocks, Durability::Normal);
        if vol.member_op(e.member, op).await {
            tracing::info!(member = %e.member, offset = hull.get(), "checksum mismatch repaired from parity");
        }
        return Ok(());
    }
    if let Err(e2) = reconstruct(vol, e.member, e.member_offset, piece).await {
        if let Some(error) = error {
            vol.fail_member_for_read(e.member, &error).await;
        }
        return Err(e2);
    }
    if error.is_some() {
        // The member is alive but returned an error: rewrite the range from
        // parity; if even that fails, member_op fails the member.
        let op = MemberOp::Write(e.member_offset, piece, Durability::Normal);
        if vol.member_op(e.member, op).await {
            tracing::info!(member = %e.member, offset = e.member_offset.get(), "read error repaired from parity");
        }
    }
    Ok(())
}

/// Rebuilds `out` (the bytes of `missing` at `offset`) from every other
/// member. Caller holds the stripe lock.
pub(super) async fn reconstruct(
    vol: &Volume,
    missing: MemberIndex,
    offset: ByteOffset,
    out: &mut [u8],
) -> BlockResult {
    if vol.parity_untrusted(offset.get(), offset.get() + out.len() as u64) {
        tracing::error!(
            volume = vol.volume_name(),
            member = %missing,
            offset = offset.get(),
            "cannot rebuild data from parity that was not resynced (a write ran out of space \
             there, or a read-only run of a crashed array)"
        );
        return Err(vol.data_lost());
    }
    let n = vol.geometry().members();
    let others: Vec<MemberIndex> = (0..n).map(MemberIndex).filter(|&m| m != missing).collect();
    let mut bufs = vec![vec![0u8; out.len()]; others.len()];
    let reads = others
        .iter()
        .zip(bufs.iter_mut())
        .map(|(&m, buf)| read_or_fail(vol, m, offset, buf));
    try_join_all(reads).await?;
    out.fill(0);
    for buf in &bufs {
        xor_into(out, buf);
    }
    Ok(())
}

/// Reads from a member; a second error fails it (a checksum mismatch does
/// not). Any failure is data loss for the caller (it already relies on
/// redundancy).
pub(super) async fn read_or_fail(
    vol: &Volume,
    member: MemberIndex,
    offset: ByteOffset,
    buf: &mut [u8],
) -> BlockResult {
    match vol.read_member(member, offset, buf).await {
        Ok(()) => Ok(()),
        Err(error) => {
            if let Some(error) = error {
                vol.fail_member_for_read(member, &error).await;
            }
            Err(vol.data_lost())
        }
    }
}

/// Rewrites `len` bytes of `member` at `offset` from the other members
/// (a checksum mismatch found while planning a write). Caller holds the
/// stripe lock. True when the range was repaired.
pub(super) async fn repair_range(
    vol: &Volume,
    member: MemberIndex,
    offset: ByteOffset,
    len: usize,
) -> bool {
    let (hull, hull_len) = vol.block_hull(offset, len as u64);
    let mut buf = vec![0u8; hull_len as usize];
    if reconstruct(vol, member, hull, &mut buf).await.is_err() {
        return false;
    }
    let ok = vol
        .member_op(member, MemberOp::Write(hull, &buf, Durability::Normal))
        .await;
    if ok {
        tracing::info!(%member, offset = offset.get(), "checksum mismatch repaired from parity");
    }
    ok
}

/// Per stripe, concurrently, each under its stripe lock.
pub(super) async fn write(
    vol: &Volume,
    offset: ByteOffset,
    buf: &[u8],
    durability: Durability,
) -> BlockResult {
    write_stripes(vol, offset, buf, durability, write_stripe).await
}

/// Runs every future to completion (a stripe write is never abandoned
/// half-way because a neighbour failed) and returns the first error.
async fn all_complete<F>(futures: Vec<F>) -> BlockResult
where
    F: std::future::Future<Output = BlockResult>,
{
    join_all(futures).await.into_iter().collect()
}

/// Clears a range of a parity level (RAID-5 and RAID-6): whole stripes on
/// every member, parity included (zero data has zero P and Q), partial
/// stripes written as zeroes through the level's write.
pub(super) async fn clear(vol: &Volume, offset: ByteOffset, len: u64, how: Clear) -> BlockResult {
    let split = vol.geometry().split_stripes(offset, len);
    let mut parts: Vec<BoxFuture<'_, BlockResult>> = Vec::new();
    for (off, len) in [split.head, split.tail] {
        if len > 0 {
            parts.push(crate::block::BoxFuture::new(write_zeroes_partial(
                vol, off, len,
            )));
        }
    }
    let (first, count) = split.full;
    let mut s = first.0;
    while s < first.0 + count {
        let n = CLEAR_BATCH.min(first.0 + count - s);
        parts.push(crate::block::BoxFuture::new(clear_stripes(
            vol,
            StripeIndex(s),
            n,
            how,
        )));
        s += n;
    }
    all_complete(parts).await
}

async fn write_zeroes_partial(vol: &Volume, offset: ByteOffset, len: u64) -> BlockResult {
    let zeros = vec![0u8; len as usize];
    super::data_path::write(vol, offset, &zeros, Durability::Normal).await
}

/// Clears `count` whole stripes on every member, parity included: zero data
/// XOR zero data is zero parity.
async fn clear_stripes(vol: &Volume, first: StripeIndex, count: u64, how: Clear) -> BlockResult {
    let g = vol.geometry();
    let _guards = vol
        .locks()
        .lock_range(first, StripeIndex(first.0 + count - 1))
        .await;
    let chunk = g.chunk().get();
    // Logged as full-stripe entries: replay must not apply an older
    // partial entry of these stripes over the cleared data (FORMAT.md §9).
    let _tickets = super::ppl::log_full_stripes(vol, first, count).await;
    let op = how.op(ByteOffset(first.0 * chunk), count * chunk);
    join_all((0..g.members()).map(|m| vol.write_member(MemberIndex(m), op))).await;
    if vol.down_count() > vol.redundancy() {
        Err(vol.data_lost())
    } else {
        Ok(())
    }
}
