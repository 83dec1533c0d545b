//! RAID-6 data path: reads, reconstruction of up to two lost members of a
//! stripe, and clears (md left-symmetric layout, P = XOR, Q = Σ g^d·D_d).
//!
//! ```text
//!  read ─► per-chunk extents ─► member read (no lock)
//!                                   │ member down or erroring
//!                                   ▼
//!          stripe lock ─► stripe_rows: read every other member's rows,
//!          ≤ 2 lost (down, erroring, bad checksum) ─► syndrome::recover
//!          ─► serve, and rewrite the member's rows if it is alive
//!  write ─► per stripe, concurrently: (boundary piece: register, gather.rs)
//!          lock it ─► raid6_write::write_stripe
//!  discard/zeroes ─► as RAID-5 (raid5::clear): zero data has zero P and Q
//! ```

use super::layout::{Extent, MemberIndex, StripeIndex};
use super::level::{Clear, Io, LevelIo, LostBlocks, MemberOp, RebuildRead, ScrubCheck, StepResult};
use super::raid6_sync;
use super::rebuild::SourceBuffers;
use super::scrub::Read;
use super::striped::read_extents;
use super::syndrome::{gen_syndrome, recover, Lost};
use super::volume::Volume;
use crate::block::{BlockError, BlockResult, BoxFuture, Durability};
use crate::units::ByteOffset;

/// RAID-6's [`LevelIo`].
pub(super) struct Raid6;

impl LevelIo for Raid6 {
    fn clear<'a>(&self, vol: &'a Volume, at: ByteOffset, len: u64, how: Clear) -> Io<'a> {
        crate::block::BoxFuture::new(super::raid5::clear(vol, at, len, how))
    }

    fn resync_step<'a>(&self, vol: &'a Volume, a: u64, b: u64) -> StepResult<'a, u64> {
        crate::block::BoxFuture::new(raid6_sync::resync_step(vol, a, b))
    }

    fn rebuild_read<'a>(&self, vol: &'a Volume, r: RebuildRead<'a>) -> StepResult<'a, LostBlocks> {
        crate::block::BoxFuture::new(raid6_sync::rebuild_read(vol, r))
    }

    /// Every member's buffer from one read of the others per stripe.
    fn rebuild_read_many<'a>(
        &self,
        vol: &'a Volume,
        reads: Vec<RebuildRead<'a>>,
    ) -> StepResult<'a, Vec<LostBlocks>> {
        crate::block::BoxFuture::new(raid6_sync::rebuild_read_many(vol, reads))
    }

    fn scrub_rebuild_block(
        &self,
        vol: &Volume,
        a: u64,
        reads: &[Read],
        m: usize,
        block: usize,
    ) -> Option<Vec<u8>> {
        raid6_sync::scrub_rebuild_block(vol, a, reads, m, block)
    }

    fn scrub_check<'a>(&self, vol: &'a Volume, c: ScrubCheck<'a>) -> BoxFuture<'a, ()> {
        crate::block::BoxFuture::new(raid6_sync::check_syndromes(vol, c))
    }

    fn takes_parity_log(&self) -> bool {
        true
    }

    /// P and Q change only at the in-chunk offsets the request wrote.
    fn distrust_after_no_space(&self, vol: &Volume, at: ByteOffset, len: u64) {
        for e in vol.geometry().extents(at, len) {
            let (start, len) = vol.block_hull(e.member_offset, e.len);
            vol.distrust_parity(start.get(), start.get() + len);
        }
    }
}

/// What a member holds in a stripe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    /// Data chunk `d` (also its Q slot).
    Data(usize),
    P,
    Q,
}

/// The role of `member` in `stripe`.
pub(super) fn role(vol: &Volume, stripe: StripeIndex, member: MemberIndex) -> Role {
    let g = vol.geometry();
    match g.data_index(stripe, member) {
        Some(d) => Role::Data(d),
        None if g.q_member(stripe) == Some(member) => Role::Q,
        None => Role::P,
    }
}

/// The same rows (member data offsets) of every member of one stripe.
pub(super) struct StripeRows {
    /// Data rows by data index (= Q slot).
    pub(super) data: Vec<Vec<u8>>,
    pub(super) p: Vec<u8>,
    pub(super) q: Vec<u8>,
}

impl StripeRows {
    /// The rows of every member (`bufs` by member index) by role.
    fn by_role(vol: &Volume, stripe: StripeIndex, bufs: Vec<Vec<u8>>) -> StripeRows {
        let k = vol.geometry().data_members();
        let mut rows = StripeRows {
            data: vec![Vec::new(); k],
            p: Vec::new(),
            q: Vec::new(),
        };
        for (m, buf) in bufs.into_iter().enumerate() {
            match role(vol, stripe, MemberIndex(m)) {
                Role::Data(d) => rows.data[d] = buf,
                Role::P => rows.p = buf,
                Role::Q => rows.q = buf,
            }
        }
        rows
    }

