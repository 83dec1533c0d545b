//! The checksum hook: after a resync made a range of a member consistent
//! with its redundancy, the volume tells the checksum layer what that
//! member now holds there, so its block checksums match again (they may
//! have been torn from their data by a crash).
//!
//! The hook also says the volume runs with checksums, which makes RAID-0
//! writes take the chunk-row locks (two writes of one block never race).

use super::layout::MemberIndex;
use crate::block::BoxFuture;
use crate::units::ByteOffset;

/// Resealing of block checksums from known-good member bytes.
pub trait ChecksumHook: Send + Sync {
    /// The member data of `member` at `offset` is `data` (4 KiB-aligned):
    /// record its checksums, on the slot's member and on a member being
    /// rebuilt into it.
    fn reseal<'a>(
        &'a self,
        member: MemberIndex,
        offset: ByteOffset,
        data: &'a [u8],
    ) -> BoxFuture<'a, ()>;
}
