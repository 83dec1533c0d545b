//! RAID-10 data path: every volume chunk has 2 or 3 whole-chunk copies on
//! distinct members, placed as md places them (`raid10_layout.rs`).
//!
//! ```text
//!  read  piece of one chunk ─► the active copy with the fewest member I/Os
//!        in flight (ties rotate); in a region dirty at a crash, before
//!        its resync: every copy, what the resync keeps (`resync_copy`)
//!            └─ error ─► the next copy; once one served it, the failing
//!                        copies are rewritten from it (under the locks)
//!  write piece of one chunk ─► lock the rows of all its copies (ascending)
//!            ─► write every active copy at once; ok while one took it
//! ```
//!
//! Locks are per member row (`StripeIndex` = member offset / chunk): a
//! writer holds the rows of all copies of its chunk, a sync step the rows
//! of its member range, so a step never copies a chunk a writer is
//! changing. Rows are always taken in ascending order (no deadlock).
//! Like RAID-1 there is no write hole to close: a crash between copies
//! leaves two versions of a chunk that was being written, either of which
//! is a valid result of the interrupted write; the bitmap's resync makes
//! the copies agree again (`raid10_sync.rs`).

use super::layout::{Extent, StripeIndex};
use super::level::{
    join_each, Clear, Io, LevelIo, LostBlocks, MemberOp, RebuildRead, ScrubCheck, StepResult,
};
use super::raid10_layout::{ChunkCopy, Copies, Raid10Map};
use super::raid10_sync;
use super::stripe_lock::StripeGuard;
use super::striped::read_extents;
use super::volume::Volume;
use crate::block::{BlockError, BlockResult, BoxFuture, Durability};
use crate::units::ByteOffset;

/// RAID-10's [`LevelIo`].
pub(super) struct Raid10;

impl LevelIo for Raid10 {
    fn clear<'a>(&self, vol: &'a Volume, at: ByteOffset, len: u64, how: Clear) -> Io<'a> {
        crate::block::BoxFuture::new(for_each_piece(vol, at, len, move |vol, p| async move {
            let _rows = lock_rows(vol, &p.copies).await;
            all_copies(vol, &p, |off| how.op(off, p.len)).await
        }))
    }

    fn resync_step<'a>(&self, vol: &'a Volume, a: u64, b: u64) -> StepResult<'a, u64> {
        crate::block::BoxFuture::new(raid10_sync::resync_step(vol, a, b))
    }

    fn rebuild_read<'a>(&self, vol: &'a Volume, r: RebuildRead<'a>) -> StepResult<'a, LostBlocks> {
        crate::block::BoxFuture::new(raid10_sync::rebuild_read(vol, r))
    }

    fn scrub_check<'a>(&self, vol: &'a Volume, c: ScrubCheck<'a>) -> BoxFuture<'a, ()> {
        crate::block::BoxFuture::new(raid10_sync::check_copies(vol, c))
    }
}

/// The array's chunk map (every RAID-10 geometry has one).
pub(super) fn map(vol: &Volume) -> BlockResult<&Raid10Map> {
    vol.geometry().raid10().ok_or_else(|| vol.data_lost())
}

/// The part of a request inside one volume chunk.
pub(super) struct Piece {
    /// Its chunk's copies.
    pub(super) copies: Copies,
    /// Offset inside the chunk.
    pub(super) in_chunk: u64,
    pub(super) len: u64,
    /// Where it starts in the volume.
    pub(super) volume_offset: u64,
}

impl Piece {
    /// The member offset of the piece on copy `k`.
    pub(super) fn at(&self, vol: &Volume, k: ChunkCopy) -> ByteOffset {
        ByteOffset(k.row * vol.geometry().chunk().get() + self.in_chunk)
    }
}

/// The piece of `volume_offset..+len` (inside one chunk).
fn piece(vol: &Volume, map: &Raid10Map, volume_offset: u64, len: u64) -> Piece {
    let chunk = vol.geometry().chunk().get();
    Piece {
        copies: map.copies(volume_offset / chunk),
        in_chunk: volume_offset % chunk,
        len,
        volume_offset,
    }
}

/// Runs `op` on every chunk piece of `at..+len`, concurrently; the first
/// error is returned once all ran.
async fn for_each_piece<'a, F, Fut>(vol: &'a Volume, at: ByteOffset, len: u64, op: F) -> BlockResult
where
    F: Fn(&'a Volume, Piece) -> Fut,
    Fut: std::future::Future<Output = BlockResult> + 'a,
{
    let map = map(vol)?;
    let mut pieces = Vec::new();
    for e in vol.geometry().extents(at, len) {
        pieces.push(op(vol, piece(vol, map, e.volume_offset.get(), e.len)));
    }
    if pieces.len() == 1 {
        if let Some(one) = pieces.pop() {
            return one.await;
        }
    }
    futures::future::join_all(pieces)
        .await
        .into_iter()
        .collect()
}

/// Locks the rows of `copies`, ascending (the order every locker uses).
pub(super) async fn lock_rows<'a>(vol: &'a Volume, copies: &[ChunkCopy]) -> Vec<StripeGuard<'a>> {
    let mut rows: Vec<u64> = copies.iter().map(|k| k.row).collect();
    rows.sort_unstable();
    rows.dedup();
    let mut guards = Vec::with_capacity(rows.len());
    for r in rows {
        guards.push(vol.locks().lock(StripeIndex(r)).await);
    }
    guards
}

