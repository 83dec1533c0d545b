//! `Volume`: a RAID array of member devices, itself a [`BlockDevice`].
//!
//! ```text
//!  BlockDevice call ─► check_range ─► level_io(level) ─► member methods ─► member I/O
//!                                     (the one dispatch)                │ error: retry once,
//!                                                                       │ then mark Failed and
//!                                                                       ▼ await VolumeEvents
//! ```
//!
//! This file owns member state and the retry/fail policy shared by every
//! level, and gives the levels what they need through methods (member
//! reads and writes, locks, checksum and parity-log hooks, failure
//! reporting); the levels own the data paths (`level.rs`).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::watch;

use super::checksum::ChecksumHook;
use super::intent::{IntentGuard, WriteIntent};
use super::layout::{Geometry, LayoutError, MemberIndex};
use super::level::{count_true, Clear, LevelIo, MemberOp};
use super::ppl::ParityLog;
use super::rebuild::{RebuildError, SyncProgress, SyncTracker};
use super::stripe_lock::StripeLocks;
use super::{raid0, raid1, raid10, raid5, raid6, Level};
use crate::block::{check_range, BlockDevice, BlockError, BlockResult, BoxFuture, Durability};
use crate::units::ByteOffset;

/// Receives member failures so they can be persisted (superblock event bump).
pub trait VolumeEvents: Send + Sync {
    /// `member` failed with `error`; resolves once the failure is recorded.
    /// `states`: every member's state once it failed.
    fn member_failed(
        &self,
        member: MemberIndex,
        error: &BlockError,
        states: &[MemberState],
    ) -> BoxFuture<'_, ()>;
}

/// State of one member slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    /// Serving I/O.
    Active,
    /// Failed at runtime; no longer used.
    Failed,
    /// Absent when the volume was assembled.
    Missing,
    /// A new member is being rebuilt into this (failed or missing) slot;
    /// bytes below `up_to` of its data area are in sync.
    Rebuilding {
        /// Member data bytes already rebuilt.
        up_to: u64,
    },
}

/// Errors building a [`Volume`].
#[derive(Debug, thiserror::Error)]
pub enum RaidError {
    /// The geometry is invalid.
    #[error("invalid geometry")]
    Layout(#[from] LayoutError),
    /// The member list does not match the geometry.
    #[error("geometry has {expected} members but {got} were given")]
    MemberCount {
        /// Members in the geometry.
        expected: usize,
        /// Members given.
        got: usize,
    },
    /// More members are missing than the level tolerates.
    #[error("{missing} members missing but {level} tolerates only {redundancy}")]
    TooManyMissing {
        /// Missing members.
        missing: usize,
        /// The level.
        level: Level,
        /// Tolerated missing members.
        redundancy: usize,
    },
    /// A member is smaller than the data area.
    #[error("{member} ({name}) has {size} bytes, needs {need}")]
    MemberTooSmall {
        /// The member.
        member: MemberIndex,
        /// Its device name.
        name: String,
        /// Its size.
        size: u64,
        /// The member data size.
        need: u64,
    },
}

struct Slot {
    device: RwLock<Option<Arc<dyn BlockDevice>>>,
    failed: AtomicBool,
    /// Becomes true once `VolumeEvents::member_failed` has returned: writes
    /// that skip a failed member wait for it, so nothing is acknowledged
    /// before the failure is on record.
    recorded: RwLock<Arc<watch::Sender<bool>>>,
    /// A member being rebuilt for this slot (into a failed/missing slot, or
    /// replacing a live member). Every write reaches it; reads never do.
    incoming: RwLock<Option<Arc<Incoming>>>,
    /// Member I/Os in flight through this volume (RAID-10 reads go to the
    /// copy with the fewest, as md's `read_balance` picks the least busy).
    pending: AtomicUsize,
    /// RAID-1: read only when no other member can serve (md write-mostly);
    /// with write-behind on, written behind.
    write_mostly: AtomicBool,
    /// Its last failure was a timeout (a remote member unreachable for
    /// `member_timeout`), not an I/O error or an operator's `fail`.
    timed_out: AtomicBool,
}

impl Slot {
    fn new(device: Option<Arc<dyn BlockDevice>>) -> Slot {
        Slot {
            device: RwLock::new(device),
            failed: AtomicBool::new(false),
            recorded: RwLock::new(Arc::new(watch::Sender::new(false))),
            incoming: RwLock::new(None),
            pending: AtomicUsize::new(0),
            write_mostly: AtomicBool::new(false),
            timed_out: AtomicBool::new(false),
        }
    }

