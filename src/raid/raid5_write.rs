//! RAID-5 write of the part of one stripe a request covers (the caller
//! holds that stripe's lock).
//!
//! ```text
//!  plan ─► Full        parity = XOR(new chunks), nothing read
//!       ├► Rmw         read old data + old parity rows, P ^= old ^ new
//!       ├► Rcw         read untouched data rows, P = XOR(all rows)
//!       ├► Reconstruct one data member down and written to: read every live
//!       │              row + parity, rebuild the missing rows, P = XOR(rows)
//!       └► DataOnly    parity member down (or array beyond repair)
//!  reads fail ─► the member is failed ─► plan again (bounded)
//!  a read hits a checksum mismatch ─► rewrite it from the others ─► plan again
//!  log: partial parity (or a FULL entry) durable in the parity member's
//!       journal first, when a parity log is set (ppl.rs, FORMAT.md §9)
//!  commit: data + parity concurrently; succeeds if every written chunk is on
//!          a member that took it, or recoverable from freshly written parity
//! ```
//! Rmw is chosen over Rcw when it reads fewer bytes.

use futures::future::join_all;

use super::layout::{MemberIndex, StripeIndex};
use super::level::{join_each, MemberOp};
use super::parity::{xor_into, xor_sources};
use super::ppl::{PplRecord, PplTicket};
use super::volume::Volume;
use crate::block::{BlockError, BlockResult, Durability, Hold};
use crate::units::ByteOffset;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Full,
    Rmw,
    Rcw,
    Reconstruct(usize),
    DataOnly,
}

struct StripeWrite<'a> {
    vol: &'a Volume,
    stripe: StripeIndex,
    /// Offset of `data` within the stripe's data bytes.
    start: u64,
    data: &'a [u8],
    durability: Durability,
    k: usize,
    chunk: u64,
}

/// Writes `data` at `start` within the data of `stripe`.
pub(super) async fn write_stripe(
    vol: &Volume,
    stripe: StripeIndex,
    start: u64,
    data: &[u8],
    durability: Durability,
) -> BlockResult {
    let g = vol.geometry();
    let w = StripeWrite {
        vol,
        stripe,
        start,
        data,
        durability,
        k: g.data_members(),
        chunk: g.chunk().get(),
    };
    // The checksum pages its reads load stay resident until its update.
    let _held = w.hold();
    for _ in 0..=g.members() {
        let mode = w.mode();
        if let Some(rows) = w.widened_rows(mode) {
            match write_widened(&w, rows).await {
                Some(result) => return result,
                None => continue,
            }
        }
        let mut computed = match mode {
            Mode::Full => Some(Computed {
                rlo: 0,
                parity: w.full_parity(),
                pp: None,
            }),
            Mode::DataOnly => None,
            Mode::Rmw => match w.rmw_parity().await {
                Some(c) => Some(c),
                None => continue,
            },
            Mode::Rcw => match w.rows_parity(None).await {
                Some(c) => Some(c),
                None => continue,
            },
            Mode::Reconstruct(dm) => match w.rows_parity(Some(dm)).await {
                Some(c) => Some(c),
                None => continue,
            },
        };
        let Ok(_ticket) = w.log(computed.as_mut()).await else {
            continue;
        };
        return w.commit(computed.map(|c| (c.rlo, c.parity))).await;
    }
    Err(vol.data_lost())
}

/// Member blocks: the unit of the checksum layer's seal.
const BLOCK: u64 = 4096;

