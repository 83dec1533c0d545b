//! A running array's operations: crash resync, online rebuild onto new
//! members (into a failed/missing slot, bitmap recovery of a re-added
//! member, or `replace` of a live one), hot spares and the live rate limit.
//! The control plane's `add`, `replace` and `set` map onto [`ArrayHandle`].
//!
//! ```text
//!  bring-up ─► ArrayHandle::new ─► (control handle) ─► ArrayHandle::start ─► supervisor:
//!      resync dirty regions (if the array was dirty) ─► planned rebuild
//!      ─► loop: member failed (from MetaEvents) ─► spare? ─► start_rebuild
//!  add_member(path)     ─► down slot? start_rebuild : spares += path
//!  replace_member(r, p) ─► attach p to active slot r ─► begin_replace (persisted)
//!                       ─► rebuild (checkpoints) ─► finish_replace
//!  shutdown()           ─► cancel ─► checkpoint ─► caller flushes, marks clean
//! ```
//!
//! One rebuild or replace runs at a time (the superblock has one checkpoint).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;
use tracing::{info, warn};
use uuid::Uuid;

use super::{error_chain, show_path, DaemonError};
use crate::block::{BlockDevice, BoxFuture, Window};
use crate::member::{self, MemberOptions};
use crate::meta::{self, ArrayMetadata, DiskBitmap};
use crate::raid::{
    MemberIndex, MemberState, RebuildControl, RebuildError, RebuildSink, SyncProgress, Volume,
};

#[path = "array_scrub.rs"]
mod scrub;
pub use scrub::LastScrub;
#[path = "array_state.rs"]
mod state;
use state::{ArrayState, Pass};

/// Per-volume operation settings (from the config).
#[derive(Clone, Debug)]
pub struct ArrayOptions {
    /// Hot spare paths.
    pub spares: Vec<PathBuf>,
    /// Rebuild/resync rate limit in MB/s (0 = unlimited).
    pub rebuild_max_mbps: u64,
    /// Maintain the write-intent bitmap.
    pub bitmap: bool,
    /// Create missing spare files with this size (config `create`).
    pub create_size: Option<u64>,
    /// Scrub when the last one finished this long ago (config `scrub_interval`).
    pub scrub_interval: Option<Duration>,
    /// Scheduled scrubs repair what they find (config `scrub_repair`).
    pub scrub_repair: bool,
    /// Verify per-block checksums of member data (needs the bitmap).
    pub checksums: bool,
    /// RAID-5: log partial parity before each write (closes the write
    /// hole, docs/FORMAT.md §9).
    pub write_hole_protection: bool,
    /// Served read-only (`--read-only`, config `read_only`): members are
    /// opened O_RDONLY and nothing is written to them (README).
    pub read_only: bool,
    /// Forced assembly (docs/FORMAT.md §3 rule 5).
    pub force_assemble: bool,
    /// Bytes of checksum pages kept in memory (docs/FORMAT.md §8).
    pub checksum_cache: u64,
    /// RAID-1 mirror policies and automatic re-join.
    pub mirror: crate::config::MirrorConfig,
    /// The config's member `volatile` rules, armed on the members' power
    /// gates when they are opened (so they cover assembly's writes).
    pub armed_faults: Vec<crate::config::FaultConfig>,
}

impl Default for ArrayOptions {
    fn default() -> Self {
        ArrayOptions {
            spares: Vec::new(),
            rebuild_max_mbps: crate::raid::rebuild::DEFAULT_MAX_MBPS,
            bitmap: true,
            create_size: None,
            scrub_interval: None,
            scrub_repair: false,
            checksums: true,
            write_hole_protection: true,
            read_only: false,
            force_assemble: false,
            checksum_cache: crate::integrity::cache::DEFAULT_BUDGET,
            mirror: crate::config::MirrorConfig::default(),
            armed_faults: Vec::new(),
        }
    }
}

/// What `add_member` did with the new member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AddOutcome {
    /// Kept as a hot spare.
    Spare,
    /// Rebuilding into this failed or missing role.
    Rebuilding {
        /// The role.
        role: usize,
    },
}

/// A hot spare, opened.
pub(super) struct Spare {
    pub(super) path: PathBuf,
    pub(super) device: Arc<dyn BlockDevice>,
}

/// A rebuild decided at assembly, started by the supervisor.
pub(super) struct PlannedRebuild {
    pub(super) role: usize,
    /// A second role rebuilt in the same pass (an interrupted two-member
    /// RAID-6 rebuild resumed).
    pub(super) also: Option<usize>,
    /// Only these member ranges (bitmap recovery).
    pub(super) only: Option<Vec<(u64, u64)>>,
    /// A resumed `replace`: the new member's path (it takes the role at
    /// the end while the old member serves until then).
    pub(super) replace: Option<String>,
}

/// Everything bring-up built for [`ArrayHandle::new`].
pub(super) struct ArrayParts {
    pub(super) volume: Arc<Volume>,
    pub(super) metadata: Arc<ArrayMetadata>,
    pub(super) bitmap: Option<Arc<DiskBitmap>>,
    pub(super) data_offset: u64,
    pub(super) data_size: u64,
    pub(super) spares: Vec<Spare>,
    pub(super) paths: Vec<Option<String>>,
    pub(super) max_mbps: u64,
    pub(super) opts: MemberOptions,
    pub(super) scrub_interval: Option<Duration>,
    pub(super) scrub_repair: bool,
    /// Where operational events go (`vraid status` shows them).
    pub(super) events: Arc<crate::control::events::EventLog>,
    /// Wraps the data window of a member that joins (fault rules, counters).
    pub(super) wrap: MemberWrap,
    /// Told when a member takes a role during the run (its journal ring).
    pub(super) joined: Option<JoinHook>,
    /// Re-add remote members failed by `member_timeout`.
    pub(super) auto_rejoin: bool,
}

/// What the supervisor runs first ([`ArrayHandle::start`]), as bring-up
/// decided it.
pub(super) struct Startup {
    pub(super) resync: Option<Vec<(u64, u64)>>,
    pub(super) rebuild: Option<PlannedRebuild>,
    /// Member failures the RAID layer reported (spare activation).
    pub(super) failures: UnboundedReceiver<MemberIndex>,
    /// Remote members unreachable at start-up (re-joined when they answer).
    pub(super) absent: Vec<PathBuf>,
}