    fn device(&self) -> Option<Arc<dyn BlockDevice>> {
        self.device
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn recorded(&self) -> Arc<watch::Sender<bool>> {
        self.recorded
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn incoming(&self) -> Option<Arc<Incoming>> {
        self.incoming
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A member being rebuilt: written by every client write, read by nobody
/// until the rebuild promotes it.
pub(super) struct Incoming {
    device: Arc<dyn BlockDevice>,
    /// Member data bytes below this are in sync.
    up_to: AtomicU64,
    /// A write to it failed: the rebuild is abandoned.
    broken: AtomicBool,
}

impl Incoming {
    /// The new member's device.
    pub(super) fn device(&self) -> &Arc<dyn BlockDevice> {
        &self.device
    }

    /// Member data bytes in sync.
    pub(super) fn up_to(&self) -> u64 {
        self.up_to.load(Ordering::Acquire)
    }

    /// Bytes below `up_to` are in sync now (a rebuild step finished).
    pub(super) fn set_up_to(&self, up_to: u64) {
        self.up_to.store(up_to, Ordering::Release);
    }

    /// True once a write to it failed (the rebuild is abandoned).
    pub(super) fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }
}

/// The one place a [`Level`] picks its data path: a new level adds its arm
/// here (and its file, and its layout).
fn level_io(level: Level) -> &'static dyn LevelIo {
    match level {
        Level::Raid0 => &raid0::Raid0,
        Level::Raid1 => &raid1::Raid1,
        Level::Raid5 => &raid5::Raid5,
        Level::Raid6 => &raid6::Raid6,
        Level::Raid10(_) => &raid10::Raid10,
    }
}

/// A RAID-0, RAID-1 or RAID-5 volume over member devices.
pub struct Volume {
    name: String,
    geometry: Geometry,
    /// The level's data path ([`level_io`]).
    level_io: &'static dyn LevelIo,
    slots: Vec<Slot>,
    events: Arc<dyn VolumeEvents>,
    locks: StripeLocks,
    /// RAID-6 partial stripes waiting for their lock (gather.rs).
    gather: super::gather::Gather,
    next_mirror: AtomicUsize,
    intent: Option<Arc<dyn WriteIntent>>,
    /// Block checksums of the members (resealed by resyncs).
    checksums: Option<Arc<dyn ChecksumHook>>,
    /// RAID-5 partial-parity log (closes the write hole), if enabled.
    parity_log: Option<Arc<dyn ParityLog>>,
    /// Client requests in flight (the rebuild backs off while non-zero).
    busy: AtomicUsize,
    progress: Mutex<Option<Arc<SyncTracker>>>,
    /// A write failed for lack of space after other members may have taken
    /// their part: its regions need a resync (`no_space.rs`).
    no_space_unsynced: AtomicBool,
    /// Member ranges (data-area offsets) whose parity may not match their
    /// data for the rest of this run: a write failed there for lack of
    /// space, or the array is served read-only unsynced after a crash. A
    /// RAID-5 never rebuilds data from them (`raid5::reconstruct`).
    untrusted_parity: Mutex<Vec<(u64, u64)>>,
    /// Which regions were ever written (docs/FORMAT.md §10); `None`: all.
    written: Option<Arc<dyn super::WrittenRegions>>,
    /// The final progress of the last pass that ended.
    last_sync: Mutex<Option<super::SyncProgress>>,
    /// RAID-1 write-behind queue, once started.
    behind: std::sync::OnceLock<Arc<super::behind::Behind>>,
    /// Writes do not go behind (write-behind off, or a policy change
    /// draining the queue): every member gets a write before its
    /// acknowledgement.
    behind_paused: AtomicBool,
    /// Bumped when a member state or a rebuild target changes.
    changes: super::changes::Changes,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("name", &self.name)
            .field("geometry", &self.geometry)
            .field("members", &self.member_states())
            .finish()
    }
}

impl Volume {
    /// Assembles a volume. `None` marks a missing member. Each member device
    /// is a window onto that member's data area.
    pub fn new(
        name: String,
        geometry: Geometry,
        members: Vec<Option<Arc<dyn BlockDevice>>>,
        events: Arc<dyn VolumeEvents>,
    ) -> Result<Volume, RaidError> {
        if members.len() != geometry.members() {
            return Err(RaidError::MemberCount {
                expected: geometry.members(),
                got: members.len(),
            });
        }
        let level = geometry.level();
        let missing = members.iter().filter(|m| m.is_none()).count();
        let redundancy = level.redundancy(geometry.members());
        let down: Vec<bool> = members.iter().map(Option::is_none).collect();
        if !geometry.tolerates(&down) {
            return Err(RaidError::TooManyMissing {
                missing,
                level,
                redundancy,
            });
        }
        for (i, dev) in members.iter().enumerate() {
            if let Some(dev) = dev {
                if dev.size() < geometry.member_data_size() {
                    return Err(RaidError::MemberTooSmall {
                        member: MemberIndex(i),
                        name: dev.name().to_string(),
                        size: dev.size(),
                        need: geometry.member_data_size(),
                    });
                }
            }
        }
        let slots = members.into_iter().map(Slot::new).collect();
        Ok(Volume {
            name,
            geometry,
            level_io: level_io(level),
            slots,
            events,
            locks: StripeLocks::new(),
            gather: Default::default(),
            next_mirror: AtomicUsize::new(0),
            intent: None,
            checksums: None,
            parity_log: None,
            busy: AtomicUsize::new(0),
            progress: Mutex::new(None),
            no_space_unsynced: AtomicBool::new(false),
            untrusted_parity: Mutex::new(Vec::new()),
            written: None,
            last_sync: Mutex::new(None),
            behind: std::sync::OnceLock::new(),
            behind_paused: AtomicBool::new(false),
            changes: super::changes::Changes::new(),
        })
    }

    /// Makes every write record its regions in `intent` first (the
    /// write-intent bitmap). Levels without redundancy ignore it.
    pub fn with_write_intent(mut self, intent: Arc<dyn WriteIntent>) -> Volume {
        // A level without redundancy (RAID-0) keeps one only for its block
        // checksums (call `with_checksums` first): the bitmap says where
        // they may be torn.
        if self.redundancy() > 0 || self.checksums.is_some() {
            self.intent = Some(intent);
        }
        self
    }

    /// Makes rebuilds, resyncs and scrubs skip the regions `map` says
    /// were never written (docs/FORMAT.md §10).
    pub fn with_written(mut self, map: Arc<dyn super::WrittenRegions>) -> Volume {
        self.written = Some(map);
        self
    }

    /// The written-region map, if the array keeps one.
    pub fn written(&self) -> Option<&Arc<dyn super::WrittenRegions>> {
        self.written.as_ref()
    }

