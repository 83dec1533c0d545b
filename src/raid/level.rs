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
use super::rebuild::{Lost, RebuildError, SourceBuffers, SourceErrors};
use super::scrub::{MemberScrub, Read};
use super::stripe_lock::StripeGuards;
use super::striped::lock_member_stripes;
use super::volume::Volume;
use crate::block::{BlockDevice, BlockResult, BoxFuture, Durability};
use crate::units::ByteOffset;

/// A mutating member operation, retried once and failing the member after.
#[derive(Clone, Copy, Debug)]
pub(super) enum MemberOp<'a> {
    Write(ByteOffset, &'a [u8], Durability),
    /// A write of a caller's scatter-gather list, passed down as it is.
    WriteV(ByteOffset, &'a [std::io::IoSlice<'a>], Durability),
    Discard(ByteOffset, u64),
    Zeroes(ByteOffset, u64, bool),
    Flush,
}

impl MemberOp<'_> {
    /// Runs the operation once on `dev`.
    pub(super) async fn run(self, dev: &dyn BlockDevice) -> BlockResult {
        match self {
            MemberOp::Write(off, buf, dur) => dev.write(off, buf, dur).await,
            MemberOp::WriteV(off, bufs, dur) => dev.write_vectored(off, bufs, dur).await,
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

/// What a level's read, write or clear resolves to.
pub(super) type Io<'a> = BoxFuture<'a, BlockResult>;

/// What a level's part of a sync step resolves to.
pub(super) type StepResult<'a, T> = BoxFuture<'a, Result<T, RebuildError>>;

/// A rebuild step's source read: member data at `a` of slot `member`,
/// into `buf`; unreadable source blocks are counted in `errors`.
pub(super) struct RebuildRead<'a> {
    pub(super) member: MemberIndex,
    pub(super) a: u64,
    pub(super) buf: &'a mut [u8],
    pub(super) errors: &'a SourceErrors,
    /// The pass's reused buffers to read the other members into.
    pub(super) sources: &'a SourceBuffers,
}

/// A scrub step's reads at member data offset `a`, and the counts of what
/// it found; `repair` rewrites what is found.
pub(super) struct ScrubCheck<'a> {
    pub(super) a: u64,
    pub(super) reads: &'a [Read],
    pub(super) members: &'a mut [MemberScrub],
    pub(super) repair: bool,
}

