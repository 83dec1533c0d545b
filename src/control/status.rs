//! The status plane's types: what `vraid status` shows, as serde structs
//! the engine produces, the control server sends as JSON, and the CLI,
//! `status --watch` and the metrics read back as types (never as keys of
//! a JSON map).
//!
//! ```text
//!  raid::Volume, ArrayHandle ─► VolumeHandle::status ─► StatusReply ─► JSON ─► cli / watch
//!                                                          └────────────────► metrics
//! ```
//!
//! The JSON is the documented one (README, e2e tests): a key absent today
//! is an `Option` skipped when `None`; a key shown as `null` is an `Option`
//! without the skip. A new status section (e.g. checksum-cache counters) is
//! one more struct here and one `Option` field with
//! `#[serde(default, skip_serializing_if = "Option::is_none")]` on
//! [`EngineStatus`] (per volume) or [`MemberStatus`] (per member): older
//! replies then still read.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::events::Event;
use crate::member::fault::FaultSpec;
use crate::metrics::stats::IoSummary;
use crate::raid::ppl::JournalCounters;
use crate::raid::{MemberScrub, ScrubReport, SyncKind, SyncProgress};

/// The reply of the `status` method.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    /// The volumes asked for.
    pub volumes: Vec<VolumeStatus>,
    /// Their events, oldest first.
    pub events: Vec<Event>,
    /// Pools with their space and volumes (docs/FORMAT.md §11).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<crate::pool::service::PoolListing>,
    /// The volumes of the pools as exports: space, client I/O, cache,
    /// faults, QoS, vhost-user-blk socket.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pool_volumes: Vec<PoolVolumeStatus>,
    /// NBD connections the server dropped since it started (all exports).
    #[serde(default, skip_serializing_if = "NbdDropStatus::is_zero")]
    pub nbd_dropped: NbdDropStatus,
    /// Direct writes of member files off the 4 KiB granule: `RWF_NOWAIT`
    /// tries, refusals, widened writes and their edge reads, all members
    /// of the process (docs/FORMAT.md §8 "Writes into holes").
    #[serde(
        default,
        skip_serializing_if = "crate::member::nowait::NowaitCounts::is_zero"
    )]
    pub member_nowait: crate::member::nowait::NowaitCounts,
}

/// NBD connections in transmission the server dropped, per reason
/// (`export::nbd::limits::DropReason`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NbdDropStatus {
    /// Idle for the idle timeout.
    #[serde(default)]
    pub idle: u64,
    /// Replies drained under the minimum rate.
    #[serde(default)]
    pub slow_drain: u64,
    /// A reply not written at all within the write timeout.
    #[serde(default)]
    pub stalled_reply: u64,
    /// A WRITE payload not received within the write timeout.
    #[serde(default)]
    pub stalled_payload: u64,
}

impl NbdDropStatus {
    /// The counts of every NBD server of this process.
    pub fn now() -> Self {
        use crate::export::nbd::limits::{DropReason, Drops};
        let d = Drops::process();
        NbdDropStatus {
            idle: d.get(DropReason::Idle),
            slow_drain: d.get(DropReason::SlowDrain),
            stalled_reply: d.get(DropReason::StalledReply),
            stalled_payload: d.get(DropReason::StalledPayload),
        }
    }

    /// Nothing dropped.
    pub fn is_zero(&self) -> bool {
        *self == NbdDropStatus::default()
    }
}

/// One pool volume in `status` (`pool_volumes`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolVolumeStatus {
    /// Name (its export name).
    pub name: String,
    /// The pool (array) holding it.
    pub pool: String,
    /// Size in bytes (provisioned).
    pub size: u64,
    /// Bytes of clusters mapped (used; shared ones included).
    pub mapped_bytes: u64,
    /// Bytes not mapped yet: what first writes could still ask of the pool.
    pub unmapped_bytes: u64,
    /// A read-only snapshot.
    pub snapshot: bool,
    /// The volume it was taken of or cloned from.
    #[serde(default)]
    pub parent: Option<String>,
    /// Client-facing counters (NBD and vhost-user-blk together).
    pub io: IoSummary,
    /// Its write cache.
    pub cache: crate::volfault::CacheStatus,
    /// Its volume fault rules.
    pub volume_faults: crate::volfault::VolumeFaultsStatus,
    /// Its QoS limits.
    pub qos: crate::qos::QosStatus,
    /// Its vhost-user-blk socket, while one serves.
    #[serde(default)]
    pub vhost_socket: Option<String>,
}

