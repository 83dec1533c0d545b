//! Superblock updates of a running array (FORMAT.md §3): clean/dirty
//! transitions, member failures and removals, rebuilds and replacements.
//!
//! ```text
//! mark_dirty / mark_clean / record_member_failed / record_member_removed
//! begin_rebuild / begin_replace ─► checkpoint* ─► finish_rebuild / finish_replace
//!    └─► lock ─► change template ─► events+1, absent active roles → missing
//!          ─► every present member: copy A, flush, copy B, flush (in parallel)
//!          ─► unlock, `changes` bumped (waiters on the recorded table wake)
//! ```

use std::sync::Arc;

use futures::future::join_all;
use uuid::Uuid;

use super::superblock::{
    write_superblock, ArrayState, MemberState, MirrorPolicy, ReplaceRecord, Superblock,
};
use super::{now, MetaError};
use crate::block::BlockDevice;
use crate::raid::changes::Changes;

/// Who takes a role in [`ArrayMetadata::begin_rebuild`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Joining {
    /// The role's own member, re-added: catches up from the bitmap.
    Recovery,
    /// The role's own former member, rebuilt whole (its data could not be
    /// caught up): keeps the role's mirror policy.
    Returning,
    /// Another device (a new member or a spare): rebuilt whole, without
    /// the role's write-mostly bit.
    New,
}

/// Superblock updates of a running array. Updates are serialized: each one
/// bumps `events` and writes the same table to every present member.
pub struct ArrayMetadata {
    name: String,
    state: tokio::sync::Mutex<MetaState>,
    /// Bumped by every update (member states, replace, checkpoint...).
    changes: Changes,
}

/// The state locked for an update: bumps `changes` when dropped, still
/// under the lock, so a waiter it wakes sees the update once it locks.
struct Changing<'a> {
    st: tokio::sync::MutexGuard<'a, MetaState>,
    changes: &'a Changes,
}

impl std::ops::Deref for Changing<'_> {
    type Target = MetaState;
    fn deref(&self) -> &MetaState {
        &self.st
    }
}

impl std::ops::DerefMut for Changing<'_> {
    fn deref_mut(&mut self) -> &mut MetaState {
        &mut self.st
    }
}

impl Drop for Changing<'_> {
    fn drop(&mut self) {
        self.changes.bump();
    }
}

impl std::fmt::Debug for ArrayMetadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArrayMetadata")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

struct MetaState {
    /// The current superblock contents (role/member_uuid set per member on write).
    template: Superblock,
    /// Present members by role.
    devices: Vec<Option<(Arc<dyn BlockDevice>, Uuid)>>,
    /// The new member of the replace in progress (`template.replace`).
    replacement: Option<Arc<dyn BlockDevice>>,
    /// The last `write_all` of this assembly succeeded on every member.
    written: bool,
    /// This run maintains the write-intent bitmap.
    bitmap_enabled: bool,
    /// Served read-only: updates change the in-memory table only.
    read_only: bool,
    /// Served read-only after an unclean shutdown: parity and mirrors of
    /// the regions in flight at the crash were never made consistent.
    read_only_unsynced: bool,
}

impl ArrayMetadata {
    /// Starts from the freshest superblock and the present members by role.
    /// `replacement` is the new member of `template.replace`, if present.
    pub(super) fn new(
        template: Superblock,
        devices: Vec<Option<(Arc<dyn BlockDevice>, Uuid)>>,
        replacement: Option<Arc<dyn BlockDevice>>,
    ) -> Self {
        ArrayMetadata {
            name: template.name.clone(),
            state: tokio::sync::Mutex::new(MetaState {
                template,
                devices,
                replacement,
                written: false,
                bitmap_enabled: false,
                read_only: false,
                read_only_unsynced: false,
            }),
            changes: Changes::new(),
        }
    }

    /// The change notification of the recorded table: bumped by every
    /// update (a spurious bump is possible: waiters check again).
    pub fn changes(&self) -> &Changes {
        &self.changes
    }

