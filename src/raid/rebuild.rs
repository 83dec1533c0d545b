//! Online rebuild and bitmap recovery while the volume serves I/O, and the
//! pacing, locking and progress every sync pass shares (the crash resync
//! is in `resync.rs`, the scrub in `scrub.rs`).
//!
//! ```text
//!  rebuild(member):  for each step (2 MiB of member data) from up_to:
//!      lock stripes/regions ─► copy (RAID-1) or XOR of the others (RAID-5)
//!      (the level's LevelIo::rebuild_read, in raid1_sync.rs / raid5_sync.rs)
//!      ─► write to the incoming member ─► up_to = step end ─► unlock
//!      every 64 MiB: flush incoming ─► sink.checkpoint(up_to)
//!      end: flush ─► sink.finished ─► promote incoming to active
//! ```
//!
//! Client writes hold the same locks, so they never race a step; they also
//! always reach the incoming member, so bytes below `up_to` stay in sync.
//! Every step is throttled by [`RebuildControl`] and slowed to an eighth
//! while client requests are in flight. RAID-5 reads of the rebuilt part
//! are served by the new member instead of being reconstructed. A source
//! block that fails its checksum or cannot be read, with no redundancy
//! left for it, is lost on the new member alone (§7 "Source errors"); a
//! source is failed only after [`SOURCE_ERROR_LIMIT`] unreadable blocks.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::layout::MemberIndex;
use super::level::{LostBlocks, RebuildRead};
use super::stripe_lock::StripeGuards;
use super::volume::{Incoming, Volume};
use super::written::{pieces, WrittenRegions};
use super::Level;
use crate::block::{BlockDevice, BlockError, BoxFuture, Durability};
use crate::units::ByteOffset;

/// Member data bytes handled per locked step.
pub(super) const STEP: u64 = 2 << 20;
/// Granularity at which a rebuild gives up single blocks (a checksum block).
pub(super) const LOST_BLOCK: usize = 4096;
/// While client requests are in flight, passes run at the rate limit
/// divided by this.
const BUSY_DIVISOR: f64 = 8.0;
/// Rebuild steps in flight at once.
const DEPTH: usize = 16;
/// Member data bytes between two checkpoints in the superblocks.
pub const CHECKPOINT_EVERY: u64 = 64 << 20;
/// Default rebuild rate limit.
pub const DEFAULT_MAX_MBPS: u64 = 200;

/// Blocks of one source member that may fail to read (I/O errors, not
/// checksum mismatches) during one rebuild before the member is failed:
/// below it each such block is lost on the new member only; a source that
/// keeps failing is a failing disk (1 MiB of errors).
pub const SOURCE_ERROR_LIMIT: u64 = 256;

/// Errors starting or running a rebuild or resync.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// No such member slot.
    #[error("{0} is not a member of this volume")]
    NoSuchMember(MemberIndex),
    /// A rebuild is already running into that slot.
    #[error("a rebuild into {0} is already running")]
    Busy(MemberIndex),
    /// The slot has an active member (use replace).
    #[error("{0} is active; replace it instead")]
    SlotActive(MemberIndex),
    /// The new member is too small.
    #[error("{name} has {size} bytes of data area, needs {need}")]
    TooSmall {
        /// Device name.
        name: String,
        /// Its size.
        size: u64,
        /// Member data size.
        need: u64,
    },
    /// The level has no redundancy to rebuild from.
    #[error("a {0} volume cannot be rebuilt")]
    NoRedundancy(Level),
    /// Reading the sources failed (too many members down).
    #[error("rebuild sources unavailable")]
    Sources(#[source] BlockError),
    /// Writing the new member failed.
    #[error("writing the new member failed")]
    Target(#[source] BlockError),
    /// Recording progress in the superblocks failed.
    #[error("recording rebuild progress failed: {0}")]
    Checkpoint(String),
    /// The rebuild was cancelled.
    #[error("rebuild cancelled")]
    Cancelled,
}

/// Why a rebuild could not rebuild a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lost {
    /// A source block failed its checksum, no other redundancy left.
    Checksum,
    /// A source block could not be read, no other redundancy left.
    ReadError,
}

