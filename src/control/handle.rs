//! The live state the control plane acts on: one [`VolumeHandle`] per
//! running volume (its `raid::Volume`, superblock metadata, per-member fault
//! rules and counters, events), gathered in a [`Registry`].
//!
//! Engine operations (add a member, replace one, tune the rebuild) belong to
//! the rebuild engine; it plugs in through [`EngineOps`], given to
//! [`VolumeHandle::new`]. Without one, those methods answer "not available".

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::events::{Event, EventLog};
use super::replies::{AddReply, ReplaceReply, ScrubReply, SetReply};
use super::status::{
    EngineStatus, FaultStatus, MemberStatus, MemberStatusState, VolumeState, VolumeStatus,
};
use super::ControlError;
use crate::block::BoxFuture;
use crate::member::fault::{DeviceTag, FaultRule, FaultSet, FaultSpec};
use crate::meta::ArrayMetadata;
use crate::metrics::stats::IoStats;
use crate::raid::{Level, MemberIndex, MemberState, Volume};

/// Fault ids are unique for the life of the process (member and volume
/// faults share them, so `fault clear ID` needs no scope).
pub(super) static NEXT_FAULT_ID: AtomicU64 = AtomicU64::new(1);

/// How long `vraid fail` of a member being rebuilt or replaced waits for
/// the pass to let go of it (it does at its next step) before answering
/// that it has not.
const PASS_STOP_BOUND: std::time::Duration = std::time::Duration::from_secs(30);

/// A fresh fault id (for rules made outside the control plane, as the
/// start-up `volatile` rules armed on member power gates).
pub fn next_fault_id() -> u64 {
    NEXT_FAULT_ID.fetch_add(1, Ordering::Relaxed)
}

/// The rebuild engine's side of the control plane, implemented per volume.
pub trait EngineOps: Send + Sync {
    /// `vraid add VOLUME PATH [--force]`: a spare, or straight into a
    /// failed slot (`force`: overwrite what the pre-write check finds).
    fn add(&self, path: PathBuf, force: bool) -> BoxFuture<'_, Result<AddReply, ControlError>>;
    /// `vraid replace VOLUME MEMBER PATH [--force]`: copy onto `path` while `member` serves.
    fn replace(
        &self,
        member: usize,
        path: PathBuf,
        force: bool,
    ) -> BoxFuture<'_, Result<ReplaceReply, ControlError>>;
    /// `vraid set VOLUME --rebuild-max-mbps N`.
    fn set_rebuild_max_mbps(&self, mbps: u64) -> BoxFuture<'_, Result<SetReply, ControlError>>;
    /// Extra `status` fields: resync/rebuild progress, spares, rate limit.
    fn status(&self) -> EngineStatus;
    /// The path of the member holding `role` now (a spare, `add` or
    /// `replace` may have given it a new one); `None`: the start-up path.
    fn member_path(&self, role: usize) -> Option<String> {
        let _ = role;
        None
    }
    /// The lock that serializes member-set changes of this array (add,
    /// replace, spare activation; `fail` and `remove` take it too).
    fn member_set(&self) -> Option<Arc<tokio::sync::Mutex<()>>> {
        None
    }
    /// Why the start-up join of `role`'s member was given up (the device
    /// at its path was refused), while the role is down.
    fn join_refused(&self, role: usize) -> Option<String> {
        let _ = role;
        None
    }
    /// `vraid remove VOLUME SPARE`: takes an idle hot spare named by its
    /// path out of the spare list. `None`: no such spare.
    fn remove_spare(&self, path: &str) -> Option<String> {
        let _ = path;
        None
    }
    /// `vraid set VOLUME [--member M --write-mostly on|off]
    /// [--write-behind SIZE|off] [--write-behind-requests N]`: `member` is
    /// the role resolved; persisted before use (FORMAT.md §6).
    fn set_mirror(
        &self,
        member: Option<usize>,
        p: crate::control::params::MirrorSetParams,
    ) -> BoxFuture<'_, Result<crate::control::replies::MirrorReply, ControlError>> {
        let _ = (member, p);
        crate::block::BoxFuture::new(async { Err(ControlError::NotAvailable("mirror.set".into())) })
    }
    /// `vraid scrub VOLUME [--repair]` (with `wait`, replies with the result
    /// once it ends) and `vraid scrub VOLUME --cancel`.
    fn scrub(&self, req: ScrubRequest) -> BoxFuture<'_, Result<ScrubReply, ControlError>> {
        let _ = req;
        crate::block::BoxFuture::new(async { Err(ControlError::NotAvailable("scrub".into())) })
    }
}

