//! RAID-5's parts of the sync passes: the source of a rebuilt block
//! (XOR of the others, block by block when that fails), the crash-resync
//! step (row by row: restore a bad block from its row, else new parity)
//! and the scrub's parity check.

use futures::future::join_all;

use super::checksum::Verdict;
use super::layout::{MemberIndex, StripeIndex};
use super::level::{LostBlocks, MemberOp, RebuildRead};
use super::parity::xor_into;
use super::rebuild::{lock_step, RebuildError, SourceBuffers, LOST_BLOCK};
use super::scrub::{MemberScrub, Read, BLOCK};
use super::volume::Volume;
use super::{raid5, trust};
use crate::block::{BlockError, Durability};
use crate::units::ByteOffset;

/// Like `raid5::reconstruct`, but a source that cannot be read is not
/// failed here: the reads' errors come back (`None`: the member is
/// down), and the caller decides per block. The sources are read into
/// buffers of the pass's `pool`, given back after.
pub(super) async fn reconstruct_quiet(
    vol: &Volume,
    member: MemberIndex,
    off: ByteOffset,
    out: &mut [u8],
    pool: &SourceBuffers,
) -> Result<(), Vec<(MemberIndex, Option<BlockError>)>> {
    let n = vol.geometry().members();
    let others = (0..n).map(MemberIndex).filter(|&m| m != member);
    let mut bufs = pool.take_n(n - 1, out.len());
    let reads = others
        .zip(bufs.iter_mut())
        .map(|(m, buf)| async move { vol.read_member(m, off, buf).await.map_err(|e| (m, e)) });
    let failed: Vec<_> = join_all(reads)
        .await
        .into_iter()
        .filter_map(Result::err)
        .collect();
    if failed.is_empty() {
        out.fill(0);
        for buf in &bufs {
            super::parity::xor_into(out, buf);
        }
    }
    pool.give(bufs);
    match failed.is_empty() {
        true => Ok(()),
        false => Err(failed),
    }
}

/// A RAID-5 reconstruction of a rebuild step failed: redoes it 4 KiB at
/// a time, so a source block that fails its checksum or cannot be read
/// while no redundancy is left costs that block only (md's bad-block
/// list does the same). Returns the member offsets of the blocks that
/// could not be rebuilt (zeroed in `buf`), with why. If a source member
/// went down, or keeps failing reads (`SourceErrors`), the rebuild
/// cannot go on.
pub(super) async fn reconstruct_by_block(
    vol: &Volume,
    r: RebuildRead<'_>,
) -> Result<LostBlocks, RebuildError> {
    let allowed_down = usize::from(!vol.is_active(r.member));
    let mut lost = Vec::new();
    for (i, piece) in r.buf.chunks_mut(LOST_BLOCK).enumerate() {
        let at = r.a + (i * LOST_BLOCK) as u64;
        let Err(failed) = reconstruct_quiet(vol, r.member, ByteOffset(at), piece, r.sources).await
        else {
            continue;
        };
        let reason = r.errors.settle(vol, &failed, allowed_down).await?;
        piece.fill(0);
        lost.push((at, reason));
    }
    Ok(lost)
}

/// Makes the stripes of `a..b` consistent, 4 KiB row by row: a row
/// that XORs to zero is left alone; in one that does not, a block that
/// fails its checksum while the XOR of the rest of its row passes it is
/// restored from them (the parity still held the truth); otherwise the
/// parity is recomputed from the data (a write torn by the crash).
/// Skipped when a member is down (parity is then the only copy of the
/// missing data).
pub(super) async fn resync_parity_step(vol: &Volume, a: u64, b: u64) -> Result<u64, RebuildError> {
    let n = vol.geometry().members();
    if vol.down_count() > 0 {
        return vol.reseal_step(a, b).await.map(|()| 0);
    }
    let _guards = lock_step(vol, a, b).await;
    let len = (b - a) as usize;
    let (mut bufs, verdicts) = read_with_verdicts(vol, a, len).await?;
    let mut changed = vec![vec![false; len.div_ceil(trust::BLOCK)]; n];
    for (i, at) in (0..len).step_by(trust::BLOCK).enumerate() {
        let rows = at..(at + trust::BLOCK).min(len);
        let row: Vec<&[u8]> = bufs.iter().map(|buf| &buf[rows.clone()]).collect();
        if trust::consistent(&row) {
            continue;
        }
        let off = a + at as u64;
        let row_verdicts: Vec<Verdict> = verdicts.iter().map(|v| v[i]).collect();
        let (m, bytes) = match vol.repairable_member(&row, &row_verdicts, off).await {
            Some(found) => found,
            None => {
                let p = parity_member_at(vol, off);
                (p, trust::rebuilt_from_others(&row, p.0))
            }
        };
        bufs[m.0][rows].copy_from_slice(&bytes);
        changed[m.0][i] = true;
    }
    let mut fixed = 0;
    for (m, blocks) in changed.iter().enumerate() {
        for (x, y) in runs(blocks) {
            let (x, y) = (x * trust::BLOCK, (y * trust::BLOCK).min(len));
            let op = MemberOp::Write(ByteOffset(a + x as u64), &bufs[m][x..y], Durability::Normal);
            if vol.write_member(MemberIndex(m), op).await {
                fixed += (y - x) as u64;
            }
        }
    }
    if let Some(hook) = vol.checksums() {
        for (m, buf) in bufs.iter().enumerate() {
            super::no_space::note_result(&hook.reseal(MemberIndex(m), ByteOffset(a), buf).await);
        }
    }
    Ok(fixed)
}

