//! Which bytes a crash resync or a partial-parity replay may trust
//! (docs/FORMAT.md §8, "Which checksum is trusted where").
//!
//! ```text
//!  RAID-1 block:  copies + verdicts ─► pick_copy: a Good copy, else the
//!                 value most mirrors hold, else the first readable one
//!  RAID-5 row:    consistent? ─► keep.  A Bad block whose rebuild from the
//!                 rest of its row is Good? ─► restore it (parity was right).
//!                 Else ─► new parity from the data (a torn write).
//! ```
//!
//! In a region dirty at the crash, a block's stored entry is the checksum
//! of some version written at or after the last flush (entries are
//! written back by every flush and FUA write), never older: a block that
//! fails it holds bytes nobody flushed, or corruption. Either way it is
//! never copied over a block that passes, and never folded into parity
//! when the parity of its row still rebuilds the version its entry names.

use super::checksum::Verdict;
use super::layout::MemberIndex;
use super::parity::xor_into;
use super::volume::Volume;
use crate::units::ByteOffset;

/// Bytes of one checksummed block.
pub(super) const BLOCK: usize = 4096;

/// The RAID-1 copy of one block a resync keeps, from each mirror's bytes
/// and verdict (`None`: not readable). A copy that passes its checksum
/// wins; among the others the value most mirrors hold, then the better
/// verdict (unknown over bad), then the lowest index. `None` when no copy
/// is readable.
pub(super) fn pick_copy(copies: &[Option<(&[u8], Verdict)>]) -> Option<usize> {
    let rank = |v: Verdict| match v {
        Verdict::Good => 2u8,
        Verdict::Unknown => 1,
        Verdict::Bad => 0,
    };
    let votes = |bytes: &[u8]| copies.iter().flatten().filter(|(b, _)| *b == bytes).count();
    copies
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.map(|(bytes, v)| (i, bytes, v)))
        .max_by_key(|&(i, bytes, v)| {
            (
                v == Verdict::Good,
                votes(bytes),
                rank(v),
                std::cmp::Reverse(i),
            )
        })
        .map(|(i, _, _)| i)
}

/// The XOR of every block of `row` but `skip`'s: what `skip` must hold for
/// the row to be consistent.
pub(super) fn rebuilt_from_others(row: &[&[u8]], skip: usize) -> Vec<u8> {
    let mut x = vec![0u8; row.first().map_or(0, |b| b.len())];
    for (m, b) in row.iter().enumerate() {
        if m != skip {
            xor_into(&mut x, b);
        }
    }
    x
}

/// Whether the blocks of a RAID-5 row XOR to zero.
pub(super) fn consistent(row: &[&[u8]]) -> bool {
    rebuilt_from_others(row, usize::MAX).iter().all(|&b| b == 0)
}

impl Volume {
    /// The verdicts of the blocks of `data` (member data of `member` at
    /// `offset`); all unknown without checksums.
    pub(super) async fn verdicts(
        &self,
        member: MemberIndex,
        offset: ByteOffset,
        data: &[u8],
    ) -> Vec<Verdict> {
        match self.checksums() {
            Some(hook) => hook.verdicts(member, offset, data).await,
            None => vec![Verdict::Unknown; data.len().div_ceil(BLOCK)],
        }
    }

    /// A RAID-5 row (`row[m]`: member `m`'s block at member offset `at`)
    /// that does not XOR to zero: the member whose block fails its
    /// checksum while the XOR of the others passes it, with those bytes
    /// (the row's parity still holds the truth). `None`: no such member.
    pub(super) async fn repairable_member(
        &self,
        row: &[&[u8]],
        verdicts: &[Verdict],
        at: u64,
    ) -> Option<(MemberIndex, Vec<u8>)> {
        for (m, v) in verdicts.iter().enumerate() {
            if *v != Verdict::Bad {
                continue;
            }
            let want = rebuilt_from_others(row, m);
            let member = MemberIndex(m);
            if self.verdicts(member, ByteOffset(at), &want).await == [Verdict::Good] {
                return Some((member, want));
            }
        }
        None
    }

    /// During a partial-parity replay: whether the parity block at member
    /// offset `at` (4 KiB-aligned) must be kept because a data block of its
    /// row fails its checksum while the rest of the row, this parity
    /// included, rebuilds one that passes. Recomputing the parity from that
    /// data would seal the corruption; the resync restores the block.
    pub(super) async fn parity_holds_truth(&self, parity: MemberIndex, at: u64) -> bool {
        self.p_holds_truth(parity, None, at).await
    }

    /// [`Volume::parity_holds_truth`] for a RAID-6 row: P and the data
    /// blocks judged as a RAID-5 row (Q's slot zero, its verdict unknown),
    /// asked before a replay rewrites the row's P or Q.
    pub(super) async fn p_holds_truth(
        &self,
        parity: MemberIndex,
        q: Option<MemberIndex>,
        at: u64,
    ) -> bool {
        let n = self.geometry().members();
        if self.checksums().is_none() || self.down_count() > 0 {
            return false;
        }
        let mut bufs = vec![vec![0u8; BLOCK]; n];
        for (m, buf) in bufs.iter_mut().enumerate() {
            if Some(MemberIndex(m)) == q {
                continue;
            }
            if self
                .read_member(MemberIndex(m), ByteOffset(at), buf)
                .await
                .is_err()
            {
                return false;
            }
        }
        let row: Vec<&[u8]> = bufs.iter().map(Vec::as_slice).collect();
        if consistent(&row) {
            return false;
        }
        let mut verdicts = Vec::with_capacity(n);
        for (m, buf) in bufs.iter().enumerate() {
            if Some(MemberIndex(m)) == q {
                verdicts.push(Verdict::Unknown);
                continue;
            }
            verdicts.push(self.verdicts(MemberIndex(m), ByteOffset(at), buf).await[0]);
        }
        matches!(self.repairable_member(&row, &verdicts, at).await, Some((m, _)) if m != parity)
    }
}
