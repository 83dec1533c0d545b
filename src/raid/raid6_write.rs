//! RAID-6 write of the part of one stripe a request covers (the caller
//! holds that stripe's lock).
//!
//! ```text
//!  plan ─► Full      P, Q from the new chunks, nothing read
//!       ├► Rmw       read old data + old P, Q rows; Δ = old ^ new:
//!       │            P ^= Δ, Q ^= g^d·Δ (the delta syndrome)
//!       ├► Rcw       read the untouched data rows, P, Q from all rows
//!       ├► Degraded  a member down: read every live row (raid6::stripe_rows),
//!       │            rebuild the missing ones, P, Q from all rows
//!       └► DataOnly  more than two members down (beyond repair)
//!  before and after planning a partial write: pieces of other requests
//!  waiting for the lock complete the stripe ─► one Full write (gather.rs)
//!  reads fail ─► the member is failed ─► plan again (bounded)
//!  a read hits a checksum mismatch ─► rewrite it from the others ─► plan again
//!  log: partial P to the P member's journal and partial Q to the Q
//!       member's at once, as claims; both durable ─► tickets (a claim a
//!       checkpoint invalidated is logged again) before any write
//!       (ppl.rs, ppl6.rs; FORMAT.md §9 "RAID-6: partial P and partial Q")
//!  commit: data + P + Q concurrently (down slots: to a member being rebuilt
//!          into them); succeeds if every written chunk is on a member that
//!          took it, or at most two members are down
//! ```
//! Rmw is chosen over Rcw when it reads fewer bytes.

use futures::future::join_all;

use super::gather::Taken;
use super::layout::{MemberIndex, StripeIndex};
use super::level::{join_each, MemberOp};
use super::parity::xor_into;
use super::ppl::{ParityLog, PplClaim, PplRecord, PplTicket};
use super::raid6::{rows_or_lost, StripeRows};
use super::syndrome::{gen_syndrome, gf_pow2, mul_xor_into};
use super::volume::Volume;
use crate::block::{BlockError, BlockResult, Durability};
use crate::units::ByteOffset;

/// Rounds of concurrent logging a write tries before it logs one ring
/// after the other (a checkpoint invalidated a claim in each).
const CLAIM_ROUNDS: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Full,
    Rmw,
    Rcw,
    Degraded,
    DataOnly,
}

/// New P and Q rows from chunk-relative row `rlo`, and the partial P and
/// Q of the same rows (`None`: a full-stripe write, logged without them).
struct Syndromes {
    rlo: u64,
    p: Vec<u8>,
    q: Vec<u8>,
    partial: Option<(Vec<u8>, Vec<u8>)>,
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

/// Writes `data` at `start` within the data of `stripe`; a partial write
/// takes the pieces of other requests waiting for the stripe's lock when
/// they complete the stripe, and writes them all as one full stripe.
pub(super) async fn write_stripe(
    vol: &Volume,
    stripe: StripeIndex,
    start: u64,
    data: &[u8],
    durability: Durability,
) -> BlockResult {
    let w = StripeWrite::new(vol, stripe, start, data, durability);
    let taken = match w.run(true).await {
        Step::Done(result) => return result,
        Step::Gathered(taken) => taken,
    };
    let full = StripeWrite::new(vol, stripe, 0, &taken.data, taken.durability);
    let result = match full.run(false).await {
        Step::Done(result) => result,
        Step::Gathered(_) => unreachable!("a write that does not gather"),
    };
    taken.finish(&result);
    result
}

/// How [`StripeWrite::run`] ended.
enum Step {
    Done(BlockResult),
    /// Waiting pieces complete the stripe: write them with this one.
    Gathered(Taken),
}

impl<'a> StripeWrite<'a> {
    fn new(
        vol: &'a Volume,
        stripe: StripeIndex,
        start: u64,
        data: &'a [u8],
        durability: Durability,
    ) -> Self {
        let g = vol.geometry();
        StripeWrite {
            vol,
            stripe,
            start,
            data,
            durability,
            k: g.data_members(),
            chunk: g.chunk().get(),
        }
    }

