//! RAID-1's parts of the sync passes: the source of a rebuilt block (any
//! in-sync mirror, block by block when none serves the whole step), the
//! crash-resync step (per block the copy `trust::pick_copy` chooses) and
//! the scrub's mirror comparison.

use futures::future::join_all;

use super::checksum::Verdict;
use super::layout::MemberIndex;
use super::level::{LostBlocks, MemberOp, RebuildRead};
use super::rebuild::{lock_step, Lost, RebuildError, LOST_BLOCK};
use super::scrub::{MemberScrub, Read, BLOCK};
use super::trust;
use super::volume::Volume;
use crate::block::{BlockError, Durability};
use crate::units::ByteOffset;

/// Reads `a..a+buf.len()` from an in-sync mirror. When no mirror can
/// serve the whole step, goes 4 KiB at a time across the mirrors, so a
/// block that fails its checksum or cannot be read on every mirror
/// costs that block only (like RAID-5's `reconstruct_by_block`).
/// Returns the member offsets of the blocks no mirror could give
/// (zeroed in `buf`), with why. If a source mirror went down instead,
/// the rebuild cannot go on.
pub(super) async fn read_any_mirror(
    vol: &Volume,
    r: RebuildRead<'_>,
) -> Result<LostBlocks, RebuildError> {
    let count = vol.geometry().members();
    let sources = || {
        (0..count)
            .map(MemberIndex)
            .filter(|&m| m != r.member && vol.is_active(m))
            .collect::<Vec<_>>()
    };
    let before = sources().len();
    // Members that are not write-mostly first (a write-mostly one may lag).
    let order: Vec<MemberIndex> = vol.read_order(0).collect();
    for m in order {
        if vol.is_active(m) && vol.read_member(m, ByteOffset(r.a), r.buf).await.is_ok() {
            return Ok(Vec::new());
        }
    }
    let mut lost = Vec::new();
    for (i, piece) in r.buf.chunks_mut(LOST_BLOCK).enumerate() {
        let at = r.a + (i * LOST_BLOCK) as u64;
        let mut served = false;
        let mut reason = Lost::Checksum;
        for m in sources() {
            match vol.read_member(m, ByteOffset(at), piece).await {
                Ok(()) => {
                    served = true;
                    break;
                }
                Err(Some(e)) if !matches!(e, BlockError::Corrupt { .. }) => {
                    reason = Lost::ReadError;
                    r.errors.note(vol, m, &e).await;
                }
                Err(_) => {}
            }
        }
        if !served {
            if before == 0 || sources().len() < before {
                return Err(RebuildError::Sources(vol.data_lost()));
            }
            piece.fill(0);
            lost.push((at, reason));
        }
    }
    Ok(lost)
}

/// Makes the mirrors of `a..b` agree. Each 4 KiB block is taken from
/// the copy [`trust::pick_copy`] chooses: one that passes its checksum
/// before any that fails it, so a mirror written wrong never overwrites
/// the good ones. Mirrors that already hold the result are left alone.
pub(super) async fn resync_mirror_step(vol: &Volume, a: u64, b: u64) -> Result<u64, RebuildError> {
    let members: Vec<MemberIndex> = (0..vol.geometry().members()).map(MemberIndex).collect();
    let _guards = lock_step(vol, a, b).await;
    let off = ByteOffset(a);
    let copies = join_all(members.iter().map(|&m| async move {
        if !vol.is_active(m) {
            return None;
        }
        let mut buf = vec![0u8; (b - a) as usize];
        vol.read_member(m, off, &mut buf).await.ok().map(|()| buf)
    }))
    .await;
    let Some(first) = copies.iter().flatten().next() else {
        return Err(RebuildError::Sources(vol.data_lost()));
    };
    let want = if copies.iter().flatten().all(|c| c == first) {
        first.clone()
    } else {
        chosen_copies(vol, a, &current_copies(vol, &copies)).await
    };
    // Mirrors that already agree are left alone; a mirror that cannot
    // be read is rewritten. Members being rebuilt always get the copy.
    let op = MemberOp::Write(off, &want, Durability::Normal);
    let fix = members.iter().map(|&m| {
        let same = copies[m.0].as_ref() == Some(&want);
        async move {
            if same {
                vol.incoming_op(m, op).await;
                return false;
            }
            vol.write_member(m, op).await
        }
    });
    let n = join_all(fix).await.into_iter().filter(|&ok| ok).count() as u64;
    if let Some(hook) = vol.checksums() {
        for &m in &members {
            super::no_space::note_result(&hook.reseal(m, off, &want).await);
        }
    }
    Ok(n * (b - a))
}