/// Operations on one running array.
pub struct ArrayHandle {
    name: String,
    volume: Arc<Volume>,
    metadata: Arc<ArrayMetadata>,
    bitmap: Option<Arc<DiskBitmap>>,
    data_offset: u64,
    data_size: u64,
    control: RebuildControl,
    opts: MemberOptions,
    spares: Mutex<Vec<Spare>>,
    /// Serializes member-set changes (add, replace, spare activation):
    /// each checks the current members, spares and replace target by
    /// device identity under it, then changes the set.
    member_set: Arc<tokio::sync::Mutex<()>>,
    /// Path of each role's member (the new one once a rebuild starts).
    paths: Mutex<Vec<Option<String>>>,
    /// Resync, rebuild/replace, scrub and shutdown state.
    state: Mutex<ArrayState>,
    /// Wakes the supervisor to stop.
    stop: tokio::sync::Notify,
    /// True once shutdown began: wakes whatever waits in the background
    /// (a re-join waiting for its recovery or backing off).
    stopped: tokio::sync::watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Bytes rewritten by resyncs and copied by rebuilds of this run.
    pub resynced_bytes: AtomicU64,
    /// Bytes copied onto new or re-added members in this run.
    pub rebuilt_bytes: AtomicU64,
    /// Where operational events go for `vraid status`.
    events: Arc<crate::control::events::EventLog>,
    /// Wraps a joining member's data window (fault rules, counters) by role.
    wrap: MemberWrap,
    /// Gives a member that takes a role what the others have (a journal ring).
    joined: Option<JoinHook>,
    /// The last scrub's result.
    scrub: scrub::ScrubState,
    scrub_interval: Option<Duration>,
    scrub_repair: bool,
    /// Re-add remote members failed by `member_timeout` (`auto_rejoin`).
    auto_rejoin: bool,
    /// Roles being re-joined now.
    rejoining: Mutex<std::collections::HashSet<usize>>,
    /// Start-up joins given up because the pre-write check refused the
    /// device at the path (path → why), for `status`.
    refused_joins: Mutex<std::collections::HashMap<String, String>>,
}

/// Told when a member takes a role during the run (`begin_rebuild`: a new
/// member, a spare or a re-added one; `finish_replace`): role, raw device,
/// member UUID. The array gives it what members assembled at start-up have
/// (a partial-parity journal ring).
pub type JoinHook =
    Arc<dyn Fn(usize, Arc<dyn BlockDevice>, Uuid) -> BoxFuture<'static, ()> + Send + Sync>;

/// Wraps the data window of the member joining role `usize`: the raw
/// member, its data window, and whether it is new to the array (`fresh`:
/// its metadata areas hold nothing of ours, e.g. no block checksums).
pub type MemberWrap = Arc<
    dyn Fn(usize, Arc<dyn BlockDevice>, Arc<dyn BlockDevice>, bool) -> Arc<dyn BlockDevice>
        + Send
        + Sync,
>;

impl std::fmt::Debug for ArrayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArrayHandle")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Persists a rebuild into a role through the superblocks. A replace's
/// checkpoints go to `rebuild_checkpoint` too (next to the
/// `replace_uuid`/`replace_role` record written by `begin_replace`); at its
/// end the new member takes the role instead of the rebuilt one going active.
struct MetaSink {
    metadata: Arc<ArrayMetadata>,
    replace: bool,
    /// Told about the replacement once it holds the role.
    joined: Option<JoinHook>,
    /// Where a replaced write-mostly member's policy is dropped.
    volume: Arc<Volume>,
}

impl RebuildSink for MetaSink {
    fn checkpoint(&self, member: MemberIndex, up_to: u64) -> BoxFuture<'_, Result<(), String>> {
        crate::block::BoxFuture::new(async move {
            self.metadata
                .checkpoint(member.0, up_to)
                .await
                .map_err(|e| error_chain(&e))
        })
    }
    fn finished(&self, member: MemberIndex) -> BoxFuture<'_, Result<(), String>> {
        crate::block::BoxFuture::new(async move {
            if !self.replace {
                return self
                    .metadata
                    .finish_rebuild(member.0)
                    .await
                    .map_err(|e| error_chain(&e));
            }
            // The replacement does not inherit write-mostly: nothing may
            // lag when it takes the role (FORMAT.md §6, case 95).
            let policy = self.volume.is_write_mostly(member);
            if policy {
                self.volume.pause_write_behind().await;
            }
            let finished = self.metadata.finish_replace(member.0).await;
            if policy && finished.is_ok() {
                self.volume.set_write_mostly(member, false);
            }
            if policy {
                self.volume.resume_write_behind();
            }
            let (device, uuid) = finished.map_err(|e| error_chain(&e))?;
            if let Some(joined) = &self.joined {
                joined(member.0, device, uuid).await;
            }
            Ok(())
        })
    }
}