impl Lost {
    fn text(self) -> &'static str {
        match self {
            Lost::Checksum => "a source block failed its checksum",
            Lost::ReadError => "a source block could not be read",
        }
    }
}

/// Read errors per source member during one rebuild.
pub(super) struct SourceErrors(Vec<AtomicU64>);

impl SourceErrors {
    fn new(members: usize) -> SourceErrors {
        SourceErrors((0..members).map(|_| AtomicU64::new(0)).collect())
    }

    /// Why a block whose rebuild read failed on `failed` (member, error;
    /// `None`: down) is lost, counting the read errors; an error when more
    /// than `allowed_down` members are down by now (the rebuild cannot go
    /// on).
    pub(super) async fn settle(
        &self,
        vol: &Volume,
        failed: &[(MemberIndex, Option<BlockError>)],
        allowed_down: usize,
    ) -> Result<Lost, RebuildError> {
        let mut reason = Lost::Checksum;
        for (m, e) in failed {
            if let Some(e) = e
                .as_ref()
                .filter(|e| !matches!(e, BlockError::Corrupt { .. }))
            {
                reason = Lost::ReadError;
                self.note(vol, *m, e).await;
            }
        }
        if vol.down_count() > allowed_down {
            return Err(RebuildError::Sources(vol.data_lost()));
        }
        Ok(reason)
    }

    /// Counts one unreadable block of `member`; at [`SOURCE_ERROR_LIMIT`]
    /// the member is failed (the rebuild then stops if it needed it).
    pub(super) async fn note(&self, vol: &Volume, member: MemberIndex, error: &BlockError) {
        let Some(count) = self.0.get(member.0) else {
            return;
        };
        let n = count.fetch_add(1, Ordering::Relaxed) + 1;
        // The first few in full, then at 16, 32, 64...: a source with many
        // bad blocks does not flood the log (each step also logs its lost
        // blocks as one line).
        if n <= 8 || n.is_power_of_two() {
            tracing::warn!(volume = vol.volume_name(), %member, %error, errors = n,
                "rebuild: a source block could not be read (logged for the first 8, then at powers of two)");
        }
        if n == SOURCE_ERROR_LIMIT {
            vol.fail_member(member, error).await;
        }
    }
}

/// What a sync pass does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncKind {
    /// Making redundancy consistent in dirty regions after a crash.
    Resync,
    /// Rebuilding a whole new member.
    Rebuild,
    /// Catching a re-added member up from the write-intent bitmap.
    Recovery,
    /// Checking (and with repair, fixing) every member's data (`vraid scrub`).
    Scrub,
}

/// A snapshot of sync progress.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SyncProgress {
    /// What runs.
    pub kind: SyncKind,
    /// The member being rebuilt (rebuild/recovery).
    pub member: Option<usize>,
    /// Bytes handled so far.
    pub done_bytes: u64,
    /// Bytes to handle in all.
    pub total_bytes: u64,
    /// Average rate since the start.
    pub bytes_per_sec: f64,
    /// Seconds left at that rate.
    pub eta_secs: Option<f64>,
    /// Bytes of `done_bytes` passed over because no write ever reached
    /// them (the written-region map, docs/FORMAT.md §10).
    pub skipped_bytes: u64,
}

/// Live progress counters of one pass.
#[derive(Debug)]
pub struct SyncTracker {
    kind: SyncKind,
    member: Option<usize>,
    pub(super) done: AtomicU64,
    /// Of `done`, skipped as never written.
    pub(super) skipped: AtomicU64,
    total: u64,
    started: Instant,
}

impl SyncTracker {
    pub(super) fn new(kind: SyncKind, member: Option<usize>, total: u64) -> Arc<SyncTracker> {
        Arc::new(SyncTracker {
            kind,
            member,
            done: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            total,
            started: Instant::now(),
        })
    }

    /// The current progress.
    pub fn snapshot(&self) -> SyncProgress {
        let done = self.done.load(Ordering::Relaxed);
        let skipped = self.skipped.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = done.saturating_sub(skipped) as f64 / secs;
        SyncProgress {
            kind: self.kind,
            member: self.member,
            done_bytes: done,
            total_bytes: self.total,
            bytes_per_sec: rate,
            eta_secs: (rate > 0.0).then(|| self.total.saturating_sub(done) as f64 / rate),
            skipped_bytes: skipped,
        }
    }
}