/// Parameters of the `scrub` method.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScrubRequest {
    /// Rewrite bad blocks and mismatches (md `repair`); else only count
    /// (md `check`).
    pub repair: bool,
    /// Stop the running scrub instead.
    pub cancel: bool,
    /// Reply only once the scrub ends, with its result.
    pub wait: bool,
}

/// One member slot as the control plane sees it.
#[derive(Debug)]
pub struct MemberHandle {
    /// Role (slot index).
    pub role: usize,
    /// Path as given at start-up, if known.
    pub path: Option<String>,
    /// Live fault rules applied to its data window.
    pub faults: Arc<FaultSet>,
    /// I/O counters of its data window.
    pub stats: Arc<IoStats>,
    /// 4 KiB blocks that failed their checksum when read.
    pub checksum_errors: Arc<AtomicU64>,
    /// Every device that joined this slot (tag, device name), oldest first.
    devices: Mutex<Vec<(DeviceTag, String)>>,
    removed: AtomicBool,
}

impl MemberHandle {
    /// A member slot with empty rules and zeroed counters.
    pub fn new(role: usize, path: Option<String>) -> MemberHandle {
        MemberHandle {
            role,
            path,
            faults: Arc::new(FaultSet::new()),
            stats: IoStats::new(),
            checksum_errors: Arc::new(AtomicU64::new(0)),
            devices: Mutex::new(Vec::new()),
            removed: AtomicBool::new(false),
        }
    }

    /// Records that the device `name` joins this slot (at assembly, as a
    /// rebuild or replace target, as a spare); its fault rules are bound to
    /// the tag returned: `tag` when the device has one already (its power
    /// gate's), else a fresh one.
    pub fn join_device(&self, name: &str, tag: Option<DeviceTag>) -> DeviceTag {
        let tag = tag.unwrap_or_else(DeviceTag::fresh);
        self.joined().push((tag, name.to_string()));
        tag
    }

    /// The tag of the device named `path` (the latest to join under that
    /// name), else of the latest device to join; `None` before any joined.
    fn device_tag(&self, path: Option<&str>) -> Option<DeviceTag> {
        let joined = self.joined();
        let named = path.and_then(|p| joined.iter().rev().find(|(_, n)| n == p));
        named.or(joined.last()).map(|(tag, _)| *tag)
    }

    /// The name of the device tagged `tag`.
    fn device_name(&self, tag: DeviceTag) -> Option<String> {
        let joined = self.joined();
        joined
            .iter()
            .find(|(t, _)| *t == tag)
            .map(|(_, n)| n.clone())
    }

    fn joined(&self) -> std::sync::MutexGuard<'_, Vec<(DeviceTag, String)>> {
        self.devices.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True once `vraid remove` took it out.
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }
}

/// True when `a` and `b` name the same file: the same absolute path (the
/// file may be gone), the same file once symlinks are resolved, or the same
/// file or block device by identity (a hard link, a bind mount). A relative
/// path is taken from the daemon's working directory, where the start-up
/// paths were given; the CLI sends the paths it is given as absolute ones.
fn same_path(a: &str, b: &str) -> bool {
    if let (Ok(x), Ok(y)) = (
        crate::remote::NbdUri::parse(a),
        crate::remote::NbdUri::parse(b),
    ) {
        return x.canonical() == y.canonical();
    }
    let absolute = |p: &str| std::path::absolute(p).ok();
    let canonical = |p: &str| std::fs::canonicalize(p).ok();
    // A hard link or a bind mount names the same file under another path.
    let device = |p: &str| crate::member::claim::DeviceId::of_path(std::path::Path::new(p)).ok();
    absolute(a).is_some_and(|x| Some(x) == absolute(b))
        || canonical(a).is_some_and(|x| Some(x) == canonical(b))
        || device(a).is_some_and(|x| Some(x) == device(b))
}

