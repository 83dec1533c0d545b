//! Writes through an md array served `--md-writable` (docs/FORMAT.md §12):
//! one writer at a time; the superblocks marked dirty (events + 1) before
//! the first data write of a session and clean (events + 1) at an orderly
//! close; data mapped through md's layouts: RAID-0/linear the one member,
//! RAID-1 every mirror, RAID-10 every copy, RAID-4/5/6 read-modify-write of
//! the chunk piece with P (and Q) updated by the delta. With a write-intent
//! bitmap (`intent`), the bits a write needs are on every member before its
//! data goes out, and the bitmap's events move with the superblocks'.
//! Degraded arrays (§12 "Degraded arrays"): missing copies skipped, a
//! parity write planned by `plan` (reconstruct-write when the data disk
//! is missing), missing roles recorded in the superblocks, and no bitmap
//! bit cleared at close.
//!
//! ```text
//!  write(offset, buf) ─► lock ─► dirty? no: writable::set_state(E+1, dirty)
//!    ─► bitmap: bits of the pieces' domain set? no: set, write, flush
//!    ─► pieces of at most one chunk
//!         RAID-0 / linear  zones ─► member
//!         RAID-1 / 10      every copy
//!         4/5/6            old data, P, Q ─► delta ─► data, P ^= Δ, Q ^= g^slot·Δ
//!                          data disk missing: other data ─► P, Q computed
//!  close() ─► lock ─► flush members ─► bitmap: session's bits cleared
//!                                      (degraded: none, events only)
//!           ─► writable::set_state(E+1, clean)
//! ```
//!
//! A member write that fails fails the request and the session: later
//! writes get EIO and the array is left dirty at close, so md resyncs it.

use tokio::sync::Mutex;
use tracing::{info, warn};

use super::assemble::{MdArray, MdLevel};
use super::bitmap::Bits;
use super::intent;
use super::plan::{plan, ParityPlan};
use super::volume::{read_slot, MdVolume};
use super::writable::{self, StateError};
use crate::block::{BlockDevice, BlockError, BlockResult, Durability};
use crate::raid::md_layout::ParityLayout;
use crate::raid::md_layout::StripeRoles;
use crate::raid::parity::xor_into;
use crate::raid::syndrome::{gf_pow2, mul_xor_into};
use crate::units::ByteOffset;

/// The state of a writable session.
#[derive(Debug)]
pub struct Session {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The superblocks say dirty (written by this session).
    dirty: bool,
    /// The event count every member's superblock holds now.
    events: u64,
    /// A member write failed: the array stays dirty.
    failed: bool,
    /// The write-intent bitmap, if the array has one.
    bitmap: Option<Bits>,
}

impl Session {
    fn new(events: u64, bitmap: Option<Bits>) -> Session {
        Session {
            state: Mutex::new(State {
                dirty: false,
                events,
                failed: false,
                bitmap,
            }),
        }
    }
}

impl MdVolume {
    /// The array served writable, or the one-line reason it cannot be.
    pub async fn writable(array: MdArray) -> Result<MdVolume, String> {
        let refuse = |why: String| format!("md array {}: not writable: {why}", array.uuid);
        if let Some(why) = writable::refusal(&array) {
            return Err(refuse(why));
        }
        let bitmap = intent::load(&array).await.map_err(refuse)?;
        if array.missing() > 0 {
            warn!(
                "md {}: {} member(s) missing: written degraded (the missing roles are \
                 recorded in the superblocks; give them back with mdadm --re-add)",
                array.name,
                array.missing()
            );
        }
        let events = array.freshest.events;
        let session = Session::new(events, bitmap);
        Ok(MdVolume::with_session(array, Some(session)))
    }

    /// Bits set in the write-intent bitmap now (`None`: no bitmap or not
    /// writable).
    pub async fn bitmap_bits_set(&self) -> Option<u64> {
        let st = self.session()?.state.lock().await;
        st.bitmap.as_ref().map(Bits::count_set)
    }

    /// True when served writable.
    pub fn is_writable(&self) -> bool {
        self.session().is_some()
    }

    fn members(&self) -> Vec<&dyn BlockDevice> {
        let slots = self.array().slots.iter().flatten();
        slots.map(|s| &*s.device).collect()
    }

    /// The bitmap's superblock (and, at clean, its session bits cleared)
    /// then every md superblock, each flushed: `md_update_sb`'s order.
    async fn set_state(&self, st: &mut State, events: u64, clean: bool) -> Result<(), StateError> {
        if let Some(bits) = st.bitmap.as_mut() {
            let degraded = self.array().missing() > 0;
            let sectors = match clean {
                // md clears no bit while degraded (md_bitmap_endwrite):
                // events move, events_cleared stays.
                true if degraded => {
                    bits.set_events(events, None);
                    vec![0]
                }
                true => {
                    bits.clear_session(events);
                    intent::all_sectors(bits)
                }
                false => {
                    bits.set_events(events, None);
                    vec![0]
                }
            };
            intent::write(self.array(), bits, &sectors).await?;
        }
        let missing = self.missing_roles();
        let state = writable::NewState {
            events,
            clean,
            missing: &missing,
        };
        let uuid = self.array().freshest.array_uuid;
        writable::set_state(&uuid, &self.members(), &state).await
    }