/// Rate limit and cancellation of sync passes; settable live.
#[derive(Debug)]
pub struct RebuildControl {
    max_mbps: AtomicU64,
    cancelled: AtomicBool,
}

impl RebuildControl {
    /// A control limited to `max_mbps` MB/s (0 = unlimited).
    pub fn new(max_mbps: u64) -> RebuildControl {
        RebuildControl {
            max_mbps: AtomicU64::new(max_mbps),
            cancelled: AtomicBool::new(false),
        }
    }

    /// Changes the rate limit; running passes pick it up at their next step.
    pub fn set_max_mbps(&self, mbps: u64) {
        self.max_mbps.store(mbps, Ordering::Relaxed);
    }

    /// The rate limit in MB/s (0 = unlimited).
    pub fn max_mbps(&self) -> u64 {
        self.max_mbps.load(Ordering::Relaxed)
    }

    /// Stops running passes at their next step.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    pub(super) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }
}

impl Default for RebuildControl {
    fn default() -> Self {
        RebuildControl::new(DEFAULT_MAX_MBPS)
    }
}

/// Persists rebuild progress (the superblock checkpoint) and completion.
pub trait RebuildSink: Send + Sync {
    /// Bytes below `up_to` of the new member in `member` are in sync and flushed.
    fn checkpoint(&self, member: MemberIndex, up_to: u64) -> BoxFuture<'_, Result<(), String>>;
    /// The new member is fully in sync and flushed: record it active.
    fn finished(&self, member: MemberIndex) -> BoxFuture<'_, Result<(), String>>;
}

/// Paces a pass: at most the configured rate, an eighth of it while client
/// requests are in flight (like md's fallback to its minimum speed).
pub(super) struct Pacer {
    started: Instant,
    budget_secs: f64,
}

impl Pacer {
    pub(super) fn new() -> Pacer {
        Pacer {
            started: Instant::now(),
            budget_secs: 0.0,
        }
    }

    pub(super) async fn step(&mut self, vol: &Volume, ctl: &RebuildControl, bytes: u64) {
        let mbps = ctl.max_mbps();
        let busy = vol.busy() > 0;
        if mbps > 0 {
            let rate = if busy {
                mbps as f64 / BUSY_DIVISOR
            } else {
                mbps as f64
            };
            self.budget_secs += bytes as f64 / (rate * 1e6);
            let ahead = self.budget_secs - self.started.elapsed().as_secs_f64();
            if ahead > 0.0 {
                tokio::time::sleep(Duration::from_secs_f64(ahead)).await;
            } else if ahead < -1.0 {
                // Do not bank more than a second of unused budget.
                self.budget_secs = self.started.elapsed().as_secs_f64() - 1.0;
            }
        } else if busy {
            tokio::task::yield_now().await;
        }
    }
}

/// Locks of one step: the level's locks (RAID-1 regions, RAID-0/5
/// stripes) covering member data `a..b`.
pub(super) async fn lock_step(vol: &Volume, a: u64, b: u64) -> StripeGuards<'_> {
    vol.level_io().lock_member_range(vol, a, b).await
}

/// The steps of `a..b`, aligned to `STEP` (and so to chunks and regions).
pub(super) fn steps(a: u64, b: u64) -> impl Iterator<Item = (u64, u64)> {
    let mut pos = a;
    std::iter::from_fn(move || {
        (pos < b).then(|| {
            let end = ((pos / STEP + 1) * STEP).min(b);
            let r = (pos, end);
            pos = end;
            r
        })
    })
}

/// The steps of a pass over `a..b`: `STEP`-sized in written regions, one
/// whole region per never-written one (`false`: nothing to do there).
pub(super) fn pass_steps(
    written: Option<&Arc<dyn WrittenRegions>>,
    a: u64,
    b: u64,
) -> impl Iterator<Item = (u64, u64, bool)> + '_ {
    pieces(written, a, b).flat_map(|(a, b, w)| {
        let whole = (!w).then_some((a, b, false));
        let split = w.then(|| steps(a, b).map(|(x, y)| (x, y, true)));
        whole.into_iter().chain(split.into_iter().flatten())
    })
}