/// A read-modify-write inside one data chunk that covers parts of 4 KiB
/// blocks (`rows`: the chunk, and the whole blocks around the write): the
/// old blocks read for the parity are merged with the new bytes and
/// written whole, data and parity, so each member touched is read once and
/// written once (the checksum layer, given whole blocks, reads no edge
/// block to seal them). The stripe lock keeps the merged neighbours
/// current. `None`: a read or the journal failed; the caller plans again.
async fn write_widened(
    w: &StripeWrite<'_>,
    (d, alo, ahi): (usize, u64, u64),
) -> Option<BlockResult> {
    let width = (ahi - alo) as usize;
    let (lo, hi) = w.touched(d)?;
    // Old parity, then old data (merged with the new bytes in place).
    let mut parity = vec![0u8; 2 * width];
    let (p, old) = parity.split_at_mut(width);
    let (p_ok, d_ok) = futures::join!(
        w.read(w.parity_member(), alo, p),
        w.read(w.member(d), alo, old),
    );
    if !(p_ok && d_ok) {
        return None;
    }
    xor_into(p, old);
    let pp = w.logging().then(|| p.to_vec());
    old[(lo - alo) as usize..(hi - alo) as usize].copy_from_slice(w.new_data(d, lo, hi));
    xor_into(p, old);
    let merged = parity.split_off(width);
    let wide = StripeWrite {
        start: d as u64 * w.chunk + alo,
        data: &merged,
        ..*w
    };
    let mut computed = Computed {
        rlo: alo,
        parity,
        pp,
    };
    // The journal entry stays claimed until the data and parity are written.
    let _ticket = wide.log(Some(&mut computed)).await.ok()?;
    Some(wide.commit(Some((computed.rlo, computed.parity))).await)
}

/// New parity rows from `rlo`, and the partial parity of the same rows
/// (`None`: a full-stripe write, logged without PP).
struct Computed {
    rlo: u64,
    parity: Vec<u8>,
    pp: Option<Vec<u8>>,
}

