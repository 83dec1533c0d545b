//! RAID-6's parts of the sync passes: the source of a rebuilt block
//! (rebuilt from the others with up to two of them lost, 4 KiB at a time
//! when that fails), the crash-resync step (4 KiB row by row: restore a
//! data block from P when its checksum says so, else new P and Q), and the
//! scrub's check of P and Q, which names the member that is wrong.
//!
//! ```text
//!  scrub row:  P' Q' from data;  ΔP = P^P', ΔQ = Q^Q'
//!     ΔP only ─► P wrong          ΔQ only ─► Q wrong
//!     both, ΔQ = g^z·ΔP for every byte, z a data slot ─► data z wrong
//!     else ─► P and Q wrong (stale: a torn write)
//!  repair: a wrong data block is rewritten only when the rebuilt bytes pass
//!          its checksum; otherwise P and Q are recomputed (md's repair)
//! ```
//!
//! Two members being rebuilt at once each run their own pass; a step of
//! one reads the other from its new member where that is already in sync.

use super::checksum::Verdict;
use super::layout::{MemberIndex, StripeIndex};
use super::level::{LostBlocks, MemberOp, RebuildRead, ScrubCheck};
use super::raid5_sync::{is_zero, runs};
use super::raid6::{role, stripe_rows_in, Role, StripeRows};
use super::rebuild::{lock_step, RebuildError, LOST_BLOCK};
use super::scrub::{Read, BLOCK};
use super::syndrome::{gen_syndrome, gf_inv, gf_mul, gf_pow2};
use super::trust;
use super::volume::Volume;
use crate::block::Durability;
use crate::units::ByteOffset;

/// The pieces of member data `a..b` cut at chunk (stripe) boundaries.
fn stripe_pieces(vol: &Volume, a: u64, b: u64) -> impl Iterator<Item = (StripeIndex, u64, u64)> {
    let chunk = vol.geometry().chunk().get();
    let mut at = a;
    std::iter::from_fn(move || {
        (at < b).then(|| {
            let end = b.min((at / chunk + 1) * chunk);
            let piece = (StripeIndex(at / chunk), at, end);
            at = end;
            piece
        })
    })
}

/// Fills a rebuild step's buffer ([`rebuild_read_many`] of one).
pub(super) async fn rebuild_read(
    vol: &Volume,
    r: RebuildRead<'_>,
) -> Result<LostBlocks, RebuildError> {
    Ok(rebuild_read_many(vol, vec![r])
        .await?
        .pop()
        .unwrap_or_default())
}

/// The buffers of several members' rebuild step (all at the same member
/// offsets): each stripe piece of all of them from one read of the other
/// members; a piece that cannot be is redone per member, 4 KiB at a time.
pub(super) async fn rebuild_read_many(
    vol: &Volume,
    mut reads: Vec<RebuildRead<'_>>,
) -> Result<Vec<LostBlocks>, RebuildError> {
    let Some(first) = reads.first() else {
        return Ok(Vec::new());
    };
    let (a, len, pool) = (first.a, first.buf.len(), first.sources);
    let members: Vec<MemberIndex> = reads.iter().map(|r| r.member).collect();
    let mut lost = vec![Vec::new(); reads.len()];
    for (stripe, x, y) in stripe_pieces(vol, a, a + len as u64) {
        let span = (x - a) as usize..(y - a) as usize;
        let got = stripe_rows_in(vol, stripe, ByteOffset(x), span.len(), &members, Some(pool));
        if let Ok(rows) = got.await {
            for r in reads.iter_mut() {
                r.buf[span.clone()].copy_from_slice(rows.of(role(vol, stripe, r.member)));
            }
            pool.give(rows.into_bufs());
            continue;
        }
        for (r, lost) in reads.iter_mut().zip(lost.iter_mut()) {
            let piece = RebuildRead {
                member: r.member,
                a: x,
                buf: &mut r.buf[span.clone()],
                errors: r.errors,
                sources: r.sources,
            };
            lost.extend(rebuild_by_block(vol, stripe, piece).await?);
        }
    }
    Ok(lost)
}