/// The parity member of the stripe holding member data offset `off`.
fn parity_member_at(vol: &Volume, off: u64) -> MemberIndex {
    let stripe = StripeIndex(off / vol.geometry().chunk().get());
    vol.geometry()
        .parity_member(stripe)
        .unwrap_or(MemberIndex(0))
}

/// The runs `[x, y)` of consecutive `true` in `flags`.
pub(super) fn runs(flags: &[bool]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, &f) in flags.iter().chain([&false]).enumerate() {
        match (f, start) {
            (true, None) => start = Some(i),
            (false, Some(x)) => {
                out.push((x, i));
                start = None;
            }
            _ => {}
        }
    }
    out
}

/// RAID-5: the XOR of all members must be zero in every block all of
/// them read well; repair rewrites the parity from the data.
pub(super) async fn check_parity(
    vol: &Volume,
    a: u64,
    reads: &[Read],
    members: &mut [MemberScrub],
    repair: bool,
) {
    if reads.iter().any(|r| !r.live) {
        return;
    }
    let len = reads[0].data.len();
    let mut x = reads[0].data.clone();
    for r in &reads[1..] {
        xor_into(&mut x, &r.data);
    }
    let chunk = vol.geometry().chunk().get();
    for (i, block) in x.chunks_exact(BLOCK).enumerate().take(len / BLOCK) {
        if is_zero(block) || reads.iter().any(|r| !r.good(i)) {
            continue;
        }
        let off = a + (i * BLOCK) as u64;
        let Some(p) = vol.geometry().parity_member(StripeIndex(off / chunk)) else {
            continue;
        };
        members[p.0].mismatch += 1;
        if repair {
            // Parity from data: current parity XOR (XOR of all).
            let mut fixed = reads[p.0].block(i).to_vec();
            xor_into(&mut fixed, block);
            let op = MemberOp::Write(ByteOffset(off), &fixed, Durability::Normal);
            if vol.write_member(p, op).await {
                members[p.0].repaired += 1;
            }
        }
    }
}

/// True when every byte is zero (a branch-free OR over words, so it
/// vectorizes).
pub(super) fn is_zero(block: &[u8]) -> bool {
    block.chunks_exact(8).fold(0u64, |acc, w| {
        acc | u64::from_ne_bytes(w.try_into().unwrap_or_default())
    }) == 0
        && block.chunks_exact(8).remainder().iter().all(|&b| b == 0)
}

/// Every member's bytes of member data `a..a + len` (the caller holds the
/// step's locks) and the checksum verdict of each of their blocks: the
/// start of a parity level's resync step (RAID-5 and RAID-6).
pub(super) async fn read_with_verdicts(
    vol: &Volume,
    a: u64,
    len: usize,
) -> Result<(Vec<Vec<u8>>, Vec<Vec<Verdict>>), RebuildError> {
    let n = vol.geometry().members();
    let mut bufs = vec![vec![0u8; len]; n];
    let reads = bufs
        .iter_mut()
        .enumerate()
        .map(|(m, buf)| raid5::read_or_fail(vol, MemberIndex(m), ByteOffset(a), buf));
    for r in join_all(reads).await {
        r.map_err(RebuildError::Sources)?;
    }
    let mut verdicts = Vec::with_capacity(n);
    for (m, buf) in bufs.iter().enumerate() {
        verdicts.push(vol.verdicts(MemberIndex(m), ByteOffset(a), buf).await);
    }
    Ok((bufs, verdicts))
}
