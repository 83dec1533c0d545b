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
//! run's list stays under [`MAX_SEGMENTS`], and only on a member that
//! takes a list as it is (`takes_lists`: a local file or block device,
//! whose `READV`/`WRITEV` goes to the kernel with no copy; a remote
//! member's vectored call would copy the run into one buffer, where
//! separate extents each go out as their own slice); otherwise it starts a
//! run of its own, as every extent did before.

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
    takes_lists: impl Fn(MemberIndex) -> bool,
) -> Vec<Run<T>> {
    let mut runs: Vec<Run<T>> = Vec::new();
    for (e, list) in extents.iter().zip(lists) {
        let last = runs.iter_mut().rev().find(|(r, _)| r.member == e.member);
        match last {
            Some((run, pieces))
                if joins(run, e)
                    && pieces.len() + list.len() <= MAX_SEGMENTS
                    && takes_lists(e.member) =>
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
        member_runs(&extents, lists, |_| true)
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
        let runs = member_runs(&extents, lists, |_| true);
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
        let runs = member_runs(&extents, lists, |_| true);
        // 400 + 400 fit, a third 400 would pass 1024: two runs per member.
        assert_eq!(runs.len(), 8);
        assert!(runs.iter().all(|(_, l)| l.len() <= MAX_SEGMENTS));
    }

    #[test]
    fn a_member_that_copies_lists_keeps_one_transfer_per_chunk() {
        let g = geometry();
        let extents: Vec<Extent> = g.extents(ByteOffset(0), 1 << 20).collect();
        let lists = extents.iter().map(|e| vec![e.len]).collect();
        let runs = member_runs(&extents, lists, |m| m != MemberIndex(2));
        let of = |m: usize| runs.iter().filter(|(e, _)| e.member.0 == m).count();
        assert_eq!((of(0), of(1), of(2), of(3)), (1, 1, 4, 1));
    }
}