/// State of a member slot as the control plane shows it; the one member
/// state of the status plane (`raid::MemberState` converts into it; the
/// on-disk `meta::MemberState` is a format of its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberStatusState {
    /// In sync, serving.
    Active,
    /// Failed at run time.
    Failed,
    /// Absent since assembly.
    Missing,
    /// Taken out with `vraid remove`.
    Removed,
    /// Being rebuilt (or caught up from the bitmap); not yet in sync.
    Rebuilding,
}

impl MemberStatusState {
    /// The word shown to users (as in the JSON).
    pub const fn word(self) -> &'static str {
        match self {
            MemberStatusState::Active => "active",
            MemberStatusState::Failed => "failed",
            MemberStatusState::Missing => "missing",
            MemberStatusState::Removed => "removed",
            MemberStatusState::Rebuilding => "rebuilding",
        }
    }

    /// The code of the `vraid_member_state` gauge.
    pub const fn code(self) -> i64 {
        match self {
            MemberStatusState::Active => 0,
            MemberStatusState::Failed => 1,
            MemberStatusState::Missing => 2,
            MemberStatusState::Removed => 3,
            MemberStatusState::Rebuilding => 4,
        }
    }
}

impl From<crate::raid::MemberState> for MemberStatusState {
    fn from(s: crate::raid::MemberState) -> Self {
        use crate::raid::MemberState as M;
        match s {
            M::Active => MemberStatusState::Active,
            M::Rebuilding { .. } => MemberStatusState::Rebuilding,
            M::Failed => MemberStatusState::Failed,
            M::Missing => MemberStatusState::Missing,
        }
    }
}

impl fmt::Display for MemberStatusState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

/// State of a volume in status output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeState {
    /// Every member active.
    Optimal,
    /// Members down, all data still available.
    Degraded,
    /// A member is being rebuilt or replaced (its data copied onto it).
    Rebuilding,
    /// Every member active; parity or mirrors of dirty regions are being
    /// made consistent after an unclean shutdown.
    Resyncing,
    /// More members down than the level tolerates: some data is lost.
    Failed,
}

impl VolumeState {
    /// The word shown to users (as in the JSON).
    pub const fn word(self) -> &'static str {
        match self {
            VolumeState::Optimal => "optimal",
            VolumeState::Degraded => "degraded",
            VolumeState::Rebuilding => "rebuilding",
            VolumeState::Resyncing => "resyncing",
            VolumeState::Failed => "failed",
        }
    }

    /// The code of the `vraid_volume_state` gauge.
    pub const fn code(self) -> i64 {
        match self {
            VolumeState::Optimal => 0,
            VolumeState::Degraded => 1,
            VolumeState::Failed => 2,
            VolumeState::Rebuilding => 3,
            VolumeState::Resyncing => 4,
        }
    }

    /// The state shown given the member-based one (optimal, degraded,
    /// failed) and the pass running: failed, rebuilding (a rebuild,
    /// recovery or replace runs), degraded, resyncing, or optimal, in that
    /// order.
    pub fn with_pass(self, pass: Option<PassKind>) -> VolumeState {
        use PassKind as P;
        match (self, pass) {
            (VolumeState::Failed, _) => VolumeState::Failed,
            (_, Some(P::Rebuild | P::Recovery | P::Replace)) => VolumeState::Rebuilding,
            (VolumeState::Degraded, _) => VolumeState::Degraded,
            (_, Some(P::Resync)) => VolumeState::Resyncing,
            (b, _) => b,
        }
    }
}

impl fmt::Display for VolumeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

