//! RAID-0 data path: split by chunk, fan out concurrently, no redundancy.
//! A request longer than a row reads or writes each member's consecutive
//! chunks as one transfer of the caller's pieces (`member_runs`).
//!
//! A checksum mismatch is returned as an I/O error of the request (there
//! is nothing to repair from) and does not fail the member. With block
//! checksums, writers lock the 4 KiB member blocks they touch (one range of
//! member offsets, shared by the members), so two writes of one block never
//! interleave their data and checksum updates, while small writes of
//! neighbouring blocks (sequential 1 KiB writes) run side by side.

use std::io::{IoSlice, IoSliceMut};

use futures::future::try_join_all;

use super::layout::{Extent, MemberIndex};
use super::level::{Clear, Io, LevelIo, Locks, MemberOp};
use super::member_runs::member_runs;
use super::striped::read_extents;
use super::volume::Volume;
use crate::block::{BlockError, BlockResult, Durability};
use crate::units::ByteOffset;

/// RAID-0's [`LevelIo`]: the trait's defaults (no redundancy) for the rest.
pub(super) struct Raid0;

/// Reads by chunk extent, concurrently; a request that reaches one member
/// twice (more than a row) reads each member's run of chunks at once.
pub(super) async fn read(vol: &Volume, at: ByteOffset, buf: &mut [u8]) -> BlockResult {
    let g = vol.geometry();
    if g.extents(at, buf.len() as u64).nth(g.members()).is_none() {
        return read_extents(vol, at, buf, read_extent).await;
    }
    read_runs(vol, at, &mut [IoSliceMut::new(buf)]).await
}

/// Writes every extent concurrently (one extent: no list).
pub(super) async fn write(vol: &Volume, at: ByteOffset, buf: &[u8], d: Durability) -> BlockResult {
    let _rows = lock_rows(vol, at, buf.len() as u64).await;
    let mut extents = vol.geometry().extents(at, buf.len() as u64);
    let Some(first) = extents.next() else {
        return Ok(());
    };
    let first_op = MemberOp::Write(first.member_offset, &buf[..first.len as usize], d);
    let mut pos = first.len as usize;
    let Some(second) = extents.next() else {
        return run(vol, first.member, first_op).await;
    };
    let mut writes = vec![run(vol, first.member, first_op)];
    for e in std::iter::once(second).chain(extents) {
        let piece = &buf[pos..pos + e.len as usize];
        pos += piece.len();
        writes.push(run(
            vol,
            e.member,
            MemberOp::Write(e.member_offset, piece, d),
        ));
    }
    try_join_all(writes).await.map(drop)
}