/// What one RAID level does. The volume has checked the range (in bounds,
/// not empty), counted the request busy and recorded its write intent.
/// The defaults are those of a striped level without redundancy (RAID-0).
pub(super) trait LevelIo: Send + Sync {
    /// Discards or zeroes `len` volume bytes at `at`.
    fn clear<'a>(&self, vol: &'a Volume, at: ByteOffset, len: u64, how: Clear) -> Io<'a>;

    /// The locks client writes take over member data `a..b` (`a < b`); a
    /// sync step holds them while it works. Default: the stripes.
    fn lock_member_range<'a>(&self, vol: &'a Volume, a: u64, b: u64) -> BoxFuture<'a, Locks<'a>> {
        crate::block::BoxFuture::new(lock_member_stripes(vol, a, b))
    }

    /// One crash-resync step over member data `a..b`: makes redundancy
    /// consistent; returns the member bytes rewritten. Default (no
    /// redundancy): reseal the block checksums only.
    fn resync_step<'a>(&self, vol: &'a Volume, a: u64, b: u64) -> StepResult<'a, u64> {
        crate::block::BoxFuture::new(async move { vol.reseal_step(a, b).await.map(|()| 0) })
    }

    /// Fills a rebuild step's buffer from the other members (under the
    /// step's locks); blocks no source could give are zeroed and
    /// returned. Default: nothing to rebuild from.
    fn rebuild_read<'a>(&self, vol: &'a Volume, _r: RebuildRead<'a>) -> StepResult<'a, LostBlocks> {
        let level = vol.geometry().level();
        crate::block::BoxFuture::new(async move { Err(RebuildError::NoRedundancy(level)) })
    }

    /// [`LevelIo::rebuild_read`] of several members' buffers of the same
    /// step (a rebuild of two members at once), with each one's lost
    /// blocks, in order. Default: one after the other.
    fn rebuild_read_many<'a>(
        &self,
        vol: &'a Volume,
        reads: Vec<RebuildRead<'a>>,
    ) -> StepResult<'a, Vec<LostBlocks>> {
        crate::block::BoxFuture::new(async move {
            let mut lost = Vec::with_capacity(reads.len());
            for r in reads {
                lost.push(vol.level_io().rebuild_read(vol, r).await?);
            }
            Ok(lost)
        })
    }

    /// Block `block` of member `m` in a scrub step at member data offset
    /// `a`, rebuilt from the other members' reads; `None` when redundancy
    /// does not cover it (default).
    fn scrub_rebuild_block(
        &self,
        _vol: &Volume,
        _a: u64,
        _reads: &[Read],
        _m: usize,
        _block: usize,
    ) -> Option<Vec<u8>> {
        None
    }

    /// Counts (and with `repair` rewrites) the blocks of a scrub step that
    /// disagree with the level's redundancy. Default: nothing to compare.
    fn scrub_check<'a>(&self, _vol: &'a Volume, _c: ScrubCheck<'a>) -> BoxFuture<'a, ()> {
        crate::block::BoxFuture::new(async {})
    }

    /// A write or clear of volume range `at..+len` ran out of space
    /// part-way: distrust whatever redundancy it may have torn.
    fn distrust_after_no_space(&self, _vol: &Volume, _at: ByteOffset, _len: u64) {}

    /// True when writes log their partial parity (`ppl.rs`).
    fn takes_parity_log(&self) -> bool {
        false
    }
}

/// The outcomes of [`join_each`], by index.
pub(super) enum Joined {
    /// Up to four, held inline (absent ones are false).
    Few([bool; 4]),
    Many(Vec<bool>),
}

impl Joined {
    /// The outcome of `op(i)`.
    pub(super) fn get(&self, i: usize) -> bool {
        match self {
            Joined::Few(r) => r.get(i).copied().unwrap_or(false),
            Joined::Many(r) => r.get(i).copied().unwrap_or(false),
        }
    }

    /// How many returned true.
    pub(super) fn count(&self) -> usize {
        match self {
            Joined::Few(r) => r.iter().filter(|&&ok| ok).count(),
            Joined::Many(r) => r.iter().filter(|&&ok| ok).count(),
        }
    }
}

/// Runs `op(i)` for every `i` in `0..n` concurrently (member operations
/// of one request). Up to four run without allocating a list of futures.
pub(super) async fn join_each<F, Fut>(n: usize, op: F) -> Joined
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    use futures::future::{join4, join_all, OptionFuture};
    if n > 4 {
        return Joined::Many(join_all((0..n).map(op)).await);
    }
    let one = |i: usize| OptionFuture::from((i < n).then(|| op(i)));
    let (a, b, c, d) = join4(one(0), one(1), one(2), one(3)).await;
    Joined::Few([a, b, c, d].map(|r| r == Some(true)))
}

/// Runs `op(m)` for every member `m` in `0..n` concurrently and counts
/// those that returned true ([`join_each`]: the per-request path of RAID-1
/// writes and flushes).
pub(super) async fn count_true<F, Fut>(n: usize, op: F) -> usize
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    join_each(n, op).await.count()
}

/// Guards of the locks a sync step holds.
pub(super) type Locks<'a> = StripeGuards<'a>;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn join_each_reports_every_outcome_inline_and_in_a_list() {
        for n in [0, 1, 3, 4, 5, 9] {
            let joined = join_each(n, |i| async move { i % 2 == 0 }).await;

            for i in 0..n {
                assert_eq!(joined.get(i), i % 2 == 0, "n={n} i={i}");
            }
            assert!(!joined.get(n), "n={n}: past the end");
            assert_eq!(joined.count(), n.div_ceil(2), "n={n}");
        }
    }
}