/// One member in `status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Role.
    pub role: usize,
    /// Path of the member holding the role now (as given at start-up, or
    /// to `add`/`replace`, or of the spare that took it).
    pub path: Option<String>,
    /// State.
    pub state: MemberStatusState,
    /// Fault rules installed on it.
    pub faults: usize,
    /// Counters of its data window.
    pub io: IoSummary,
    /// 4 KiB blocks that failed their checksum when read.
    pub checksum_errors: u64,
    /// A remote (NBD) member's latency, reconnects and timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<crate::remote::RemoteSnapshot>,
    /// RAID-1: read only when no other member can serve it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub write_mostly: bool,
    /// A write-behind member: what it has not got yet (the volume's
    /// write-behind queue) and the limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behind: Option<BehindStatus>,
    /// A down role whose start-up join was given up: why the device at
    /// its path was refused (another array's member...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_refused: Option<String>,
}

/// The write-behind queue as a member entry shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BehindStatus {
    /// Bytes queued or in flight.
    pub lag_bytes: u64,
    /// Requests queued or in flight.
    pub lag_requests: u64,
    /// Limit in bytes.
    pub max_bytes: u64,
    /// Limit in requests.
    pub max_requests: u64,
    /// Writes that went behind since start.
    pub queued_total: u64,
}

/// One volume in `status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VolumeStatus {
    /// Name.
    pub name: String,
    /// RAID level number (0, 1, 5).
    pub level: u32,
    /// State.
    pub state: VolumeState,
    /// Size in bytes.
    pub size: u64,
    /// Chunk size in bytes.
    pub chunk_size: u64,
    /// Superblock event counter.
    pub superblock_events: u64,
    /// Client-facing counters.
    pub io: IoSummary,
    /// Members by role.
    pub members: Vec<MemberStatus>,
    /// The rebuild engine's part (absent without an engine).
    #[serde(flatten)]
    pub engine: Option<EngineStatus>,
    /// The volatile write cache between the exports and the volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<crate::volfault::CacheStatus>,
    /// Volume (client-facing) fault rules: count, stalled requests, bad
    /// sectors left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_faults: Option<crate::volfault::VolumeFaultsStatus>,
    /// QoS limits and how long they held requests (`crate::qos`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<crate::qos::QosStatus>,
    /// The write log being recorded (`vraid log start`); absent when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_log: Option<crate::wlog::LogStatus>,
}

/// The rebuild engine's part of a volume's status (its keys sit next to
/// the volume's own in the JSON).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineStatus {
    /// The pass running (`null`: none).
    pub sync: Option<SyncStatus>,
    /// Paths of the idle hot spares.
    pub spares: Vec<String>,
    /// Rebuild/resync rate limit in MB/s (0: unlimited).
    pub rebuild_max_mbps: u64,
    /// The result of the last scrub of this run (`null`: none yet).
    pub last_scrub: Option<ScrubStatus>,
    /// Write-hole journal counters (`null`: no on-disk journal).
    pub journal: Option<JournalStatus>,
    /// The block checksums' page cache (`null`: checksums off).
    pub checksum_cache: Option<crate::integrity::CacheStats>,
    /// The replace running (`null`: none).
    pub replace: Option<ReplaceStatus>,
    /// The final progress of the last rebuild, recovery, resync or scrub
    /// that ended in this run (`null`: none yet).
    #[serde(default)]
    pub last_sync: Option<SyncStatus>,
    /// Bytes of each member's data area counted as ever written (the
    /// written-region map, FORMAT.md §10; `null`: the array keeps none).
    #[serde(default)]
    pub written_bytes: Option<u64>,
}

/// What a running pass does: a `raid::SyncKind`, or a replace (which runs
/// as a rebuild of its role).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PassKind {
    /// Making redundancy consistent in dirty regions after a crash.
    Resync,
    /// Rebuilding a whole new member.
    Rebuild,
    /// Catching a re-added member up from the write-intent bitmap.
    Recovery,
    /// Checking (and with repair, fixing) every member's data.
    Scrub,
    /// Copying a member onto its replacement while it serves.
    Replace,
}

impl PassKind {
    /// The word shown to users (as in the JSON and the metrics' `kind`).
    pub const fn word(self) -> &'static str {
        match self {
            PassKind::Resync => "resync",
            PassKind::Rebuild => "rebuild",
            PassKind::Recovery => "recovery",
            PassKind::Scrub => "scrub",
            PassKind::Replace => "replace",
        }
    }
}