/// A stripe piece of a rebuild step, 4 KiB at a time: a block with more
/// than two sources lost is lost on the new member alone (zeroed and
/// returned). A rebuild that lost more sources than RAID-6 covers stops.
async fn rebuild_by_block(
    vol: &Volume,
    stripe: StripeIndex,
    r: RebuildRead<'_>,
) -> Result<LostBlocks, RebuildError> {
    let allowed_down = 1 + usize::from(!vol.is_active(r.member));
    let mine = role(vol, stripe, r.member);
    let mut lost = Vec::new();
    for (i, piece) in r.buf.chunks_mut(LOST_BLOCK).enumerate() {
        let at = r.a + (i * LOST_BLOCK) as u64;
        let skip = [r.member];
        let got = stripe_rows_in(
            vol,
            stripe,
            ByteOffset(at),
            piece.len(),
            &skip,
            Some(r.sources),
        );
        let failed = match got.await {
            Ok(rows) => {
                piece.copy_from_slice(rows.of(mine));
                r.sources.give(rows.into_bufs());
                continue;
            }
            Err(failed) => failed,
        };
        let reason = r.errors.settle(vol, &failed, allowed_down).await?;
        piece.fill(0);
        lost.push((at, reason));
    }
    Ok(lost)
}

/// The rows of one 4 KiB row of every member (`bufs[m][i*BLOCK..]`) by role.
fn row_of(vol: &Volume, stripe: StripeIndex, blocks: &[&[u8]]) -> StripeRows {
    let k = vol.geometry().data_members();
    let mut rows = StripeRows {
        data: vec![Vec::new(); k],
        p: Vec::new(),
        q: Vec::new(),
    };
    for (m, b) in blocks.iter().enumerate() {
        match role(vol, stripe, MemberIndex(m)) {
            Role::Data(d) => rows.data[d] = b.to_vec(),
            Role::P => rows.p = b.to_vec(),
            Role::Q => rows.q = b.to_vec(),
        }
    }
    rows
}

/// Makes the stripes of `a..b` consistent after a crash, 4 KiB row by
/// row: a row whose P and Q match its data is left alone; otherwise a
/// data block that fails its checksum while P and the rest of the data
/// rebuild one that passes is restored (P still held the truth), and P
/// and Q are recomputed from the data. Skipped when a member is down.
pub(super) async fn resync_step(vol: &Volume, a: u64, b: u64) -> Result<u64, RebuildError> {
    let n = vol.geometry().members();
    if vol.down_count() > 0 {
        return vol.reseal_step(a, b).await.map(|()| 0);
    }
    let _guards = lock_step(vol, a, b).await;
    let len = (b - a) as usize;
    let (mut bufs, verdicts) = super::raid5_sync::read_with_verdicts(vol, a, len).await?;
    let mut changed = vec![vec![false; len.div_ceil(trust::BLOCK)]; n];
    for (i, at) in (0..len).step_by(trust::BLOCK).enumerate() {
        let span = at..(at + trust::BLOCK).min(len);
        let row_verdicts: Vec<Verdict> = verdicts.iter().map(|v| v[i]).collect();
        let blocks: Vec<&[u8]> = bufs.iter().map(|buf| &buf[span.clone()]).collect();
        let Some(fixed) = resync_row(vol, a + at as u64, &blocks, &row_verdicts).await else {
            continue;
        };
        for (m, bytes) in fixed.into_iter().enumerate() {
            if bufs[m][span.clone()] != bytes[..] {
                bufs[m][span.clone()].copy_from_slice(&bytes);
                changed[m][i] = true;
            }
        }
    }
    let fixed = write_changed(vol, a, &bufs, &changed).await;
    if let Some(hook) = vol.checksums() {
        for (m, buf) in bufs.iter().enumerate() {
            super::no_space::note_result(&hook.reseal(MemberIndex(m), ByteOffset(a), buf).await);
        }
    }
    Ok(fixed)
}

