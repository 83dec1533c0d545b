//! Online rebuild and bitmap recovery while the volume serves I/O, and the
//! pacing, locking and progress every sync pass shares (the crash resync
//! is in `resync.rs`, the scrub in `scrub.rs`).
//!
//! ```text
//!  rebuild(member):  for each step (2 MiB of member data) from up_to:
//!      lock stripes/regions ─► copy (RAID-1) or XOR of the others (RAID-5)
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

use futures::future::join_all;
use futures::StreamExt;

use super::layout::{MemberIndex, StripeIndex};
use super::stripe_lock::StripeGuard;
use super::volume::{RebuildError, Volume};
use super::{raid1, Level};
use crate::block::{BlockDevice, BlockError, BoxFuture, Durability};
use crate::units::ByteOffset;

/// Member data bytes handled per locked step.
pub(super) const STEP: u64 = 2 << 20;
/// Granularity at which a rebuild gives up single blocks (a checksum block).
const LOST_BLOCK: usize = 4096;
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

/// Why a rebuild could not rebuild a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lost {
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
struct SourceErrors(Vec<AtomicU64>);

impl SourceErrors {
    fn new(members: usize) -> SourceErrors {
        SourceErrors((0..members).map(|_| AtomicU64::new(0)).collect())
    }

    /// Counts one unreadable block of `member`; at [`SOURCE_ERROR_LIMIT`]
    /// the member is failed (the rebuild then stops if it needed it).
    async fn note(&self, vol: &Volume, member: MemberIndex, error: &BlockError) {
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
}

/// Live progress counters of one pass.
#[derive(Debug)]
pub struct SyncTracker {
    kind: SyncKind,
    member: Option<usize>,
    pub(super) done: AtomicU64,
    total: u64,
    started: Instant,
}

impl SyncTracker {
    pub(super) fn new(kind: SyncKind, member: Option<usize>, total: u64) -> Arc<SyncTracker> {
        Arc::new(SyncTracker {
            kind,
            member,
            done: AtomicU64::new(0),
            total,
            started: Instant::now(),
        })
    }