    /// Locks the state for an update (bumps `changes` once done).
    async fn update(&self) -> Changing<'_> {
        Changing {
            st: self.state.lock().await,
            changes: &self.changes,
        }
    }

    /// Current event counter.
    pub async fn events(&self) -> u64 {
        self.state.lock().await.template.events
    }

    /// Current clean/dirty state.
    pub async fn array_state(&self) -> ArrayState {
        self.state.lock().await.template.state
    }

    /// Current member table state of every role.
    pub async fn member_states(&self) -> Vec<MemberState> {
        let st = self.state.lock().await;
        st.template.members.iter().map(|m| m.state).collect()
    }

    /// Records "writes may be in flight". Call before the first write. A
    /// no-op if this assembly already wrote the dirty state.
    pub async fn mark_dirty(&self) -> Result<(), MetaError> {
        self.set_state(ArrayState::Dirty).await
    }

    /// Records "every write is on every member". Call after a final flush.
    /// A no-op if this assembly already wrote the clean state.
    ///
    /// From dirty it writes two updates: first a closing one, still dirty,
    /// then the clean one. When every role is active (every bit was
    /// cleared by now) the closing one also sets `events_cleared` to its
    /// own `events`. A copy of a member taken while the array ran is then
    /// two behind and below `events_cleared`: stale (FORMAT.md §3 rule 5,
    /// crash case 47). With a role down no bit was cleared and
    /// `events_cleared` stays, so the absent member stays recoverable.
    pub async fn mark_clean(&self) -> Result<(), MetaError> {
        let mut st = self.update().await;
        if st.written && st.template.state == ArrayState::Clean {
            return Ok(());
        }
        if st.template.state == ArrayState::Dirty && !st.read_only {
            let whole = st.replacement.is_none()
                && st
                    .template
                    .members
                    .iter()
                    .zip(&st.devices)
                    .all(|(m, d)| m.state == MemberState::Active && d.is_some());
            if whole {
                st.template.events_cleared = st.template.events + 1;
            }
            Self::write_all(&mut st).await?;
        }
        st.template.state = ArrayState::Clean;
        Self::write_all(&mut st).await
    }

    /// Records that the member in `role` failed, in every other present
    /// member's superblock. The volume must not acknowledge a write that
    /// skipped that member before this returns.
    pub async fn record_member_failed(&self, role: usize) -> Result<(), MetaError> {
        let mut st = self.update().await;
        let Some(entry) = st.template.members.get_mut(role) else {
            return Err(MetaError::NoSuchRole(role));
        };
        if entry.state == MemberState::Failed {
            return Ok(());
        }
        entry.state = MemberState::Failed;
        st.devices[role] = None;
        tracing::warn!(name = %self.name, role, "recording member failure");
        Self::write_all(&mut st).await
    }

    /// Serves the array read-only from now on: every later update (dirty,
    /// clean, failures, checkpoints) changes the in-memory table only and
    /// writes nothing; spare and rebuild writes are refused.
    /// Call it before anything marks the array dirty: it also notes whether
    /// the array on disk was left dirty ([`ArrayMetadata::read_only_unsynced`]).
    pub async fn set_read_only(&self) {
        let mut st = self.update().await;
        st.read_only = true;
        st.read_only_unsynced = st.template.state == ArrayState::Dirty;
    }

    /// True when served read-only and the array on disk was not shut down
    /// cleanly: no resync runs, so parity (or a mirror) of a region written
    /// at the crash may not match its data.
    pub async fn read_only_unsynced(&self) -> bool {
        self.state.lock().await.read_only_unsynced
    }

    /// True once [`ArrayMetadata::set_read_only`] was called.
    pub async fn is_read_only(&self) -> bool {
        self.state.lock().await.read_only
    }

    /// Declares whether this run maintains the write-intent bitmap; takes
    /// effect with the next superblock update (normally `mark_dirty`).
    pub async fn set_bitmap_enabled(&self, enabled: bool) {
        self.state.lock().await.bitmap_enabled = enabled;
    }

    /// Whether the freshest superblock says the bitmap is maintained.
    pub async fn bitmap_valid(&self) -> bool {
        self.state.lock().await.template.bitmap_valid
    }

    /// Sets `csum_state` for the next superblock update: true once the
    /// checksum area matches the data wherever the bitmap is clean.
    pub async fn set_checksums_valid(&self, valid: bool) {
        self.state.lock().await.template.checksums_valid = valid;
    }

    /// Whether the current superblock says the checksums are maintained.
    pub async fn checksums_valid(&self) -> bool {
        self.state.lock().await.template.checksums_valid
    }

    /// Records that the array keeps the written-region map from now on
    /// (superblock flag, FORMAT.md §10 "Upgrade"): one update, written to
    /// every present member. The image must be on every member first.
    pub async fn enable_written_map(&self) -> Result<(), MetaError> {
        let mut st = self.update().await;
        st.template.flags |= super::superblock::FLAG_WRITTEN_MAP;
        Self::write_all(&mut st).await
    }

    /// Test wiring: superblocks as a build before the map wrote them.
    #[cfg(test)]
    pub async fn clear_written_map_for_tests(&self) -> Result<(), MetaError> {
        let mut st = self.update().await;
        st.template.flags &= !super::superblock::FLAG_WRITTEN_MAP;
        Self::write_all(&mut st).await
    }

    /// Sets `journal_state` for the next superblock update.
    pub async fn set_journal_valid(&self, valid: bool) {
        self.state.lock().await.template.journal_valid = valid;
    }

    /// Whether the current superblock says the journal is maintained.
    pub async fn journal_valid(&self) -> bool {
        self.state.lock().await.template.journal_valid
    }

    /// Records a completed scrub at `unix_secs` in every superblock now.
    pub async fn record_scrub(&self, unix_secs: u64) -> Result<(), MetaError> {
        let mut st = self.update().await;
        st.template.scrub_time = unix_secs;
        Self::write_all(&mut st).await
    }

    /// The mirror policies of the freshest superblock (FORMAT.md §6).
    pub async fn mirror_policy(&self) -> MirrorPolicy {
        self.state.lock().await.template.mirror
    }

    /// Sets the mirror policies; written on every member now when `now`
    /// (a live `vraid set`), else by the next update (start-up
    /// `mark_dirty`, before the first write).
    pub async fn set_mirror_policy(
        &self,
        policy: MirrorPolicy,
        now: bool,
    ) -> Result<(), MetaError> {
        let mut st = self.update().await;
        st.template.mirror = policy;
        match now {
            true => Self::write_all(&mut st).await,
            false => Ok(()),
        }
    }

    /// Unix seconds of the last completed scrub (0 = never).
    pub async fn scrub_time(&self) -> u64 {
        self.state.lock().await.template.scrub_time
    }

    /// True when every role is active (nothing missing, failed or rebuilding).
    pub async fn is_whole(&self) -> bool {
        let st = self.state.lock().await;
        st.template
            .members
            .iter()
            .all(|m| m.state == MemberState::Active)
    }

    /// The raw devices of every present member (rebuild targets included).
    pub async fn present_devices(&self) -> Vec<Arc<dyn BlockDevice>> {
        let st = self.state.lock().await;
        st.devices
            .iter()
            .flatten()
            .map(|(d, _)| d.clone())
            .chain(st.replacement.clone())
            .collect()
    }

    /// The device present in each role (`None`: failed or missing) and
    /// the new member of a replace in progress, for identity checks.
    pub async fn devices_by_role(
        &self,
    ) -> (
        Vec<Option<Arc<dyn BlockDevice>>>,
        Option<Arc<dyn BlockDevice>>,
    ) {
        let st = self.state.lock().await;
        let roles = st
            .devices
            .iter()
            .map(|d| d.as_ref().map(|(d, _)| d.clone()))
            .collect();
        (roles, st.replacement.clone())
    }

    /// The array UUID.
    pub async fn array_uuid(&self) -> Uuid {
        self.state.lock().await.template.array_uuid
    }

    /// Who holds `role` and in what state.
    pub async fn role_entry(&self, role: usize) -> Option<(Uuid, MemberState)> {
        let st = self.state.lock().await;
        st.template
            .members
            .get(role)
            .map(|e| (e.member_uuid, e.state))
    }

    /// Writes a hot spare's superblock on `device`: the array's current
    /// superblock with role [`SPARE_ROLE`](super::superblock::SPARE_ROLE)
    /// and its own `member_uuid` (no event bump; members are not touched).
    pub async fn write_spare(
        &self,
        device: &dyn BlockDevice,
        member_uuid: Uuid,
    ) -> Result<(), MetaError> {
        let st = self.state.lock().await;
        if st.read_only {
            return Err(MetaError::ReadOnly(self.name.clone()));
        }
        let mut sb = st.template.clone();
        drop(st);
        sb.role = super::superblock::SPARE_ROLE;
        sb.member_uuid = member_uuid;
        write_superblock(device, &sb)
            .await
            .map_err(|source| MetaError::Io {
                device: device.name().to_string(),
                source,
            })
    }

    /// The rebuild checkpoint currently recorded.
    pub async fn rebuild_checkpoint(&self) -> Option<u64> {
        self.state.lock().await.template.rebuild_checkpoint
    }

    /// Gives `role` to a member being rebuilt from 0 (`device`, the raw
    /// member, with a fresh `member_uuid`), or to a re-added member catching
    /// up from the bitmap ([`Joining::Recovery`]); writes its superblock with
    /// the others. A [`Joining::New`] device does not inherit the role's
    /// write-mostly bit (FORMAT.md §6: the policy is the member's, as md's
    /// `WriteMostly`); cleared in the same update.
    pub async fn begin_rebuild(
        &self,
        role: usize,
        device: Arc<dyn BlockDevice>,
        member_uuid: Uuid,
        joining: Joining,
    ) -> Result<(), MetaError> {
        let recovering = joining == Joining::Recovery;
        let mut st = self.update().await;
        if st.read_only {
            return Err(MetaError::ReadOnly(self.name.clone()));
        }
        let Some(entry) = st.template.members.get_mut(role) else {
            return Err(MetaError::NoSuchRole(role));
        };
        entry.member_uuid = member_uuid;
        entry.state = if recovering {
            MemberState::Recovering
        } else {
            MemberState::Rebuilding
        };
        st.template.rebuild_checkpoint = Some(0);
        if joining == Joining::New {
            st.template.mirror.set_write_mostly(role, false);
        }
        st.devices[role] = Some((device.clone(), member_uuid));
        tracing::info!(name = %self.name, role, %member_uuid, ?joining, "recording rebuild start");
        Self::write_all(&mut st).await
    }

    /// Records rebuild progress: the member in `role` (rebuilt, recovering,
    /// or the replacement copying it) is in sync below `up_to`.
    pub async fn checkpoint(&self, role: usize, up_to: u64) -> Result<(), MetaError> {
        let mut st = self.update().await;
        let rebuilding =
            st.template.members.get(role).is_some_and(|m| {
                matches!(m.state, MemberState::Rebuilding | MemberState::Recovering)
            });
        let replacing = st.template.replace.is_some_and(|r| r.role as usize == role);
        if !rebuilding && !replacing {
            return Err(MetaError::NoSuchRole(role));
        }
        st.template.rebuild_checkpoint = Some(up_to);
        Self::write_all(&mut st).await
    }

    /// Records the member in `role` fully in sync (active).
    pub async fn finish_rebuild(&self, role: usize) -> Result<(), MetaError> {
        let mut st = self.update().await;
        let Some(entry) = st.template.members.get_mut(role) else {
            return Err(MetaError::NoSuchRole(role));
        };
        entry.state = MemberState::Active;
        st.template.rebuild_checkpoint = None;
        tracing::info!(name = %self.name, role, "recording rebuilt member in sync");
        Self::write_all(&mut st).await
    }

    /// Starts a replacement of the (active) member in `role` by `device`
    /// with the fresh `member_uuid`: recorded in `replace_uuid`/`replace_role`
    /// with `rebuild_checkpoint` = 0 while the table keeps the old member;
    /// the new member's superblock is written with the others from now on.
    pub async fn begin_replace(
        &self,
        role: usize,
        device: Arc<dyn BlockDevice>,
        member_uuid: Uuid,
    ) -> Result<(), MetaError> {
        let mut st = self.update().await;
        if st.read_only {
            return Err(MetaError::ReadOnly(self.name.clone()));
        }
        if role >= st.template.members.len() {
            return Err(MetaError::NoSuchRole(role));
        }
        st.template.replace = Some(ReplaceRecord {
            role: role as u32,
            member_uuid,
        });
        st.template.rebuild_checkpoint = Some(0);
        st.replacement = Some(device);
        tracing::info!(name = %self.name, role, %member_uuid, "recording replace start");
        let result = Self::write_all(&mut st).await;
        if result.is_err() {
            // Not started: the old member keeps the role.
            st.template.replace = None;
            st.template.rebuild_checkpoint = None;
            st.replacement = None;
        }
        result
    }

    /// The replace in progress: the role and the new member's UUID.
    pub async fn replace(&self) -> Option<(usize, Uuid)> {
        let st = self.state.lock().await;
        st.template
            .replace
            .map(|r| (r.role as usize, r.member_uuid))
    }

    /// Gives `role` to the replacement recorded by `begin_replace` (or
    /// resumed at assembly), in sync: the old member of the role is no
    /// longer written and becomes stale. Returns the member that took the
    /// role (raw device, member UUID).
    pub async fn finish_replace(
        &self,
        role: usize,
    ) -> Result<(Arc<dyn BlockDevice>, Uuid), MetaError> {
        let mut st = self.update().await;
        let Some(record) = st.template.replace.filter(|r| r.role as usize == role) else {
            return Err(MetaError::NoSuchRole(role));
        };
        let Some(device) = st.replacement.take() else {
            return Err(MetaError::NoSuchRole(role));
        };
        let entry = &mut st.template.members[role];
        entry.member_uuid = record.member_uuid;
        entry.state = MemberState::Active;
        // The new member does not inherit the old one's write-mostly bit.
        st.template.mirror.set_write_mostly(role, false);
        st.template.replace = None;
        st.template.rebuild_checkpoint = None;
        st.devices[role] = Some((device.clone(), record.member_uuid));
        tracing::info!(name = %self.name, role, member_uuid = %record.member_uuid,
            "recording replacement in sync");
        Self::write_all(&mut st).await?;
        Ok((device, record.member_uuid))
    }

    /// Records an abandoned replace: the new member is no longer written
    /// and the old one keeps the role (or the role stays failed if the old
    /// member failed meanwhile). A no-op when no replace of `role` runs.
    pub async fn abort_replace(&self, role: usize) -> Result<(), MetaError> {
        let mut st = self.update().await;
        if st.template.replace.is_none_or(|r| r.role as usize != role) {
            return Ok(());
        }
        st.template.replace = None;
        st.template.rebuild_checkpoint = None;
        st.replacement = None;
        tracing::info!(name = %self.name, role, "recording replace abandoned");
        Self::write_all(&mut st).await
    }

    /// Takes the failed or missing member of `role` out of the array: the
    /// role keeps state missing with a nil `member_uuid`, so that member is
    /// never accepted again (not even by bitmap re-add); it can come back
    /// only as a new member.
    pub async fn record_member_removed(&self, role: usize) -> Result<(), MetaError> {
        let mut st = self.update().await;
        let replacing = st.template.replace.is_some_and(|r| r.role as usize == role);
        let Some(entry) = st.template.members.get_mut(role) else {
            return Err(MetaError::NoSuchRole(role));
        };
        if entry.member_uuid.is_nil() {
            return Ok(());
        }
        let busy = replacing
            || matches!(
                entry.state,
                MemberState::Rebuilding | MemberState::Recovering
            );
        if busy {
            return Err(MetaError::RoleBusy(role));
        }
        entry.member_uuid = Uuid::nil();
        entry.state = MemberState::Missing;
        st.devices[role] = None;
        tracing::warn!(name = %self.name, role, "recording member removal");
        Self::write_all(&mut st).await
    }

    /// Records an abandoned rebuild: the role is failed again.
    pub async fn abort_rebuild(&self, role: usize) -> Result<(), MetaError> {
        let mut st = self.update().await;
        let Some(entry) = st.template.members.get_mut(role) else {
            return Err(MetaError::NoSuchRole(role));
        };
        if !matches!(
            entry.state,
            MemberState::Rebuilding | MemberState::Recovering
        ) {
            return Ok(());
        }
        entry.state = MemberState::Failed;
        st.template.rebuild_checkpoint = None;
        st.devices[role] = None;
        Self::write_all(&mut st).await
    }

    /// Makes sure the superblocks say `events_cleared = events` before the
    /// write-intent bitmap clears any bit on disk (FORMAT.md §3 rule 5, §6):
    /// writes an update setting it if this run has not yet.
    pub async fn clearing_allowed(&self) -> Result<(), MetaError> {
        let mut st = self.update().await;
        if st.written && st.template.events_cleared == st.template.events {
            return Ok(());
        }
        st.template.events_cleared = st.template.events + 1;
        Self::write_all(&mut st).await
    }

    /// `events_cleared` of the current superblock.
    pub async fn events_cleared(&self) -> u64 {
        self.state.lock().await.template.events_cleared
    }

    async fn set_state(&self, state: ArrayState) -> Result<(), MetaError> {
        let mut st = self.update().await;
        if st.written && st.template.state == state {
            return Ok(());
        }
        st.template.state = state;
        Self::write_all(&mut st).await
    }

    /// Bumps events, marks absent active roles missing, writes every present member.
    async fn write_all(st: &mut MetaState) -> Result<(), MetaError> {
        let MetaState {
            template,
            devices,
            replacement,
            written,
            bitmap_enabled,
            read_only,
            read_only_unsynced: _,
        } = st;
        if *read_only {
            return Ok(());
        }
        *written = false;
        template.events += 1;
        template.update_time = now();
        for (entry, device) in template.members.iter_mut().zip(devices.iter()) {
            if device.is_none() && entry.state == MemberState::Active {
                entry.state = MemberState::Missing;
            }
            // `since`: the update that first recorded the role down.
            let down = matches!(entry.state, MemberState::Failed | MemberState::Missing);
            if !down {
                entry.since = 0;
            } else if entry.since == 0 {
                entry.since = template.events;
            }
        }
        // The bitmap covers every write since the array was last whole only
        // if every run since then maintained it.
        let whole = template
            .members
            .iter()
            .all(|m| m.state == MemberState::Active);
        template.bitmap_valid = *bitmap_enabled && (template.bitmap_valid || whole);
        // RAID-6 journal live (FORMAT.md §9, case 84): only while dirty, so
        // a clean stop leaves members that builds without the bit accept.
        let live = template.level == crate::raid::Level::Raid6
            && template.journal_valid
            && template.state == ArrayState::Dirty;
        template.flags &= !super::superblock::FLAG_RAID6_JOURNAL;
        if live {
            template.flags |= super::superblock::FLAG_RAID6_JOURNAL;
        }
        let target = template
            .replace
            .zip(replacement.as_ref())
            .map(|(r, d)| (r.role as usize, d, r.member_uuid));
        let writes = devices
            .iter()
            .enumerate()
            .filter_map(|(role, d)| d.as_ref().map(|(dev, uuid)| (role, dev, *uuid)))
            .chain(target)
            .map(|(role, device, member_uuid)| {
                let mut sb = template.clone();
                sb.role = role as u32;
                sb.member_uuid = member_uuid;
                async move {
                    write_superblock(device.as_ref(), &sb)
                        .await
                        .map_err(|source| MetaError::Io {
                            device: device.name().to_string(),
                            source,
                        })
                }
            });
        join_all(writes)
            .await
            .into_iter()
            .collect::<Result<(), _>>()?;
        *written = true;
        Ok(())
    }
}