impl From<SyncKind> for PassKind {
    fn from(k: SyncKind) -> Self {
        match k {
            SyncKind::Resync => PassKind::Resync,
            SyncKind::Rebuild => PassKind::Rebuild,
            SyncKind::Recovery => PassKind::Recovery,
            SyncKind::Scrub => PassKind::Scrub,
        }
    }
}

impl fmt::Display for PassKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

/// Progress of the pass running (`sync` in status).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyncStatus {
    /// What runs.
    pub kind: PassKind,
    /// The member being rebuilt, recovered or replaced.
    pub member: Option<usize>,
    /// Bytes handled so far.
    pub done_bytes: u64,
    /// Bytes to handle in all.
    pub total_bytes: u64,
    /// Average rate since the start.
    pub bytes_per_sec: f64,
    /// Seconds left at that rate.
    pub eta_secs: Option<f64>,
    /// Of `done_bytes`, skipped because never written (FORMAT.md §10).
    #[serde(default)]
    pub skipped_bytes: u64,
}

impl SyncStatus {
    /// `p`, named `kind` (a replace shows as one, not as its rebuild).
    pub fn from_progress(p: SyncProgress, kind: PassKind) -> SyncStatus {
        SyncStatus {
            kind,
            member: p.member,
            done_bytes: p.done_bytes,
            total_bytes: p.total_bytes,
            bytes_per_sec: p.bytes_per_sec,
            eta_secs: p.eta_secs,
            skipped_bytes: p.skipped_bytes,
        }
    }

    /// "rebuild of member 1", or "resync".
    pub fn what(&self) -> String {
        match self.member {
            Some(m) => format!("{} of member {m}", self.kind),
            None => self.kind.to_string(),
        }
    }

    /// Done fraction, 0.0..=1.0 (1.0 when there is nothing to do).
    pub fn fraction(&self) -> f64 {
        if self.total_bytes == 0 {
            1.0
        } else {
            (self.done_bytes as f64 / self.total_bytes as f64).min(1.0)
        }
    }

    /// "42s", or "-" without an estimate.
    pub fn eta_text(&self) -> String {
        self.eta_secs.map_or_else(
            || "-".to_string(),
            |s| format!("{}s", s.max(0.0).round() as u64),
        )
    }
}

/// The replace running (`replace` in status).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplaceStatus {
    /// The role being replaced.
    pub member: usize,
    /// The new member's path.
    pub path: String,
}

/// Write-hole journal counters since assembly (`journal` in status).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalStatus {
    /// Batches written (FUA).
    pub batches: u64,
    /// Entries in them.
    pub entries: u64,
    /// Checkpoints taken (every member flushed).
    pub checkpoints: u64,
}

impl From<JournalCounters> for JournalStatus {
    fn from(c: JournalCounters) -> Self {
        JournalStatus {
            batches: c.batches,
            entries: c.entries,
            checkpoints: c.checkpoints,
        }
    }
}

/// What started a scrub.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScrubTrigger {
    /// `vraid scrub`.
    Manual,
    /// The config's `scrub_interval`.
    Scheduled,
}

impl ScrubTrigger {
    /// The word shown to users (as in the JSON).
    pub const fn word(self) -> &'static str {
        match self {
            ScrubTrigger::Manual => "manual",
            ScrubTrigger::Scheduled => "scheduled",
        }
    }
}

/// How a scrub ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScrubOutcome {
    /// It checked everything.
    Finished,
    /// It was stopped.
    Cancelled,
}

impl fmt::Display for ScrubOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ScrubOutcome::Finished => "finished",
            ScrubOutcome::Cancelled => "cancelled",
        })
    }
}

