//! RAID-1 data path: N-way mirrors.
//!
//! Writes go to every active mirror at once and succeed if one mirror holds
//! the data. Reads rotate over the mirrors; a mirror that fails a read is
//! skipped, and once another mirror served the data it is rewritten onto the
//! failing one (which is failed only if that rewrite fails too). Writers and
//! repairs lock the 4 KiB blocks of their range (one range lock per
//! request), so a repair never overwrites newer data, two writes of one
//! checksum block never interleave, and small writes of neighbouring blocks
//! run side by side.

use std::io::{IoSlice, IoSliceMut};

use futures::future::join_all;

use super::behind::{Job, OwnedOp};
use super::layout::MemberIndex;
use super::level::{
    count_true, Clear, Io, LevelIo, Locks, LostBlocks, MemberOp, RebuildRead, ScrubCheck,
    StepResult,
};
use super::raid1_sync;
use super::scrub::Read;
use super::stripe_lock::StripeGuards;
use super::volume::Volume;
use crate::block::{BlockError, BlockResult, BoxFuture, Durability};
use crate::units::ByteOffset;

/// Lock granularity for writers and repairs: a checksum block.
const LOCK_BLOCK: u64 = 4096;

/// RAID-1's [`LevelIo`].
pub(super) struct Raid1;

impl LevelIo for Raid1 {
    fn clear<'a>(&self, vol: &'a Volume, at: ByteOffset, len: u64, how: Clear) -> Io<'a> {
        crate::block::BoxFuture::new(async move {
            let _guards = lock_regions(vol, at, len).await;
            all_mirrors(vol, how.op(at, len)).await
        })
    }

    /// The regions.
    fn lock_member_range<'a>(&self, vol: &'a Volume, a: u64, b: u64) -> BoxFuture<'a, Locks<'a>> {
        crate::block::BoxFuture::new(lock_regions(vol, ByteOffset(a), b - a))
    }

    fn resync_step<'a>(&self, vol: &'a Volume, a: u64, b: u64) -> StepResult<'a, u64> {
        crate::block::BoxFuture::new(raid1_sync::resync_mirror_step(vol, a, b))
    }

    fn rebuild_read<'a>(&self, vol: &'a Volume, r: RebuildRead<'a>) -> StepResult<'a, LostBlocks> {
        crate::block::BoxFuture::new(raid1_sync::read_any_mirror(vol, r))
    }

    /// The block from a mirror that read it well.
    fn scrub_rebuild_block(
        &self,
        _vol: &Volume,
        _a: u64,
        reads: &[Read],
        m: usize,
        block: usize,
    ) -> Option<Vec<u8>> {
        (0..reads.len())
            .filter(|&k| k != m)
            .find(|&k| reads[k].good(block))
            .map(|k| reads[k].block(block).to_vec())
    }

    fn scrub_check<'a>(&self, vol: &'a Volume, c: ScrubCheck<'a>) -> BoxFuture<'a, ()> {
        crate::block::BoxFuture::new(raid1_sync::check_mirrors(
            vol, c.a, c.reads, c.members, c.repair,
        ))
    }
}

/// Writes every active mirror under the region locks.
pub(super) async fn write(vol: &Volume, at: ByteOffset, buf: &[u8], d: Durability) -> BlockResult {
    let _guards = lock_regions(vol, at, buf.len() as u64).await;
    all_mirrors(vol, MemberOp::Write(at, buf, d)).await
}