    /// The roles without a member.
    fn missing_roles(&self) -> Vec<u32> {
        let slots = self.array().slots.iter().enumerate();
        slots
            .filter(|(_, s)| s.is_none())
            .map(|(r, _)| r as u32)
            .collect()
    }

    fn present(&self, role: usize) -> bool {
        matches!(self.array().slots.get(role), Some(Some(_)))
    }

    /// Sets (on every member, flushed) the bitmap bits of the chunks a
    /// write of `len` bytes at `offset` touches that are not set yet.
    async fn mark_intent(&self, st: &mut State, offset: u64, len: usize) -> BlockResult {
        let Some(bits) = st.bitmap.as_mut() else {
            return Ok(());
        };
        let mut sectors = Vec::new();
        let mut done = 0usize;
        while done < len {
            let pos = offset + done as u64;
            let n = self.piece_len(pos, len - done);
            let first = self.domain_byte(pos);
            sectors.extend(bits.set_range(first / 512, (first + n as u64 - 1) / 512));
            done += n;
        }
        sectors.sort_unstable();
        sectors.dedup();
        if sectors.is_empty() {
            return Ok(());
        }
        intent::write(self.array(), bits, &sectors)
            .await
            .map_err(|e| match e {
                StateError::Io { source, .. } => source,
                other => BlockError::io(
                    self.array().name.clone(),
                    std::io::Error::other(other.to_string()),
                ),
            })
    }

    /// The bitmap domain's byte for array byte `pos`: the member byte for
    /// RAID-1 and 4/5/6 (data and parity share it), the array byte for
    /// RAID-10 (md's bitmap sectors).
    fn domain_byte(&self, pos: u64) -> u64 {
        match &self.array().level {
            MdLevel::Parity(p) => {
                let chunk = self.chunk();
                let (stripe, _) = p.locate(pos / chunk);
                stripe * self.array().chunk_bytes + pos % chunk
            }
            _ => pos,
        }
    }

    /// Marks the array clean after an orderly session (nothing if it was
    /// never written, or a member write failed: then it stays dirty).
    pub async fn close(&self) -> Result<(), StateError> {
        let Some(session) = self.session() else {
            return Ok(());
        };
        let mut st = session.state.lock().await;
        if !st.dirty {
            return Ok(());
        }
        if st.failed {
            warn!(
                "md {}: a member write failed; left dirty for md to resync",
                self.array().name
            );
            return Ok(());
        }
        for dev in self.members() {
            dev.flush().await.map_err(|source| StateError::Io {
                device: dev.name().to_string(),
                source,
            })?;
        }
        let events = st.events + 1;
        self.set_state(&mut st, events, true).await?;
        st.events += 1;
        st.dirty = false;
        info!(
            "md {}: marked clean (events {})",
            self.array().name,
            st.events
        );
        Ok(())
    }

    /// Writes `buf` at array byte `offset` (the range checked).
    pub(super) async fn write_at(&self, offset: u64, buf: &[u8], d: Durability) -> BlockResult {
        let session = self.session().ok_or(BlockError::ReadOnly)?;
        let mut st = session.state.lock().await;
        if st.failed {
            return Err(self.failed_error());
        }
        if !st.dirty {
            let events = st.events + 1;
            if let Err(e) = self.set_state(&mut st, events, false).await {
                st.failed = true;
                warn!("md {}: marking it dirty: {e}", self.array().name);
                return Err(self.failed_error());
            }
            st.events += 1;
            st.dirty = true;
        }
        if let Err(e) = self.mark_intent(&mut st, offset, buf.len()).await {
            st.failed = true;
            warn!("md {}: setting bitmap bits: {e}", self.array().name);
            return Err(e);
        }
        let r = self.write_pieces(offset, buf, d).await;
        if let Err(e) = &r {
            warn!(
                "md {}: write failed, array left dirty: {e}",
                self.array().name
            );
            st.failed = true;
        }
        r
    }

    fn failed_error(&self) -> BlockError {
        BlockError::io(
            self.array().name.clone(),
            std::io::Error::other("an earlier member write of this md session failed"),
        )
    }