    /// Plans, logs and commits (planning again after a member failed);
    /// with `gather`, checks for waiting pieces before and after planning.
    async fn run(&self, gather: bool) -> Step {
        for _ in 0..=self.vol.geometry().members() {
            let mode = self.mode();
            let gather = gather && !matches!(mode, Mode::Full | Mode::DataOnly);
            if let Some(taken) = gather.then(|| self.take_cover()).flatten() {
                return Step::Gathered(taken);
            }
            let computed = match mode {
                Mode::Full => Some(self.full()),
                Mode::DataOnly => None,
                Mode::Rmw => match self.rmw().await {
                    Some(c) => Some(c),
                    None => continue,
                },
                Mode::Rcw => match self.rcw().await {
                    Some(c) => Some(c),
                    None => continue,
                },
                Mode::Degraded => match self.degraded().await {
                    Ok(c) => Some(c),
                    Err(e) => return Step::Done(Err(e)),
                },
            };
            // Pieces that came while this one read: still cheaper whole.
            if let Some(taken) = gather.then(|| self.take_cover()).flatten() {
                return Step::Gathered(taken);
            }
            let Ok(_tickets) = self.log(computed.as_ref()).await else {
                continue;
            };
            return Step::Done(self.commit(computed).await);
        }
        Step::Done(Err(self.vol.data_lost()))
    }

    fn take_cover(&self) -> Option<Taken> {
        let sds = self.k as u64 * self.chunk;
        let (stripe, start, data) = (self.stripe, self.start, self.data);
        self.vol
            .gather()
            .take_cover(stripe, start, data, self.durability, sds)
    }