    /// Makes resyncs reseal the members' block checksums through `hook`
    /// (the members are wrapped in checksum devices), and RAID-0 writes
    /// lock their chunk rows.
    pub fn with_checksums(mut self, hook: Arc<dyn ChecksumHook>) -> Volume {
        self.checksums = Some(hook);
        self
    }

    /// The write-intent record (the bitmap), if writes keep one.
    pub(super) fn write_intent(&self) -> Option<&Arc<dyn WriteIntent>> {
        self.intent.as_ref()
    }

    /// The checksum hook, when the volume runs with block checksums.
    pub(super) fn checksums(&self) -> Option<&Arc<dyn ChecksumHook>> {
        self.checksums.as_ref()
    }

    /// Makes every RAID-5 write log its partial parity in `log` before it
    /// writes (docs/FORMAT.md §9). Other levels ignore it.
    pub fn with_parity_log(mut self, log: Arc<dyn ParityLog>) -> Volume {
        if self.level_io.takes_parity_log() {
            self.parity_log = Some(log);
        }
        self
    }

    /// What the write-hole journal has done, when there is one.
    pub fn journal_counters(&self) -> Option<super::ppl::JournalCounters> {
        self.parity_log.as_ref().and_then(|l| l.counters())
    }

    /// The checksum-page cache's counters, when the volume runs with block
    /// checksums.
    pub fn checksum_cache(&self) -> Option<crate::integrity::CacheStats> {
        self.checksums.as_ref().and_then(|c| c.cache_stats())
    }

    pub(super) fn parity_log(&self) -> Option<&Arc<dyn ParityLog>> {
        self.parity_log.as_ref()
    }

    /// The volume name.
    pub fn volume_name(&self) -> &str {
        &self.name
    }

    /// Progress of the running resync or rebuild, if any.
    pub fn sync_progress(&self) -> Option<SyncProgress> {
        let p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        p.as_ref().map(|t| t.snapshot())
    }

    /// Client requests in flight.
    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::Relaxed)
    }

    /// Shows `tracker` as the running pass's progress (`None`: no pass).
    pub(super) fn set_progress(&self, tracker: Option<Arc<SyncTracker>>) {
        let old = std::mem::replace(
            &mut *self.progress.lock().unwrap_or_else(|e| e.into_inner()),
            tracker,
        );
        self.keep_last(old);
    }

    /// Remembers the final progress of a pass that ended.
    fn keep_last(&self, ended: Option<Arc<SyncTracker>>) {
        if let Some(t) = ended {
            *self.last_sync.lock().unwrap_or_else(|e| e.into_inner()) = Some(t.snapshot());
        }
    }

    /// The final progress of the last pass that ended in this run.
    pub fn last_sync(&self) -> Option<super::SyncProgress> {
        self.last_sync
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Clears the progress slot if it still shows `mine` (another pass may
    /// have taken it over).
    pub(super) fn clear_progress_if(&self, mine: &Arc<SyncTracker>) {
        let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        if p.as_ref().is_some_and(|cur| Arc::ptr_eq(cur, mine)) {
            let old = p.take();
            drop(p);
            self.keep_last(old);
        }
    }

    /// The level's data path.
    pub(super) fn level_io(&self) -> &'static dyn LevelIo {
        self.level_io
    }

    /// How many members may be down while all data stays available.
    pub(super) fn redundancy(&self) -> usize {
        self.geometry.level().redundancy(self.geometry.members())
    }

    /// The stripe (RAID-0/5) or region (RAID-1) locks of writers, degraded
    /// readers, repairs and sync steps.
    pub(super) fn locks(&self) -> &StripeLocks {
        &self.locks
    }

    pub(super) fn gather(&self) -> &super::gather::Gather {
        &self.gather
    }

    /// Member I/Os of this volume in flight on `member`.
    pub(super) fn pending(&self, member: MemberIndex) -> usize {
        self.slots
            .get(member.0)
            .map_or(usize::MAX, |s| s.pending.load(Ordering::Relaxed))
    }

    /// Counts an I/O in flight on `member` while the guard lives.
    fn pending_guard(&self, member: MemberIndex) -> Option<Busy<'_>> {
        self.slots.get(member.0).map(|s| Busy::new(&s.pending))
    }

    /// The mirror a RAID-1 read starts with (rotates per read).
    pub(super) fn next_mirror(&self) -> usize {
        self.next_mirror.fetch_add(1, Ordering::Relaxed)
    }

    /// Records the write intent for a volume range; the guard reports the
    /// write done when dropped.
    pub(super) async fn intent_begin(
        &self,
        offset: ByteOffset,
        len: u64,
    ) -> BlockResult<Option<IntentGuard>> {
        let Some(intent) = &self.intent else {
            return Ok(None);
        };
        let (start, end) = self.geometry.member_span(offset, len);
        intent.mark(start, end).await?;
        Ok(Some(IntentGuard::new(intent.clone(), start, end)))
    }

    /// True while every byte of the volume has a member to come from
    /// (`Geometry::tolerates` over the members down now).
    pub(super) fn data_available(&self) -> bool {
        let down: Vec<bool> = (0..self.slots.len())
            .map(|m| !self.is_active(MemberIndex(m)))
            .collect();
        self.geometry.tolerates(&down)
    }

    /// The array geometry.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// State of every member slot, by index.
    pub fn member_states(&self) -> Vec<MemberState> {
        (0..self.slots.len())
            .map(|i| self.state(MemberIndex(i)))
            .collect()
    }

    /// True when any member is failed or missing.
    pub fn is_degraded(&self) -> bool {
        self.down_count() > 0
    }