/// A running volume as the control plane sees it.
pub struct VolumeHandle {
    /// Volume name.
    pub name: String,
    /// The RAID volume.
    pub volume: Arc<Volume>,
    /// Its superblocks.
    pub metadata: Arc<ArrayMetadata>,
    /// Client-facing I/O counters.
    pub stats: Arc<IoStats>,
    /// Member slots by role.
    pub members: MemberSlots,
    /// Its events.
    pub events: Arc<EventLog>,
    /// Volume faults and the write cache between the volume and its
    /// exports (what the exports serve is `client.device`).
    pub client: crate::volfault::ClientStack,
    engine: Option<Arc<dyn EngineOps>>,
}

/// The member slots of a volume by role, shared with what wraps members
/// that join later (their fault rules and counters live here).
#[derive(Clone, Debug)]
pub struct MemberSlots(Arc<[MemberHandle]>);

impl From<Vec<MemberHandle>> for MemberSlots {
    fn from(members: Vec<MemberHandle>) -> MemberSlots {
        MemberSlots(members.into())
    }
}

impl std::ops::Deref for MemberSlots {
    type Target = [MemberHandle];

    fn deref(&self) -> &[MemberHandle] {
        &self.0
    }
}

impl<'a> IntoIterator for &'a MemberSlots {
    type Item = &'a MemberHandle;
    type IntoIter = std::slice::Iter<'a, MemberHandle>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl std::fmt::Debug for VolumeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeHandle")
            .field("name", &self.name)
            .field("members", &self.members)
            .finish_non_exhaustive()
    }
}

impl VolumeHandle {
    /// A handle; `members` must be in role order. Without an `engine`
    /// its methods answer "not available".
    pub fn new(
        volume: Arc<Volume>,
        metadata: Arc<ArrayMetadata>,
        stats: Arc<IoStats>,
        members: impl Into<MemberSlots>,
        events: Arc<EventLog>,
        engine: Option<Arc<dyn EngineOps>>,
    ) -> VolumeHandle {
        let client = crate::volfault::ClientStack::new(volume.clone());
        VolumeHandle {
            name: crate::block::BlockDevice::name(&*volume).to_string(),
            client,
            volume,
            metadata,
            stats,
            members: members.into(),
            events,
            engine,
        }
    }

    /// The engine, or "not available" naming `method`.
    pub fn engine(&self, method: &str) -> Result<&Arc<dyn EngineOps>, ControlError> {
        self.engine
            .as_ref()
            .ok_or_else(|| ControlError::NotAvailable(method.to_string()))
    }

    /// The RAID level.
    pub fn level(&self) -> Level {
        self.volume.geometry().level()
    }

    /// State of one member slot.
    pub fn member_state(&self, role: usize) -> MemberStatusState {
        // A removed slot stays "removed" until a new member fills it.
        let removed = self.members.get(role).is_some_and(|m| m.is_removed());
        match self.volume.state(MemberIndex(role)) {
            MemberState::Failed | MemberState::Missing if removed => MemberStatusState::Removed,
            s => s.into(),
        }
    }

    /// Members not active.
    pub fn down(&self) -> usize {
        (0..self.members.len())
            .filter(|&r| self.member_state(r) != MemberStatusState::Active)
            .count()
    }

    /// True when the data stays available with the members down now
    /// (and `also`): `Geometry::tolerates` (RAID-10 survives more than
    /// its redundancy when the members down hold different chunks).
    fn tolerates_down(&self, also: Option<usize>) -> bool {
        let down: Vec<bool> = (0..self.members.len())
            .map(|r| Some(r) == also || self.member_state(r) != MemberStatusState::Active)
            .collect();
        self.volume.geometry().tolerates(&down)
    }

    /// Optimal, degraded or failed, from the member states alone.
    pub fn state(&self) -> VolumeState {
        let down = self.down();
        if down == 0 {
            VolumeState::Optimal
        } else if self.tolerates_down(None) {
            VolumeState::Degraded
        } else {
            VolumeState::Failed
        }
    }