impl ArrayHandle {
    /// The handle of a running array, registered among this process's
    /// arrays; nothing runs until [`ArrayHandle::start`].
    pub(super) fn new(parts: ArrayParts, startup: &Startup) -> Arc<ArrayHandle> {
        let pass = match &startup.rebuild {
            Some(PlannedRebuild {
                role,
                replace: Some(path),
                ..
            }) => Pass::Replace {
                role: *role,
                path: path.clone(),
            },
            Some(_) => Pass::Rebuild,
            None => Pass::Idle,
        };
        let handle = Arc::new(ArrayHandle {
            name: parts.volume.volume_name().to_string(),
            volume: parts.volume,
            metadata: parts.metadata,
            bitmap: parts.bitmap,
            data_offset: parts.data_offset,
            data_size: parts.data_size,
            control: RebuildControl::new(parts.max_mbps),
            opts: parts.opts,
            spares: Mutex::new(parts.spares),
            member_set: Arc::new(tokio::sync::Mutex::new(())),
            paths: Mutex::new(parts.paths),
            state: Mutex::new(ArrayState::new(startup.resync.is_some(), pass)),
            stop: tokio::sync::Notify::new(),
            stopped: tokio::sync::watch::Sender::new(false),
            tasks: Mutex::new(Vec::new()),
            resynced_bytes: AtomicU64::new(0),
            rebuilt_bytes: AtomicU64::new(0),
            events: parts.events,
            wrap: parts.wrap,
            joined: parts.joined,
            scrub: scrub::ScrubState::default(),
            scrub_interval: parts.scrub_interval,
            scrub_repair: parts.scrub_repair,
            auto_rejoin: parts.auto_rejoin,
            rejoining: Mutex::new(Default::default()),
            refused_joins: Mutex::new(Default::default()),
        });
        let mut all = arrays().lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|a| a.strong_count() > 0);
        all.push(Arc::downgrade(&handle));
        handle
    }

    /// Starts the supervisor: resync, planned rebuild, then spare activation
    /// on member failures.
    pub(super) fn start(self: &Arc<Self>, startup: Startup) {
        let Startup {
            resync,
            rebuild,
            mut failures,
            absent,
        } = startup;
        let h = self.clone();
        let supervisor = tokio::spawn(async move {
            let spares: Vec<Arc<dyn BlockDevice>> = h
                .spares
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|s| s.device.clone())
                .collect();
            for device in spares {
                h.mark_spare(device.as_ref()).await;
            }
            if let Some(ranges) = resync {
                h.run_resync(ranges).await;
            }
            if let Some(r) = rebuild {
                match r.replace {
                    Some(path) => h.run_replace(r.role, Path::new(&path)).await,
                    None => {
                        let roles: Vec<usize> = std::iter::once(r.role).chain(r.also).collect();
                        h.run_rebuilds(&roles, r.only, &h.sink(false), false).await
                    }
                }
            }
            h.activate_spares().await;
            for path in absent {
                h.spawn_join_absent(path);
            }
            let mut schedule = h.scrub_tick();
            loop {
                tokio::select! {
                    failed = failures.recv() => match failed {
                        Some(member) => {
                            info!("{}: member {} failed", h.name, member.0);
                            h.activate_spares().await;
                            h.spawn_rejoin(member.0);
                        }
                        None => return,
                    },
                    _ = h.stop.notified() => return,
                    _ = scrub::tick(&mut schedule) => h.scheduled_scrub().await,
                }
            }
        });
        self.track(supervisor);
    }

    /// Keeps `task` for [`ArrayHandle::shutdown`] to stop.
    pub(super) fn track(&self, task: JoinHandle<()>) {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
    }

    /// Rebuilds role `role` in the background (only the byte ranges of
    /// `only`, if given), then puts spares to work.
    fn spawn_rebuild(self: &Arc<Self>, role: usize, only: Option<Vec<(u64, u64)>>) {
        let h = self.clone();
        self.track(tokio::spawn(async move {
            h.run_rebuild(role, only, &h.sink(false), false).await;
            h.activate_spares().await;
        }));
    }

    /// Whether `auto_rejoin` is on.
    pub(super) fn auto_rejoin(&self) -> bool {
        self.auto_rejoin
    }

    /// The path of the member holding `role` (as given).
    pub(super) fn role_path(&self, role: usize) -> Option<String> {
        let paths = self.paths.lock().unwrap_or_else(|e| e.into_inner());
        paths.get(role).cloned().flatten()
    }

    /// Claims the re-join of `role`; false when one runs already.
    pub(super) fn begin_rejoin(&self, role: usize) -> bool {
        let mut r = self.rejoining.lock().unwrap_or_else(|e| e.into_inner());
        r.insert(role)
    }

    /// Records that the start-up join of `path` was given up: `why` the
    /// pre-write check refused the device there.
    pub(super) fn refuse_join(&self, path: &str, why: String) {
        let mut r = self.refused_joins.lock().unwrap_or_else(|e| e.into_inner());
        r.insert(path.to_string(), why);
    }

    /// Why the start-up join of `role`'s member was given up, while the
    /// role is down (`vraid add` may still bring a member in). A down role
    /// with no path (an absent member's role is not known before it
    /// answers) shows a join given up at any path: it would have taken it.
    pub fn join_refused(&self, role: usize) -> Option<String> {
        if !matches!(
            self.volume.state(MemberIndex(role)),
            MemberState::Failed | MemberState::Missing
        ) {
            return None;
        }
        let r = self.refused_joins.lock().unwrap_or_else(|e| e.into_inner());
        match self.role_path(role) {
            Some(path) => r.get(&path).cloned(),
            None => r.values().next().cloned(),
        }
    }

    /// Ends the re-join of `role`.
    pub(super) fn end_rejoin(&self, role: usize) {
        let mut r = self.rejoining.lock().unwrap_or_else(|e| e.into_inner());
        r.remove(&role);
    }

    /// True while a rebuild, resync or replace runs.
    pub(super) fn pass_running(&self) -> bool {
        self.state().pass_running()
    }

    /// True once shutdown began.
    pub(super) fn stopping(&self) -> bool {
        self.state().stopping()
    }

    /// Resolves once shutdown began (at once if it has).
    pub(super) async fn until_stopped(&self) {
        let mut rx = self.stopped.subscribe();
        // We hold the sender: the channel cannot close here.
        let _ = rx.wait_for(|&s| s).await;
    }

    /// The array's name.
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// How members are opened.
    pub(super) fn member_options(&self) -> MemberOptions {
        self.opts
    }

    /// Records an automatic re-join in the event ring.
    pub(super) fn rejoin_event(&self, role: usize, path: &str) {
        self.event(
            "member_rejoined",
            Some(role),
            format!(
                "{}: {path} reachable again: re-added as member {role} (automatic re-join)",
                self.name
            ),
        );
    }

    /// The state, locked.
    fn state(&self) -> std::sync::MutexGuard<'_, ArrayState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Persists a rebuild (`replace`: the copy of a replace).
    fn sink(&self, replace: bool) -> MetaSink {
        MetaSink {
            metadata: self.metadata.clone(),
            replace,
            joined: self.joined.clone(),
            volume: self.volume.clone(),
        }
    }

    /// Tells the journal that `device` took `role` (after the superblocks
    /// say so).
    async fn member_joined(&self, role: usize, device: Arc<dyn BlockDevice>, uuid: Uuid) {
        if let Some(joined) = &self.joined {
            joined(role, device, uuid).await;
        }
    }

    /// The data window of `device` as member `role`, wrapped.
    fn member_window(
        &self,
        role: usize,
        device: &Arc<dyn BlockDevice>,
        fresh: bool,
    ) -> Result<Arc<dyn BlockDevice>, DaemonError> {
        let window = self.window(device)?;
        Ok((self.wrap)(role, device.clone(), window, fresh))
    }

    /// Records an operational event in the status event ring (which also
    /// logs it).
    fn event(&self, kind: &str, member: Option<usize>, message: String) {
        self.events.push(&self.name, kind, member, message);
    }

    /// Its superblock updates.
    pub(super) fn metadata(&self) -> &Arc<ArrayMetadata> {
        &self.metadata
    }

    /// Bytes of data area per member.
    pub fn data_size(&self) -> u64 {
        self.data_size
    }

    /// The volume.
    pub fn volume(&self) -> &Arc<Volume> {
        &self.volume
    }

    /// Progress of the running resync or rebuild.
    pub fn progress(&self) -> Option<SyncProgress> {
        self.volume.sync_progress()
    }

    /// Changes the rebuild/resync rate limit live (0 = unlimited).
    pub fn set_rebuild_max_mbps(&self, mbps: u64) {
        info!("{}: rebuild rate limit set to {mbps} MB/s", self.name);
        self.control.set_max_mbps(mbps);
    }

    /// The current rate limit in MB/s.
    pub fn rebuild_max_mbps(&self) -> u64 {
        self.control.max_mbps()
    }

    /// The path of role `role`'s member (the new member while rebuilding).
    pub fn member_path(&self, role: usize) -> Option<String> {
        self.paths
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(role)
            .cloned()
            .flatten()
    }

    /// The role named by `member`: a role number, or a member path as given
    /// at start-up (or to `add`/`replace`).
    pub fn role_of(&self, member: &str) -> Option<usize> {
        let count = self.volume.geometry().members();
        if let Ok(role) = member.parse::<usize>() {
            return (role < count).then_some(role);
        }
        let paths = self.paths.lock().unwrap_or_else(|e| e.into_inner());
        paths.iter().position(|p| p.as_deref() == Some(member))
    }

    fn set_path(&self, role: usize, path: &Path) {
        if let Some(p) = self
            .paths
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(role)
        {
            *p = Some(show_path(path));
        }
    }

    /// The replace running, for `status`.
    pub fn replacing(&self) -> Option<crate::control::status::ReplaceStatus> {
        self.state()
            .replace()
            .map(|(role, path)| crate::control::status::ReplaceStatus {
                member: role,
                path: path.to_owned(),
            })
    }

    /// The lock every member-set change holds (`fail` and `remove` take
    /// it through the control plane).
    pub fn member_set(&self) -> Arc<tokio::sync::Mutex<()>> {
        self.member_set.clone()
    }

    /// Paths of the idle hot spares.
    pub fn spares(&self) -> Vec<String> {
        self.spares
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|s| show_path(&s.path))
            .collect()
    }

    /// Adds a member: rebuilt at once into a failed or missing role when
    /// there is one (and no rebuild runs), else kept as a hot spare.
    /// `force` overwrites what the pre-write check finds (a filesystem,
    /// another array...), never a live member or a device held elsewhere.
    pub async fn add_member(
        self: &Arc<Self>,
        path: &Path,
        force: bool,
    ) -> Result<AddOutcome, DaemonError> {
        let _set = self.member_set.lock().await;
        let _new = new_members().lock().await;
        let device = self.open_new(path, force).await?;
        if let Some(role) = self.readd_role(&device).await {
            if self.state().claim_pass() {
                self.start_recovery(role, device, path).await?;
                return Ok(AddOutcome::Rebuilding { role });
            }
        }
        let spare = Spare {
            path: path.to_path_buf(),
            device,
        };
        match self.down_role() {
            Some(role) if self.state().claim_pass() => {
                self.start_rebuild(role, spare).await?;
                Ok(AddOutcome::Rebuilding { role })
            }
            _ => {
                info!("{}: {} added as a hot spare", self.name, path.display());
                self.mark_spare(spare.device.as_ref()).await;
                self.spares
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(spare);
                Ok(AddOutcome::Spare)
            }
        }
    }

    /// The automatic re-join of `path` into `role` (its old role): a
    /// catch-up re-add, or a full rebuild when `role` is the first role down;
    /// `None`, with nothing written to `path`, when the others cannot
    /// rebuild `role` now (more members down than the redundancy) or the
    /// rebuild would go into another role (`add_member` would make the
    /// member, whose data may be the only copy of `role`, a spare or
    /// another role's target).
    pub(super) async fn rejoin_member(
        self: &Arc<Self>,
        path: &Path,
        role: usize,
    ) -> Result<Option<AddOutcome>, DaemonError> {
        let _set = self.member_set.lock().await;
        let _new = new_members().lock().await;
        let down: Vec<bool> = (self.volume.member_states().iter())
            .map(|s| !matches!(s, MemberState::Active))
            .collect();
        if !self.volume.geometry().tolerates(&down) {
            return Ok(None);
        }
        let device = self.open_new(path, false).await?;
        let readd = self.readd_role(&device).await == Some(role);
        if !readd && self.down_role() != Some(role) || !self.state().claim_pass() {
            return Ok(None);
        }
        if readd {
            self.start_recovery(role, device, path).await?;
        } else {
            let spare = Spare {
                path: path.to_path_buf(),
                device,
            };
            self.start_rebuild(role, spare).await?;
        }
        Ok(Some(AddOutcome::Rebuilding { role }))
    }

    /// Takes the idle hot spare at `path` (as given, or the same file) out
    /// of the spare list; its spare superblock stays, like md's
    /// `--remove` (`--zero-superblock` is a separate step). Returns the
    /// spare's path, or `None` when no idle spare is there.
    pub fn remove_spare(&self, path: &Path) -> Option<String> {
        let wanted = member::DeviceId::of_path(path).ok();
        let mut spares = self.spares.lock().unwrap_or_else(|e| e.into_inner());
        let at = spares
            .iter()
            .position(|s| s.path == path || wanted.is_some() && s.device.device_id() == wanted)?;
        let spare = spares.remove(at);
        drop(spares);
        let shown = show_path(&spare.path);
        self.event(
            "spare_removed",
            None,
            format!("{}: hot spare {shown} removed", self.name),
        );
        Some(shown)
    }

    /// Writes a spare superblock on `device` (it belongs to this array).
    async fn mark_spare(&self, device: &dyn BlockDevice) {
        if let Err(e) = self.metadata.write_spare(device, Uuid::new_v4()).await {
            warn!("{}: {}", self.name, error_chain(&e));
        }
    }

    /// The down role that `path`'s own superblock names in this array
    /// (same array, that role's member UUID), if it names one.
    pub(super) async fn named_down_role(&self, path: &Path) -> Option<usize> {
        let device = self.open_new(path, false).await.ok()?;
        self.own_down_role(&device).await.map(|(_, role, _)| role)
    }

    /// The role `device`'s superblock names when it is this array's member
    /// of that role (array and member UUIDs) and the role is down now:
    /// the superblock, the role and the role's state on record.
    async fn own_down_role(
        &self,
        device: &Arc<dyn BlockDevice>,
    ) -> Option<(meta::Superblock, usize, meta::MemberState)> {
        let sb = meta::read_superblock(device.as_ref())
            .await
            .ok()?
            .superblock;
        let role = sb.role as usize;
        let (uuid, state) = self.metadata.role_entry(role).await?;
        let ours = sb.array_uuid == self.metadata.array_uuid().await && uuid == sb.member_uuid;
        let down = matches!(
            self.volume.state(MemberIndex(role)),
            MemberState::Failed | MemberState::Missing
        );
        (ours && down).then_some((sb, role, state))
    }

    /// The role `device` held before it went missing or failed, if it can
    /// catch up from the bitmap (its role still names it, the bitmap is
    /// maintained and the slot is down, its own superblock lists the role
    /// active, and it is not behind `events_cleared`: no bit it would need
    /// was cleared since, FORMAT.md §3 rule 5). An older copy of the member
    /// put back is rebuilt in full instead.
    async fn readd_role(&self, device: &Arc<dyn BlockDevice>) -> Option<usize> {
        let bitmap = self.bitmap.as_ref()?;
        let (sb, role, state) = self.own_down_role(device).await?;
        let absent = matches!(
            state,
            meta::MemberState::Failed | meta::MemberState::Missing
        );
        let cleared = self.metadata.events_cleared().await;
        // Active when it left, or a bitmap recovery cut half-way: in sync
        // outside the bits, and no bit is cleared while a role is down
        // (FORMAT.md crash case 94).
        let current = cleared != 0
            && sb.events >= cleared
            && sb.members.get(role).is_some_and(|m| {
                matches!(
                    m.state,
                    meta::MemberState::Active | meta::MemberState::Recovering
                )
            });
        (absent && current && self.metadata.bitmap_valid().await && bitmap.pinned() == 0)
            .then_some(role)
    }

    /// Re-adds a member into its old role, copying only the dirty regions.
    async fn start_recovery(
        self: &Arc<Self>,
        role: usize,
        device: Arc<dyn BlockDevice>,
        path: &Path,
    ) -> Result<(), DaemonError> {
        let Some(bitmap) = self.bitmap.clone() else {
            self.state().end_pass();
            return Err(DaemonError::Usage(format!("{}: no bitmap", self.name)));
        };
        let attach = async {
            let uuid = meta::read_superblock(device.as_ref())
                .await
                .map_err(|e| DaemonError::Usage(error_chain(&e)))?
                .superblock
                .member_uuid;
            let window = self.member_window(role, &device, false)?;
            self.volume
                .attach_rebuild_target(MemberIndex(role), window, 0)
                .map_err(|e| self.raid_err(e))?;
            if let Err(e) = self
                .metadata
                .begin_rebuild(role, device.clone(), uuid, meta::Joining::Recovery)
                .await
            {
                self.volume.detach_rebuild_target(MemberIndex(role));
                return Err(DaemonError::from(e));
            }
            self.member_joined(role, device.clone(), uuid).await;
            Ok(())
        };
        if let Err(e) = attach.await {
            self.state().end_pass();
            return Err(e);
        }
        // Its image missed the regions first written while it was away.
        self.share_written().await;
        let ranges = bitmap.dirty_ranges();
        self.set_path(role, path);
        self.event(
            "recovery_started",
            Some(role),
            format!(
                "{}: re-adding {} as member {role}: catching up {} dirty bytes from the bitmap",
                self.name,
                path.display(),
                ranges.iter().map(|(a, b)| b - a).sum::<u64>()
            ),
        );
        self.spawn_rebuild(role, Some(ranges));
        Ok(())
    }

    /// Copies role `role` onto `path` while the current member keeps serving
    /// (like `mdadm --replace`); the new member takes the role at the end.
    pub async fn replace_member(
        self: &Arc<Self>,
        role: usize,
        path: &Path,
        force: bool,
    ) -> Result<(), DaemonError> {
        let _set = self.member_set.lock().await;
        let _new = new_members().lock().await;
        if role >= self.volume.geometry().members() {
            return Err(DaemonError::Usage(format!(
                "{}: no member with role {role}",
                self.name
            )));
        }
        if self.volume.state(MemberIndex(role)) != MemberState::Active {
            return Err(DaemonError::Usage(format!(
                "{}: member {role} is not active; add a member instead",
                self.name
            )));
        }
        let device = self.open_new(path, force).await?;
        if !self.state().claim_pass() {
            return Err(DaemonError::Usage(format!(
                "{}: a rebuild is already running",
                self.name
            )));
        }
        let window = match self.wipe_joining(&device).await {
            Ok(()) => self.member_window(role, &device, true),
            Err(e) => Err(e),
        };
        let window = match window {
            Ok(w) => w,
            Err(e) => {
                self.state().end_pass();
                return Err(e);
            }
        };
        if let Err(e) = self
            .volume
            .attach_rebuild_target(MemberIndex(role), window, 0)
        {
            self.state().end_pass();
            return Err(self.raid_err(e));
        }
        if let Err(e) = self
            .metadata
            .begin_replace(role, device, Uuid::new_v4())
            .await
        {
            self.volume.detach_rebuild_target(MemberIndex(role));
            self.state().end_pass();
            return Err(e.into());
        }
        self.share_written().await;
        self.event(
            "replace_started",
            Some(role),
            format!(
                "{}: replacing member {role} with {}",
                self.name,
                path.display()
            ),
        );
        self.state().replacing(role, show_path(path));
        let h = self.clone();
        let new_path = path.to_path_buf();
        self.track(tokio::spawn(async move {
            h.run_replace(role, &new_path).await;
            h.activate_spares().await;
        }));
        Ok(())
    }

    /// Runs the copy of a replace (new or resumed) and gives the role's
    /// path to the new member once it holds the role.
    async fn run_replace(&self, role: usize, new_path: &Path) {
        let uuid = self.metadata.replace().await.map(|(_, u)| u);
        self.state().replacing(role, show_path(new_path));
        self.run_rebuild(role, None, &self.sink(true), true).await;
        let holder = self.metadata.role_entry(role).await.map(|(u, _)| u);
        if uuid.is_some()
            && holder == uuid
            && self.volume.state(MemberIndex(role)) == MemberState::Active
        {
            self.set_path(role, new_path);
        }
        // Ended only now: from `replace` until here `status` shows the
        // replace running, so "optimal with no pass" means the role moved.
        self.state().end_pass();
    }

    /// Stops running passes (recording the rebuild checkpoint). Returns
    /// false when a crash resync is unfinished: the array must stay dirty.
    pub async fn shutdown(&self) -> bool {
        self.state().stop();
        self.stopped.send_replace(true);
        self.control.cancel();
        let tasks: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        self.stop.notify_one();
        for t in tasks {
            // Passes stop at their next step (and record a checkpoint).
            let abort = t.abort_handle();
            if tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .is_err()
            {
                warn!("{}: a sync task did not stop; aborting it", self.name);
                abort.abort();
            }
        }
        // Write-behind members get what they lag before bits are cleared
        // (docs/FORMAT.md crash case 83); one still in flight keeps its bits.
        if tokio::time::timeout(Duration::from_secs(30), self.volume.drain_behind())
            .await
            .is_err()
        {
            warn!("{}: write-behind queue not drained in 30 s", self.name);
        }
        let resync_pending = self.state().resync_pending();
        if let Some(b) = &self.bitmap {
            if !resync_pending {
                if let Err(e) = b.clear_all().await {
                    warn!(
                        "{}: clearing the bitmap failed: {}",
                        self.name,
                        error_chain(&e)
                    );
                }
            }
        }
        !resync_pending
    }

    /// Bytes the last pass that ended skipped as never written.
    fn last_skipped(&self) -> u64 {
        self.volume.last_sync().map_or(0, |p| p.skipped_bytes)
    }

    async fn run_resync(&self, ranges: Vec<(u64, u64)>) {
        let total: u64 = ranges.iter().map(|(a, b)| b - a).sum();
        self.event(
            "resync_started",
            None,
            format!(
                "{}: resyncing {} dirty bytes in {} ranges",
                self.name,
                total,
                ranges.len()
            ),
        );
        let bitmap = self.bitmap.clone();
        let done = move |a: u64, b: u64| {
            if let Some(bm) = &bitmap {
                bm.synced(a, b);
            }
        };
        match self.volume.resync(ranges, &self.control, &done).await {
            Ok(rewritten) => {
                self.resynced_bytes.fetch_add(rewritten, Ordering::Relaxed);
                self.state().resync_ended(true);
                self.event(
                    "resync_finished",
                    None,
                    format!(
                        "{}: resync finished: scanned {total} bytes, rewrote {rewritten} bytes, skipped {} bytes never written",
                        self.name,
                        self.last_skipped()
                    ),
                );
            }
            Err(e) => {
                self.state().resync_ended(false);
                warn!("{}: resync stopped: {}", self.name, error_chain(&e));
                self.event(
                    "resync_stopped",
                    None,
                    format!(
                        "{}: resync stopped unfinished ({}); the next start resyncs again",
                        self.name,
                        error_chain(&e)
                    ),
                );
            }
        }
    }

    /// Runs one rebuild, or the copy of a replace (`replace`: an
    /// abandoned one leaves the old member in its role).
    async fn run_rebuild(
        &self,
        role: usize,
        only: Option<Vec<(u64, u64)>>,
        sink: &dyn RebuildSink,
        replace: bool,
    ) {
        self.run_rebuilds(&[role], only, sink, replace).await
    }

    /// [`Self::run_rebuild`] of one or more roles in one pass (a RAID-6
    /// rebuilding two members at once).
    async fn run_rebuilds(
        &self,
        roles: &[usize],
        only: Option<Vec<(u64, u64)>>,
        sink: &dyn RebuildSink,
        replace: bool,
    ) {
        let members: Vec<MemberIndex> = roles.iter().map(|&r| MemberIndex(r)).collect();
        if self.cancel_scrub() {
            info!(
                "{}: rebuild of member(s) {roles:?} starts: scrub cancelled",
                self.name
            );
        }
        let recovery = only.is_some();
        let started = std::time::Instant::now();
        let mut members = members;
        loop {
            let result = self
                .volume
                .rebuild_together(&members, only.clone(), &self.control, sink)
                .await;
            // A member of the pass that broke or was failed by the operator
            // is dropped; the others stay attached and go on in a new pass
            // from their checkpoint (md restarts recovery onto the spares
            // left), rather than being thrown away with it.
            let (go_on, ended): (Vec<MemberIndex>, Vec<MemberIndex>) =
                members.iter().partition(|&&m| {
                    result.is_err()
                        && !matches!(result, Err(RebuildError::Cancelled))
                        && self.volume.rebuild_target(m).is_some()
                });
            for m in ended {
                self.rebuild_ended(m.0, &result, recovery, replace, started)
                    .await;
            }
            if go_on.is_empty() {
                break;
            }
            info!(
                "{}: rebuild of member(s) {:?} goes on without the member(s) dropped",
                self.name,
                go_on.iter().map(|m| m.0).collect::<Vec<_>>()
            );
            members = go_on;
        }
        if !replace {
            // A replace's pass ends once the role has moved (`run_replace`).
            self.state().end_pass();
        }
    }

    /// Records how the rebuild of `role` ended (`result`, the pass's).
    async fn rebuild_ended(
        &self,
        role: usize,
        result: &Result<u64, RebuildError>,
        recovery: bool,
        replace: bool,
        started: std::time::Instant,
    ) {
        let member = MemberIndex(role);
        match result {
            Ok(copied) => {
                let copied = *copied;
                self.rebuilt_bytes.fetch_add(copied, Ordering::Relaxed);
                if recovery {
                    if let Some(b) = &self.bitmap {
                        b.synced(0, self.data_size);
                    }
                }
                let secs = started.elapsed().as_secs_f64();
                self.event(
                    "rebuild_finished",
                    Some(role),
                    format!(
                        "{}: {} of member {role} finished: copied {copied} bytes of {} in {secs:.2} s ({:.1} MB/s), skipped {} bytes never written",
                        self.name,
                        if replace {
                            "replace"
                        } else if recovery {
                            "recovery"
                        } else {
                            "rebuild"
                        },
                        self.data_size,
                        copied as f64 / secs.max(1e-6) / 1e6,
                        self.last_skipped()
                    ),
                );
            }
            Err(RebuildError::Cancelled) => {
                if let Some((_, up_to)) = self.volume.rebuild_target(member) {
                    let what = if replace { "replace" } else { "rebuild" };
                    match self.metadata.checkpoint(role, up_to).await {
                        Ok(()) => {
                            info!("{}: {what} of member {role} paused at {up_to}", self.name)
                        }
                        Err(e) => warn!("{}: {}", self.name, error_chain(&e)),
                    }
                }
            }
            Err(e) => {
                warn!(
                    "{}: rebuild of member {role} failed: {}",
                    self.name,
                    error_chain(e)
                );
                let aborted = if replace {
                    self.metadata.abort_replace(role).await
                } else {
                    self.metadata.abort_rebuild(role).await
                };
                if let Err(e) = aborted {
                    warn!("{}: {}", self.name, error_chain(&e));
                }
            }
        }
    }

    /// Starts rebuilds from spares into down roles, one at a time.
    fn activate_spares(self: &Arc<Self>) -> BoxFuture<'_, ()> {
        crate::block::BoxFuture::new(async move {
            // Not at shutdown: a `fail` waiting on the pass just ended may
            // hold the member-set lock (red team s16).
            if self.stopping() {
                return;
            }
            let _set = self.member_set.lock().await;
            // A spare is in neither list while it moves into its role.
            let _new = new_members().lock().await;
            loop {
                let Some(role) = self.down_role() else {
                    return;
                };
                let spare = {
                    let mut spares = self.spares.lock().unwrap_or_else(|e| e.into_inner());
                    if spares.is_empty() || !self.state().claim_pass() {
                        return;
                    }
                    spares.remove(0)
                };
                let path = spare.path.clone();
                self.event(
                    "spare_activated",
                    Some(role),
                    format!(
                        "{}: activating spare {} for member {role}",
                        self.name,
                        path.display()
                    ),
                );
                match self.start_rebuild(role, spare).await {
                    Ok(()) => return,
                    Err(e) => warn!(
                        "{}: spare {} unusable: {}",
                        self.name,
                        path.display(),
                        error_chain(&e)
                    ),
                }
            }
        })
    }

    /// A failed or missing role with no rebuild attached.
    fn down_role(&self) -> Option<usize> {
        if self.state().stopping() {
            return None;
        }
        self.volume
            .member_states()
            .iter()
            .position(|s| matches!(s, MemberState::Failed | MemberState::Missing))
    }

    /// Gives `role` to `spare` and rebuilds it in the background. The
    /// caller has claimed the pass; it is ended on error.
    async fn start_rebuild(self: &Arc<Self>, role: usize, spare: Spare) -> Result<(), DaemonError> {
        let result = self.begin(role, &spare).await;
        if result.is_err() {
            self.state().end_pass();
            return result;
        }
        self.rebuild_started(role, &spare);
        let mut roles = vec![role];
        roles.extend(self.second_rebuild().await);
        let h = self.clone();
        self.track(tokio::spawn(async move {
            h.run_rebuilds(&roles, None, &h.sink(false), false).await;
            h.activate_spares().await;
        }));
        Ok(())
    }

    async fn begin(&self, role: usize, spare: &Spare) -> Result<(), DaemonError> {
        // The role's own former member keeps the role's policy; another
        // device does not inherit it (md's per-device WriteMostly).
        let joining = match self.own_down_role(&spare.device).await {
            Some((_, r, _)) if r == role => meta::Joining::Returning,
            _ => meta::Joining::New,
        };
        self.wipe_joining(&spare.device).await?;
        let window = self.member_window(role, &spare.device, true)?;
        self.volume
            .attach_rebuild_target(MemberIndex(role), window, 0)
            .map_err(|e| self.raid_err(e))?;
        let uuid = Uuid::new_v4();
        if let Err(e) = self
            .metadata
            .begin_rebuild(role, spare.device.clone(), uuid, joining)
            .await
        {
            self.volume.detach_rebuild_target(MemberIndex(role));
            return Err(e.into());
        }
        if joining == meta::Joining::New && self.volume.is_write_mostly(MemberIndex(role)) {
            info!(
                "{}: role {role} is no longer write-mostly (a new member took it)",
                self.name
            );
            self.volume.set_write_mostly(MemberIndex(role), false);
        }
        self.member_joined(role, spare.device.clone(), uuid).await;
        self.share_written().await;
        Ok(())
    }

    /// `role` took `spare`: its path, and the event.
    fn rebuild_started(&self, role: usize, spare: &Spare) {
        self.set_path(role, &spare.path);
        self.event(
            "rebuild_started",
            Some(role),
            format!(
                "{}: rebuilding member {role} onto {}",
                self.name,
                spare.path.display()
            ),
        );
    }

    /// A second down role that joins the rebuild pass just started (an
    /// array with two members' redundancy, RAID-6) when an idle spare is
    /// there for it: both are rebuilt from one read of the others.
    async fn second_rebuild(&self) -> Option<usize> {
        if self
            .volume
            .geometry()
            .level()
            .redundancy(self.volume.geometry().members())
            < 2
        {
            return None;
        }
        let role = self.down_role()?;
        let spare = {
            let mut spares = self.spares.lock().unwrap_or_else(|e| e.into_inner());
            (!spares.is_empty()).then(|| spares.remove(0))?
        };
        match self.begin(role, &spare).await {
            Ok(()) => {
                self.rebuild_started(role, &spare);
                Some(role)
            }
            Err(e) => {
                warn!(
                    "{}: spare {} unusable: {}",
                    self.name,
                    spare.path.display(),
                    error_chain(&e)
                );
                None
            }
        }
    }

    /// With the written-region map, a joining member is wiped like a
    /// creation member before it is attached: the regions the copy skips
    /// must read as zeroes with unknown checksums (docs/FORMAT.md §10).
    async fn wipe_joining(&self, device: &Arc<dyn BlockDevice>) -> Result<(), DaemonError> {
        if self.volume.written().is_none() {
            return Ok(());
        }
        let from = meta::written::WRITTEN_OFFSET;
        let wiped = async {
            device
                .write_zeroes(
                    crate::units::ByteOffset(from),
                    device.size().saturating_sub(from),
                    true,
                )
                .await?;
            device.flush().await
        };
        wiped.await.map_err(|e| {
            DaemonError::Usage(format!(
                "{}: wiping {} before it joins: {e}",
                self.name,
                device.name()
            ))
        })
    }

    /// Writes the written-region map to every present member (a member
    /// that just joined holds none yet).
    async fn share_written(&self) {
        let Some(b) = self.bitmap.as_ref() else {
            return;
        };
        if let Err(e) = b.share_written().await {
            warn!("{}: writing the written-region map: {e}", self.name);
        }
    }

    fn window(&self, device: &Arc<dyn BlockDevice>) -> Result<Arc<dyn BlockDevice>, DaemonError> {
        let w = Window::new(device.clone(), self.data_offset, self.data_size).map_err(|e| {
            DaemonError::Usage(format!(
                "{} is too small for {}: {}",
                device.name(),
                self.name,
                error_chain(&e)
            ))
        })?;
        Ok(Arc::new(w))
    }

    fn raid_err(&self, e: RebuildError) -> DaemonError {
        DaemonError::Usage(format!("{}: {}", self.name, error_chain(&e)))
    }

    /// Opens a new member and runs the pre-write check (the caller holds
    /// `member_set`): refused when another process holds it, when it is a
    /// member, spare or replace target of this array under any name, and,
    /// unless `force`, when it holds anything (`meta::signature`).
    async fn open_new(
        &self,
        path: &Path,
        force: bool,
    ) -> Result<Arc<dyn BlockDevice>, DaemonError> {
        let device = super::bringup::open_any(path, &self.opts)?;
        if let Some(id) = device.device_id() {
            self.refuse_known(path, id).await?;
            // Another array of this daemon holds it: its claim is this
            // process's, so only the arrays themselves can tell.
            for other in self.other_arrays() {
                other.refuse_known(path, id).await?;
            }
        }
        self.refuse_contents(path, device.as_ref(), force).await?;
        Window::new(device.clone(), self.data_offset, self.data_size).map_err(|_| {
            DaemonError::Usage(format!(
                "{} is too small: needs {} bytes",
                path.display(),
                self.data_offset + self.data_size
            ))
        })?;
        Ok(device)
    }
}

