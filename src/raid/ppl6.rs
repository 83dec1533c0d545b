//! RAID-6 replay of the write-hole journal (docs/FORMAT.md §9, "RAID-6:
//! partial P and partial Q"): an entry on a stripe's P ring carries the
//! partial P of its rows, the same entry on the Q ring the partial Q.
//!
//! ```text
//!  entry on the ring of S (P or Q), rows not decided by a newer entry:
//!   rule 1  every touched chunk present ─► S := partial ⊕ Σ coef·D_touched
//!   rule 2  P ring, one touched chunk t missing, Q present ─►
//!           D_u (missing untouched) := PP ⊕ present untouched,
//!           D_t := P ⊕ other data, Q := syndrome of all data
//!   rule 3  otherwise ─► rows left alone (they define the unacknowledged t)
//! ```

use super::layout::{MemberIndex, StripeIndex};
use super::level::MemberOp;
use super::parity::xor_into;
use super::ppl::{blocks_of, record_fits, subtract, touched, PplRecord};
use super::syndrome::{gen_syndrome, gf_pow2, mul_xor_into};
use super::volume::Volume;
use crate::block::Durability;
use crate::units::ByteOffset;

/// Bytes of one checksummed block.
const BLOCK: u64 = 4096;

/// Which syndrome a ring's entry fixes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Syn {
    P,
    Q,
}

/// One entry being replayed: the record and where its stripe lives.
struct Entry<'a> {
    vol: &'a Volume,
    rec: &'a PplRecord,
    stripe: StripeIndex,
    chunk: u64,
}

impl Entry<'_> {
    /// Rows of data chunk `d` the entry's write touched, within its window.
    fn touched(&self, d: usize) -> Option<(u64, u64)> {
        let (rlo, rhi) = (u64::from(self.rec.rlo), u64::from(self.rec.rhi));
        if self.rec.full {
            return Some((rlo, rhi));
        }
        let len = u64::from(self.rec.len);
        touched(self.chunk, self.rec.start, len, d, rlo, rhi)
    }

    fn offset(&self, row: u64) -> ByteOffset {
        ByteOffset(self.stripe.0 * self.chunk + row)
    }

    async fn read(&self, m: MemberIndex, lo: u64, hi: u64) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; (hi - lo) as usize];
        self.vol
            .read_member(m, self.offset(lo), &mut buf)
            .await
            .ok()?;
        Some(buf)
    }

    /// Writes `bytes` (rows from `lo`) to `m`, 4 KiB block by block.
    async fn write(&self, m: MemberIndex, lo: u64, bytes: &[u8]) -> bool {
        let mut ok = true;
        for (a, b) in blocks_of(lo, lo + bytes.len() as u64) {
            let piece = &bytes[(a - lo) as usize..(b - lo) as usize];
            let op = MemberOp::Write(self.offset(a), piece, Durability::Normal);
            ok &= self.vol.member_op(m, op).await;
        }
        ok
    }

    /// Rule 1's write of `bytes` (rows from `lo`) to `m` (P or Q), keeping
    /// every block whose row has a data block failing its checksum while P
    /// and the other data rebuild one that passes: that P and Q still hold
    /// the truth, the resync restores the block (as RAID-5's replay does,
    /// docs/FORMAT.md §8, §9).
    async fn write_checked(&self, m: MemberIndex, lo: u64, bytes: &[u8]) -> bool {
        let g = self.vol.geometry();
        let (Some(p), q) = (g.parity_member(self.stripe), g.q_member(self.stripe)) else {
            return false;
        };
        let (mut ok, mut kept) = (true, 0);
        for (a, b) in blocks_of(lo, lo + bytes.len() as u64) {
            let at = self.offset(a).0 / BLOCK * BLOCK;
            if self.vol.p_holds_truth(p, q, at).await {
                kept += 1;
                continue;
            }
            ok &= self
                .write(m, a, &bytes[(a - lo) as usize..(b - lo) as usize])
                .await;
        }
        if kept > 0 {
            tracing::warn!(
                stripe = self.stripe.0,
                blocks = kept,
                "replay: P/Q kept over data blocks that fail their checksums (the resync restores them)"
            );
        }
        ok
    }
}