    async fn write_pieces(&self, offset: u64, buf: &[u8], d: Durability) -> BlockResult {
        let chunk = self.chunk();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let n = self.piece_len(pos, buf.len() - done);
            let piece = &buf[done..done + n];
            match &self.array().level {
                MdLevel::Raid0(z) => {
                    let (role, sector) = z.map(pos / 512);
                    self.write_role(role, sector * 512 + pos % 512, piece, d)
                        .await?
                }
                MdLevel::Linear(l) => {
                    let (role, sector, _) = l.map(pos / 512);
                    self.write_role(role, sector * 512 + pos % 512, piece, d)
                        .await?
                }
                MdLevel::Raid1 => {
                    for role in 0..self.array().slots.len() {
                        if self.present(role) {
                            self.write_role(role, pos, piece, d).await?;
                        }
                    }
                }
                MdLevel::Raid10(_) => {
                    for (disk, at) in self.raid10_copies(pos / chunk, pos % chunk) {
                        if self.present(disk) {
                            self.write_role(disk, at, piece, d).await?;
                        }
                    }
                }
                MdLevel::Parity(p) => {
                    self.parity_write(p, pos / chunk, pos % chunk, piece, d)
                        .await?
                }
            }
            done += n;
        }
        Ok(())
    }

    /// Writes `buf` at byte `at` of the data area of the member in `role`.
    async fn write_role(&self, role: usize, at: u64, buf: &[u8], d: Durability) -> BlockResult {
        let slot = self.slot(role)?;
        slot.device
            .write(ByteOffset(slot.data_offset + at), buf, d)
            .await
    }

    async fn read_role_of(&self, role: usize, at: u64, buf: &mut [u8]) -> BlockResult {
        read_slot(self.slot(role)?, at, buf).await
    }

    /// What `role` holds where the piece `w` lies.
    async fn read_piece_of(&self, role: usize, w: &Piece<'_>) -> BlockResult<Vec<u8>> {
        let mut b = vec![0u8; w.new.len()];
        self.read_role_of(role, w.at, &mut b).await?;
        Ok(b)
    }

    /// One chunk piece of a RAID-4/5/6 stripe, as `plan` says.
    async fn parity_write(
        &self,
        p: &ParityLayout,
        chunk: u64,
        in_chunk: u64,
        new: &[u8],
        d: Durability,
    ) -> BlockResult {
        let (stripe, disk) = p.locate(chunk);
        let at = stripe * self.array().chunk_bytes + in_chunk;
        let piece = Piece {
            stripe,
            disk,
            at,
            new,
        };
        match plan(p, stripe, disk, |r| self.present(r)).ok_or_else(|| self.lost())? {
            ParityPlan::Rmw { p: pd, q: qd } => self.rmw(p, &piece, (pd, qd), d).await,
            ParityPlan::Reconstruct { p: pd, q: qd } => {
                self.reconstruct_write(p, &piece, (pd, qd), d).await
            }
        }
    }

    /// Read-modify-write: the data (present) and the present parity
    /// blocks `(p, q)`, each updated by the delta.
    async fn rmw(
        &self,
        p: &ParityLayout,
        w: &Piece<'_>,
        (pd, qd): (Option<usize>, Option<usize>),
        d: Durability,
    ) -> BlockResult {
        let mut delta = vec![0u8; w.new.len()];
        if pd.is_some() || qd.is_some() {
            self.read_role_of(w.disk, w.at, &mut delta).await?;
            xor_into(&mut delta, w.new);
        }
        let mut pb = None;
        if let Some(role) = pd {
            let mut b = self.read_piece_of(role, w).await?;
            xor_into(&mut b, &delta);
            pb = Some((role, b));
        }
        let mut qb = None;
        if let Some(q) = qd {
            let slot = p.q_slot(w.stripe, w.disk).ok_or_else(|| self.lost())?;
            let mut b = self.read_piece_of(q, w).await?;
            mul_xor_into(&mut b, &delta, gf_pow2(slot));
            qb = Some((q, b));
        }
        self.write_role(w.disk, w.at, w.new, d).await?;
        for (role, b) in pb.into_iter().chain(qb) {
            self.write_role(role, w.at, &b, d).await?;
        }
        Ok(())
    }

    /// Reconstruct-write for a missing data disk: the stripe's other data
    /// read (a missing one rebuilt), P and Q computed with `w.new` in the
    /// data disk's place, the present ones of `(p, q)` written.
    async fn reconstruct_write(
        &self,
        p: &ParityLayout,
        w: &Piece<'_>,
        (pd, qd): (Option<usize>, Option<usize>),
        d: Durability,
    ) -> BlockResult {
        let len = w.new.len();
        let StripeRoles { q: has_q, .. } = p.roles(w.stripe);
        let mut pb = vec![0u8; len];
        let mut qb = has_q.map(|_| vec![0u8; len]);
        let mut block = vec![0u8; len];
        for dd in 0..p.data_disks() {
            let disk = p.data_disk(w.stripe, dd);
            let data: &[u8] = if disk == w.disk {
                w.new
            } else {
                self.read_or_rebuild(p, w.stripe, disk, w.at, &mut block)
                    .await?;
                &block
            };
            xor_into(&mut pb, data);
            if let Some(qb) = qb.as_mut() {
                let slot = p.q_slot(w.stripe, disk).ok_or_else(|| self.lost())?;
                mul_xor_into(qb, data, gf_pow2(slot));
            }
        }
        if let Some(role) = pd {
            self.write_role(role, w.at, &pb, d).await?;
        }
        if let (Some(role), Some(qb)) = (qd, qb) {
            self.write_role(role, w.at, &qb, d).await?;
        }
        Ok(())
    }
}

/// One chunk piece of a parity write: its stripe, data disk, member
/// byte offset and new bytes.
struct Piece<'a> {
    stripe: u64,
    disk: usize,
    at: u64,
    new: &'a [u8],
}