fn overlaps(ranges: &[(u64, u64)], a: u64, b: u64) -> bool {
    ranges.iter().any(|&(s, e)| s < b && a < e)
}

/// What a rebuild from `start` of a member of `mds` data bytes does, and
/// how many bytes: all of it, or only the parts of `only` (a recovery).
fn rebuild_total(only: Option<&[(u64, u64)]>, start: u64, mds: u64) -> (SyncKind, u64) {
    match only {
        Some(r) => (
            SyncKind::Recovery,
            r.iter()
                .map(|&(a, b)| b.min(mds).saturating_sub(a.max(start)))
                .sum(),
        ),
        None => (SyncKind::Rebuild, mds - start),
    }
}

/// The rebuild target took a write error (its `broken` flag).
fn target_broken(inc: &Incoming) -> RebuildError {
    RebuildError::Target(BlockError::io(
        inc.device().name(),
        std::io::Error::other("write to the new member failed"),
    ))
}

/// Between two steps: stop when the target broke (a write error, or
/// abandoned by the operator: that ends it even at shutdown, rather than
/// pausing it to be resumed onto the member the operator failed) or when
/// cancelled.
fn still_going(ctl: &RebuildControl, inc: &Incoming) -> Result<(), RebuildError> {
    if inc.is_broken() {
        return Err(target_broken(inc));
    }
    if ctl.is_cancelled() {
        return Err(RebuildError::Cancelled);
    }
    Ok(())
}

/// What every step of one rebuild pass shares.
struct Pass<'a> {
    members: &'a [MemberIndex],
    only: Option<&'a [(u64, u64)]>,
    ctl: &'a RebuildControl,
    incs: &'a [Arc<Incoming>],
    targets: Vec<Arc<dyn BlockDevice>>,
    tracker: &'a SyncTracker,
    pacer: tokio::sync::Mutex<Pacer>,
    errors: SourceErrors,
    bufs: StepBuffers,
    sources: SourceBuffers,
}

/// The step buffers of one pass, reused from step to step: at most
/// [`DEPTH`] sets (one buffer per rebuilt member) are ever allocated, so
/// a step neither calls the allocator nor faults in and zeroes fresh
/// pages. A buffer's old bytes never leak: every level's rebuild read
/// fills the whole buffer (lost blocks are zeroed).
struct StepBuffers {
    free: std::sync::Mutex<Vec<Vec<Vec<u8>>>>,
    members: usize,
}

impl StepBuffers {
    fn new(members: usize) -> StepBuffers {
        StepBuffers {
            free: std::sync::Mutex::new(Vec::with_capacity(DEPTH)),
            members,
        }
    }

    /// A set of `members` buffers of `len` bytes each.
    fn take(&self, len: usize) -> Vec<Vec<u8>> {
        let pooled = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut set = pooled.unwrap_or_else(|| vec![Vec::new(); self.members]);
        for buf in &mut set {
            buf.resize(len, 0);
        }
        set
    }

    /// Gives a set back for the next step.
    fn give(&self, set: Vec<Vec<u8>>) {
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(set);
    }
}

/// The source buffers of one pass (what a step reads the other members
/// into to rebuild from them), reused from step to step like
/// [`StepBuffers`]: a step takes what it needs and gives it back, so a pass
/// holds at most one per source member and step in flight. A reader must
/// fill (or not use) what it takes: old bytes are not cleared.
#[derive(Default)]
pub(super) struct SourceBuffers {
    free: std::sync::Mutex<Vec<Vec<u8>>>,
}

impl SourceBuffers {
    /// A buffer of `len` bytes (grown with zeroes if the one reused was
    /// shorter: only after a block-by-block retry).
    pub(super) fn take(&self, len: usize) -> Vec<u8> {
        let pooled = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut buf = pooled.unwrap_or_default();
        buf.resize(len, 0);
        buf
    }