    /// The path of the member holding `role` now: the engine's, else the
    /// start-up path.
    pub fn current_path(&self, role: usize) -> Option<String> {
        self.engine
            .as_ref()
            .and_then(|e| e.member_path(role))
            .or_else(|| self.members.get(role).and_then(|m| m.path.clone()))
    }

    /// True when `path` (any spelling of it) is the device holding `role` now.
    pub fn holds_role(&self, role: usize, path: &str) -> bool {
        let Some(current) = self.current_path(role) else {
            return false;
        };
        same_path(&current, path)
    }

    /// Finds a member by role number, its start-up path or its current path.
    pub fn find_member(&self, member: &str) -> Result<&MemberHandle, ControlError> {
        let unknown = || ControlError::UnknownMember {
            volume: self.name.clone(),
            member: member.to_string(),
        };
        if let Ok(role) = member.parse::<usize>() {
            return self.members.get(role).ok_or_else(unknown);
        }
        self.members
            .iter()
            .find(|m| {
                let paths = [m.path.clone(), self.current_path(m.role)];
                paths.iter().flatten().any(|p| same_path(p, member))
            })
            .ok_or_else(unknown)
    }

    /// The engine's part of `status` (`sync`, `journal`, spares, …);
    /// `None` without an engine.
    pub fn engine_status(&self) -> Option<EngineStatus> {
        self.engine.as_ref().map(|e| e.status())
    }

    /// The state `status` shows given the engine's part of it (see
    /// [`VolumeState::with_pass`]).
    pub fn status_state(&self, engine: Option<&EngineStatus>) -> VolumeState {
        let pass = engine.and_then(|e| e.sync.as_ref()).map(|s| s.kind);
        self.state().with_pass(pass)
    }

    /// The members' part of `status`.
    pub fn member_status(&self) -> Vec<MemberStatus> {
        self.members
            .iter()
            .map(|m| {
                let path = self.current_path(m.role);
                let role = crate::raid::MemberIndex(m.role);
                let write_mostly = self.volume.is_write_mostly(role);
                MemberStatus {
                    write_mostly,
                    behind: write_mostly.then(|| self.behind_status()).flatten(),
                    role: m.role,
                    remote: path.as_deref().and_then(crate::remote::stats::snapshot),
                    path,
                    state: self.member_state(m.role),
                    faults: m.faults.rules().len(),
                    io: m.stats.summary(),
                    checksum_errors: m.checksum_errors.load(Ordering::Relaxed),
                    join_refused: self.engine.as_ref().and_then(|e| e.join_refused(m.role)),
                }
            })
            .collect()
    }

    /// The write-behind queue, when on.
    fn behind_status(&self) -> Option<super::status::BehindStatus> {
        let (limits, lag) = self.volume.write_behind()?;
        Some(super::status::BehindStatus {
            lag_bytes: lag.bytes,
            lag_requests: lag.requests,
            max_bytes: limits.max_bytes,
            max_requests: limits.max_requests,
            queued_total: self.volume.behind_queued_total(),
        })
    }

    /// Status snapshot.
    pub async fn status(&self) -> VolumeStatus {
        let engine = self.engine_status();
        VolumeStatus {
            name: self.name.clone(),
            level: self.level().number(),
            state: self.status_state(engine.as_ref()),
            size: crate::block::BlockDevice::size(&*self.volume),
            chunk_size: self.volume.geometry().chunk().get(),
            superblock_events: self.metadata.events().await,
            io: self.stats.summary(),
            members: self.member_status(),
            engine,
            cache: Some(self.client.cache.status()),
            volume_faults: Some(self.client.faults.status()),
            qos: Some(self.client.qos.status()),
            write_log: self.client.log.status(),
        }
    }