/// Reads a scatter-gather list: each extent reads into its own sub-list
/// of the caller's segments.
pub(super) async fn read_segments(
    vol: &Volume,
    at: ByteOffset,
    bufs: &mut [IoSliceMut<'_>],
) -> BlockResult {
    let len = crate::iovec::len_mut(bufs) as u64;
    let mut one = vol.geometry().extents(at, len);
    if let (Some(e), None) = (one.next(), one.next()) {
        // One chunk (every small request): the list as it is.
        return read_extent_segments(vol, e, bufs).await;
    }
    read_runs(vol, at, bufs).await
}

/// Reads a list of more than one extent: one member read per run of
/// consecutive member bytes (`member_runs`), into its sub-lists.
async fn read_runs(vol: &Volume, at: ByteOffset, bufs: &mut [IoSliceMut<'_>]) -> BlockResult {
    let len = crate::iovec::len_mut(bufs) as u64;
    let extents: Vec<Extent> = vol.geometry().extents(at, len).collect();
    let lists = crate::iovec::split_mut(bufs, extents.iter().map(|e| e.len as usize));
    let mut runs = member_runs(&extents, lists, |m| vol.member_merge_limit(m));
    let reads = runs
        .iter_mut()
        .map(|(e, list)| read_extent_segments(vol, *e, list));
    try_join_all(reads).await.map(drop)
}

/// Writes a scatter-gather list: each run of consecutive member bytes
/// (`member_runs`) writes its own sub-list.
pub(super) async fn write_segments(
    vol: &Volume,
    at: ByteOffset,
    bufs: &[IoSlice<'_>],
    d: Durability,
) -> BlockResult {
    let len = crate::iovec::len(bufs) as u64;
    let _rows = lock_rows(vol, at, len).await;
    let mut one = vol.geometry().extents(at, len);
    if let (Some(e), None) = (one.next(), one.next()) {
        return run(vol, e.member, MemberOp::WriteV(e.member_offset, bufs, d)).await;
    }
    let extents: Vec<Extent> = vol.geometry().extents(at, len).collect();
    let lists = crate::iovec::split(bufs, extents.iter().map(|e| e.len as usize));
    let runs = member_runs(&extents, lists, |m| vol.member_merge_limit(m));
    let writes = runs.iter().map(|(e, list)| {
        let op = MemberOp::WriteV(e.member_offset, list, d);
        run(vol, e.member, op)
    });
    try_join_all(writes).await.map(drop)
}

impl LevelIo for Raid0 {
    /// The member blocks client writes lock (not whole stripes).
    fn lock_member_range<'a>(
        &self,
        vol: &'a Volume,
        a: u64,
        b: u64,
    ) -> crate::block::BoxFuture<'a, Locks<'a>> {
        crate::block::BoxFuture::new(lock_member_blocks(vol, a, b))
    }

    /// Partial stripes extent by extent, whole stripes as one contiguous
    /// range per member.
    fn clear<'a>(&self, vol: &'a Volume, at: ByteOffset, len: u64, how: Clear) -> Io<'a> {
        crate::block::BoxFuture::new(async move {
            let _rows = lock_rows(vol, at, len).await;
            let g = vol.geometry();
            let split = g.split_stripes(at, len);
            let mut ops = Vec::new();
            for (off, len) in [split.head, split.tail] {
                for e in g.extents(off, len) {
                    ops.push(run(vol, e.member, how.op(e.member_offset, e.len)));
                }
            }
            let (first, count) = split.full;
            if count > 0 {
                let chunk = g.chunk().get();
                for m in 0..g.members() {
                    let op = how.op(ByteOffset(first.0 * chunk), count * chunk);
                    ops.push(run(vol, MemberIndex(m), op));
                }
            }
            try_join_all(ops).await.map(drop)
        })
    }
}

async fn read_extent(vol: &Volume, e: Extent, piece: &mut [u8]) -> BlockResult {
    let result = vol.read_member(e.member, e.member_offset, piece).await;
    read_outcome(vol, e, result).await
}

async fn read_extent_segments(vol: &Volume, e: Extent, list: &mut [IoSliceMut<'_>]) -> BlockResult {
    let result = vol
        .read_member_segments(e.member, e.member_offset, list)
        .await;
    read_outcome(vol, e, result).await
}

/// What a member read of extent `e` means for the request: a checksum
/// mismatch is its error, any other error fails the member.
async fn read_outcome(
    vol: &Volume,
    e: Extent,
    result: Result<(), Option<BlockError>>,
) -> BlockResult {
    match result {
        Ok(()) => Ok(()),
        Err(Some(error @ BlockError::Corrupt { .. })) => Err(error),
        Err(error) => {
            if let Some(error) = error {
                vol.fail_member(e.member, &error).await;
            }
            Err(vol.data_lost())
        }
    }
}

/// Member bytes of one lock unit: a checksum block.
const LOCK_BLOCK: u64 = 4096;

/// With block checksums: locks the member blocks a volume range touches
/// (from its lowest to its highest member offset).
async fn lock_rows(vol: &Volume, offset: ByteOffset, len: u64) -> Locks<'_> {
    if vol.checksums().is_none() || len == 0 {
        return Locks::default();
    }
    let (a, b) = vol
        .geometry()
        .extents(offset, len)
        .fold((u64::MAX, 0), |(a, b), e| {
            let at = e.member_offset.get();
            (a.min(at), b.max(at + e.len))
        });
    lock_member_blocks(vol, a, b).await
}

