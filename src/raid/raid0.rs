//! RAID-0 data path: split by chunk, fan out concurrently, no redundancy.
//!
//! A checksum mismatch is returned as an I/O error of the request (there
//! is nothing to repair from) and does not fail the member. With block
//! checksums, writers lock the chunk rows they touch, so two writes of one
//! 4 KiB block never interleave their data and checksum updates.

use futures::future::try_join_all;

use super::layout::{Extent, MemberIndex, StripeIndex};
use super::level::{Clear, LevelIo, LostBlocks, MemberOp};
use super::rebuild::{RebuildError, SourceErrors};
use super::scrub::{MemberScrub, Read};
use super::stripe_lock::StripeGuard;
use super::striped::{lock_member_stripes, read_extents};
use super::volume::Volume;
use super::Level;
use crate::block::{BlockError, BlockResult, BoxFuture, Durability};
use crate::units::ByteOffset;

/// RAID-0's [`LevelIo`].
pub(super) struct Raid0;

impl LevelIo for Raid0 {
    fn read<'a>(
        &self,
        vol: &'a Volume,
        offset: ByteOffset,
        buf: &'a mut [u8],
    ) -> BoxFuture<'a, BlockResult> {
        Box::pin(read_extents(vol, offset, buf, read_extent))
    }

    fn write<'a>(
        &self,
        vol: &'a Volume,
        offset: ByteOffset,
        buf: &'a [u8],
        durability: Durability,
    ) -> BoxFuture<'a, BlockResult> {
        Box::pin(write(vol, offset, buf, durability))
    }

    fn clear<'a>(
        &self,
        vol: &'a Volume,
        offset: ByteOffset,
        len: u64,
        how: Clear,
    ) -> BoxFuture<'a, BlockResult> {
        Box::pin(clear(vol, offset, len, how))
    }

    fn lock_member_range<'a>(
        &self,
        vol: &'a Volume,
        a: u64,
        b: u64,
    ) -> BoxFuture<'a, Vec<StripeGuard<'a>>> {
        Box::pin(lock_member_stripes(vol, a, b))
    }

    /// No redundancy to make consistent: reseal the block checksums only.
    fn resync_step<'a>(
        &self,
        vol: &'a Volume,
        a: u64,
        b: u64,
    ) -> BoxFuture<'a, Result<u64, RebuildError>> {
        Box::pin(async move { vol.reseal_step(a, b).await.map(|()| 0) })
    }

    /// Never called: a RAID-0 cannot be rebuilt (`attach_rebuild_target`
    /// refuses it).
    fn rebuild_from_others<'a>(
        &self,
        _vol: &'a Volume,
        _member: MemberIndex,
        _a: u64,
        _buf: &'a mut [u8],
        _errors: &'a SourceErrors,
    ) -> BoxFuture<'a, Result<LostBlocks, RebuildError>> {
        Box::pin(async { Err(RebuildError::NoRedundancy(Level::Raid0)) })
    }

    fn scrub_rebuild_block(&self, _reads: &[Read], _m: usize, _block: usize) -> Option<Vec<u8>> {
        None
    }

    /// Nothing to check beyond the reads themselves.
    fn scrub_check<'a>(
        &self,
        _vol: &'a Volume,
        _a: u64,
        _reads: &'a [Read],
        _members: &'a mut [MemberScrub],
        _repair: bool,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

async fn read_extent(vol: &Volume, e: Extent, piece: &mut [u8]) -> BlockResult {
    match vol.read_member(e.member, e.member_offset, piece).await {
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

async fn write(
    vol: &Volume,
    offset: ByteOffset,
    buf: &[u8],
    durability: Durability,
) -> BlockResult {
    let _rows = lock_rows(vol, offset, buf.len() as u64).await;
    let mut writes = Vec::new();
    let mut pos = 0;
    for e in vol.geometry().extents(offset, buf.len() as u64) {
        let piece = &buf[pos..pos + e.len as usize];
        pos += piece.len();
        writes.push(run(
            vol,
            e.member,
            MemberOp::Write(e.member_offset, piece, durability),
        ));
    }
    try_join_all(writes).await.map(drop)
}

/// With block checksums: locks the chunk rows (stripes) of a volume range.
async fn lock_rows(
    vol: &Volume,
    offset: ByteOffset,
    len: u64,
) -> Vec<super::stripe_lock::StripeGuard<'_>> {
    if vol.checksums().is_none() || len == 0 {
        return Vec::new();
    }
    let sds = vol.geometry().stripe_data_size();
    let first = offset.get() / sds;
    let last = (offset.get() + len - 1) / sds;
    vol.locks()
        .lock_range(StripeIndex(first), StripeIndex(last))
        .await
}

async fn run(vol: &Volume, member: MemberIndex, op: MemberOp<'_>) -> BlockResult {
    if vol.member_op(member, op).await {
        Ok(())
    } else {
        Err(vol.data_lost())
    }
}

/// Discards or zeroes: partial stripes extent by extent, whole stripes as
/// one contiguous range per member.
async fn clear(vol: &Volume, offset: ByteOffset, len: u64, how: Clear) -> BlockResult {
    let _rows = lock_rows(vol, offset, len).await;
    let g = vol.geometry();
    let split = g.split_stripes(offset, len);
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
}