/// Runs `op(member offset)` on every copy of `p` (and any member being
/// rebuilt there); succeeds if one copy took it.
async fn all_copies<'a, F>(vol: &Volume, p: &Piece, op: F) -> BlockResult
where
    F: Fn(ByteOffset) -> MemberOp<'a>,
{
    let n = p.copies.len();
    let took = join_each(n, |i| {
        let k = p.copies[i];
        vol.write_member(k.member, op(p.at(vol, k)))
    })
    .await
    .count();
    if took > 0 {
        Ok(())
    } else {
        Err(vol.data_lost())
    }
}

/// Writes `buf` at volume offset `at` to every copy of its chunks.
pub(super) async fn write(vol: &Volume, at: ByteOffset, buf: &[u8], d: Durability) -> BlockResult {
    let base = at.get();
    for_each_piece(vol, at, buf.len() as u64, |vol, p| async move {
        let _rows = lock_rows(vol, &p.copies).await;
        let start = (p.volume_offset - base) as usize;
        let data = &buf[start..start + p.len as usize];
        all_copies(vol, &p, |off| MemberOp::Write(off, data, d)).await
    })
    .await
}

/// Reads `buf.len()` volume bytes at `at`, each chunk from one copy.
pub(super) async fn read(vol: &Volume, at: ByteOffset, buf: &mut [u8]) -> BlockResult {
    let map = map(vol)?;
    read_extents(vol, at, buf, |vol, e: Extent, piece_buf| async move {
        let p = piece(vol, map, e.volume_offset.get(), e.len);
        read_piece(vol, p, piece_buf).await
    })
    .await
}

/// Reads one piece from an active copy, the one with the fewest member
/// I/Os in flight first (ties rotate, so an idle array still spreads its
/// reads); a copy that fails is skipped and, once another served the
/// piece, rewritten from it.
async fn read_piece(vol: &Volume, p: Piece, buf: &mut [u8]) -> BlockResult {
    if in_doubt(vol, &p) {
        if let Some(want) = raid10_sync::resync_copy(vol, &p).await {
            buf.copy_from_slice(&want);
            return Ok(());
        }
    }
    let active: Vec<ChunkCopy> = p
        .copies
        .iter()
        .copied()
        .filter(|k| vol.is_active(k.member))
        .collect();
    if active.is_empty() {
        return Err(vol.data_lost());
    }
    let mut bad: Vec<(ChunkCopy, BlockError)> = Vec::new();
    for k in &by_load(vol, active) {
        match vol.read_member(k.member, p.at(vol, *k), buf).await {
            Ok(()) if bad.is_empty() => return Ok(()),
            Ok(()) => return repair(vol, &p, *k, bad, buf).await,
            Err(Some(e)) => bad.push((*k, e)),
            Err(None) => {}
        }
    }
    for (k, e) in &bad {
        vol.fail_member_for_read(k.member, e).await;
    }
    Err(vol.data_lost())
}

/// Whether a copy of `p` lies in a region dirty at a crash and not yet
/// resynced (unverified with checksums, unsettled without): its copies
/// may differ there, so a read serves what the resync will keep.
fn in_doubt(vol: &Volume, p: &Piece) -> bool {
    p.copies.iter().any(|&k| {
        let at = p.at(vol, k);
        vol.reads_unverified(at, p.len) || vol.reads_unsettled(at, p.len)
    })
}

/// The copies in the order reads try them: fewest member I/Os in flight
/// first (md's `read_balance` takes the least busy near copy), ties from a
/// rotating start.
fn by_load(vol: &Volume, mut copies: Vec<ChunkCopy>) -> Vec<ChunkCopy> {
    let start = vol.next_mirror() % copies.len();
    copies.rotate_left(start);
    // Stable: equal loads keep the rotated order.
    copies.sort_by_key(|k| vol.pending(k.member));
    copies
}

/// Rewrites the copies in `bad` from copy `good`, whole 4 KiB blocks,
/// re-read under the rows' locks so a concurrent write is not undone.
async fn repair(
    vol: &Volume,
    p: &Piece,
    good: ChunkCopy,
    bad: Vec<(ChunkCopy, BlockError)>,
    buf: &mut [u8],
) -> BlockResult {
    let _rows = lock_rows(vol, &p.copies).await;
    let (hull, hull_len) = vol.block_hull(p.at(vol, good), p.len);
    let mut data = vec![0u8; hull_len as usize];
    if let Err(e) = vol.read_member(good.member, hull, &mut data).await {
        if let Some(e) = &e {
            vol.fail_member_for_read(good.member, e).await;
        }
        return Err(vol.data_lost());
    }
    let skip = (p.at(vol, good).get() - hull.get()) as usize;
    buf.copy_from_slice(&data[skip..skip + buf.len()]);
    for (k, e) in &bad {
        let at = ByteOffset(p.at(vol, *k).get() - skip as u64);
        let op = MemberOp::Write(at, &data, Durability::Normal);
        if vol.member_op(k.member, op).await {
            tracing::info!(member = %k.member, offset = at.get(), error = %e, "RAID-10 read error repaired from another copy");
        }
    }
    Ok(())
}