/// Locks the 4 KiB blocks holding member data `a..b` (`a < b`), at the
/// same offsets of every member, as one range.
async fn lock_member_blocks(vol: &Volume, a: u64, b: u64) -> Locks<'_> {
    let (start, end) = (
        a / LOCK_BLOCK * LOCK_BLOCK,
        b.div_ceil(LOCK_BLOCK) * LOCK_BLOCK,
    );
    vol.locks().lock_span(start, end).await
}

async fn run(vol: &Volume, member: MemberIndex, op: MemberOp<'_>) -> BlockResult {
    if vol.member_op(member, op).await {
        Ok(())
    } else {
        Err(vol.data_lost())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use super::super::test_support::{pattern, Array};
    use super::super::Level;
    use crate::block::{BlockDevice, Durability};
    use crate::integrity::Checksums;
    use crate::units::ByteOffset;

    #[tokio::test]
    async fn small_writes_of_neighbouring_blocks_of_a_row_run_side_by_side() {
        let csums = Checksums::new();
        let errors = Arc::new(AtomicU64::new(0));
        let mut array = Array::new_wrapped(Level::Raid0, 2, 64 << 10, 1 << 20, &[], |i, d| {
            csums.wrap_in_memory(i, d, true, errors.clone())
        });
        array.volume = array.volume.with_checksums(csums.clone());
        let (vol, m0) = (&array.volume, &array.devices[0]);
        m0.gate_closed.store(true, Ordering::SeqCst);
        let (a, b, c) = (pattern(1024, 1), pattern(1024, 2), pattern(1024, 3));
        // Blocks 0 and 1 of member 0's first chunk, then block 0 again.
        let mut w1 = vol.write(ByteOffset(0), &a, Durability::Normal);
        let mut w2 = vol.write(ByteOffset(4096), &b, Durability::Normal);
        let mut w3 = vol.write(ByteOffset(1024), &c, Durability::Normal);
        for _ in 0..3 {
            assert!(futures::poll!(&mut w1).is_pending());
            assert!(futures::poll!(&mut w2).is_pending());
            assert!(futures::poll!(&mut w3).is_pending());
            tokio::task::yield_now().await;
        }
        // w1 and w2 hold a block each and wait at the member; w3 waits for
        // w1's block (one stripe lock would have let only w1 in).
        assert_eq!(m0.writes.load(Ordering::SeqCst), 0, "gate closed");
        assert_eq!(vol.locks().len(), 3);
        m0.gate_closed.store(false, Ordering::SeqCst);
        m0.gate_open.notify_waiters();
        let (r1, r2, r3) = futures::join!(w1, w2, w3);
        r1.unwrap();
        r2.unwrap();
        r3.unwrap();
        let mut got = vec![0u8; 8192];
        vol.read(ByteOffset(0), &mut got).await.unwrap();
        assert!(got[..1024] == a[..] && got[1024..2048] == c[..] && got[4096..5120] == b[..]);
        assert_eq!(errors.load(Ordering::SeqCst), 0);
        assert!(vol.locks().is_empty());
    }
}

#[cfg(test)]
mod future_size_tests {
    use super::super::test_support::Array;
    use super::super::{data_path, no_space, Level};
    use crate::block::Durability;
    use crate::units::ByteOffset;

    /// The volume's write future is moved into the future pool whole per
    /// request: a RAID-0 write's must not carry a RAID-5 write's state (it
    /// was 22 KiB in a debug build, 7.3 KiB of it a RAID-5 write's, three
    /// times over in `no_space::watch`).
    #[test]
    fn a_raid0_write_future_is_not_sized_by_the_other_levels() {
        let array = Array::new(Level::Raid0, 4, 64 << 10, 1 << 20, &[]);
        let (vol, buf) = (&array.volume, vec![0u8; 4096]);
        let write = data_path::write(vol, ByteOffset(0), &buf, Durability::Normal);
        let raid0 = size_of_val(&super::write(vol, ByteOffset(0), &buf, Durability::Normal));
        let watched = size_of_val(&no_space::watch(write));
        eprintln!("raid0::write {raid0} B, watch(data_path::write) {watched} B");
        assert!(
            watched <= raid0 + 512,
            "{watched} B for a {raid0} B RAID-0 write"
        );
    }
}