    /// The buffers back, in no particular order.
    pub(super) fn into_bufs(self) -> Vec<Vec<u8>> {
        let mut bufs = self.data;
        bufs.push(self.p);
        bufs.push(self.q);
        bufs
    }

    /// The rows `member` holds.
    pub(super) fn of(&self, role: Role) -> &[u8] {
        match role {
            Role::Data(d) => &self.data[d],
            Role::P => &self.p,
            Role::Q => &self.q,
        }
    }

    /// Recomputes P and Q from the data rows.
    pub(super) fn regenerate(&mut self) {
        let data: Vec<&[u8]> = self.data.iter().map(Vec::as_slice).collect();
        gen_syndrome(&mut self.p, &mut self.q, &data);
    }

    /// Rebuilds the rows of the roles in `lost` (at most two) from the
    /// others. False when more than two are lost.
    pub(super) fn recover(&mut self, lost: &[Role]) -> bool {
        self.recover_in(lost, None)
    }

    /// [`StripeRows::recover`] with its scratch buffer from `pool` when given.
    pub(super) fn recover_in(&mut self, lost: &[Role], pool: Option<&SourceBuffers>) -> bool {
        let mut data_lost: Vec<usize> = lost
            .iter()
            .filter_map(|r| match r {
                Role::Data(d) => Some(*d),
                _ => None,
            })
            .collect();
        data_lost.sort_unstable();
        let (p_lost, q_lost) = (lost.contains(&Role::P), lost.contains(&Role::Q));
        let which = match (data_lost.as_slice(), p_lost, q_lost) {
            (_, _, _) if lost.len() > 2 => return false,
            ([], _, _) => None,
            ([x], false, _) => Some(Lost::Data(*x)),
            ([x], true, _) => Some(Lost::DataAndP(*x)),
            ([x, y], _, _) => Some(Lost::TwoData(*x, *y)),
            _ => return false,
        };
        if let Some(which) = which {
            let len = self.p.len();
            let mut scratch = pool.map_or_else(|| vec![0u8; len], |pool| pool.take(len));
            let mut data: Vec<&mut [u8]> = self.data.iter_mut().map(Vec::as_mut_slice).collect();
            recover(&mut data, &self.p, &self.q, which, &mut scratch);
            if let Some(pool) = pool {
                pool.give([scratch]);
            }
        }
        if p_lost || q_lost {
            self.regenerate();
        }
        true
    }
}

/// Why [`stripe_rows`] could not rebuild a stripe's rows: the members that
/// could not be read, with their errors (`None`: down).
pub(super) type Unreadable = Vec<(MemberIndex, Option<BlockError>)>;

/// Reads `len` bytes at member offset `off` (inside `stripe`'s chunk row)
/// of every member but those in `skip`, and rebuilds what the skipped and
/// unreadable ones hold, when at most two are lost. A down member being
/// rebuilt is read from its new member where that is in sync. Nothing is
/// failed here: the caller decides what an error means.
pub(super) async fn stripe_rows(
    vol: &Volume,
    stripe: StripeIndex,
    off: ByteOffset,
    len: usize,
    skip: &[MemberIndex],
) -> Result<StripeRows, Unreadable> {
    stripe_rows_in(vol, stripe, off, len, skip, None).await
}

/// [`stripe_rows`] with its buffers (rows and recovery scratch) from
/// `pool` when given (a rebuild pass's): on failure they go back to it,
/// on success the caller gives the rows back ([`StripeRows::into_bufs`]).
pub(super) async fn stripe_rows_in(
    vol: &Volume,
    stripe: StripeIndex,
    off: ByteOffset,
    len: usize,
    skip: &[MemberIndex],
    pool: Option<&SourceBuffers>,
) -> Result<StripeRows, Unreadable> {
    let n = vol.geometry().members();
    let mut bufs = match pool {
        Some(pool) => pool.take_n(n, len),
        None => vec![vec![0u8; len]; n],
    };
    let reads = bufs.iter_mut().enumerate().map(|(m, buf)| async move {
        let m = MemberIndex(m);
        if skip.contains(&m) {
            return Ok(false);
        }
        match vol.read_member(m, off, buf).await {
            Ok(()) => Ok(true),
            Err(None) if vol.read_rebuilt(m, off, buf).await => Ok(true),
            Err(e) => Err((m, e)),
        }
    });
    let results = futures::future::join_all(reads).await;
    let mut lost: Vec<Role> = skip.iter().map(|&m| role(vol, stripe, m)).collect();
    let mut failed = Vec::new();
    for (m, r) in results.into_iter().enumerate() {
        if let Err(e) = r {
            lost.push(role(vol, stripe, MemberIndex(m)));
            failed.push(e);
        }
    }
    let mut rows = StripeRows::by_role(vol, stripe, bufs);
    let end = off.get() + len as u64;
    let data_lost = lost.iter().any(|r| matches!(r, Role::Data(_)));
    if data_lost && vol.parity_untrusted(off.get(), end) {
        tracing::error!(
            volume = vol.volume_name(),
            offset = off.get(),
            "cannot rebuild data from P and Q that were not resynced (a write ran out of space \
             there, or a read-only run of a crashed array)"
        );
    } else if rows.recover_in(&lost, pool) {
        return Ok(rows);
    }
    if let Some(pool) = pool {
        pool.give(rows.into_bufs());
    }
    Err(failed)
}