/// Writes a scatter-gather list to every active mirror, as it is.
pub(super) async fn write_segments(
    vol: &Volume,
    at: ByteOffset,
    bufs: &[IoSlice<'_>],
    d: Durability,
) -> BlockResult {
    let _guards = lock_regions(vol, at, crate::iovec::len(bufs) as u64).await;
    all_mirrors(vol, MemberOp::WriteV(at, bufs, d)).await
}

/// Reads a scatter-gather list from one mirror (rotating); on an error
/// the other mirrors serve it through a contiguous buffer, and the failing
/// mirror is repaired from them as [`read`] does.
pub(super) async fn read_segments(
    vol: &Volume,
    offset: ByteOffset,
    bufs: &mut [IoSliceMut<'_>],
) -> BlockResult {
    let len = crate::iovec::len_mut(bufs);
    if vol.reads_unverified(offset, len as u64) || vol.reads_unsettled(offset, len as u64) {
        let mut data = vec![0u8; len];
        read(vol, offset, &mut data).await?;
        crate::iovec::scatter(&data, bufs);
        return Ok(());
    }
    let mut bad = Vec::new();
    let first = vol.read_order(vol.next_mirror()).next();
    if first.is_none() {
        return Err(vol.data_lost());
    }
    if let Some(m) = first {
        match vol.read_member_segments(m, offset, bufs).await {
            Ok(()) => return Ok(()),
            Err(Some(e)) => bad.push((m, e)),
            Err(None) => {}
        }
    }
    let mut data = vec![0u8; crate::iovec::len_mut(bufs)];
    read_after(vol, offset, &mut data, bad).await?;
    crate::iovec::scatter(&data, bufs);
    Ok(())
}

/// Locks the 4 KiB blocks holding `offset..+len` (`len > 0`).
pub(super) async fn lock_regions(vol: &Volume, offset: ByteOffset, len: u64) -> StripeGuards<'_> {
    let start = offset.get() / LOCK_BLOCK * LOCK_BLOCK;
    let end = (offset.get() + len).div_ceil(LOCK_BLOCK) * LOCK_BLOCK;
    vol.locks().lock_span(start, end).await
}

/// Reads from one mirror (rotating), the next one on an error.
pub(super) async fn read(vol: &Volume, offset: ByteOffset, buf: &mut [u8]) -> BlockResult {
    let len = buf.len() as u64;
    if vol.reads_unverified(offset, len) && super::dirty_read::raid1(vol, offset, buf).await {
        return Ok(());
    }
    if vol.reads_unsettled(offset, len)
        && super::dirty_read::raid1_resync_source(vol, offset, buf).await
    {
        return Ok(());
    }
    read_after(vol, offset, buf, Vec::new()).await
}

/// [`read`], the mirrors in `bad` having failed it already (they are
/// skipped, and repaired once another mirror served the range).
async fn read_after(
    vol: &Volume,
    offset: ByteOffset,
    buf: &mut [u8],
    mut bad: Vec<(MemberIndex, BlockError)>,
) -> BlockResult {
    // The active mirrors in turn, from a rotating start (counted among the
    // mirrors active now, as the rotation always was); write-mostly
    // mirrors last.
    let mut tried = 0;
    for m in vol.read_order(vol.next_mirror()) {
        tried += 1;
        if bad.iter().any(|(b, _)| *b == m) {
            continue;
        }
        match vol.read_member(m, offset, buf).await {
            Ok(()) if bad.is_empty() => return Ok(()),
            Ok(()) => return repair(vol, m, bad, offset, buf).await,
            Err(Some(e)) => bad.push((m, e)),
            Err(None) => {}
        }
    }
    if tried == 0 {
        return Err(vol.data_lost());
    }
    for (m, e) in &bad {
        vol.fail_member_for_read(*m, e).await;
    }
    Err(vol.data_lost())
}

/// Rewrites the range onto mirrors that failed to read it, under the region
/// lock, with data re-read from `good` so a concurrent write is not undone.
/// Whole 4 KiB blocks are rewritten (so their checksums are whole again).
async fn repair(
    vol: &Volume,
    good: MemberIndex,
    bad: Vec<(MemberIndex, BlockError)>,
    offset: ByteOffset,
    buf: &mut [u8],
) -> BlockResult {
    let (hull, hull_len) = vol.block_hull(offset, buf.len() as u64);
    let _guards = lock_regions(vol, hull, hull_len).await;
    let mut data = vec![0u8; hull_len as usize];
    if let Err(e) = vol.read_member(good, hull, &mut data).await {
        // The good mirror went bad meanwhile: start over with a fresh choice.
        if let Some(e) = e {
            vol.fail_member_for_read(good, &e).await;
        }
        drop(_guards);
        return Box::pin(read(vol, offset, buf)).await;
    }
    let at = (offset.get() - hull.get()) as usize;
    buf.copy_from_slice(&data[at..at + buf.len()]);
    let data: &[u8] = &data;
    let rewrites = bad
        .iter()
        .map(|(m, _)| vol.member_op(*m, MemberOp::Write(hull, data, Durability::Normal)));
    for ((m, e), ok) in bad.iter().zip(join_all(rewrites).await) {
        if ok {
            tracing::info!(member = %m, offset = offset.get(), error = %e, "read error repaired from mirror");
        }
    }
    Ok(())
}

/// Runs `op` on every active mirror; succeeds if at least one took it.
/// Write-behind members get it queued ([`behind`]); the write waits for
/// them only with FUA or when no other member took it.
async fn all_mirrors(vol: &Volume, op: MemberOp<'_>) -> BlockResult {
    let n = vol.geometry().members();
    let set = vol.behind_set();
    if set == 0 {
        vol.drain_behind().await;
        let took = count_true(n, |m| vol.write_member(MemberIndex(m), op)).await;
        return if took > 0 {
            Ok(())
        } else {
            Err(vol.data_lost())
        };
    }
    let queued = queue_behind(vol, set, op).await;
    let is_behind = |m: usize| m < 64 && set & (1 << m) != 0;
    let mut took = count_true(n, |m| async move {
        !is_behind(m) && vol.write_member(MemberIndex(m), op).await
    })
    .await;
    let fua = matches!(
        op,
        MemberOp::Write(_, _, Durability::Fua) | MemberOp::WriteV(_, _, Durability::Fua)
    );
    if fua || took == 0 {
        for done in queued {
            took += usize::from(done.await.unwrap_or(false));
        }
    }
    if took > 0 {
        Ok(())
    } else {
        Err(vol.data_lost())
    }
}

/// Queues `op` for every member in `set` (bit per member), each after
/// waiting for room under the lag limits; the receivers tell when each
/// member took it.
async fn queue_behind(
    vol: &Volume,
    set: u64,
    op: MemberOp<'_>,
) -> Vec<tokio::sync::oneshot::Receiver<bool>> {
    let mut queued = Vec::new();
    let Some(queue) = vol.behind() else {
        return queued;
    };
    let Some((at, len)) = op_range(op) else {
        return queued;
    };
    for m in (0..64).filter(|m| set & (1 << m) != 0) {
        let Some(owned) = OwnedOp::of(op) else {
            continue;
        };
        let weight = if matches!(owned, OwnedOp::Write(..)) {
            len
        } else {
            0
        };
        queue.admit(weight).await;
        // Our own in-flight count on the span: the bits stay set until
        // the member has it (the caller's mark made them durable).
        let hold = vol.intent_begin(at, len).await.ok().flatten();
        let (done, rx) = tokio::sync::oneshot::channel();
        queue.queue(Job {
            member: MemberIndex(m),
            op: owned,
            hold,
            done,
        });
        queued.push(rx);
    }
    queued
}

/// Offset and length of a data-changing op.
fn op_range(op: MemberOp<'_>) -> Option<(ByteOffset, u64)> {
    match op {
        MemberOp::Write(at, buf, _) => Some((at, buf.len() as u64)),
        MemberOp::WriteV(at, bufs, _) => Some((at, crate::iovec::len(bufs) as u64)),
        MemberOp::Discard(at, len) | MemberOp::Zeroes(at, len, _) => Some((at, len)),
        MemberOp::Flush => None,
    }
}