/// Every array this process serves, for the identity check across arrays
/// (one daemon serving two volumes: a member of one is never taken by the
/// other, whose claim on it is this process's own).
fn arrays() -> &'static Mutex<Vec<std::sync::Weak<ArrayHandle>>> {
    static ARRAYS: std::sync::OnceLock<Mutex<Vec<std::sync::Weak<ArrayHandle>>>> =
        std::sync::OnceLock::new();
    ARRAYS.get_or_init(|| Mutex::new(Vec::new()))
}

/// Held (inside an array's `member_set`) by `add` and `replace` from the
/// identity check until the device is in the array's members or spares,
/// so two arrays never admit one device at the same moment.
fn new_members() -> &'static tokio::sync::Mutex<()> {
    static NEW_MEMBERS: std::sync::OnceLock<tokio::sync::Mutex<()>> = std::sync::OnceLock::new();
    NEW_MEMBERS.get_or_init(|| tokio::sync::Mutex::new(()))
}

/// The pre-write check of `add` and `replace` (README "Overwrite
/// protection").
impl ArrayHandle {
    /// The other arrays this process serves.
    fn other_arrays(&self) -> Vec<Arc<ArrayHandle>> {
        arrays()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .filter(|a| !std::ptr::eq(Arc::as_ptr(a), self))
            .collect()
    }