    /// The change notification of member states and rebuild targets
    /// (failed, rebuild target attached / detached / broken / promoted;
    /// not rebuild progress).
    pub fn changes(&self) -> &super::changes::Changes {
        &self.changes
    }

    /// State of one member.
    pub fn state(&self, member: MemberIndex) -> MemberState {
        let Some(slot) = self.slots.get(member.0) else {
            return MemberState::Missing;
        };
        let has_device = slot.device().is_some();
        let failed = slot.failed.load(Ordering::Acquire);
        if has_device && !failed {
            return MemberState::Active;
        }
        if let Some(inc) = slot.incoming() {
            return MemberState::Rebuilding {
                up_to: inc.up_to.load(Ordering::Acquire),
            };
        }
        if has_device {
            MemberState::Failed
        } else {
            MemberState::Missing
        }
    }

    /// Name of the device being rebuilt into slot `member` (into a down slot
    /// or as a replacement of a live member), and how far it got.
    pub fn rebuild_target(&self, member: MemberIndex) -> Option<(String, u64)> {
        let inc = self.slots.get(member.0)?.incoming()?;
        Some((
            inc.device.name().to_string(),
            inc.up_to.load(Ordering::Acquire),
        ))
    }

    pub(super) fn is_active(&self, member: MemberIndex) -> bool {
        self.state(member) == MemberState::Active
    }

    /// Members not active.
    pub(super) fn down_count(&self) -> usize {
        (0..self.slots.len())
            .filter(|&i| !self.is_active(MemberIndex(i)))
            .count()
    }

    /// `member`'s [`BlockDevice::merge_limit`] (0 when it is down).
    pub(super) fn member_merge_limit(&self, member: MemberIndex) -> u64 {
        self.device(member).map_or(0, |d| d.merge_limit())
    }

    fn device(&self, member: MemberIndex) -> Option<Arc<dyn BlockDevice>> {
        let slot = self.slots.get(member.0)?;
        if slot.failed.load(Ordering::Acquire) {
            return None;
        }
        slot.device()
    }

    /// Holds what `member`'s device caches about `offset..+len` (its
    /// checksum pages) until the guard drops ([`BlockDevice::hold`]).
    pub(super) fn hold_member(
        &self,
        member: MemberIndex,
        offset: ByteOffset,
        len: u64,
    ) -> crate::block::Hold {
        self.device(member).and_then(|d| d.hold(offset, len))
    }

    pub(super) fn incoming(&self, member: MemberIndex) -> Option<Arc<Incoming>> {
        self.slots.get(member.0)?.incoming()
    }

    /// Attaches `device` (a window onto the new member's data area) as the
    /// member being rebuilt into slot `member`, in sync below `up_to`. The
    /// slot may be down (rebuild) or active (replace: the old member keeps
    /// serving until the rebuild promotes the new one). From now on every
    /// write reaches it; run [`Volume::rebuild`] to fill it.
    pub fn attach_rebuild_target(
        &self,
        member: MemberIndex,
        device: Arc<dyn BlockDevice>,
        up_to: u64,
    ) -> Result<(), RebuildError> {
        let slot = self
            .slots
            .get(member.0)
            .ok_or(RebuildError::NoSuchMember(member))?;
        if device.size() < self.geometry.member_data_size() {
            return Err(RebuildError::TooSmall {
                name: device.name().to_string(),
                size: device.size(),
                need: self.geometry.member_data_size(),
            });
        }
        let mut inc = slot.incoming.write().unwrap_or_else(|e| e.into_inner());
        if inc.is_some() {
            return Err(RebuildError::Busy(member));
        }
        if self.redundancy() == 0 {
            return Err(RebuildError::NoRedundancy(self.geometry.level()));
        }
        let new = Arc::new(Incoming {
            device,
            up_to: AtomicU64::new(up_to.min(self.geometry.member_data_size())),
            broken: AtomicBool::new(false),
        });
        *inc = Some(new);
        drop(inc);
        self.changes.bump();
        Ok(())
    }

    /// Drops the member being rebuilt into `member` (rebuild abandoned).
    pub fn detach_rebuild_target(&self, member: MemberIndex) {
        if let Some(slot) = self.slots.get(member.0) {
            *slot.incoming.write().unwrap_or_else(|e| e.into_inner()) = None;
            self.changes.bump();
        }
    }

    /// Abandons the rebuild into `member` on an operator's request (`vraid
    /// fail` of a member being rebuilt, as md fails a recovering device):
    /// the target counts as broken, so the pass stops at its next step and
    /// detaches it; the slot stays down and is no longer a timed-out member
    /// (the automatic re-join leaves it). False when nothing is rebuilt
    /// into it.
    pub fn abandon_rebuild_by_request(&self, member: MemberIndex, reason: &str) -> bool {
        let Some(slot) = self.slots.get(member.0) else {
            return false;
        };
        let Some(inc) = slot.incoming() else {
            return false;
        };
        slot.timed_out.store(false, Ordering::Release);
        if !inc.broken.swap(true, Ordering::AcqRel) {
            inc.device.retire();
            tracing::warn!(volume = %self.name, %member, reason, "rebuild abandoned");
            self.changes.bump();
        }
        true
    }

    /// Makes the rebuilt member the slot's active member.
    pub(super) fn promote_incoming(&self, member: MemberIndex) {
        let Some(slot) = self.slots.get(member.0) else {
            return;
        };
        let Some(inc) = slot
            .incoming
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        *slot.device.write().unwrap_or_else(|e| e.into_inner()) = Some(inc.device.clone());
        // Under the record lock, like a failure, so flag and channel agree.
        let rec = slot.recorded.write().unwrap_or_else(|e| e.into_inner());
        slot.failed.store(false, Ordering::Release);
        drop(rec);
        self.changes.bump();
    }