    /// Chunk-relative range of data chunk `d` this write covers.
    fn touched(&self, d: usize) -> Option<(u64, u64)> {
        let base = d as u64 * self.chunk;
        let lo = self.start.max(base);
        let hi = (self.start + self.data.len() as u64).min(base + self.chunk);
        (lo < hi).then(|| (lo - base, hi - base))
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

    fn p_member(&self) -> MemberIndex {
        let g = self.vol.geometry();
        g.parity_member(self.stripe).unwrap_or(MemberIndex(0))
    }

    fn q_member(&self) -> MemberIndex {
        let g = self.vol.geometry();
        g.q_member(self.stripe).unwrap_or(MemberIndex(0))
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
        let down = self.vol.down_count();
        if down > 2 {
            return Mode::DataOnly;
        }
        if self.start == 0 && self.data.len() as u64 == self.k as u64 * self.chunk {
            return Mode::Full;
        }
        if down > 0 {
            return Mode::Degraded;
        }
        let (rlo, rhi) = self.hull();
        let rows = rhi - rlo;
        let written: u64 = self.touched_all().map(|(_, lo, hi)| hi - lo).sum();
        let rmw_reads = written + 2 * rows;
        let rcw_reads = self.k as u64 * rows - written;
        if rmw_reads < rcw_reads {
            Mode::Rmw
        } else {
            Mode::Rcw
        }
    }

    fn full(&self) -> Syndromes {
        let c = self.chunk as usize;
        let sources: Vec<&[u8]> = self.data.chunks(c).collect();
        let (mut p, mut q) = (vec![0u8; c], vec![0u8; c]);
        gen_syndrome(&mut p, &mut q, &sources);
        Syndromes {
            rlo: 0,
            p,
            q,
            partial: None,
        }
    }

    /// Reads for planning; a member that fails is failed (the plan is redone).
    async fn read(&self, member: MemberIndex, row: u64, buf: &mut [u8]) -> bool {
        let off = self.member_offset(row);
        match self.vol.read_member(member, off, buf).await {
            Ok(()) => true,
            Err(Some(error @ BlockError::Corrupt { .. })) => {
                // Bad bytes on a live member: rebuild them from the others
                // first (never fold them into P and Q), then plan again.
                super::raid6::repair_range(self.vol, self.stripe, member, off, buf.len()).await;
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

    /// Read-modify-write with the delta syndrome.
    async fn rmw(&self) -> Option<Syndromes> {
        let (rlo, rhi) = self.hull();
        let width = (rhi - rlo) as usize;
        let (mut p, mut q) = (vec![0u8; width], vec![0u8; width]);
        let touched: Vec<(usize, u64, u64)> = self.touched_all().collect();
        let mut old: Vec<Vec<u8>> = touched
            .iter()
            .map(|&(_, lo, hi)| vec![0u8; (hi - lo) as usize])
            .collect();
        {
            let (pm, qm) = (self.p_member(), self.q_member());
            let mut reads = vec![self.read(pm, rlo, &mut p), self.read(qm, rlo, &mut q)];
            for (&(d, lo, _), buf) in touched.iter().zip(old.iter_mut()) {
                reads.push(self.read(self.member(d), lo, buf));
            }
            if join_all(reads).await.contains(&false) {
                return None;
            }
        }
        // Old P and Q without the old bytes being replaced: the partials.
        let partial = self.logging().then(|| {
            let (mut pp, mut pq) = (p.clone(), q.clone());
            for (&(d, lo, hi), old) in touched.iter().zip(&old) {
                let r = (lo - rlo) as usize..(hi - rlo) as usize;
                xor_into(&mut pp[r.clone()], old);
                mul_xor_into(&mut pq[r], old, gf_pow2(d));
            }
            (pp, pq)
        });
        for (&(d, lo, hi), delta) in touched.iter().zip(old.iter_mut()) {
            xor_into(delta, self.new_data(d, lo, hi));
            let r = (lo - rlo) as usize..(hi - rlo) as usize;
            xor_into(&mut p[r.clone()], delta);
            mul_xor_into(&mut q[r], delta, gf_pow2(d));
        }
        Some(Syndromes { rlo, p, q, partial })
    }

    /// Reconstruct-write: P and Q from full data rows (the untouched parts
    /// read from the members).
    async fn rcw(&self) -> Option<Syndromes> {
        let (rlo, rhi) = self.hull();
        let width = (rhi - rlo) as usize;
        let mut rows = vec![vec![0u8; width]; self.k];
        {
            let mut reads = Vec::new();
            for (d, row) in rows.iter_mut().enumerate() {
                match self.touched(d) {
                    Some((lo, hi)) if lo <= rlo && hi >= rhi => {}
                    _ => reads.push(self.read(self.member(d), rlo, row)),
                }
            }
            if join_all(reads).await.contains(&false) {
                return None;
            }
        }
        Some(self.with_new_data(rows, rlo))
    }

    /// A member is down: every live member's rows, the missing rebuilt.
    async fn degraded(&self) -> BlockResult<Syndromes> {
        let (rlo, rhi) = self.hull();
        let down: Vec<MemberIndex> = (0..self.vol.geometry().members())
            .map(MemberIndex)
            .filter(|&m| !self.vol.is_active(m))
            .collect();
        let off = self.member_offset(rlo);
        let rows = rows_or_lost(self.vol, self.stripe, off, (rhi - rlo) as usize, &down).await?;
        Ok(self.with_new_data(rows.data, rlo))
    }

    /// P and Q of `rows` (the data rows from `rlo`) with this write's
    /// bytes laid over them.
    fn with_new_data(&self, mut data: Vec<Vec<u8>>, rlo: u64) -> Syndromes {
        let partial = self.logging().then(|| self.partials(&mut data, rlo));
        for (d, lo, hi) in self.touched_all() {
            let r = (lo - rlo) as usize..(hi - rlo) as usize;
            data[d][r].copy_from_slice(self.new_data(d, lo, hi));
        }
        let width = data.first().map_or(0, Vec::len);
        let mut rows = StripeRows {
            data,
            p: vec![0u8; width],
            q: vec![0u8; width],
        };
        rows.regenerate();
        Syndromes {
            rlo,
            p: rows.p,
            q: rows.q,
            partial,
        }
    }

    /// P and Q of the data rows from `rlo` with the bytes this write
    /// replaces zeroed (left zeroed: the new bytes go there next).
    fn partials(&self, data: &mut [Vec<u8>], rlo: u64) -> (Vec<u8>, Vec<u8>) {
        for (d, lo, hi) in self.touched_all() {
            data[d][(lo - rlo) as usize..(hi - rlo) as usize].fill(0);
        }
        let width = data.first().map_or(0, Vec::len);
        let (mut pp, mut pq) = (vec![0u8; width], vec![0u8; width]);
        let rows: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        gen_syndrome(&mut pp, &mut pq, &rows);
        (pp, pq)
    }

    /// True when this write is logged (a parity log and a live P or Q).
    fn logging(&self) -> bool {
        self.vol.parity_log().is_some()
            && (self.vol.is_active(self.p_member()) || self.vol.is_active(self.q_member()))
    }

    /// Logs the write's entries, partial P to the P member's journal and
    /// partial Q to the Q member's, both at once as claims, turned into
    /// tickets once both are durable; a ring whose claim a checkpoint
    /// invalidated meanwhile is logged again; after [`CLAIM_ROUNDS`] such
    /// rounds, one ring after the other in member order (FORMAT.md §9,
    /// "RAID-6", order). `Err` when a journal write failed (its member is
    /// failed; the caller plans again).
    async fn log(&self, s: Option<&Syndromes>) -> Result<Vec<PplTicket>, ()> {
        let (Some(log), Some(s)) = (self.vol.parity_log(), s) else {
            return Ok(Vec::new());
        };
        let full = self.start == 0 && self.data.len() as u64 == self.k as u64 * self.chunk;
        if s.partial.is_none() && !full {
            // Planned while neither P nor Q was live: nothing to log to.
            return Ok(Vec::new());
        }
        let mut rings = vec![
            (self.p_member(), s.partial.as_ref().map(|p| &p.0)),
            (self.q_member(), s.partial.as_ref().map(|p| &p.1)),
        ];
        rings.retain(|(m, _)| self.vol.is_active(*m));
        rings.sort_by_key(|(m, _)| m.0);
        let entries = |m: MemberIndex, partial: Option<&Vec<u8>>| {
            self.records(s.rlo, partial, log.max_entry_pp(m).max(512))
        };
        let entries = &entries;
        let mut claims: Vec<Option<PplClaim>> = rings.iter().map(|_| None).collect();
        for _ in 0..CLAIM_ROUNDS {
            let wanted = (rings.iter().zip(&claims)).filter(|(_, c)| c.is_none());
            let logs = wanted.map(|(&(m, partial), _)| async move {
                (m, log.claim(m, entries(m, partial)).await)
            });
            let mut failed = false;
            let mut answers = join_all(logs).await.into_iter();
            for claim in claims.iter_mut().filter(|c| c.is_none()) {
                match answers.next() {
                    Some((_, Ok(c))) => *claim = Some(c),
                    Some((m, Err(e))) => {
                        self.vol.fail_member(m, &e).await;
                        failed = true;
                    }
                    None => failed = true,
                }
            }
            if failed {
                return Err(());
            }
            let tickets: Vec<Option<PplTicket>> =
                claims.iter().flatten().map(PplClaim::ticket).collect();
            if tickets.iter().all(Option::is_some) {
                return Ok(tickets.into_iter().flatten().collect());
            }
            // A checkpoint passed these: log them again (their tickets
            // taken above are dropped: this task waits holding none).
            for (claim, ticket) in claims.iter_mut().zip(&tickets) {
                if ticket.is_none() {
                    *claim = None;
                }
            }
        }
        self.log_ordered(log.as_ref(), &rings, entries).await
    }

    /// Logs to `rings` one after the other (in member order: a task holds
    /// tickets only of rings below the one it waits for).
    async fn log_ordered(
        &self,
        log: &dyn ParityLog,
        rings: &[(MemberIndex, Option<&Vec<u8>>)],
        entries: impl Fn(MemberIndex, Option<&Vec<u8>>) -> Vec<PplRecord>,
    ) -> Result<Vec<PplTicket>, ()> {
        let mut tickets = Vec::new();
        for &(m, partial) in rings {
            match log.log(m, entries(m, partial)).await {
                Ok(t) => tickets.push(t),
                Err(e) => {
                    self.vol.fail_member(m, &e).await;
                    return Err(());
                }
            }
        }
        Ok(tickets)
    }

    /// The journal entries of this write on one ring: one FULL entry, or
    /// the partial syndrome split into windows of at most `max` rows.
    fn records(&self, rlo: u64, partial: Option<&Vec<u8>>, max: usize) -> Vec<PplRecord> {
        let entry = |lo: u64, hi: u64, full: bool, pp: Vec<u8>| PplRecord {
            stripe: self.stripe.0,
            start: self.start,
            len: self.data.len() as u32,
            rlo: lo as u32,
            rhi: hi as u32,
            full,
            pp,
        };
        let Some(partial) = partial else {
            return vec![entry(0, self.chunk, true, Vec::new())];
        };
        partial
            .chunks(max)
            .enumerate()
            .map(|(i, w)| {
                let lo = rlo + (i * max) as u64;
                entry(lo, lo + w.len() as u64, false, w.to_vec())
            })
            .collect()
    }

    /// Writes the new data, P and Q rows concurrently.
    async fn commit(&self, syndromes: Option<Syndromes>) -> BlockResult {
        let vol = self.vol;
        // Down members are included: a member being rebuilt into their
        // slot takes the write; the slot itself reports false.
        let mut ops: Vec<(MemberIndex, MemberOp<'_>)> = self
            .touched_all()
            .map(|(d, lo, hi)| {
                let bytes = self.new_data(d, lo, hi);
                let op = MemberOp::Write(self.member_offset(lo), bytes, self.durability);
                (self.member(d), op)
            })
            .collect();
        if let Some(s) = &syndromes {
            let at = self.member_offset(s.rlo);
            ops.push((self.p_member(), MemberOp::Write(at, &s.p, self.durability)));
            ops.push((self.q_member(), MemberOp::Write(at, &s.q, self.durability)));
        }
        let results = join_each(ops.len(), |i| vol.write_member(ops[i].0, ops[i].1)).await;
        let took = |m: MemberIndex| (0..ops.len()).any(|i| ops[i].0 == m && results.get(i));
        let recoverable = syndromes.is_some() && vol.down_count() <= 2;
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