/// One 4 KiB row at member offset `off` (`blocks[m]`: member `m`'s): `None`
/// when P and Q match the data; else every member's new block.
async fn resync_row(
    vol: &Volume,
    off: u64,
    blocks: &[&[u8]],
    verdicts: &[Verdict],
) -> Option<Vec<Vec<u8>>> {
    let stripe = StripeIndex(off / vol.geometry().chunk().get());
    let mut rows = row_of(vol, stripe, blocks);
    let (p, q) = (rows.p.clone(), rows.q.clone());
    rows.regenerate();
    if rows.p == p && rows.q == q {
        return None;
    }
    // The RAID-5 rule over data and P (Q's block taken as zero, never picked).
    let qm = vol.geometry().q_member(stripe).unwrap_or(MemberIndex(0));
    let zero = vec![0u8; blocks[qm.0].len()];
    let mut xor_row: Vec<&[u8]> = blocks.to_vec();
    xor_row[qm.0] = &zero;
    let mut xor_verdicts = verdicts.to_vec();
    xor_verdicts[qm.0] = Verdict::Unknown;
    if let Some((m, bytes)) = vol.repairable_member(&xor_row, &xor_verdicts, off).await {
        if let Role::Data(d) = role(vol, stripe, m) {
            rows.data[d] = bytes;
            rows.regenerate();
        }
    }
    let n = vol.geometry().members();
    Some(
        (0..n)
            .map(|m| rows.of(role(vol, stripe, MemberIndex(m))).to_vec())
            .collect(),
    )
}

/// Writes the changed 4 KiB blocks of `bufs` (member data at `a`); returns
/// the bytes written.
async fn write_changed(vol: &Volume, a: u64, bufs: &[Vec<u8>], changed: &[Vec<bool>]) -> u64 {
    let mut fixed = 0;
    for (m, blocks) in changed.iter().enumerate() {
        let len = bufs[m].len();
        for (x, y) in runs(blocks) {
            let (x, y) = (x * trust::BLOCK, (y * trust::BLOCK).min(len));
            let op = MemberOp::Write(ByteOffset(a + x as u64), &bufs[m][x..y], Durability::Normal);
            if vol.write_member(MemberIndex(m), op).await {
                fixed += (y - x) as u64;
            }
        }
    }
    fixed
}

/// Block `block` of member `m` in a scrub step at `a`, rebuilt from the
/// others when at most two members of its row did not read it well.
pub(super) fn scrub_rebuild_block(
    vol: &Volume,
    a: u64,
    reads: &[Read],
    m: usize,
    block: usize,
) -> Option<Vec<u8>> {
    let lost: Vec<usize> = (0..reads.len())
        .filter(|&k| !reads[k].good(block))
        .collect();
    if lost.len() > 2 || !lost.contains(&m) || reads.iter().any(|r| r.data.is_empty()) {
        return None;
    }
    let off = a + (block * BLOCK) as u64;
    let stripe = StripeIndex(off / vol.geometry().chunk().get());
    let blocks: Vec<&[u8]> = reads.iter().map(|r| r.block(block)).collect();
    let mut rows = row_of(vol, stripe, &blocks);
    let lost_roles: Vec<Role> = lost
        .iter()
        .map(|&k| role(vol, stripe, MemberIndex(k)))
        .collect();
    rows.recover(&lost_roles)
        .then(|| rows.of(role(vol, stripe, MemberIndex(m))).to_vec())
}

/// Which members of a row are wrong, from ΔP and ΔQ (not both zero).
fn culprit(d_p: &[u8], d_q: &[u8], k: usize) -> Wrong {
    match (is_zero(d_p), is_zero(d_q)) {
        (false, true) => return Wrong::P,
        (true, false) => return Wrong::Q,
        _ => {}
    }
    // One wrong data block z: ΔQ = g^z·ΔP in every byte.
    let Some(j) = d_p.iter().position(|&x| x != 0) else {
        return Wrong::Both;
    };
    let ratio = gf_mul(d_q[j], gf_inv(d_p[j]));
    let Some(z) = (0..k).find(|&z| gf_pow2(z) == ratio) else {
        return Wrong::Both;
    };
    let g = gf_pow2(z);
    let all = d_p.iter().zip(d_q).all(|(&p, &q)| gf_mul(g, p) == q);
    if all {
        Wrong::Data(z)
    } else {
        Wrong::Both
    }
}