/// The result of a scrub (`last_scrub` in status, `scrub` in the reply of
/// a waited-for `vraid scrub`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScrubStatus {
    /// What started it.
    pub trigger: ScrubTrigger,
    /// How it ended.
    pub outcome: ScrubOutcome,
    /// Unix seconds at the start.
    pub started: u64,
    /// Unix seconds at the end.
    pub finished: u64,
    /// Wall-clock duration.
    pub secs: f64,
    /// Bad blocks and mismatches found (4 KiB blocks).
    pub found: u64,
    /// Mismatches among them (md's mismatch_cnt).
    pub mismatches: u64,
    /// Blocks rewritten.
    pub repaired: u64,
    /// Bad blocks and mismatches were rewritten.
    pub repair: bool,
    /// Member bytes read and checked (summed over members).
    pub bytes_checked: u64,
    /// Bytes of each member's data area skipped as never written.
    #[serde(default)]
    pub skipped_bytes: u64,
    /// Per member, by role.
    pub members: Vec<MemberScrubStatus>,
    /// A member was down for part of the pass.
    pub degraded: bool,
    /// Stopped before the end.
    pub cancelled: bool,
}

impl ScrubStatus {
    /// The status of a pass that ran from `started` to `finished`.
    pub fn new(
        trigger: ScrubTrigger,
        report: &ScrubReport,
        started: u64,
        finished: u64,
        secs: f64,
    ) -> ScrubStatus {
        ScrubStatus {
            trigger,
            outcome: if report.cancelled {
                ScrubOutcome::Cancelled
            } else {
                ScrubOutcome::Finished
            },
            started,
            finished,
            secs,
            found: report.found(),
            mismatches: report.mismatches(),
            repaired: report.repaired(),
            repair: report.repair,
            bytes_checked: report.bytes_checked,
            skipped_bytes: report.skipped_bytes,
            members: report.members.iter().map(MemberScrubStatus::from).collect(),
            degraded: report.degraded,
            cancelled: report.cancelled,
        }
    }

    /// The totals over every member.
    pub fn total(&self) -> MemberScrubStatus {
        let mut t = MemberScrubStatus::default();
        for m in &self.members {
            t.checksum += m.checksum;
            t.io += m.io;
            t.mismatch += m.mismatch;
            t.repaired += m.repaired;
        }
        t
    }
}

/// What a scrub found on one member, in 4 KiB blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberScrubStatus {
    /// The member's role.
    pub role: usize,
    /// Blocks whose read failed its checksum.
    pub checksum: u64,
    /// Blocks that could not be read.
    pub io: u64,
    /// Blocks inconsistent with the other members.
    pub mismatch: u64,
    /// Blocks rewritten by `repair`.
    pub repaired: u64,
}

impl MemberScrubStatus {
    /// Bad blocks and mismatches found.
    pub fn found(&self) -> u64 {
        self.checksum + self.io + self.mismatch
    }
}

impl From<&MemberScrub> for MemberScrubStatus {
    fn from(m: &MemberScrub) -> Self {
        MemberScrubStatus {
            role: m.role,
            checksum: m.checksum,
            io: m.io,
            mismatch: m.mismatch,
            repaired: m.repaired,
        }
    }
}

/// A unit enum's name as it travels in JSON (`"error"`, `"read"`): for
/// labels and text columns that show the same word.
pub fn wire_name<T: Serialize>(t: &T) -> String {
    match serde_json::to_value(t) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// A fault rule in `fault.list`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultStatus {
    /// Id for `fault.clear`.
    pub id: u64,
    /// Volume.
    pub volume: String,
    /// Member role.
    pub member: usize,
    /// Path of the device the rule belongs to.
    pub path: Option<String>,
    /// False once another device took the role: the rule stays with its
    /// device and no longer fires.
    pub holds_role: bool,
    /// The rule.
    #[serde(flatten)]
    pub spec: FaultSpec,
    /// Times it fired.
    pub hits: u64,
    /// Hits left (`null`: unlimited).
    pub remaining: Option<u64>,
    /// True while it can still fire.
    pub active: bool,
}

/// A volume fault rule in `fault.list` (`volume_faults`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VolumeFaultStatus {
    /// Id for `fault.clear`.
    pub id: u64,
    /// Volume.
    pub volume: String,
    /// The rule.
    #[serde(flatten)]
    pub spec: FaultSpec,
    /// Times it fired.
    pub hits: u64,
    /// Hits left (`null`: unlimited).
    pub remaining: Option<u64>,
    /// True while it can still fire.
    pub active: bool,
}

#[cfg(test)]
#[path = "status_tests.rs"]
pub(crate) mod tests;