impl StripeWrite<'_> {
    /// Chunk-relative range of data chunk `d` this write covers.
    fn touched(&self, d: usize) -> Option<(u64, u64)> {
        let base = d as u64 * self.chunk;
        let lo = self.start.max(base);
        let hi = (self.start + self.data.len() as u64).min(base + self.chunk);
        (lo < hi).then(|| (lo - base, hi - base))
    }

    /// The data chunk and its whole-block rows of a read-modify-write
    /// (`mode`) inside one chunk that is not on 4 KiB block boundaries, on
    /// a volume with block checksums.
    fn widened_rows(&self, mode: Mode) -> Option<(usize, u64, u64)> {
        let mut touched = self.touched_all();
        let (Some((d, lo, hi)), None) = (touched.next(), touched.next()) else {
            return None;
        };
        // Without block checksums a member writes the bytes as they are
        // (whole logical blocks go straight to O_DIRECT): nothing to save.
        let sealed = self.vol.checksums().is_some();
        let aligned = lo % BLOCK == 0 && hi % BLOCK == 0;
        (mode == Mode::Rmw && sealed && !aligned)
            .then(|| (d, lo / BLOCK * BLOCK, hi.div_ceil(BLOCK) * BLOCK))
    }

    fn touched_all(&self) -> impl Iterator<Item = (usize, u64, u64)> + '_ {
        (0..self.k).filter_map(|d| self.touched(d).map(|(lo, hi)| (d, lo, hi)))
    }

    fn new_data(&self, d: usize, lo: u64, hi: u64) -> &[u8] {
        let at = (d as u64 * self.chunk + lo - self.start) as usize;
        &self.data[at..at + (hi - lo) as usize]
    }

    fn member(&self, d: usize) -> MemberIndex {
        self.vol.geometry().data_member(self.stripe, d)
    }

    fn parity_member(&self) -> MemberIndex {
        // RAID-5 always has a parity member.
        self.vol
            .geometry()
            .parity_member(self.stripe)
            .unwrap_or(MemberIndex(0))
    }

    fn member_offset(&self, row: u64) -> ByteOffset {
        ByteOffset(self.stripe.0 * self.chunk + row)
    }

    /// Smallest chunk-relative row range holding every touched byte.
    fn hull(&self) -> (u64, u64) {
        self.touched_all()
            .fold((self.chunk, 0), |(a, b), (_, lo, hi)| {
                (a.min(lo), b.max(hi))
            })
    }

    fn mode(&self) -> Mode {
        let g = self.vol.geometry();
        let down: Vec<MemberIndex> = (0..g.members())
            .map(MemberIndex)
            .filter(|&m| !self.vol.is_active(m))
            .collect();
        if down.len() >= 2 {
            return Mode::DataOnly;
        }
        if self.start == 0 && self.data.len() as u64 == self.k as u64 * self.chunk {
            return Mode::Full;
        }
        if let Some(&m) = down.first() {
            return match g.data_index(self.stripe, m) {
                // Parity down but being rebuilt: compute it for the new member.
                None if self.vol.incoming(m).is_some() => Mode::Rcw,
                None => Mode::DataOnly,
                Some(dm) if self.touched(dm).is_some() => Mode::Reconstruct(dm),
                Some(_) => Mode::Rmw,
            };
        }
        let (rlo, rhi) = self.hull();
        let rows = rhi - rlo;
        let written: u64 = self.touched_all().map(|(_, lo, hi)| hi - lo).sum();
        let rmw_reads = written + rows;
        let rcw_reads = self.k as u64 * rows - written;
        // A tie (a 4 KiB write on four members: 2 reads either way) goes
        // to read-modify-write: it reads the blocks it rewrites, so the
        // checksum pages its reads load are the ones its update needs
        // (held: `hold`), where a reconstruct-write loads two pages more
        // (docs/FORMAT.md §8 "Page cache").
        if rmw_reads <= rcw_reads {
            Mode::Rmw
        } else {
            Mode::Rcw
        }
    }

    fn full_parity(&self) -> Vec<u8> {
        let c = self.chunk as usize;
        let sources: Vec<&[u8]> = self.data.chunks(c).collect();
        let mut parity = vec![0u8; c];
        xor_sources(&mut parity, &sources);
        parity
    }

    /// Holds the checksum pages of the member blocks this write reads and
    /// rewrites (its data ranges and parity rows), from the plan's reads
    /// to the commit.
    /// The parity rows' and first data range's holds are inline, the
    /// others (writes over several chunks) in a list.
    fn hold(&self) -> ([Hold; 2], Vec<Hold>) {
        let (rlo, rhi) = self.hull();
        let parity = self.member_offset(rlo);
        let mut data = self.touched_all().map(|(d, lo, hi)| {
            self.vol
                .hold_member(self.member(d), self.member_offset(lo), hi - lo)
        });
        let first = data.next().flatten();
        let parity = self
            .vol
            .hold_member(self.parity_member(), parity, rhi - rlo);
        ([parity, first], data.collect())
    }

    /// Reads for planning; a member that fails is failed (the plan is redone).
    async fn read(&self, member: MemberIndex, row: u64, buf: &mut [u8]) -> bool {
        match self
            .vol
            .read_member(member, self.member_offset(row), buf)
            .await
        {
            Ok(()) => true,
            Err(Some(error @ BlockError::Corrupt { .. })) => {
                // Bad bytes on a live member: rebuild them from the others
                // first (never fold them into parity), then plan again.
                let off = self.member_offset(row);
                super::raid5::repair_range(self.vol, member, off, buf.len()).await;
                tracing::debug!(%member, %error, "stripe write found a bad block");
                false
            }
            Err(error) => {
                if let Some(error) = error {
                    self.vol.fail_member(member, &error).await;
                }
                false
            }
        }
    }

    /// Read-modify-write: new parity rows from old parity, old and new data.
    async fn rmw_parity(&self) -> Option<Computed> {
        let (rlo, rhi) = self.hull();
        let width = (rhi - rlo) as usize;
        let mut touched = self.touched_all();
        let (Some((d, lo, hi)), None) = (touched.next(), touched.next()) else {
            return self.rmw_parity_many(rlo, vec![0u8; width]).await;
        };
        // One data chunk (every small write): its rows are the hull. Old
        // parity and old data share one buffer (one allocation); the
        // parity half is kept.
        let mut parity = vec![0u8; 2 * width];
        let (p, old) = parity.split_at_mut(width);
        let (p_ok, d_ok) = futures::join!(
            self.read(self.parity_member(), rlo, p),
            self.read(self.member(d), lo, old),
        );
        if !(p_ok && d_ok) {
            return None;
        }
        xor_into(p, old);
        // Old parity without the old bytes being replaced: the partial parity.
        let pp = self.logging().then(|| p.to_vec());
        xor_into(p, self.new_data(d, lo, hi));
        parity.truncate(width);
        Some(Computed { rlo, parity, pp })
    }

    /// [`Self::rmw_parity`] of a write over several data chunks.
    async fn rmw_parity_many(&self, rlo: u64, mut parity: Vec<u8>) -> Option<Computed> {
        let touched: Vec<(usize, u64, u64)> = self.touched_all().collect();
        let mut old: Vec<Vec<u8>> = touched
            .iter()
            .map(|&(_, lo, hi)| vec![0u8; (hi - lo) as usize])
            .collect();
        let mut reads = vec![self.read(self.parity_member(), rlo, &mut parity)];
        for (&(d, lo, _), buf) in touched.iter().zip(old.iter_mut()) {
            reads.push(self.read(self.member(d), lo, buf));
        }
        if join_all(reads).await.contains(&false) {
            return None;
        }
        for (&(_, lo, hi), old) in touched.iter().zip(&old) {
            xor_into(&mut parity[(lo - rlo) as usize..(hi - rlo) as usize], old);
        }
        // Old parity without the old bytes being replaced: the partial parity.
        let pp = self.logging().then(|| parity.clone());
        for &(d, lo, hi) in &touched {
            let rows = &mut parity[(lo - rlo) as usize..(hi - rlo) as usize];
            xor_into(rows, self.new_data(d, lo, hi));
        }
        Some(Computed { rlo, parity, pp })
    }

    /// True when this write is logged (a parity log and a live parity member).
    fn logging(&self) -> bool {
        self.vol.parity_log().is_some() && self.vol.is_active(self.parity_member())
    }

    /// Logs the write's entries in the parity member's journal; resolves
    /// once durable. `Err` when the journal write failed (the parity member
    /// is failed; the caller plans again).
    async fn log(&self, computed: Option<&mut Computed>) -> Result<Option<PplTicket>, ()> {
        let (Some(log), Some(c)) = (self.vol.parity_log(), computed) else {
            return Ok(None);
        };
        if !self.logging() {
            return Ok(None);
        }
        let pm = self.parity_member();
        let records = self.records(c, log.max_entry_pp(pm).max(512));
        match log.log(pm, records).await {
            Ok(t) => Ok(Some(t)),
            Err(e) => {
                self.vol.fail_member(pm, &e).await;
                Err(())
            }
        }
    }

    /// The journal entries of this write: one FULL entry, or the partial
    /// parity split into windows of at most `max` rows.
    fn records(&self, c: &mut Computed, max: usize) -> Vec<PplRecord> {
        let entry = |rlo: u64, rhi: u64, full: bool, pp: Vec<u8>| PplRecord {
            stripe: self.stripe.0,
            start: self.start,
            len: self.data.len() as u32,
            rlo: rlo as u32,
            rhi: rhi as u32,
            full,
            pp,
        };
        let Some(pp) = &mut c.pp else {
            return vec![entry(0, self.chunk, true, Vec::new())];
        };
        if pp.len() <= max {
            // One entry (every small write): its PP taken, not copied.
            let pp = std::mem::take(pp);
            return vec![entry(c.rlo, c.rlo + pp.len() as u64, false, pp)];
        }
        pp.chunks(max)
            .enumerate()
            .map(|(i, w)| {
                let lo = c.rlo + (i * max) as u64;
                entry(lo, lo + w.len() as u64, false, w.to_vec())
            })
            .collect()
    }

    /// Reconstruct-write: parity rows from full data rows. With `missing`
    /// (a down data chunk), its rows are rebuilt from old parity first.
    async fn rows_parity(&self, missing: Option<usize>) -> Option<Computed> {
        let (rlo, rhi) = self.hull();
        let width = (rhi - rlo) as usize;
        // The k rows side by side in one buffer (row d at d * width).
        let mut rows = vec![0u8; width * self.k];
        let mut old_parity = vec![0u8; if missing.is_some() { width } else { 0 }];
        {
            let mut reads = Vec::new();
            for (d, row) in rows.chunks_mut(width).enumerate() {
                let m = self.member(d);
                match (missing, self.touched(d)) {
                    (Some(dm), _) if dm == d => {}
                    (None, Some((lo, hi))) => {
                        let (left, rest) = row.split_at_mut((lo - rlo) as usize);
                        let right = &mut rest[(hi - lo) as usize..];
                        if !left.is_empty() {
                            reads.push(self.read(m, rlo, left));
                        }
                        if !right.is_empty() {
                            reads.push(self.read(m, hi, right));
                        }
                    }
                    _ => reads.push(self.read(m, rlo, row)),
                }
            }
            if missing.is_some() {
                reads.push(self.read(self.parity_member(), rlo, &mut old_parity));
            }
            if join_all(reads).await.contains(&false) {
                return None;
            }
        }
        if let Some(dm) = missing {
            let mut rebuilt = old_parity;
            for (d, row) in rows.chunks(width).enumerate() {
                if d != dm {
                    xor_into(&mut rebuilt, row);
                }
            }
            rows[dm * width..(dm + 1) * width].copy_from_slice(&rebuilt);
        }
        let pp = self.logging().then(|| {
            // XOR of every row, minus the bytes this write replaces.
            let mut pp = xor_rows(&rows, width);
            for (d, lo, hi) in self.touched_all() {
                let r = (lo - rlo) as usize..(hi - rlo) as usize;
                let old = &rows[d * width..(d + 1) * width][r.clone()];
                xor_into(&mut pp[r], old);
            }
            pp
        });
        for (d, lo, hi) in self.touched_all() {
            let row = &mut rows[d * width..(d + 1) * width];
            row[(lo - rlo) as usize..(hi - rlo) as usize].copy_from_slice(self.new_data(d, lo, hi));
        }
        let parity = xor_rows(&rows, width);
        Some(Computed { rlo, parity, pp })
    }

    /// Writes the new data and parity rows concurrently.
    async fn commit(&self, parity: Option<(u64, Vec<u8>)>) -> BlockResult {
        let vol = self.vol;
        // Down members are included: a member being rebuilt into their
        // slot takes the write; the slot itself reports false.
        let data = self.touched_all().map(|(d, lo, hi)| {
            let op = MemberOp::Write(
                self.member_offset(lo),
                self.new_data(d, lo, hi),
                self.durability,
            );
            (self.member(d), op)
        });
        let parity_op = parity.as_ref().map(|(rlo, parity)| {
            let op = MemberOp::Write(self.member_offset(*rlo), parity, self.durability);
            (self.parity_member(), op)
        });
        let ops = Ops::new(data.chain(parity_op));
        let results = join_each(ops.len(), |i| vol.write_member(ops.get(i).0, ops.get(i).1)).await;
        let took = |m: MemberIndex| (0..ops.len()).any(|i| ops.get(i).0 == m && results.get(i));
        let recoverable = parity.is_some() && took(self.parity_member()) && vol.down_count() <= 1;
        if self
            .touched_all()
            .all(|(d, _, _)| took(self.member(d)) || recoverable)
        {
            Ok(())
        } else {
            Err(vol.data_lost())
        }
    }
}