    /// `vraid fail`: marks an active member failed and records it in the
    /// other members' superblocks (refused when it would lose data), or
    /// stops the rebuild of a member being rebuilt.
    pub async fn fail(&self, role: usize) -> Result<(), ControlError> {
        let state = self.member_state(role);
        if state == MemberStatusState::Rebuilding {
            return self.abandon_rebuild(role).await;
        }
        if state != MemberStatusState::Active {
            return Err(ControlError::Refused(format!(
                "member {role} of {} is already {}",
                self.name, state
            )));
        }
        // The start-up check of a read-only run (a crashed RAID-5 with a
        // member missing is refused) holds for the rest of the run: reads
        // rebuilt from parity that was never resynced return bytes nobody
        // wrote.
        if self.level().has_parity() && self.metadata.read_only_unsynced().await {
            return Err(ControlError::Refused(format!(
                "{} is served read-only and was not shut down cleanly: its parity was not \
                 resynced, so data rebuilt without member {role} could be wrong; serve it \
                 read-write once to repair it",
                self.name
            )));
        }
        let redundancy = self.level().redundancy(self.members.len());
        if !self.tolerates_down(Some(role)) {
            return Err(ControlError::Refused(format!(
                "failing member {role} would make data of {} ({}) unavailable: {} of {} members are down and it tolerates {redundancy}",
                self.name,
                self.level(),
                self.down(),
                self.members.len()
            )));
        }
        self.volume
            .fail_member_by_request(MemberIndex(role), "failed by operator request")
            .await;
        Ok(())
    }

    /// `vraid fail` of a member being rebuilt (a rebuild, recovery or
    /// automatic re-join): the pass stops and drops the new member, the
    /// role stays down. Resolves once the pass has let go of it.
    async fn abandon_rebuild(&self, role: usize) -> Result<(), ControlError> {
        let member = MemberIndex(role);
        if !self
            .volume
            .abandon_rebuild_by_request(member, "failed by operator request")
        {
            return Err(ControlError::Refused(format!(
                "member {role} of {} is not being rebuilt any more",
                self.name
            )));
        }
        // The pass notices at its next step; the reply waits for the
        // superblocks too: a crash right after it must not find the role
        // still recorded as rebuilding (resumed onto the dropped member).
        let settled = self
            .await_change(|| async move {
                let state = self.member_state(role);
                if state == MemberStatusState::Active {
                    return Some(false);
                }
                let gone =
                    state != MemberStatusState::Rebuilding && !self.recorded_rebuilding(role).await;
                gone.then_some(true)
            })
            .await;
        match settled {
            Some(true) => Ok(()),
            // The pass finished between the request and the stop.
            Some(false) => Err(ControlError::Refused(format!(
                "member {role} of {}: its rebuild finished before it could be stopped; \
                 it is active now (fail it again to fail it)",
                self.name
            ))),
            None => Err(ControlError::Refused(format!(
                "member {role} of {}: rebuild abandoned, but its pass has not stopped within 30 s",
                self.name
            ))),
        }
    }

    /// The role being replaced onto `path` (the new member of a running
    /// `replace`), if `path` names one.
    pub fn replacement_role(&self, path: &str) -> Option<usize> {
        let r = self.engine.as_ref()?.status().replace?;
        same_path(&r.path, path).then_some(r.member)
    }

    /// `vraid fail` of the new member of a replace (md's `--fail` of a
    /// replacement device): the copy stops and drops the new member, the
    /// old one keeps the role. Resolves once the superblocks no longer
    /// record the replace: a crash right after it must not resume it onto
    /// the dropped member.
    pub async fn stop_replace(&self, role: usize) -> Result<(), ControlError> {
        let uuid = self.metadata.replace().await.map(|(_, u)| u);
        let member = crate::raid::MemberIndex(role);
        if uuid.is_none()
            || !self
                .volume
                .abandon_rebuild_by_request(member, "replacement failed by operator request")
        {
            return Err(ControlError::Refused(format!(
                "member {role} of {} is not being replaced any more",
                self.name
            )));
        }
        // The pass notices at its next step.
        let settled = self
            .await_change(|| async move {
                let recorded = self.metadata.replace().await.map(|(_, u)| u);
                if recorded == uuid || self.volume.rebuild_target(member).is_some() {
                    return None;
                }
                let holder = self.metadata.role_entry(role).await.map(|(u, _)| u);
                Some(holder != uuid)
            })
            .await;
        match settled {
            Some(true) => Ok(()),
            Some(false) => Err(ControlError::Refused(format!(
                "member {role} of {}: its replace finished before it could be stopped; \
                 the new member holds the role now (fail it to fail it)",
                self.name
            ))),
            None => Err(ControlError::Refused(format!(
                "member {role} of {}: replace abandoned, but its pass has not stopped within 30 s",
                self.name
            ))),
        }
    }