    /// `n` buffers of `len` bytes.
    pub(super) fn take_n(&self, n: usize, len: usize) -> Vec<Vec<u8>> {
        (0..n).map(|_| self.take(len)).collect()
    }

    /// Gives buffers back for the next step.
    pub(super) fn give(&self, bufs: impl IntoIterator<Item = Vec<u8>>) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        free.extend(bufs.into_iter().filter(|b| b.capacity() > 0));
    }
}

/// The steps of a pass cut into windows that end at multiples of
/// [`CHECKPOINT_EVERY`] (steps never cross one: they are aligned to
/// `STEP` and to regions).
fn checkpoint_windows(
    steps: impl Iterator<Item = (u64, u64, bool)>,
) -> impl Iterator<Item = Vec<(u64, u64, bool)>> {
    let mut steps = steps.peekable();
    std::iter::from_fn(move || {
        let first = steps.next()?;
        let boundary = (first.0 / CHECKPOINT_EVERY + 1) * CHECKPOINT_EVERY;
        let mut window = vec![first];
        while let Some(step) = steps.next_if(|s| s.0 < boundary) {
            window.push(step);
        }
        Some(window)
    })
}

/// Flushes every new member of a pass and records its `up_to` through
/// `sink` (its superblock checkpoint).
async fn checkpoint(
    members: &[MemberIndex],
    incs: &[Arc<Incoming>],
    sink: &dyn RebuildSink,
) -> Result<(), RebuildError> {
    for (&member, inc) in members.iter().zip(incs) {
        inc.device().flush().await.map_err(RebuildError::Target)?;
        sink.checkpoint(member, inc.up_to())
            .await
            .map_err(RebuildError::Checkpoint)?;
    }
    Ok(())
}

impl Volume {
    /// Rebuilds the member attached into slot `member` from its `up_to` to
    /// the end (only the parts overlapping `only` when given: a bitmap
    /// recovery), then records it in sync through `sink` and makes it
    /// active. On error the new member is detached (except when cancelled
    /// through `ctl`). Returns the bytes copied.
    pub async fn rebuild(
        &self,
        member: MemberIndex,
        only: Option<Vec<(u64, u64)>>,
        ctl: &RebuildControl,
        sink: &dyn RebuildSink,
    ) -> Result<u64, RebuildError> {
        self.rebuild_together(&[member], only, ctl, sink).await
    }

    /// [`Volume::rebuild`] of several members attached at once (a RAID-6
    /// that lost two) in one pass: each step reads the other members once
    /// and fills every new member (`LevelIo::rebuild_read_many`). Returns
    /// the bytes copied per member.
    pub async fn rebuild_together(
        &self,
        members: &[MemberIndex],
        only: Option<Vec<(u64, u64)>>,
        ctl: &RebuildControl,
        sink: &dyn RebuildSink,
    ) -> Result<u64, RebuildError> {
        let result = self.rebuild_inner(members, only, ctl, sink).await;
        self.set_progress(None);
        let survivors = self.pass_survivors(members, &result);
        for &member in members {
            match &result {
                // Another member of the pass broke (failed, or abandoned by
                // the operator): this one stays attached at its `up_to`
                // for the caller to go on with.
                Err(e) if survivors.contains(&member) => {
                    tracing::info!(volume = %self.volume_name(), %member, %e, "rebuild pass stopped; this member stays attached");
                }
                Ok(bytes) => {
                    self.promote_incoming(member);
                    let skipped = self.last_sync().map_or(0, |p| p.skipped_bytes);
                    tracing::info!(volume = %self.volume_name(), %member, bytes, skipped, "rebuild finished; member in sync");
                }
                // Cancelled (shutdown): the target stays attached; the caller
                // records its progress and resumes later.
                Err(RebuildError::Cancelled) => {}
                Err(e) => {
                    // A target that failed: its cached pages are never
                    // written again (crash case 87).
                    if let (RebuildError::Target(_), Some(inc)) = (&e, self.incoming(member)) {
                        inc.device().retire();
                    }
                    self.detach_rebuild_target(member);
                    tracing::warn!(volume = %self.volume_name(), %member, %e, "rebuild stopped");
                }
            }
        }
        result
    }