/// The copies a resync may take from: a write-mostly member's copy may lag
/// (write-behind, docs/FORMAT.md crash case 76), so it is left out while a
/// member that is not write-mostly gave one.
fn current_copies(vol: &Volume, copies: &[Option<Vec<u8>>]) -> Vec<Option<Vec<u8>>> {
    let preferred = |m: usize| !vol.is_write_mostly(MemberIndex(m));
    if !(0..copies.len()).any(|m| preferred(m) && copies[m].is_some()) {
        return copies.to_vec();
    }
    (0..copies.len())
        .map(|m| copies[m].clone().filter(|_| preferred(m)))
        .collect()
}

/// Mirrors disagree somewhere in the step at `a`: builds the step block
/// by block from the copy each block's verdicts pick.
async fn chosen_copies(vol: &Volume, a: u64, copies: &[Option<Vec<u8>>]) -> Vec<u8> {
    let mut verdicts = Vec::with_capacity(copies.len());
    for (m, c) in copies.iter().enumerate() {
        verdicts.push(match c {
            Some(c) => vol.verdicts(MemberIndex(m), ByteOffset(a), c).await,
            None => Vec::new(),
        });
    }
    let len = copies.iter().flatten().next().map_or(0, Vec::len);
    let mut want = vec![0u8; len];
    let mut overruled = 0;
    for (i, out) in want.chunks_mut(trust::BLOCK).enumerate() {
        let at = i * trust::BLOCK..i * trust::BLOCK + out.len();
        let block: Vec<Option<(&[u8], Verdict)>> = copies
            .iter()
            .zip(&verdicts)
            .map(|(c, v)| c.as_ref().map(|c| (&c[at.clone()], v[i])))
            .collect();
        let pick = trust::pick_copy(&block).unwrap_or(0);
        let chosen = block[pick].map(|(bytes, _)| bytes).unwrap_or(&[]);
        out.copy_from_slice(chosen);
        overruled += usize::from(block.iter().flatten().any(|(bytes, _)| *bytes != chosen));
    }
    if overruled > 0 {
        tracing::warn!(
            volume = vol.volume_name(),
            offset = a,
            blocks = overruled,
            "resync: mirrors disagree; each block taken from a copy that passes its checksum \
             (else the one most mirrors hold)"
        );
    }
    want
}

/// RAID-1: every mirror that read a block well must equal the first
/// one that did; repair copies it over (md semantics).
pub(super) async fn check_mirrors(
    vol: &Volume,
    a: u64,
    reads: &[Read],
    members: &mut [MemberScrub],
    repair: bool,
) {
    let blocks = reads
        .iter()
        .find(|r| r.live)
        .map_or(0, |r| r.data.len() / BLOCK);
    for i in 0..blocks {
        let mut good = (0..reads.len()).filter(|&m| reads[m].good(i));
        let Some(first) = good.next() else {
            continue;
        };
        let want = reads[first].block(i);
        for m in good {
            if reads[m].block(i) == want {
                continue;
            }
            members[m].mismatch += 1;
            if repair {
                let off = ByteOffset(a + (i * BLOCK) as u64);
                let op = MemberOp::Write(off, want, Durability::Normal);
                if vol.write_member(MemberIndex(m), op).await {
                    members[m].repaired += 1;
                }
            }
        }
    }
}