    /// The first `Some` of `check`, looked at now and again at each change
    /// of the member states or of the recorded table; `None` when the pass
    /// has not settled it within [`PASS_STOP_BOUND`] (the caller's reply
    /// must not hang on a stuck pass).
    async fn await_change<T, F, Fut>(&self, check: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let mut watches = [
            self.volume.changes().watch(),
            self.metadata.changes().watch(),
        ];
        let waited = crate::raid::changes::wait_for(&mut watches, check);
        tokio::time::timeout(PASS_STOP_BOUND, waited).await.ok()
    }

    /// True while the superblocks record `role` as being rebuilt.
    async fn recorded_rebuilding(&self, role: usize) -> bool {
        use crate::meta::MemberState as Recorded;
        let states = self.metadata.member_states().await;
        matches!(
            states.get(role),
            Some(Recorded::Rebuilding | Recorded::Recovering)
        )
    }

    /// `vraid remove`: takes a failed or missing member out of its slot and
    /// records it in the superblocks (the role stays missing with no member
    /// UUID, so the old member is left out at the next start).
    pub async fn remove(&self, role: usize) -> Result<(), ControlError> {
        let state = self.member_state(role);
        match state {
            MemberStatusState::Failed | MemberStatusState::Missing => {}
            MemberStatusState::Active | MemberStatusState::Rebuilding => {
                return Err(ControlError::Refused(format!(
                    "member {role} of {} is in use: fail it first (vraid fail {} {role})",
                    self.name, self.name
                )))
            }
            MemberStatusState::Removed => {
                return Err(ControlError::Refused(format!(
                    "member {role} of {} is already removed",
                    self.name
                )))
            }
        }
        self.metadata
            .record_member_removed(role)
            .await
            .map_err(|e| {
                ControlError::Refused(format!(
                    "cannot record the removal of member {role} of {}: {}",
                    self.name,
                    error_chain(&e)
                ))
            })?;
        let member = &self.members[role];
        member.removed.store(true, Ordering::Release);
        member.faults.clear();
        self.events.push(
            &self.name,
            "member_removed",
            Some(role),
            format!("{}: member {role} removed from its slot", self.name),
        );
        Ok(())
    }

    /// Installs a fault rule on a member; returns its id.
    pub fn add_fault(&self, role: usize, spec: FaultSpec) -> Result<u64, ControlError> {
        spec.validate()
            .map_err(|e| ControlError::InvalidParams(e.to_string()))?;
        if spec.kind.volume_only() {
            return Err(ControlError::InvalidParams(format!(
                "kind {:?} is a volume fault: give --volume instead of a member",
                super::status::wire_name(&spec.kind)
            )));
        }
        let member = self
            .members
            .get(role)
            .ok_or_else(|| ControlError::UnknownMember {
                volume: self.name.clone(),
                member: role.to_string(),
            })?;
        let state = self.member_state(role);
        if matches!(
            state,
            MemberStatusState::Missing | MemberStatusState::Removed
        ) {
            return Err(ControlError::Refused(format!(
                "member {role} of {} is {}: no I/O reaches it",
                self.name, state
            )));
        }
        let id = NEXT_FAULT_ID.fetch_add(1, Ordering::Relaxed);
        let text = describe(&spec);
        // The rule belongs to the device holding the role now: it stays
        // with that device when another one takes the role.
        let path = self.current_path(role);
        let mut rule = FaultRule::new(id, spec);
        if let Some(tag) = member.device_tag(path.as_deref()) {
            rule = rule.on_device(tag);
        }
        member.faults.add(Arc::new(rule));
        let on = path.map_or_else(String::new, |p| format!(" ({p})"));
        self.events.push(
            &self.name,
            "fault_added",
            Some(role),
            format!(
                "{}: fault {id} added on member {role}{on}: {text}",
                self.name
            ),
        );
        Ok(id)
    }