    /// The members of a multi-member pass that ended with an error while
    /// their own target is sound and another's broke: those can go on
    /// alone (md restarts the recovery of the spares left).
    fn pass_survivors(
        &self,
        members: &[MemberIndex],
        result: &Result<u64, RebuildError>,
    ) -> Vec<MemberIndex> {
        if members.len() < 2 || !matches!(result, Err(e) if !matches!(e, RebuildError::Cancelled)) {
            return Vec::new();
        }
        let sound = |m: &&MemberIndex| self.incoming(**m).is_some_and(|i| !i.is_broken());
        if members.iter().filter(sound).count() == members.len() {
            return Vec::new();
        }
        members.iter().filter(sound).copied().collect()
    }

    async fn rebuild_inner(
        &self,
        members: &[MemberIndex],
        only: Option<Vec<(u64, u64)>>,
        ctl: &RebuildControl,
        sink: &dyn RebuildSink,
    ) -> Result<u64, RebuildError> {
        if self.redundancy() == 0 {
            return Err(RebuildError::NoRedundancy(self.geometry().level()));
        }
        let incs = members
            .iter()
            .map(|&m| self.incoming(m).ok_or(RebuildError::NoSuchMember(m)))
            .collect::<Result<Vec<_>, _>>()?;
        let mds = self.geometry().member_data_size();
        let start = incs.iter().map(|i| i.up_to()).min().unwrap_or(mds);
        let tracker = self.rebuild_tracker(members, only.as_deref(), start);
        let pass = Pass {
            members,
            only: only.as_deref(),
            ctl,
            incs: &incs,
            targets: incs.iter().map(|i| i.device().clone()).collect(),
            tracker: &tracker,
            pacer: tokio::sync::Mutex::new(Pacer::new()),
            errors: SourceErrors::new(self.geometry().members()),
            bufs: StepBuffers::new(members.len()),
            sources: SourceBuffers::default(),
        };
        let mut copied = 0;
        // The steps go in windows that end at checkpoints, each drained
        // before its checkpoint: a step left unpolled while the loop
        // awaited the flush would hold its stripe locks (blocking client
        // writes) and perhaps the checksum store's writer lock, which the
        // flush waits for (a deadlock with small checksum caches).
        for window in checkpoint_windows(pass_steps(self.written(), start, mds)) {
            let (bytes, end) = self.rebuild_window(&pass, window).await?;
            copied += bytes;
            // Checkpoints only after copying: skipping writes nothing.
            if bytes > 0 && end < mds {
                checkpoint(members, &incs, sink).await?;
            }
        }
        for inc in &incs {
            inc.device().flush().await.map_err(RebuildError::Target)?;
            if inc.is_broken() {
                return Err(target_broken(inc));
            }
        }
        for &member in members {
            sink.finished(member)
                .await
                .map_err(RebuildError::Checkpoint)?;
        }
        Ok(copied)
    }

    /// Runs the steps of one checkpoint window, up to [`DEPTH`] in flight
    /// (they lock disjoint stripes; results come back in order, so `up_to`
    /// only covers finished steps), and returns the bytes copied and where
    /// the window ends. A region never written is one step that copies
    /// nothing (§10).
    async fn rebuild_window(
        &self,
        pass: &Pass<'_>,
        window: Vec<(u64, u64, bool)>,
    ) -> Result<(u64, u64), RebuildError> {
        let mut end = 0;
        let work = window.into_iter().map(|(a, b, written)| {
            let needed = written && pass.only.is_none_or(|r| overlaps(r, a, b));
            async move {
                if needed {
                    // Paced before the locks are taken, so a step never
                    // holds stripes while it waits for its budget.
                    pass.pacer.lock().await.step(self, pass.ctl, b - a).await;
                    let mut bufs = pass.bufs.take((b - a) as usize);
                    let done = self.rebuild_step(pass, a, b, &mut bufs).await;
                    pass.bufs.give(bufs);
                    done?;
                }
                Ok::<_, RebuildError>((a, b, needed, written))
            }
        });
        let mut work = futures::stream::iter(work).buffered(DEPTH);
        let mut copied = 0;
        while let Some(step) = work.next().await {
            let (a, b, needed, written) = step?;
            for inc in pass.incs {
                still_going(pass.ctl, inc)?;
            }
            if needed {
                copied += b - a;
            }
            if pass.only.is_none_or(|r| overlaps(r, a, b)) {
                pass.tracker.done.fetch_add(b - a, Ordering::Relaxed);
                if !written {
                    pass.tracker.skipped.fetch_add(b - a, Ordering::Relaxed);
                }
            }
            for inc in pass.incs {
                inc.set_up_to(b.max(inc.up_to()));
            }
            end = b;
        }
        Ok((copied, end))
    }