    /// Runs `op` on the member being rebuilt into `member`, if any. An error
    /// abandons that rebuild; it never fails the request.
    pub(super) async fn incoming_op(&self, member: MemberIndex, op: MemberOp<'_>) {
        let Some(inc) = self.incoming(member) else {
            return;
        };
        if inc.broken.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = op.run(&*inc.device).await {
            if !inc.broken.swap(true, Ordering::AcqRel) {
                inc.device.retire();
                tracing::warn!(volume = %self.name, %member, %e, "rebuild target failed; rebuild abandoned");
                self.changes.bump();
            }
        }
    }

    /// Reads from the member being rebuilt into the down slot `member`, only
    /// when the whole range is below its `up_to` (already in sync; every
    /// later write reaches it too). False when that is not possible.
    pub(super) async fn read_rebuilt(
        &self,
        member: MemberIndex,
        offset: ByteOffset,
        buf: &mut [u8],
    ) -> bool {
        let Some(inc) = self.incoming(member) else {
            return false;
        };
        let end = offset.get() + buf.len() as u64;
        if inc.broken.load(Ordering::Acquire) || end > inc.up_to.load(Ordering::Acquire) {
            return false;
        }
        inc.device.read(offset, buf).await.is_ok()
    }

    /// `member_op` on the slot's member and on a member being rebuilt into
    /// it, concurrently. True when the slot's own member took it.
    pub(super) async fn write_member(&self, member: MemberIndex, op: MemberOp<'_>) -> bool {
        let (ok, ()) = futures::join!(self.member_op(member, op), self.incoming_op(member, op));
        ok
    }

    /// Marks `member` failed for a read error, unless it is a checksum
    /// mismatch: bad bytes are repaired or reported, never a reason to drop
    /// the member by themselves.
    pub(super) async fn fail_member_for_read(&self, member: MemberIndex, error: &BlockError) {
        if !matches!(error, BlockError::Corrupt { .. }) {
            self.fail_member(member, error).await;
        }
    }

    /// The whole 4 KiB blocks of member data holding `offset..+len`: a
    /// repair rewrites whole blocks, so a block with bad bytes outside the
    /// range read gets its checksum back instead of losing it.
    pub(super) fn block_hull(&self, offset: ByteOffset, len: u64) -> (ByteOffset, u64) {
        const BLOCK: u64 = 4096;
        let a = offset.get() / BLOCK * BLOCK;
        let b = (offset.get() + len)
            .div_ceil(BLOCK)
            .saturating_mul(BLOCK)
            .min(self.geometry.member_data_size());
        (ByteOffset(a), b.max(offset.get() + len) - a)
    }

    pub(super) fn data_lost(&self) -> BlockError {
        BlockError::DataLost {
            volume: self.name.clone(),
        }
    }

    /// Marks `member` failed and records it; only the first caller records,
    /// the others wait until it is recorded.
    pub(super) async fn fail_member(&self, member: MemberIndex, error: &BlockError) {
        self.fail_member_as(member, error, false).await;
    }