    /// Every fault rule of this volume.
    pub fn faults(&self) -> Vec<FaultStatus> {
        let mut out = Vec::new();
        for m in &self.members {
            for rule in m.faults.rules().iter() {
                let device = rule.device.and_then(|t| m.device_name(t));
                let current = self.current_path(m.role);
                out.push(FaultStatus {
                    id: rule.id,
                    volume: self.name.clone(),
                    member: m.role,
                    holds_role: device.is_none() || device == current,
                    path: device.or(current).or_else(|| m.path.clone()),
                    spec: rule.spec.clone(),
                    hits: rule.hits(),
                    remaining: rule.remaining(),
                    active: !rule.expired(),
                });
            }
        }
        out
    }

    /// Removes fault `id` (or every fault with `None`), member and volume
    /// faults alike; returns how many.
    pub fn clear_faults(&self, id: Option<u64>) -> usize {
        let mut n = match id {
            Some(id) => usize::from(self.client.faults.remove(id)),
            None => self.client.faults.clear(),
        };
        for m in &self.members {
            n += match id {
                Some(id) => usize::from(m.faults.remove(id)),
                None => m.faults.clear(),
            };
        }
        if n > 0 {
            let what = id.map_or_else(|| "every fault".to_string(), |id| format!("fault {id}"));
            self.events.push(
                &self.name,
                "fault_cleared",
                None,
                format!("{}: {what} cleared ({n} rules)", self.name),
            );
        }
        n
    }
}

/// An error and its sources on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

/// One line describing a fault spec, for events and `fault list`.
pub fn describe(spec: &FaultSpec) -> String {
    let mut s = format!("{:?} on {:?}", spec.kind, spec.op).to_lowercase();
    if spec.offset.is_some() || spec.length.is_some() {
        let start = spec.offset.unwrap_or(0);
        match spec.length {
            Some(l) => s.push_str(&format!(" bytes {start}+{l}")),
            None => s.push_str(&format!(" bytes {start}..")),
        }
    }
    if spec.probability < 1.0 {
        s.push_str(&format!(" p={}", spec.probability));
    }
    if spec.delay_us > 0 {
        s.push_str(&format!(" delay={}us", spec.delay_us));
    }
    if let Some(c) = spec.count {
        s.push_str(&format!(" count={c}"));
    }
    s
}

/// Every running volume.
#[derive(Debug, Default)]
pub struct Registry {
    volumes: Vec<Arc<VolumeHandle>>,
    pools: Option<Arc<crate::pool::service::PoolService>>,
    pool_clients: crate::volfault::named::NamedStacks,
    pool_exports: Option<Arc<crate::export::pool_volumes::PoolExports>>,
}

impl Registry {
    /// A registry of `volumes`.
    pub fn new(volumes: Vec<Arc<VolumeHandle>>) -> Registry {
        Registry {
            volumes,
            pools: None,
            pool_clients: Default::default(),
            pool_exports: None,
        }
    }

    /// The registry with the exports of the pool volumes (their client
    /// stacks and vhost-user-blk sockets).
    pub fn with_pool_exports(
        mut self,
        exports: Arc<crate::export::pool_volumes::PoolExports>,
    ) -> Registry {
        self.pool_clients = exports.stacks().clone();
        self.pool_exports = Some(exports);
        self
    }

    /// The exports of the pool volumes.
    pub fn pool_exports(
        &self,
    ) -> Result<&Arc<crate::export::pool_volumes::PoolExports>, ControlError> {
        self.pool_exports
            .as_ref()
            .ok_or_else(|| ControlError::Refused("this daemon serves no pools".into()))
    }

    /// The entries (stack, counters, socket) of every pool volume.
    pub fn pool_volume_clients(&self) -> Vec<(String, crate::volfault::named::NamedClient)> {
        self.pool_clients.clients()
    }

