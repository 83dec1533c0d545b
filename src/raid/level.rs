//! The contract between [`Volume`] and a RAID level: [`LevelIo`], and the
//! member operations a level hands to the volume.
//!
//! ```text
//!  Volume (checks, busy count, write intent, ENOSPC) ─► vol.level_io()
//!        ─► Raid0 / Raid1 / Raid5 : LevelIo ─► Volume member methods
//!           (read_member, write_member, member_op, fail_member, locks)
//! ```
//!
//! A level implements the data path (read, write, clear) and what the
//! sync passes need from it (step locks, a resync step, the source of a
//! rebuilt block, the scrub checks). The passes in `rebuild.rs`,
//! `resync.rs` and `scrub.rs` keep their loops and call these.

use super::layout::MemberIndex;
use super::rebuild::{Lost, RebuildError, SourceErrors};
use super::scrub::{MemberScrub, Read};
use super::stripe_lock::StripeGuard;
use super::volume::Volume;
use crate::block::{BlockDevice, BlockResult, BoxFuture, Durability};
use crate::units::ByteOffset;

/// A mutating member operation, retried once and failing the member after.
#[derive(Clone, Copy, Debug)]
pub(super) enum MemberOp<'a> {
    Write(ByteOffset, &'a [u8], Durability),
    Discard(ByteOffset, u64),
    Zeroes(ByteOffset, u64, bool),
    Flush,
}

impl MemberOp<'_> {
    /// Runs the operation once on `dev`.
    pub(super) async fn run(self, dev: &dyn BlockDevice) -> BlockResult {
        match self {
            MemberOp::Write(off, buf, dur) => dev.write(off, buf, dur).await,
            MemberOp::Discard(off, len) => dev.discard(off, len).await,
            MemberOp::Zeroes(off, len, unmap) => dev.write_zeroes(off, len, unmap).await,
            MemberOp::Flush => dev.flush().await,
        }
    }
}

/// How a range is cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Clear {
    Discard,
    Zeroes { may_unmap: bool },
}

impl Clear {
    pub(super) fn op(self, offset: ByteOffset, len: u64) -> MemberOp<'static> {
        match self {
            Clear::Discard => MemberOp::Discard(offset, len),
            Clear::Zeroes { may_unmap } => MemberOp::Zeroes(offset, len, may_unmap),
        }
    }
}

/// Blocks of a rebuild step no source could give, with why (member
/// data offsets of 4 KiB blocks).
pub(super) type LostBlocks = Vec<(u64, Lost)>;

/// What one RAID level does. The volume has checked the range (in bounds,
/// not empty), counted the request busy and recorded its write intent.
pub(super) trait LevelIo: Send + Sync {
    /// Reads `buf.len()` volume bytes at `offset`.
    fn read<'a>(
        &self,
        vol: &'a Volume,
        offset: ByteOffset,
        buf: &'a mut [u8],
    ) -> BoxFuture<'a, BlockResult>;

    /// Writes `buf` at volume `offset`.
    fn write<'a>(
        &self,
        vol: &'a Volume,
        offset: ByteOffset,
        buf: &'a [u8],
        durability: Durability,
    ) -> BoxFuture<'a, BlockResult>;

    /// Discards or zeroes `len` volume bytes at `offset`.
    fn clear<'a>(
        &self,
        vol: &'a Volume,
        offset: ByteOffset,
        len: u64,
        how: Clear,
    ) -> BoxFuture<'a, BlockResult>;

    /// The locks client writes take over member data `a..b` (a sync step
    /// holds them while it works).
    fn lock_member_range<'a>(
        &self,
        vol: &'a Volume,
        a: u64,
        b: u64,
    ) -> BoxFuture<'a, Vec<StripeGuard<'a>>>;

    /// One crash-resync step over member data `a..b`: makes redundancy
    /// consistent; returns the member bytes rewritten.
    fn resync_step<'a>(
        &self,
        vol: &'a Volume,
        a: u64,
        b: u64,
    ) -> BoxFuture<'a, Result<u64, RebuildError>>;

    /// Fills `buf` with member data at `a` of slot `member` from the other
    /// members (a rebuild step, under its locks); blocks no source could
    /// give are zeroed and returned.
    fn rebuild_from_others<'a>(
        &self,
        vol: &'a Volume,
        member: MemberIndex,
        a: u64,
        buf: &'a mut [u8],
        errors: &'a SourceErrors,
    ) -> BoxFuture<'a, Result<LostBlocks, RebuildError>>;

    /// Block `block` of member `m` in a scrub step, rebuilt from the other
    /// members' reads; `None` when redundancy does not cover it.
    fn scrub_rebuild_block(&self, reads: &[Read], m: usize, block: usize) -> Option<Vec<u8>>;

    /// Counts (and with `repair` rewrites) the blocks of a scrub step at
    /// `a` that disagree with the level's redundancy.
    fn scrub_check<'a>(
        &self,
        vol: &'a Volume,
        a: u64,
        reads: &'a [Read],
        members: &'a mut [MemberScrub],
        repair: bool,
    ) -> BoxFuture<'a, ()>;

    /// A write or clear of volume range `offset..+len` ran out of space
    /// part-way: distrust whatever redundancy it may have torn.
    fn distrust_after_no_space(&self, _vol: &Volume, _offset: ByteOffset, _len: u64) {}

    /// True when writes log their partial parity (`ppl.rs`).
    fn takes_parity_log(&self) -> bool {
        false
    }
}