    /// [`Volume::fail_member`]; `operator` for a `vraid fail`, which is
    /// never a timeout whatever state the member's link is in.
    async fn fail_member_as(&self, member: MemberIndex, error: &BlockError, operator: bool) {
        let Some(slot) = self.slots.get(member.0) else {
            return;
        };
        if slot.device().is_none() {
            return;
        }
        // Each failure gets a fresh record channel, swapped in under the
        // lock together with the flag: a writer that sees the flag set and
        // then reads the channel waits for this failure's record.
        let first = {
            let mut rec = slot.recorded.write().unwrap_or_else(|e| e.into_inner());
            let first = slot
                .failed
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
            if first {
                *rec = Arc::new(watch::Sender::new(false));
            }
            first
        };
        if first {
            // Before anything else can run: its cached state (checksum
            // pages) never reaches the device again (crash case 87).
            if let Some(d) = slot.device() {
                d.retire();
            }
            slot.timed_out
                .store(!operator && timed_out(slot, error), Ordering::Release);
            tracing::warn!(volume = %self.name, %member, %error, "member failed");
            self.changes.bump();
            let events = self.events.clone();
            let recorded = slot.recorded();
            let error = copy_error(error);
            let states = self.member_states();
            let record = async move {
                events.member_failed(member, &error, &states).await;
                recorded.send_replace(true);
            };
            // Recorded in its own task, so a cancelled request cannot leave
            // the failure unrecorded (and every later writer waiting).
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn(record)),
                Err(_) => record.await,
            }
        }
        self.wait_recorded(member).await;
    }

    /// Fails `member` on an operator's request (`vraid fail`): the same path
    /// as a member I/O failure (logged, recorded in the other members'
    /// superblocks); resolves once recorded. A no-op for a member that is
    /// missing or already failed.
    pub async fn fail_member_by_request(&self, member: MemberIndex, reason: &str) {
        let Some(Some(dev)) = self.slots.get(member.0).map(Slot::device) else {
            return;
        };
        let error = BlockError::io(
            dev.name().to_string(),
            std::io::Error::other(reason.to_string()),
        );
        self.fail_member_as(member, &error, true).await;
    }

    /// Waits until a failed member's failure is on record (no-op otherwise).
    async fn wait_recorded(&self, member: MemberIndex) {
        if let Some(slot) = self.slots.get(member.0) {
            if slot.device().is_none() {
                return;
            }
            let recorded = {
                let rec = slot.recorded.read().unwrap_or_else(|e| e.into_inner());
                if !slot.failed.load(Ordering::Acquire) {
                    return;
                }
                rec.clone()
            };
            // We hold a sender, so the channel cannot close here.
            let _ = recorded.subscribe().wait_for(|&done| done).await;
        }
    }

    /// Reads from `member`, retrying once. `Err(None)`: the member is down;
    /// `Err(Some(e))`: it failed twice (not yet marked failed: the caller
    /// may repair the range first). A checksum mismatch is not retried (the
    /// checksum layer already looked twice; a retry would count it again).
    pub(super) async fn read_member(
        &self,
        member: MemberIndex,
        offset: ByteOffset,
        buf: &mut [u8],
    ) -> Result<(), Option<BlockError>> {
        let dev = self.device(member).ok_or(None)?;
        self.settle_behind(member).await;
        let _pending = self.pending_guard(member);
        if let Err(e) = dev.read(offset, buf).await {
            if matches!(e, BlockError::Corrupt { .. }) {
                return Err(Some(e));
            }
            tracing::debug!(volume = %self.name, %member, %e, "member read failed, retrying");
            dev.read(offset, buf).await.map_err(Some)?;
        }
        Ok(())
    }

    /// [`Self::read_member`] into a scatter-gather list.
    pub(super) async fn read_member_segments(
        &self,
        member: MemberIndex,
        offset: ByteOffset,
        bufs: &mut [std::io::IoSliceMut<'_>],
    ) -> Result<(), Option<BlockError>> {
        let dev = self.device(member).ok_or(None)?;
        self.settle_behind(member).await;
        if let Err(e) = dev.read_vectored(offset, bufs).await {
            if matches!(e, BlockError::Corrupt { .. }) {
                return Err(Some(e));
            }
            tracing::debug!(volume = %self.name, %member, %e, "member read failed, retrying");
            dev.read_vectored(offset, bufs).await.map_err(Some)?;
        }
        Ok(())
    }

    /// Runs `op` on `member`, retrying once; on a second error the member is
    /// failed. True when the op succeeded.
    pub(super) async fn member_op(&self, member: MemberIndex, op: MemberOp<'_>) -> bool {
        let Some(dev) = self.device(member) else {
            self.wait_recorded(member).await;
            return false;
        };
        let mut last = None;
        let pending = self.pending_guard(member);
        for _ in 0..2 {
            match op.run(&*dev).await {
                Ok(()) => return true,
                // Out of space is not a member failure: the request fails,
                // the member stays (`no_space.rs`).
                Err(e) if e.is_no_space() => {
                    tracing::debug!(volume = %self.name, %member, %e, "member out of space");
                    super::no_space::note();
                    return false;
                }
                Err(e) => last = Some(e),
            }
        }
        drop(pending);
        if let Some(e) = last {
            self.fail_member(member, &e).await;
        }
        false
    }

    /// Flushes every active member concurrently.
    async fn flush_members(&self) -> BlockResult {
        self.drain_behind().await;
        let n = self.slots.len();
        let flushed = count_true(n, |i| self.write_member(MemberIndex(i), MemberOp::Flush)).await;
        let lost = match self.redundancy() {
            0 => flushed < n,
            _ => !self.data_available(),
        };
        if lost {
            Err(self.data_lost())
        } else {
            Ok(())
        }
    }

    async fn clear(&self, offset: ByteOffset, len: u64, how: Clear) -> BlockResult {
        check_range(offset, len, self.size())?;
        if len == 0 {
            return Ok(());
        }
        let _busy = Busy::new(&self.busy);
        let intent = self.intent_begin(offset, len).await?;
        let (result, no_space) =
            super::no_space::watch(self.level_io.clear(self, offset, len, how)).await;
        self.settle_no_space(result, no_space, intent.as_ref(), (offset, len))
    }

    /// The outcome of a write or clear whose member ops ran out of space
    /// (`no_space`): ENOSPC, with its write-intent regions kept for a
    /// resync; else `result` as it is.
    /// Its member span (`request`: volume offset and length) is distrusted
    /// for the rest of the run: a member that took its part and one that
    /// did not leave parity that rebuilds bytes nobody wrote.
    fn settle_no_space(
        &self,
        result: BlockResult,
        no_space: bool,
        intent: Option<&IntentGuard>,
        request: (ByteOffset, u64),
    ) -> BlockResult {
        if !no_space {
            return result;
        }
        if let Some(guard) = intent {
            guard.keep();
        }
        self.level_io
            .distrust_after_no_space(self, request.0, request.1);
        if !self.no_space_unsynced.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                volume = %self.name,
                "members out of space: writes fail with ENOSPC until space is freed; \
                 the regions they touched are resynced at the next start"
            );
        }
        Err(super::no_space::error(&self.name))
    }

    /// Parity of member range `start..end` (data-area offsets) may not
    /// match its data until a resync: RAID-5 reads that would rebuild data
    /// from it fail instead (a rebuild marks those blocks lost).
    pub fn distrust_parity(&self, start: u64, end: u64) {
        let mut ranges = self
            .untrusted_parity
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Kept sorted and coalesced: a large write adds one range per chunk.
        let (mut start, mut end) = (start, end);
        ranges.retain(|&(a, b)| {
            let touches = a <= end && start <= b;
            if touches {
                start = start.min(a);
                end = end.max(b);
            }
            !touches
        });
        let at = ranges.partition_point(|&(a, _)| a < start);
        ranges.insert(at, (start, end));
    }

    /// The ranges distrusted now (for [`Volume::trust_parity_again`]).
    pub(super) fn untrusted_parity(&self) -> Vec<(u64, u64)> {
        self.untrusted_parity
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A complete repairing scrub made parity match data everywhere: the
    /// ranges distrusted when it started (`before`) are trusted again; any
    /// distrusted since stay.
    pub(super) fn trust_parity_again(&self, before: &[(u64, u64)]) {
        self.untrusted_parity
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|r| !before.contains(r));
    }

    /// True when `start..end` (member data offsets) overlaps a range whose
    /// parity is not trusted ([`Volume::distrust_parity`]).
    pub(super) fn parity_untrusted(&self, start: u64, end: u64) -> bool {
        self.untrusted_parity
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|&(a, b)| a < end && start < b)
    }

    /// True once a write failed for lack of space: the regions it touched
    /// may disagree between members until resynced, so the array must stay
    /// dirty at shutdown.
    pub fn needs_resync_after_no_space(&self) -> bool {
        self.no_space_unsynced.load(Ordering::Acquire)
    }
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("device", &self.device.name())
            .field("up_to", &self.up_to)
            .field("broken", &self.broken)
            .finish()
    }
}