    /// Refuses a device that is already in this array under any name.
    async fn refuse_known(&self, path: &Path, id: member::DeviceId) -> Result<(), DaemonError> {
        let refuse = |what: String| {
            Err(DaemonError::Usage(format!(
                "{} is already {what} of {}",
                path.display(),
                self.name
            )))
        };
        let spare = self
            .spares
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|s| s.device.device_id() == Some(id))
            .map(|s| show_path(&s.path));
        if let Some(spare) = spare {
            return refuse(format!("a hot spare (as {spare})"));
        }
        let (roles, replacement) = self.metadata.devices_by_role().await;
        for (role, device) in roles.iter().enumerate() {
            if let Some(d) = device.as_ref().filter(|d| d.device_id() == Some(id)) {
                return refuse(format!("a member (role {role}, as {})", d.name()));
            }
        }
        if let Some(d) = replacement.filter(|d| d.device_id() == Some(id)) {
            let role = self.metadata.replace().await.map_or(0, |(r, _)| r);
            return refuse(format!(
                "a member (the new member replacing role {role}, as {})",
                d.name()
            ));
        }
        Ok(())
    }

    /// Refuses, unless `force`, a device holding anything but a vraid
    /// superblock of this array that no live member carries.
    async fn refuse_contents(
        &self,
        path: &Path,
        device: &dyn BlockDevice,
        force: bool,
    ) -> Result<(), DaemonError> {
        let found = meta::signature::scan(device).await.map_err(|e| {
            DaemonError::Usage(format!(
                "{}: cannot read: {}",
                path.display(),
                error_chain(&e)
            ))
        })?;
        let ours = self.metadata.array_uuid().await;
        for sig in &found {
            let refusal = match sig {
                meta::signature::Signature::Vraid {
                    name, array_uuid, ..
                } if *array_uuid != ours => format!(
                    "{} belongs to another array ({name}, {array_uuid}); use --force to overwrite it",
                    path.display()
                ),
                meta::signature::Signature::Vraid {
                    member_uuid,
                    role: Some(role),
                    ..
                } => match self.live_role(*role as usize, *member_uuid).await {
                    Some(role) => format!(
                        "{} holds the superblock of live member {role} of {} (a copy of it?); use --force to overwrite it",
                        path.display(),
                        self.name
                    ),
                    None => continue,
                },
                meta::signature::Signature::Vraid { .. } => continue,
                other => format!(
                    "{} holds {other}; refusing to overwrite it (use --force to overwrite it anyway)",
                    path.display()
                ),
            };
            if force {
                warn!("{}: --force: overwriting {}", self.name, path.display());
                continue;
            }
            return Err(DaemonError::Overwrite(refusal));
        }
        Ok(())
    }

    /// `role` if member `uuid` holds it and serves.
    async fn live_role(&self, role: usize, uuid: Uuid) -> Option<usize> {
        let (holder, _) = self.metadata.role_entry(role).await?;
        let down = matches!(
            self.volume.state(MemberIndex(role)),
            MemberState::Failed | MemberState::Missing
        );
        (holder == uuid && !down).then_some(role)
    }
}