    /// The progress of a pass rebuilding `members` from `start`, shown.
    fn rebuild_tracker(
        &self,
        members: &[MemberIndex],
        only: Option<&[(u64, u64)]>,
        start: u64,
    ) -> Arc<SyncTracker> {
        let (kind, total) = rebuild_total(only, start, self.geometry().member_data_size());
        let tracker = SyncTracker::new(kind, members.first().map(|m| m.0), total);
        self.set_progress(Some(tracker.clone()));
        tracing::info!(volume = %self.volume_name(), ?members, ?kind, from = start, total, "rebuild started");
        tracker
    }

    /// Copies member data `a..b` of the slots of `pass` onto their
    /// targets under the step's locks, through `bufs` (one per member of
    /// `b - a` bytes): a live member (a replace) is copied, the others
    /// rebuilt from the rest of the array together.
    async fn rebuild_step(
        &self,
        pass: &Pass<'_>,
        a: u64,
        b: u64,
        bufs: &mut [Vec<u8>],
    ) -> Result<(), RebuildError> {
        let (members, targets, errors) = (pass.members, &pass.targets, &pass.errors);
        let sources = &pass.sources;
        let _guards = lock_step(self, a, b).await;
        let off = ByteOffset(a);
        let mut rebuilt = Vec::new();
        for (&member, buf) in members.iter().zip(bufs.iter_mut()) {
            if self.is_active(member) && self.read_member(member, off, buf).await.is_ok() {
                // Replacing a live member: copy it.
                continue;
            }
            rebuilt.push(RebuildRead {
                member,
                a,
                buf,
                errors,
                sources,
            });
        }
        let rebuilt_members: Vec<MemberIndex> = rebuilt.iter().map(|r| r.member).collect();
        let lost = match rebuilt.is_empty() {
            true => Vec::new(),
            false => self.level_io().rebuild_read_many(self, rebuilt).await?,
        };
        for ((&member, target), buf) in members.iter().zip(targets).zip(bufs.iter()) {
            let no_lost = Vec::new();
            let lost = rebuilt_members
                .iter()
                .position(|&m| m == member)
                .and_then(|i| lost.get(i))
                .unwrap_or(&no_lost);
            self.write_rebuilt(member, &**target, off, buf, lost)
                .await?;
        }
        Ok(())
    }

    /// Writes a rebuilt step onto the new member of `member`; its `lost`
    /// blocks are marked lost there.
    async fn write_rebuilt(
        &self,
        member: MemberIndex,
        target: &dyn BlockDevice,
        off: ByteOffset,
        buf: &[u8],
        lost: &LostBlocks,
    ) -> Result<(), RebuildError> {
        let a = off.get();
        target
            .write(off, buf, Durability::Normal)
            .await
            .map_err(RebuildError::Target)?;
        for &(at, _) in lost {
            // Without a way to mark them, lost blocks would read back as
            // zeroes: better no rebuild than silently wrong data.
            target
                .mark_lost(ByteOffset(at), LOST_BLOCK as u64)
                .await
                .map_err(|_| RebuildError::Sources(self.data_lost()))?;
        }
        for reason in [Lost::Checksum, Lost::ReadError] {
            let blocks = lost.iter().filter(|(_, r)| *r == reason).count();
            if blocks > 0 {
                tracing::error!(
                    volume = self.volume_name(),
                    %member,
                    offset = a,
                    blocks,
                    "rebuild: blocks with no good source ({}, and no redundancy is left for \
                     them); they are marked lost and read as errors",
                    reason.text()
                );
            }
        }
        Ok(())
    }
}
