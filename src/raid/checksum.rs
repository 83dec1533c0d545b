//! The checksum hook: after a resync made a range of a member consistent
//! with its redundancy, the volume tells the checksum layer what that
//! member now holds there, so its block checksums match again (they may
//! have been torn from their data by a crash).
//!
//! A resync also asks it how each block compares with its stored entry
//! ([`Verdict`]), so bytes that fail their checksum are never copied or
//! folded into parity as if they were good.
//!
//! The hook also says the volume runs with checksums, which makes RAID-0
//! writes take the chunk-row locks (two writes of one block never race).

use super::layout::MemberIndex;
use crate::block::{BlockResult, BoxFuture};
use crate::units::ByteOffset;

/// Resealing of block checksums from known-good member bytes.
pub trait ChecksumHook: Send + Sync {
    /// The member data of `member` at `offset` is `data` (4 KiB-aligned):
    /// record its checksums, on the slot's member and on a member being
    /// rebuilt into it. Every store is tried; the first error is returned
    /// (callers note ENOSPC with `no_space::note_result`, so the
    /// step fails with ENOSPC and its range stays owed).
    fn reseal<'a>(
        &'a self,
        member: MemberIndex,
        offset: ByteOffset,
        data: &'a [u8],
    ) -> BoxFuture<'a, BlockResult>;

    /// How each 4 KiB block of `data` (member data of `member` at the
    /// 4 KiB-aligned `offset`) compares with the entry stored for it on the
    /// slot's member, whether or not its region is settled (a resync reads
    /// regions whose reads are not verified).
    fn verdicts<'a>(
        &'a self,
        member: MemberIndex,
        offset: ByteOffset,
        data: &'a [u8],
    ) -> BoxFuture<'a, Vec<Verdict>>;

    /// Whether member reads at data offset `offset` are verified (false in
    /// a region dirty at a crash until its resync, and before the journal
    /// replay): the data path then asks [`ChecksumHook::verdicts`] itself.
    fn read_verified(&self, _offset: ByteOffset) -> bool {
        true
    }

    /// The checksum-page cache's counters (`vraid status`, metrics).
    fn cache_stats(&self) -> Option<crate::integrity::CacheStats> {
        None
    }
}

/// One block against its stored checksum entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The entry is known and matches.
    Good,
    /// No entry is known (or checksums are off).
    Unknown,
    /// The entry is known and does not match.
    Bad,
}
