//! A striped request's chunk extents merged into one transfer per run of
//! consecutive member bytes: a 1 MiB RAID-0 request over 4 members of
//! 64 KiB chunks is 16 extents but only 4 member transfers (each member's
//! chunks of consecutive rows lie back to back on the member), each one
//! `READV`/`WRITEV` of the caller's pieces.
//!
//! ```text
//!  volume:  | c0 m0 | c1 m1 | c2 m2 | c3 m3 | c4 m0 | c5 m1 | ...
//!  member 0:  c0 c4 c8 c12 ─► one run at c0's member offset, list [c0, c4, c8, c12]
//! ```
//!
//! An extent joins its member's latest run only when it starts where that
//! run ends and both are whole 4 KiB blocks from a block-aligned offset
//! (what the checksum layer and O_DIRECT take in place), and while the
//! run's list stays under [`MAX_SEGMENTS`], and while the run stays within
//! its member's `BlockDevice::merge_limit` (what the member takes down the
//! same path as a shorter transfer: a file on io_uring up to 8 MiB, on the
//! inline engine of a tmpfs file 64 KiB, as longer ones would leave the
//! caller's thread for the ring; a remote member or the blocking pool 0,
//! as they copy a list into one buffer); otherwise it starts a run of its
//! own, as every extent did before.
//!
//! Measured (vhost 1 MiB, RAID-0 of 64 KiB chunks, session 15): on O_DIRECT
//! disk files 1.2-1.6x main's MiB/s; on tmpfs, runs past 64 KiB went to
//! the ring and fell to 0.7-0.9x of main's inline chunk copies (hence the
//! limit).

use super::layout::{Extent, MemberIndex};

/// Most segments in one run's list (`IOV_MAX`).
pub(super) const MAX_SEGMENTS: usize = 1024;

/// Bytes of a block the runs keep whole.
const BLOCK: u64 = 4096;

/// One member transfer: the first extent (its length the run's total)
/// and the pieces of every extent of the run, in member order.
pub(super) type Run<T> = (Extent, Vec<T>);

/// Merges `extents` (in volume order) and their sub-lists `lists` (one
/// per extent, as [`crate::iovec::split_mut`] / [`crate::iovec::split`]
/// cut them) into member runs.
pub(super) fn member_runs<T>(
    extents: &[Extent],
    lists: Vec<Vec<T>>,
    merge_limit: impl Fn(MemberIndex) -> u64,
) -> Vec<Run<T>> {
    let mut runs: Vec<Run<T>> = Vec::new();
    for (e, list) in extents.iter().zip(lists) {
        let last = runs.iter_mut().rev().find(|(r, _)| r.member == e.member);
        match last {
            Some((run, pieces))
                if joins(run, e)
                    && pieces.len() + list.len() <= MAX_SEGMENTS
                    && run.len + e.len <= merge_limit(e.member) =>
            {
                run.len += e.len;
                pieces.extend(list);
            }
            _ => runs.push((*e, list)),
        }
    }
    runs
}

/// True when `e` continues `run` on the member, both in whole blocks.
fn joins(run: &Extent, e: &Extent) -> bool {
    let start = run.member_offset.get();
    start + run.len == e.member_offset.get()
        && start.is_multiple_of(BLOCK)
        && run.len.is_multiple_of(BLOCK)
        && e.len.is_multiple_of(BLOCK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raid::layout::{ChunkSize, Geometry};
    use crate::raid::Level;
    use crate::units::ByteOffset;

    fn geometry() -> Geometry {
        Geometry::new(Level::Raid0, 4, ChunkSize::new(64 << 10).unwrap(), 16 << 20).unwrap()
    }

    /// Runs of `len` bytes at `at`, as (member, member offset, length, pieces).
    fn runs_of(at: u64, len: u64) -> Vec<(usize, u64, u64, usize)> {
        let g = geometry();
        let extents: Vec<Extent> = g.extents(ByteOffset(at), len).collect();
        let lists = extents.iter().map(|e| vec![e.len]).collect();
        member_runs(&extents, lists, |_| u64::MAX)
            .into_iter()
            .map(|(e, l)| (e.member.0, e.member_offset.get(), e.len, l.len()))
            .collect()
    }

    #[test]
    fn a_1m_request_is_one_run_per_member() {
        let k = 64 << 10;
        assert_eq!(
            runs_of(0, 1 << 20),
            (0..4).map(|m| (m, 0, 4 * k, 4)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn pieces_of_a_run_keep_the_member_order() {
        let g = geometry();
        let extents: Vec<Extent> = g.extents(ByteOffset(0), 1 << 20).collect();
        let lists = extents
            .iter()
            .map(|e| vec![e.volume_offset.get()])
            .collect();
        let runs = member_runs(&extents, lists, |_| u64::MAX);
        let k = 64 << 10;
        assert_eq!(runs[1].0.member, MemberIndex(1));
        assert_eq!(runs[1].1, vec![k, 5 * k, 9 * k, 13 * k]);
    }

    #[test]
    fn an_unaligned_head_is_not_joined() {
        // Starts 512 bytes into chunk 0: member 0's first piece is not whole
        // blocks, so its next chunk is a run of its own.
        let k = 64 << 10;
        let runs = runs_of(512, 8 * k);
        assert_eq!(runs[0], (0, 512, k - 512, 1));
        assert!(runs.contains(&(0, k, k, 1)));
        assert_eq!(runs.iter().map(|r| r.2).sum::<u64>(), 8 * k);
    }

    #[test]
    fn a_request_within_one_row_is_unchanged() {
        let k = 64 << 10;
        assert_eq!(runs_of(k, 2 * k), vec![(1, 0, k, 1), (2, 0, k, 1)]);
    }

    #[test]
    fn runs_stop_at_the_segment_limit() {
        let g = geometry();
        let extents: Vec<Extent> = g.extents(ByteOffset(0), 1 << 20).collect();
        let lists = extents.iter().map(|_| vec![0u8; 400]).collect();
        let runs = member_runs(&extents, lists, |_| u64::MAX);
        // 400 + 400 fit, a third 400 would pass 1024: two runs per member.
        assert_eq!(runs.len(), 8);
        assert!(runs.iter().all(|(_, l)| l.len() <= MAX_SEGMENTS));
    }

    #[test]
    fn runs_stop_at_the_member_merge_limit() {
        let g = geometry();
        let extents: Vec<Extent> = g.extents(ByteOffset(0), 1 << 20).collect();
        let lists = extents.iter().map(|e| vec![e.len]).collect();
        // Member 2 takes no merged list (remote), member 3 two chunks.
        let k = 64 << 10;
        let limit = |m: MemberIndex| [u64::MAX, u64::MAX, 0, 2 * k][m.0];
        let runs = member_runs(&extents, lists, limit);
        let of = |m: usize| runs.iter().filter(|(e, _)| e.member.0 == m).count();
        assert_eq!((of(0), of(1), of(2), of(3)), (1, 1, 4, 2));
        assert!(runs.iter().all(|(e, _)| e.len <= limit(e.member).max(k)));
    }
}