/// Replays the rows `rows` of `rec` from `member`'s ring. False when
/// nothing was written.
pub(super) async fn replay_one(
    vol: &Volume,
    member: MemberIndex,
    rec: &PplRecord,
    rows: &[(u64, u64)],
) -> bool {
    let g = vol.geometry();
    let stripe = StripeIndex(rec.stripe);
    if !record_fits(vol, rec) || !vol.is_active(member) {
        return false;
    }
    let syn = match (g.parity_member(stripe), g.q_member(stripe)) {
        (Some(p), _) if p == member => Syn::P,
        (_, Some(q)) if q == member => Syn::Q,
        _ => return false,
    };
    let e = Entry {
        vol,
        rec,
        stripe,
        chunk: g.chunk().get(),
    };
    let _guard = vol.locks().lock(stripe).await;
    let Some((syndrome, missing)) = fold(&e, syn).await else {
        return false;
    };
    // Rule 1: the rows where every touched chunk is present.
    let unknown: Vec<(u64, u64)> = missing.iter().map(|&(_, r)| r).collect();
    let rlo = u64::from(rec.rlo);
    let mut wrote = false;
    for (lo, hi) in rows.iter().flat_map(|&r| subtract(r, &unknown)) {
        let bytes = &syndrome[(lo - rlo) as usize..(hi - rlo) as usize];
        wrote |= e.write_checked(member, lo, bytes).await;
    }
    // Rule 2: from the P ring, rows where exactly one touched chunk is
    // missing, when Q is present.
    let q_live = g.q_member(stripe).is_some_and(|q| vol.is_active(q));
    if syn == Syn::P && q_live {
        for (i, &(t, range)) in missing.iter().enumerate() {
            let others: Vec<(u64, u64)> = (missing.iter().enumerate())
                .filter(|&(j, _)| j != i)
                .map(|(_, &(_, r))| r)
                .collect();
            let mine = rows.iter().flat_map(|&r| subtract(r, &[(0, range.0)]));
            let mine: Vec<(u64, u64)> = mine
                .flat_map(|r| subtract(r, &[(range.1, u64::MAX)]))
                .collect();
            for (lo, hi) in mine.into_iter().flat_map(|r| subtract(r, &others)) {
                wrote |= complete_from_p(&e, t, lo, hi).await;
            }
        }
    }
    wrote
}

/// The syndrome of the entry's window (its partial, zeros for FULL, plus
/// every present touched chunk's current bytes), and the touched chunks
/// that are missing with their rows. `None`: a read failed.
async fn fold(e: &Entry<'_>, syn: Syn) -> Option<(Vec<u8>, Vec<(usize, (u64, u64))>)> {
    let g = e.vol.geometry();
    let (rlo, rhi) = (u64::from(e.rec.rlo), u64::from(e.rec.rhi));
    let mut syndrome = if e.rec.full {
        vec![0u8; (rhi - rlo) as usize]
    } else {
        e.rec.pp.clone()
    };
    let mut missing = Vec::new();
    for d in 0..g.data_members() {
        let Some((lo, hi)) = e.touched(d) else {
            continue;
        };
        let m = g.data_member(e.stripe, d);
        if !e.vol.is_active(m) {
            missing.push((d, (lo, hi)));
            continue;
        }
        let buf = e.read(m, lo, hi).await?;
        let rows = &mut syndrome[(lo - rlo) as usize..(hi - rlo) as usize];
        match syn {
            Syn::P => xor_into(rows, &buf),
            Syn::Q => mul_xor_into(rows, &buf, gf_pow2(d)),
        }
    }
    Some((syndrome, missing))
}

/// Rule 2 for rows `[lo, hi)` where data chunk `t` (missing) was being
/// written: its bytes are taken from P, a missing untouched chunk from the
/// partial P, and Q is regenerated and written. False when nothing was.
async fn complete_from_p(e: &Entry<'_>, t: usize, lo: u64, hi: u64) -> bool {
    let g = e.vol.geometry();
    let (Some(pm), Some(qm)) = (g.parity_member(e.stripe), g.q_member(e.stripe)) else {
        return false;
    };
    let Some(p) = e.read(pm, lo, hi).await else {
        return false;
    };
    let width = (hi - lo) as usize;
    let mut data = vec![vec![0u8; width]; g.data_members()];
    let mut gone = Vec::new();
    for (d, row) in data.iter_mut().enumerate() {
        let m = g.data_member(e.stripe, d);
        if d == t || !e.vol.is_active(m) {
            gone.push(d);
            continue;
        }
        let Some(buf) = e.read(m, lo, hi).await else {
            return false;
        };
        *row = buf;
    }
    if let Some(&u) = gone.iter().find(|&&d| d != t) {
        match untouched_from_pp(e, &data, &gone, lo, hi) {
            Some(bytes) => data[u] = bytes,
            None => return false,
        }
    }
    let mut dt = p;
    for (d, row) in data.iter().enumerate() {
        if d != t {
            xor_into(&mut dt, row);
        }
    }
    data[t] = dt;
    let (mut np, mut nq) = (vec![0u8; width], vec![0u8; width]);
    let rows: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
    gen_syndrome(&mut np, &mut nq, &rows);
    e.write(qm, lo, &nq).await
}

/// A missing chunk the entry did not touch at rows `[lo, hi)`: its bytes
/// are the partial P there XOR the present chunks' untouched bytes.
/// `None` for a FULL entry (it touches everything) or a touched chunk.
fn untouched_from_pp(
    e: &Entry<'_>,
    data: &[Vec<u8>],
    gone: &[usize],
    lo: u64,
    hi: u64,
) -> Option<Vec<u8>> {
    let rlo = u64::from(e.rec.rlo);
    let mut out = e
        .rec
        .pp
        .get((lo - rlo) as usize..(hi - rlo) as usize)?
        .to_vec();
    for (d, row) in data.iter().enumerate() {
        if gone.contains(&d) {
            continue;
        }
        // Untouched rows of a present chunk are in PP; touched ones not.
        let untouched = match e.touched(d) {
            Some(t) => subtract((lo, hi), &[t]),
            None => vec![(lo, hi)],
        };
        for (a, b) in untouched {
            let r = (a - lo) as usize..(b - lo) as usize;
            xor_into(&mut out[r.clone()], &row[r]);
        }
    }
    Some(out)
}