    /// The current progress.
    pub fn snapshot(&self) -> SyncProgress {
        let done = self.done.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = done as f64 / secs;
        SyncProgress {
            kind: self.kind,
            member: self.member,
            done_bytes: done,
            total_bytes: self.total,
            bytes_per_sec: rate,
            eta_secs: (rate > 0.0).then(|| self.total.saturating_sub(done) as f64 / rate),
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

/// Locks of one step: RAID-1 regions or RAID-5 stripes covering `a..b`.
pub(super) async fn lock_step(vol: &Volume, a: u64, b: u64) -> Vec<StripeGuard<'_>> {
    match vol.geometry().level() {
        Level::Raid5 | Level::Raid0 => {
            let chunk = vol.geometry().chunk().get();
            vol.locks
                .lock_range(StripeIndex(a / chunk), StripeIndex((b - 1) / chunk))
                .await
        }
        _ => raid1::lock_regions(vol, ByteOffset(a), b - a).await,
    }
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

fn overlaps(ranges: &[(u64, u64)], a: u64, b: u64) -> bool {
    ranges.iter().any(|&(s, e)| s < b && a < e)
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
        let result = self.rebuild_inner(member, only, ctl, sink).await;
        self.set_progress(None);
        match &result {
            Ok(bytes) => {
                self.promote_incoming(member);
                tracing::info!(volume = %self.volume_name(), %member, bytes, "rebuild finished; member in sync");
            }
            // Cancelled (shutdown): the target stays attached; the caller
            // records its progress and resumes later.
            Err(RebuildError::Cancelled) => {}
            Err(e) => {
                self.detach_rebuild_target(member);
                tracing::warn!(volume = %self.volume_name(), %member, %e, "rebuild stopped");
            }
        }
        result
    }

    async fn rebuild_inner(
        &self,
        member: MemberIndex,
        only: Option<Vec<(u64, u64)>>,
        ctl: &RebuildControl,
        sink: &dyn RebuildSink,
    ) -> Result<u64, RebuildError> {
        let level = self.geometry().level();
        if level == Level::Raid0 {
            return Err(RebuildError::NoRedundancy(level));
        }
        let inc = self
            .incoming(member)
            .ok_or(RebuildError::NoSuchMember(member))?;
        let mds = self.geometry().member_data_size();
        let start = inc.up_to.load(Ordering::Acquire);
        let (kind, total) = match &only {
            Some(r) => (
                SyncKind::Recovery,
                r.iter()
                    .map(|&(a, b)| b.min(mds).saturating_sub(a.max(start)))
                    .sum(),
            ),
            None => (SyncKind::Rebuild, mds - start),
        };
        let tracker = SyncTracker::new(kind, Some(member.0), total);
        self.set_progress(Some(tracker.clone()));
        tracing::info!(volume = %self.volume_name(), %member, ?kind, from = start, total, "rebuild started");
        let pacer = tokio::sync::Mutex::new(Pacer::new());
        let errors = &SourceErrors::new(self.geometry().members());
        let mut copied = 0;
        let mut last_checkpoint = start;
        let broken = || {
            RebuildError::Target(BlockError::io(
                inc.device.name(),
                std::io::Error::other("write to the new member failed"),
            ))
        };
        // Up to DEPTH steps in flight (they lock disjoint stripes); results
        // come back in order, so `up_to` only covers finished steps.
        let work = steps(start, mds).map(|(a, b)| {
            let needed = only.as_ref().is_none_or(|r| overlaps(r, a, b));
            let target = inc.device.clone();
            let pacer = &pacer;
            async move {
                if needed {
                    // Paced before the locks are taken, so a step never
                    // holds stripes while it waits for its budget.
                    pacer.lock().await.step(self, ctl, b - a).await;
                    let mut buf = vec![0u8; (b - a) as usize];
                    self.rebuild_step(member, &*target, a, &mut buf, errors)
                        .await?;
                }
                Ok::<_, RebuildError>((a, b, needed))
            }
        });
        let mut work = futures::stream::iter(work).buffered(DEPTH);
        while let Some(step) = work.next().await {
            let (a, b, needed) = step?;
            if ctl.is_cancelled() {
                return Err(RebuildError::Cancelled);
            }
            if inc.broken.load(Ordering::Acquire) {
                return Err(broken());
            }
            if needed {
                copied += b - a;
                tracker.done.fetch_add(b - a, Ordering::Relaxed);
            }
            inc.up_to.store(b, Ordering::Release);
            if b - last_checkpoint >= CHECKPOINT_EVERY && b < mds {
                inc.device.flush().await.map_err(RebuildError::Target)?;
                sink.checkpoint(member, b)
                    .await
                    .map_err(RebuildError::Checkpoint)?;
                last_checkpoint = b;
            }
        }
        drop(work);
        inc.device.flush().await.map_err(RebuildError::Target)?;
        if inc.broken.load(Ordering::Acquire) {
            return Err(broken());
        }
        sink.finished(member)
            .await
            .map_err(RebuildError::Checkpoint)?;
        Ok(copied)
    }

    /// Copies member data `a..a+buf.len()` of slot `member` onto `target`
    /// under the step's locks.
    async fn rebuild_step(
        &self,
        member: MemberIndex,
        target: &dyn BlockDevice,
        a: u64,
        buf: &mut [u8],
        errors: &SourceErrors,
    ) -> Result<(), RebuildError> {
        let b = a + buf.len() as u64;
        let _guards = lock_step(self, a, b).await;
        let off = ByteOffset(a);
        let mut lost = Vec::new();
        if self.is_active(member) && self.read_member(member, off, buf).await.is_ok() {
            // Replacing a live member: copy it.
        } else {
            match self.geometry().level() {
                Level::Raid5 => {
                    if self.reconstruct_quiet(member, off, buf).await.is_err() {
                        lost = self.reconstruct_by_block(member, a, buf, errors).await?;
                    }
                }
                _ => lost = self.read_any_mirror(member, a, buf, errors).await?,
            }
        }
        target
            .write(off, buf, Durability::Normal)
            .await
            .map_err(RebuildError::Target)?;
        for &(at, _) in &lost {
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

    /// Like `raid5::reconstruct`, but a source that cannot be read is not
    /// failed here: the reads' errors come back (`None`: the member is
    /// down), and the caller decides per block.
    async fn reconstruct_quiet(
        &self,
        member: MemberIndex,
        off: ByteOffset,
        out: &mut [u8],
    ) -> Result<(), Vec<(MemberIndex, Option<BlockError>)>> {
        let n = self.geometry().members();
        let others: Vec<MemberIndex> = (0..n).map(MemberIndex).filter(|&m| m != member).collect();
        let mut bufs = vec![vec![0u8; out.len()]; others.len()];
        let reads = others
            .iter()
            .zip(bufs.iter_mut())
            .map(
                |(&m, buf)| async move { self.read_member(m, off, buf).await.map_err(|e| (m, e)) },
            );
        let failed: Vec<_> = join_all(reads)
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect();
        if !failed.is_empty() {
            return Err(failed);
        }
        out.fill(0);
        for buf in &bufs {
            super::parity::xor_into(out, buf);
        }
        Ok(())
    }

    /// A RAID-5 reconstruction of a rebuild step failed: redoes it 4 KiB at
    /// a time, so a source block that fails its checksum or cannot be read
    /// while no redundancy is left costs that block only (md's bad-block
    /// list does the same). Returns the member offsets of the blocks that
    /// could not be rebuilt (zeroed in `buf`), with why. If a source member
    /// went down, or keeps failing reads ([`SourceErrors`]), the rebuild
    /// cannot go on.
    async fn reconstruct_by_block(
        &self,
        member: MemberIndex,
        a: u64,
        buf: &mut [u8],
        errors: &SourceErrors,
    ) -> Result<Vec<(u64, Lost)>, RebuildError> {
        let allowed_down = usize::from(!self.is_active(member));
        let mut lost = Vec::new();
        for (i, piece) in buf.chunks_mut(LOST_BLOCK).enumerate() {
            let at = a + (i * LOST_BLOCK) as u64;
            let Err(failed) = self.reconstruct_quiet(member, ByteOffset(at), piece).await else {
                continue;
            };
            let mut reason = Lost::Checksum;
            for (m, e) in &failed {
                if let Some(e) = e
                    .as_ref()
                    .filter(|e| !matches!(e, BlockError::Corrupt { .. }))
                {
                    reason = Lost::ReadError;
                    errors.note(self, *m, e).await;
                }
            }
            if self.down_count() > allowed_down {
                return Err(RebuildError::Sources(self.data_lost()));
            }
            piece.fill(0);
            lost.push((at, reason));
        }
        Ok(lost)
    }

    /// Reads `a..a+buf.len()` from an in-sync mirror. When no mirror can
    /// serve the whole step, goes 4 KiB at a time across the mirrors, so a
    /// block that fails its checksum or cannot be read on every mirror
    /// costs that block only (like RAID-5's [`Volume::reconstruct_by_block`]).
    /// Returns the member offsets of the blocks no mirror could give
    /// (zeroed in `buf`), with why. If a source mirror went down instead,
    /// the rebuild cannot go on.
    async fn read_any_mirror(
        &self,
        member: MemberIndex,
        a: u64,
        buf: &mut [u8],
        errors: &SourceErrors,
    ) -> Result<Vec<(u64, Lost)>, RebuildError> {
        let count = self.geometry().members();
        let sources = || {
            (0..count)
                .map(MemberIndex)
                .filter(|&m| m != member && self.is_active(m))
                .collect::<Vec<_>>()
        };
        let before = sources().len();
        for m in (0..count).map(MemberIndex) {
            if self.is_active(m) && self.read_member(m, ByteOffset(a), buf).await.is_ok() {
                return Ok(Vec::new());
            }
        }
        let mut lost = Vec::new();
        for (i, piece) in buf.chunks_mut(LOST_BLOCK).enumerate() {
            let at = a + (i * LOST_BLOCK) as u64;
            let mut served = false;
            let mut reason = Lost::Checksum;
            for m in sources() {
                match self.read_member(m, ByteOffset(at), piece).await {
                    Ok(()) => {
                        served = true;
                        break;
                    }
                    Err(Some(e)) if !matches!(e, BlockError::Corrupt { .. }) => {
                        reason = Lost::ReadError;
                        errors.note(self, m, &e).await;
                    }
                    Err(_) => {}
                }
            }
            if !served {
                if before == 0 || sources().len() < before {
                    return Err(RebuildError::Sources(self.data_lost()));
                }
                piece.fill(0);
                lost.push((at, reason));
            }
        }
        Ok(lost)
    }

    pub(super) fn set_progress(&self, tracker: Option<Arc<SyncTracker>>) {
        *self.progress.lock().unwrap_or_else(|e| e.into_inner()) = tracker;
    }
}