/// Counts a client request in flight while alive.
struct Busy<'a>(&'a AtomicUsize);

impl<'a> Busy<'a> {
    fn new(counter: &'a AtomicUsize) -> Busy<'a> {
        counter.fetch_add(1, Ordering::Relaxed);
        Busy(counter)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Mirror policies (RAID-1): write-mostly members and the write-behind
/// queue (docs/FORMAT.md §6, "Write-mostly and write-behind members").
impl Volume {
    /// Marks `member` write-mostly (or not).
    pub fn set_write_mostly(&self, member: MemberIndex, on: bool) {
        if let Some(slot) = self.slots.get(member.0) {
            slot.write_mostly.store(on, Ordering::Release);
        }
    }

    /// True when `member` is write-mostly.
    pub fn is_write_mostly(&self, member: MemberIndex) -> bool {
        self.slots
            .get(member.0)
            .is_some_and(|s| s.write_mostly.load(Ordering::Acquire))
    }

    /// True when `member` last failed by timing out (an unreachable remote
    /// member), not for an I/O error or an operator's request.
    /// A member taken out (`vraid remove`, missing) or being rebuilt is
    /// not: only one still failed in its slot.
    pub fn failed_by_timeout(&self, member: MemberIndex) -> bool {
        self.state(member) == MemberState::Failed
            && self
                .slots
                .get(member.0)
                .is_some_and(|s| s.timed_out.load(Ordering::Acquire))
    }

    /// Turns write-behind on for the write-mostly members (RAID-1), or
    /// changes its limits.
    pub fn start_write_behind(self: &Arc<Self>, limits: super::behind::BehindLimits) {
        let weak = Arc::downgrade(self);
        let b = self
            .behind
            .get_or_init(|| super::behind::Behind::start(weak, limits));
        b.set_limits(limits);
        self.behind_paused.store(false, Ordering::Release);
    }

    /// Stops writes going behind (every member gets each write before its
    /// acknowledgement again; `start_write_behind` resumes), then waits
    /// until nothing queued earlier is left (FORMAT.md §6, "Order of a
    /// live change").
    pub async fn pause_write_behind(&self) {
        self.behind_paused.store(true, Ordering::Release);
        self.drain_behind().await;
    }

    /// Resumes write-behind after [`Volume::pause_write_behind`] (when it
    /// was on).
    pub fn resume_write_behind(&self) {
        self.behind_paused.store(false, Ordering::Release);
    }

    /// Write-behind limits and the lag now, when write-behind is on (and
    /// not paused).
    pub fn write_behind(&self) -> Option<(super::behind::BehindLimits, super::behind::Lag)> {
        if self.behind_paused.load(Ordering::Acquire) {
            return None;
        }
        self.behind.get().map(|b| (b.limits(), b.lag()))
    }

    /// Writes that went behind since start.
    pub fn behind_queued_total(&self) -> u64 {
        self.behind
            .get()
            .map_or(0, |b| b.queued_total.load(Ordering::Relaxed))
    }

    /// The queue, when write-behind is on.
    pub(super) fn behind(&self) -> Option<&Arc<super::behind::Behind>> {
        self.behind.get()
    }

    /// Waits until no write is queued or in flight to a write-behind member.
    pub async fn drain_behind(&self) {
        if let Some(b) = self.behind.get() {
            b.drain().await;
        }
    }

    /// Before a read of `member`: a write-mostly member may lag, so wait
    /// for its queue to drain.
    async fn settle_behind(&self, member: MemberIndex) {
        if self.is_write_mostly(member) {
            self.drain_behind().await;
        }
    }

    /// The active members a RAID-1 read tries, in order: those not
    /// write-mostly from a rotating `start`, then the write-mostly ones.
    pub(super) fn read_order(&self, start: usize) -> impl Iterator<Item = MemberIndex> + '_ {
        let all = move || (0..self.slots.len()).map(MemberIndex);
        let preferred = move |m: &MemberIndex| self.is_active(*m) && !self.is_write_mostly(*m);
        let count = all().filter(preferred).count();
        let first = all()
            .filter(preferred)
            .cycle()
            .skip(start % count.max(1))
            .take(count);
        let rest = all().filter(move |&m| self.is_active(m) && self.is_write_mostly(m));
        first.chain(rest)
    }

    /// The active members a write goes behind on: write-mostly ones, when
    /// write-behind is on and an active member that is not write-mostly
    /// takes the write now. Bit `m` set for member `m` (at most 64).
    pub(super) fn behind_set(&self) -> u64 {
        if self.behind.get().is_none() || self.behind_paused.load(Ordering::Acquire) {
            return 0;
        }
        let mut set = 0u64;
        let mut others = false;
        for m in (0..self.slots.len().min(64)).map(MemberIndex) {
            if !self.is_active(m) {
                continue;
            }
            match self.is_write_mostly(m) {
                true => set |= 1 << m.0,
                false => others = true,
            }
        }
        if others {
            set
        } else {
            0
        }
    }
}

/// An owned copy of `error` for the failure record (io::Error is not Clone).
/// Whether a member failing with `error` failed by timing out: the error
/// says so, or the member is a remote one whose link is down past
/// `member_timeout` (whatever path the failure took to get here: a
/// metadata or journal write may carry its own error).
fn timed_out(slot: &Slot, error: &BlockError) -> bool {
    let kind = matches!(error, BlockError::Io { source, .. }
        if source.kind() == std::io::ErrorKind::TimedOut);
    kind || slot
        .device()
        .is_some_and(|d| crate::remote::stats::unreachable(d.name()))
}

fn copy_error(error: &BlockError) -> BlockError {
    match error {
        BlockError::Io { device, source } => BlockError::io(
            device.clone(),
            match source.raw_os_error() {
                Some(errno) => std::io::Error::from_raw_os_error(errno),
                None => std::io::Error::new(source.kind(), source.to_string()),
            },
        ),
        BlockError::OutOfRange { offset, len, size } => BlockError::OutOfRange {
            offset: *offset,
            len: *len,
            size: *size,
        },
        BlockError::DataLost { volume } => BlockError::DataLost {
            volume: volume.clone(),
        },
        BlockError::Corrupt {
            device,
            offset,
            blocks,
        } => BlockError::Corrupt {
            device: device.clone(),
            offset: *offset,
            blocks: *blocks,
        },
        BlockError::ReadOnly => BlockError::ReadOnly,
        BlockError::Unsupported => BlockError::Unsupported,
    }
}

impl BlockDevice for Volume {
    fn name(&self) -> &str {
        &self.name
    }

    /// From the written-region map (docs/FORMAT.md §10): never-written
    /// regions are holes reading as zeroes; all data without a map.
    fn allocation(
        &self,
        offset: ByteOffset,
        len: u64,
    ) -> BoxFuture<'_, BlockResult<crate::block::AllocationMap>> {
        let map = check_range(offset, len, self.size()).map(|()| {
            super::written::allocation(&self.geometry, self.written.as_ref(), offset.get(), len)
        });
        crate::block::BoxFuture::new(std::future::ready(map))
    }

    fn size(&self) -> u64 {
        self.geometry.volume_size()
    }

    fn read<'a>(&'a self, offset: ByteOffset, buf: &'a mut [u8]) -> BoxFuture<'a, BlockResult> {
        crate::block::BoxFuture::new(async move {
            check_range(offset, buf.len() as u64, self.size())?;
            if buf.is_empty() {
                return Ok(());
            }
            let _busy = Busy::new(&self.busy);
            super::data_path::read(self, offset, buf).await
        })
    }

    fn write<'a>(
        &'a self,
        offset: ByteOffset,
        buf: &'a [u8],
        durability: Durability,
    ) -> BoxFuture<'a, BlockResult> {
        crate::block::BoxFuture::new(async move {
            check_range(offset, buf.len() as u64, self.size())?;
            if buf.is_empty() {
                return Ok(());
            }
            let _busy = Busy::new(&self.busy);
            let intent = self.intent_begin(offset, buf.len() as u64).await?;
            let write = super::data_path::write(self, offset, buf, durability);
            let (result, no_space) = super::no_space::watch(write).await;
            self.settle_no_space(
                result,
                no_space,
                intent.as_ref(),
                (offset, buf.len() as u64),
            )
        })
    }

    fn read_vectored<'a>(
        &'a self,
        offset: ByteOffset,
        bufs: &'a mut [std::io::IoSliceMut<'_>],
    ) -> BoxFuture<'a, BlockResult> {
        if let [one] = bufs {
            return self.read(offset, one);
        }
        crate::block::BoxFuture::new(async move {
            let len = crate::iovec::len_mut(bufs) as u64;
            check_range(offset, len, self.size())?;
            if len == 0 {
                return Ok(());
            }
            let _busy = Busy::new(&self.busy);
            super::data_path::read_segments(self, offset, bufs).await
        })
    }

    fn write_vectored<'a>(
        &'a self,
        offset: ByteOffset,
        bufs: &'a [std::io::IoSlice<'a>],
        durability: Durability,
    ) -> BoxFuture<'a, BlockResult> {
        crate::block::BoxFuture::new(async move {
            let len = crate::iovec::len(bufs) as u64;
            check_range(offset, len, self.size())?;
            if len == 0 {
                return Ok(());
            }
            let _busy = Busy::new(&self.busy);
            let intent = self.intent_begin(offset, len).await?;
            let write = super::data_path::write_segments(self, offset, bufs, durability);
            let (result, no_space) = super::no_space::watch(write).await;
            self.settle_no_space(result, no_space, intent.as_ref(), (offset, len))
        })
    }

    fn flush(&self) -> BoxFuture<'_, BlockResult> {
        crate::block::BoxFuture::new(async move {
            let (result, no_space) = super::no_space::watch(self.flush_members()).await;
            match no_space {
                true => Err(super::no_space::error(&self.name)),
                false => result,
            }
        })
    }

    fn discard(&self, offset: ByteOffset, len: u64) -> BoxFuture<'_, BlockResult> {
        crate::block::BoxFuture::new(self.clear(offset, len, Clear::Discard))
    }

    fn write_zeroes(
        &self,
        offset: ByteOffset,
        len: u64,
        may_unmap: bool,
    ) -> BoxFuture<'_, BlockResult> {
        crate::block::BoxFuture::new(self.clear(offset, len, Clear::Zeroes { may_unmap }))
    }
}