/// [`stripe_rows`] for the data path: a member that returned an I/O error
/// is failed (a checksum mismatch is not); more than two lost is data
/// loss.
pub(super) async fn rows_or_lost(
    vol: &Volume,
    stripe: StripeIndex,
    off: ByteOffset,
    len: usize,
    skip: &[MemberIndex],
) -> BlockResult<StripeRows> {
    match stripe_rows(vol, stripe, off, len, skip).await {
        Ok(rows) => Ok(rows),
        Err(failed) => {
            for (m, e) in failed {
                if let Some(e) = e {
                    vol.fail_member_for_read(m, &e).await;
                }
            }
            Err(vol.data_lost())
        }
    }
}

/// Reads by chunk extent, concurrently; a member that cannot serve its
/// extent has it rebuilt from the others.
pub(super) async fn read(vol: &Volume, at: ByteOffset, buf: &mut [u8]) -> BlockResult {
    read_extents(vol, at, buf, read_extent).await
}

async fn read_extent(vol: &Volume, e: Extent, piece: &mut [u8]) -> BlockResult {
    let unverified = vol.reads_unverified(e.member_offset, piece.len() as u64);
    if unverified && super::dirty_read::raid6_extent(vol, e, piece).await {
        return Ok(());
    }
    let error = match vol.read_member(e.member, e.member_offset, piece).await {
        Ok(()) => return Ok(()),
        Err(error) => error,
    };
    if error.is_none() && vol.read_rebuilt(e.member, e.member_offset, piece).await {
        return Ok(());
    }
    let _guard = vol.locks().lock(e.stripe).await;
    // A checksum mismatch is rebuilt and rewritten in whole blocks.
    let corrupt = matches!(error, Some(BlockError::Corrupt { .. }));
    let (off, len) = match corrupt {
        true => vol.block_hull(e.member_offset, piece.len() as u64),
        false => (e.member_offset, piece.len() as u64),
    };
    let rows = match rows_or_lost(vol, e.stripe, off, len as usize, &[e.member]).await {
        Ok(rows) => rows,
        Err(lost) => {
            if let Some(error) = &error {
                vol.fail_member_for_read(e.member, error).await;
            }
            return Err(lost);
        }
    };
    let mine = &rows.data[e.data_index];
    let at = (e.member_offset.get() - off.get()) as usize;
    piece.copy_from_slice(&mine[at..at + piece.len()]);
    if error.is_some() {
        // The member is alive but returned an error or bad bytes: rewrite
        // them; if even that fails, member_op fails the member.
        if vol
            .member_op(e.member, MemberOp::Write(off, mine, Durability::Normal))
            .await
        {
            tracing::info!(member = %e.member, offset = off.get(), "read error repaired from P/Q");
        }
    }
    Ok(())
}

/// Rewrites `len` bytes of `member` at `offset` of `stripe` from the other
/// members (a bad block found while planning a write). Caller holds the
/// stripe lock. True when repaired.
pub(super) async fn repair_range(
    vol: &Volume,
    stripe: StripeIndex,
    member: MemberIndex,
    offset: ByteOffset,
    len: usize,
) -> bool {
    let (hull, hull_len) = vol.block_hull(offset, len as u64);
    let Ok(rows) = rows_or_lost(vol, stripe, hull, hull_len as usize, &[member]).await else {
        return false;
    };
    let bytes = rows.of(role(vol, stripe, member));
    let ok = vol
        .member_op(member, MemberOp::Write(hull, bytes, Durability::Normal))
        .await;
    if ok {
        tracing::info!(%member, offset = offset.get(), "checksum mismatch repaired from P/Q");
    }
    ok
}

/// Per stripe, concurrently, each under its stripe lock (a piece at a
/// request boundary registered for gathering first: gather.rs).
pub(super) async fn write(
    vol: &Volume,
    offset: ByteOffset,
    buf: &[u8],
    durability: Durability,
) -> BlockResult {
    super::gather::write(vol, offset, buf, durability).await
}