/// The member(s) a scrub names for a row whose P and Q disagree with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wrong {
    P,
    Q,
    Data(usize),
    /// P and Q both stale (or no single block explains the difference).
    Both,
}

/// RAID-6: P and Q must match the data in every block every member read
/// well. A mismatch is counted on the member found wrong; repair
/// rewrites it (a data block only when its checksum confirms the rebuilt
/// bytes; else P and Q from the data).
pub(super) async fn check_syndromes(vol: &Volume, c: ScrubCheck<'_>) {
    if c.reads.iter().any(|r| !r.live) {
        return;
    }
    let chunk = vol.geometry().chunk().get();
    let blocks = c.reads[0].data.len() / BLOCK;
    for i in 0..blocks {
        if c.reads.iter().any(|r| !r.good(i)) {
            continue;
        }
        let off = c.a + (i * BLOCK) as u64;
        let stripe = StripeIndex(off / chunk);
        let row: Vec<&[u8]> = c.reads.iter().map(|r| r.block(i)).collect();
        let rows = row_of(vol, stripe, &row);
        let (mut p, mut q) = (vec![0u8; BLOCK], vec![0u8; BLOCK]);
        let data: Vec<&[u8]> = rows.data.iter().map(Vec::as_slice).collect();
        gen_syndrome(&mut p, &mut q, &data);
        super::parity::xor_into(&mut p, &rows.p);
        super::parity::xor_into(&mut q, &rows.q);
        if is_zero(&p) && is_zero(&q) {
            continue;
        }
        let wrong = culprit(&p, &q, rows.data.len());
        let fix = RowFix {
            vol,
            off,
            stripe,
            rows: &rows,
            d_p: &p,
        };
        let (named, repaired) = fix.apply(wrong, c.repair).await;
        c.members[named.0].mismatch += 1;
        if repaired {
            c.members[named.0].repaired += 1;
        }
    }
}

/// A scrubbed row found inconsistent.
struct RowFix<'a> {
    vol: &'a Volume,
    off: u64,
    stripe: StripeIndex,
    rows: &'a StripeRows,
    /// P ^ P' (the data's own P).
    d_p: &'a [u8],
}

impl RowFix<'_> {
    /// The member named for `wrong` and, with `repair`, whether it was
    /// rewritten.
    async fn apply(&self, wrong: Wrong, repair: bool) -> (MemberIndex, bool) {
        let g = self.vol.geometry();
        let pm = g.parity_member(self.stripe).unwrap_or(MemberIndex(0));
        let qm = g.q_member(self.stripe).unwrap_or(MemberIndex(0));
        let named = match wrong {
            Wrong::P | Wrong::Both => pm,
            Wrong::Q => qm,
            Wrong::Data(z) => g.data_member(self.stripe, z),
        };
        if !repair {
            return (named, false);
        }
        if let Wrong::Data(z) = wrong {
            let mut fixed = self.rows.data[z].clone();
            super::parity::xor_into(&mut fixed, self.d_p);
            let at = ByteOffset(self.off);
            if self.vol.verdicts(named, at, &fixed).await == [Verdict::Good] {
                let ok = self.write(named, &fixed).await;
                return (named, ok);
            }
        }
        let mut rows = StripeRows {
            data: self.rows.data.clone(),
            p: vec![0u8; BLOCK],
            q: vec![0u8; BLOCK],
        };
        rows.regenerate();
        let p_ok = rows.p == self.rows.p || self.write(pm, &rows.p).await;
        let q_ok = rows.q == self.rows.q || self.write(qm, &rows.q).await;
        (named, p_ok && q_ok)
    }

    async fn write(&self, member: MemberIndex, bytes: &[u8]) -> bool {
        let op = MemberOp::Write(ByteOffset(self.off), bytes, Durability::Normal);
        self.vol.write_member(member, op).await
    }
}