    /// The event log of the array whose pool holds volume `name`.
    pub async fn pool_events(&self, name: &str) -> Option<Arc<EventLog>> {
        let (pool, _) = self.pools.as_ref()?.holder(name).await.ok()?;
        self.volume(&pool).ok().map(|v| v.events.clone())
    }

    /// The registry with the daemon's pools (`pool.*`, `volume.*`).
    pub fn with_pools(mut self, pools: Arc<crate::pool::service::PoolService>) -> Registry {
        self.pools = Some(pools);
        self
    }

    /// The client stack of the array or pool volume `name`, with the
    /// array's handle (`None`: a pool volume).
    pub fn client(
        &self,
        name: &str,
    ) -> Result<(crate::volfault::ClientStack, Option<&Arc<VolumeHandle>>), ControlError> {
        if let Ok(v) = self.volume(name) {
            return Ok((v.client.clone(), Some(v)));
        }
        self.pool_clients
            .get(name)
            .map(|s| (s, None))
            .ok_or_else(|| ControlError::UnknownVolume(name.to_string()))
    }

    /// The client stacks of the pool volumes, by name.
    pub fn pool_clients(&self) -> Vec<(String, crate::volfault::ClientStack)> {
        self.pool_clients.all()
    }

    /// The daemon's pools.
    pub fn pools(&self) -> Result<&Arc<crate::pool::service::PoolService>, ControlError> {
        self.pools
            .as_ref()
            .ok_or_else(|| ControlError::Refused("this daemon serves no pools".into()))
    }

    /// Every volume, in start-up order.
    pub fn volumes(&self) -> &[Arc<VolumeHandle>] {
        &self.volumes
    }

    /// The volume named `name`.
    pub fn volume(&self, name: &str) -> Result<&Arc<VolumeHandle>, ControlError> {
        self.volumes
            .iter()
            .find(|v| v.name == name)
            .ok_or_else(|| ControlError::UnknownVolume(name.to_string()))
    }

    /// Events of every volume, oldest first.
    pub fn events(&self) -> Vec<Event> {
        let mut all: Vec<Event> = self
            .volumes
            .iter()
            .flat_map(|v| v.events.snapshot())
            .collect();
        all.sort_by_key(|e| e.time_ms);
        all
    }

    /// Removes fault `id` wherever it is, or every fault (but the
    /// `volatile` rules of members a power cut froze).
    pub fn clear_faults(&self, id: Option<u64>) -> Result<usize, ControlError> {
        let frozen = |id| {
            self.volumes
                .iter()
                .any(|v| v.members.iter().any(|m| m.faults.frozen(id)))
        };
        if let Some(id) = id.filter(|&id| frozen(id)) {
            return Err(ControlError::Refused(format!(
                "fault {id}: its member lost power in a power cut and stays off until the \
                 daemon is killed (SIGKILL) and started again"
            )));
        }
        let mut n: usize = self.volumes.iter().map(|v| v.clear_faults(id)).sum();
        for (_, s) in self.pool_clients.all() {
            n += match id {
                Some(id) => usize::from(s.faults.remove(id)),
                None => s.faults.clear(),
            };
        }
        match id {
            Some(id) if n == 0 => Err(ControlError::UnknownFault(id)),
            _ => Ok(n),
        }
    }
}

#[cfg(test)]
mod state_tests {
    use crate::control::status::{PassKind as P, VolumeState as S};

    #[test]
    fn the_pass_running_names_the_volume_state() {
        for (base, pass, want) in [
            (S::Optimal, None, S::Optimal),
            (S::Optimal, Some(P::Scrub), S::Optimal),
            (S::Optimal, Some(P::Resync), S::Resyncing),
            (S::Optimal, Some(P::Replace), S::Rebuilding),
            (S::Degraded, None, S::Degraded),
            (S::Degraded, Some(P::Resync), S::Degraded),
            (S::Degraded, Some(P::Rebuild), S::Rebuilding),
            (S::Degraded, Some(P::Recovery), S::Rebuilding),
            (S::Failed, Some(P::Rebuild), S::Failed),
        ] {
            assert_eq!(base.with_pass(pass), want, "{base:?} {pass:?}");
        }
    }
}