/// The member writes of one stripe write: inline up to four (a small
/// write's data and parity), else in a list.
enum Ops<'a> {
    Few(usize, [Option<(MemberIndex, MemberOp<'a>)>; 4]),
    Many(Vec<(MemberIndex, MemberOp<'a>)>),
}

impl<'a> Ops<'a> {
    fn new(ops: impl Iterator<Item = (MemberIndex, MemberOp<'a>)>) -> Ops<'a> {
        let mut few = [None; 4];
        let mut ops = ops.peekable();
        for (n, slot) in few.iter_mut().enumerate() {
            match ops.next() {
                Some(op) => *slot = Some(op),
                None => return Ops::Few(n, few),
            }
        }
        if ops.peek().is_none() {
            return Ops::Few(4, few);
        }
        Ops::Many(few.into_iter().flatten().chain(ops).collect())
    }

    fn len(&self) -> usize {
        match self {
            Ops::Few(n, _) => *n,
            Ops::Many(v) => v.len(),
        }
    }

    fn get(&self, i: usize) -> (MemberIndex, MemberOp<'a>) {
        match self {
            Ops::Few(_, few) => few[i].expect("op in range"),
            Ops::Many(v) => v[i],
        }
    }
}

/// The XOR of the `width`-byte rows laid side by side in `rows`.
fn xor_rows(rows: &[u8], width: usize) -> Vec<u8> {
    let mut out = vec![0u8; width];
    for row in rows.chunks(width) {
        xor_into(&mut out, row);
    }
    out
}
