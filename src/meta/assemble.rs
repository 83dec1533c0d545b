//! Assembling an array from its members (FORMAT.md §3).
//!
//! ```text
//! (path, device)* ─► read superblocks ─► one array UUID? ─► no duplicate members?
//!     ─► freshest events + table (split brain?) ─► rule 5, by data: in sync by events
//!        (or one behind in the same run), else by the bitmap (events >= events_cleared:
//!        recover; below: stale); RAID-0 member failed and unchanged since: present
//!     ─► geometry agrees? ─► missing <= redundancy? (else --force-assemble: failed
//!        members in sync when they failed, newest first) ─► Assembly
//! Assembly.metadata: ArrayMetadata (update.rs) ─► mark_dirty / mark_clean / record_member_failed
//! ```
//!
//! Roles come from the superblocks, never from the order of the paths.

use std::sync::Arc;

use uuid::Uuid;

use super::superblock::{read_superblock, ArrayState, MemberState, MetaLayout, Superblock};
use super::update::ArrayMetadata;
use super::MetaError;
use crate::block::{BlockDevice, Window};
use crate::raid::Level;

/// Why an array cannot be assembled.
#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    /// No path holds a valid superblock.
    #[error("no member holds a valid vraid superblock ({0} paths given)")]
    NoSuperblocks(usize),
    /// A member belongs to another array.
    #[error("member {path} belongs to array {found_uuid} ({found_name}), not {uuid} ({name})")]
    Foreign {
        /// The foreign member.
        path: String,
        /// Its array UUID.
        found_uuid: Uuid,
        /// Its array name.
        found_name: String,
        /// The array being assembled.
        uuid: Uuid,
        /// Its name.
        name: String,
    },
    /// One member appears twice.
    #[error("{first} and {second} are the same member {member_uuid}")]
    DuplicateMember {
        /// First path.
        first: String,
        /// Second path.
        second: String,
        /// Their member UUID.
        member_uuid: Uuid,
    },
    /// Two freshest superblocks disagree.
    #[error(
        "cannot assemble {name}: {first} and {second} both have event count {events} but \
         disagree on the member table (the array was split); assemble one side only"
    )]
    SplitBrain {
        /// Array name.
        name: String,
        /// One member.
        first: String,
        /// The other.
        second: String,
        /// Their event count.
        events: u64,
    },
    /// A member's geometry differs from the freshest superblock.
    #[error("member {path} has {field} {found}, the array has {expected}")]
    Geometry {
        /// The member.
        path: String,
        /// Which field.
        field: &'static str,
        /// The array's value.
        expected: u64,
        /// The member's value.
        found: u64,
    },
    /// More members missing than the level tolerates.
    #[error("cannot assemble {name}: {missing} of {count} members missing, {level} tolerates {tolerates}{hint}")]
    TooManyMissing {
        /// What could still be tried (empty, or names `--force-assemble`).
        hint: String,
        /// Array name.
        name: String,
        /// Missing members.
        missing: usize,
        /// Members in the array.
        count: usize,
        /// Level.
        level: Level,
        /// Members it may lose.
        tolerates: usize,
    },
}

/// A member in the assembled array.
#[derive(Clone)]
pub struct AssembledMember {
    /// Path given on the command line / in the config.
    pub path: String,
    /// The whole raw member (offset 0 = superblock A).
    pub device: Arc<dyn BlockDevice>,
    /// Its data area.
    pub data: Window,
    /// Its member UUID.
    pub member_uuid: Uuid,
    /// Its own event counter at assembly.
    pub events: u64,
}

impl std::fmt::Debug for AssembledMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssembledMember")
            .field("path", &self.path)
            .field("data", &self.data)
            .field("member_uuid", &self.member_uuid)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

/// A member in the middle of a rebuild or bitmap recovery at assembly.
#[derive(Clone, Debug)]
pub struct RebuildTarget {
    /// Its role.
    pub role: usize,
    /// The member.
    pub member: AssembledMember,
    /// Member data bytes already in sync (the checkpoint).
    pub up_to: u64,
    /// A bitmap recovery rather than a full rebuild.
    pub recovering: bool,
}

/// How to assemble (FORMAT.md §3).
#[derive(Clone, Copy, Debug, Default)]
pub struct AssembleOptions {
    /// Take failed members whose data was current when they failed when
    /// too many roles are down (`vraid serve --force-assemble`).
    pub force: bool,
}

/// A failed member that `--force-assemble` may take (rule 5, forced).
struct Forceable {
    role: usize,
    member: AssembledMember,
    since: u64,
}

/// What assembly makes of one candidate.
enum Verdict {
    Active(AssembledMember),
    Rebuild(AssembledMember, bool),
    ReAdd(AssembledMember),
    /// The new member of the replace in progress.
    Replacement(AssembledMember),
    Stale(String),
}

/// A path left out of the array, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Excluded {
    /// The path.
    pub path: String,
    /// The role it claims, if its superblock was readable and that role was
    /// not taken away from it with `vraid remove`.
    pub role: Option<u32>,
    /// Why it was left out.
    pub reason: String,
}

/// An assembled array: what the RAID volume is built from.
#[derive(Debug)]
pub struct Assembly {
    /// Array name.
    pub name: String,
    /// Array UUID.
    pub array_uuid: Uuid,
    /// RAID level.
    pub level: Level,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Members in the array (present or not).
    pub member_count: u32,
    /// Start of the data area on each member.
    pub data_offset: u64,
    /// Data area size per member.
    pub data_size: u64,
    /// The freshest superblock said dirty: the array needs a resync.
    pub was_dirty: bool,
    /// Members by role; `None` = missing.
    pub members: Vec<Option<AssembledMember>>,
    /// Metadata layout of the members.
    pub layout: MetaLayout,
    /// Where the block checksums live (FORMAT.md §8).
    pub checksum_layout: super::layout::ChecksumLayout,
    /// The freshest superblock says the write-intent bitmap is maintained.
    pub bitmap_valid: bool,
    /// The array keeps the written-region map (FORMAT.md §10).
    pub written_map: bool,
    /// The freshest superblock says the block checksums are maintained.
    pub checksums_valid: bool,
    /// The freshest superblock says the partial-parity journal is
    /// maintained and may be replayed ([`Superblock::journal_replayable`]).
    pub journal_valid: bool,
    /// `journal_state` = 1 on a RAID-6 without the live-journal flag: the
    /// rings may predate unlogged writes of an older build (case 84).
    pub journal_unvouched: bool,
    /// A member whose rebuild was interrupted; resume it.
    pub rebuild: Option<RebuildTarget>,
    /// The second member of an interrupted two-member RAID-6 pass (same
    /// checkpoint): resumed together with `rebuild` (FORMAT.md §7, case 64).
    pub rebuild_also: Option<RebuildTarget>,
    /// The new member of an interrupted `vraid replace` whose old member is
    /// present and active: resume the copy from `up_to` while the old one
    /// serves (`recovering` is false). When the old member is absent the
    /// replacement is in `rebuild` instead.
    pub replace: Option<RebuildTarget>,
    /// A replace was recorded but its new member is absent: it is dropped
    /// (written by the first update) and the old member keeps the role.
    pub replace_dropped: Option<usize>,
    /// Members that were missing or failed but can catch up from the
    /// write-intent bitmap (their role is still theirs, not taken over).
    pub readd: Vec<(usize, AssembledMember)>,
    /// Paths left out, with reasons.
    pub excluded: Vec<Excluded>,
    /// Superblock updates for the running array.
    pub metadata: Arc<ArrayMetadata>,
}

impl Assembly {
    /// Number of roles with no member.
    pub fn missing(&self) -> usize {
        self.members.iter().filter(|m| m.is_none()).count()
    }

    /// Whether any role is missing.
    pub fn is_degraded(&self) -> bool {
        self.missing() > 0
    }

    /// See [`ArrayMetadata::mark_dirty`].
    pub async fn mark_dirty(&self) -> Result<(), MetaError> {
        self.metadata.mark_dirty().await
    }

    /// See [`ArrayMetadata::mark_clean`].
    pub async fn mark_clean(&self) -> Result<(), MetaError> {
        self.metadata.mark_clean().await
    }

    /// See [`ArrayMetadata::record_member_failed`].
    pub async fn record_member_failed(&self, role: usize) -> Result<(), MetaError> {
        self.metadata.record_member_failed(role).await
    }
}

struct Candidate {
    path: String,
    device: Arc<dyn BlockDevice>,
    sb: Superblock,
}

/// Reads the superblocks of `devices` and assembles the array they form.
pub async fn assemble(
    devices: Vec<(String, Arc<dyn BlockDevice>)>,
) -> Result<Assembly, AssembleError> {
    assemble_with(devices, AssembleOptions::default()).await
}

/// [`assemble`] with options (forced assembly).
pub async fn assemble_with(
    devices: Vec<(String, Arc<dyn BlockDevice>)>,
    opts: AssembleOptions,
) -> Result<Assembly, AssembleError> {
    let given = devices.len();
    let (candidates, excluded) = read_candidates(devices).await;
    let home = home_array(&candidates).ok_or(AssembleError::NoSuperblocks(given))?;
    check_foreign_and_duplicates(&candidates, home)?;
    let mut freshest = freshest(&candidates)?.sb.clone();
    let ctx = Context {
        bits_set: bits_set(&candidates, &freshest).await,
    };
    let mut sorted = Sorted::new(freshest.member_count as usize, excluded);
    for c in candidates {
        sorted.place(c, &mut freshest, &ctx)?;
    }
    let Sorted {
        mut members,
        mut rebuild,
        rebuild_also,
        replacement,
        mut readd,
        forceable,
        mut excluded,
    } = sorted;
    let (replace, replace_dropped) = resolve_replace(
        &mut freshest,
        replacement,
        &members,
        &mut rebuild,
        &mut readd,
        &mut excluded,
    );
    let forced = enough_members(
        &mut freshest,
        forceable,
        &mut members,
        &mut readd,
        &mut excluded,
        opts.force,
    )?;
    let missing = members.iter().filter(|m| m.is_none()).count();
    if missing > 0 {
        tracing::warn!(name = %freshest.name, missing, "assembling degraded");
    }
    // A replace that became a rebuild took `rebuild`'s place: one pass.
    let rebuild_also = rebuild_also.filter(|t| rebuild.as_ref().is_some_and(|r| r.role != t.role));
    let targets = [&rebuild, &rebuild_also];
    // Unvouched RAID-6 rings (case 84) stay unvouched: no update of this
    // run may set the live-journal bit over them before its barriers.
    let journal_valid = freshest.journal_replayable();
    let journal_unvouched = freshest.journal_valid && !journal_valid;
    freshest.journal_valid = journal_valid;
    let metadata = running_metadata(&freshest, &members, &targets, &replace);
    Ok(Assembly {
        name: freshest.name.clone(),
        array_uuid: freshest.array_uuid,
        level: freshest.level,
        chunk_size: freshest.chunk_size,
        member_count: freshest.member_count,
        data_offset: freshest.layout.data_offset,
        data_size: freshest.layout.data_size,
        was_dirty: forced || freshest.state == ArrayState::Dirty,
        members,
        layout: freshest.layout,
        checksum_layout: freshest.checksum_layout(),
        bitmap_valid: freshest.bitmap_valid,
        written_map: freshest.has_written_map(),
        checksums_valid: freshest.checksums_valid,
        journal_valid,
        journal_unvouched,
        rebuild,
        rebuild_also,
        replace,
        replace_dropped,
        readd,
        excluded,
        metadata: Arc::new(metadata),
    })
}

/// The superblock updates of the run: the freshest table written to the
/// members present (the rebuild target included) and the replacement.
fn running_metadata(
    freshest: &Superblock,
    members: &[Option<AssembledMember>],
    rebuilds: &[&Option<RebuildTarget>],
    replace: &Option<RebuildTarget>,
) -> ArrayMetadata {
    let mut devices: Vec<_> = members
        .iter()
        .map(|m| m.as_ref().map(|m| (m.device.clone(), m.member_uuid)))
        .collect();
    for t in rebuilds.iter().copied().flatten() {
        devices[t.role] = Some((t.member.device.clone(), t.member.member_uuid));
    }
    let replacement_device = replace.as_ref().map(|t| t.member.device.clone());
    ArrayMetadata::new(freshest.clone(), devices, replacement_device)
}

/// Where each candidate went.
struct Sorted {
    /// In sync, by role.
    members: Vec<Option<AssembledMember>>,
    /// Being rebuilt (or recovered): resume.
    rebuild: Option<RebuildTarget>,
    /// The second target of an interrupted two-member pass.
    rebuild_also: Option<RebuildTarget>,
    /// The new member of a replace, by the role it replaces.
    replacement: Option<(usize, AssembledMember)>,
    /// Stale, but able to catch up from the bitmap.
    readd: Vec<(usize, AssembledMember)>,
    /// Marked failed but current when they failed (forced assembly).
    forceable: Vec<Forceable>,
    /// Left out, with why.
    excluded: Vec<Excluded>,
}

impl Sorted {
    /// A second member being rebuilt: an interrupted two-member RAID-6
    /// pass resumes both from the one checkpoint (FORMAT.md §7, crash case
    /// 64); anything else (a recovery, a third) is left out and rebuilt
    /// again when added back.
    fn second_rebuild(
        &mut self,
        member: AssembledMember,
        recovering: bool,
        role: usize,
        freshest: &Superblock,
        path: &str,
    ) {
        let first_full = self.rebuild.as_ref().is_some_and(|t| !t.recovering);
        let two = freshest.level.redundancy(self.members.len()) >= 2;
        if self.rebuild_also.is_none() && first_full && !recovering && two {
            let up_to = freshest.rebuild_checkpoint.unwrap_or(0);
            tracing::info!(%path, role, up_to,
                "second member being rebuilt (a two-member pass was interrupted); resuming both");
            self.rebuild_also = Some(RebuildTarget {
                role,
                member,
                up_to,
                recovering: false,
            });
        } else {
            tracing::warn!(%path, role,
                "another member being rebuilt is left out; add it again to rebuild it");
        }
    }

    fn new(count: usize, excluded: Vec<Excluded>) -> Sorted {
        Sorted {
            members: vec![None; count],
            rebuild: None,
            rebuild_also: None,
            replacement: None,
            readd: Vec::new(),
            forceable: Vec::new(),
            excluded,
        }
    }

    /// Sorts one candidate by the rules of docs/FORMAT.md §3 (rule 5 may
    /// take a failed RAID-0 member back into `freshest`).
    fn place(
        &mut self,
        c: Candidate,
        freshest: &mut Superblock,
        ctx: &Context,
    ) -> Result<(), AssembleError> {
        let role = c.sb.role as usize;
        let count = self.members.len();
        if let Some(f) = forceable_member(&c, freshest) {
            if freshest.level.redundancy(count) == 0 {
                // Rule 5: no write can have skipped a RAID-0 member.
                tracing::info!(path = %c.path, role, events = c.sb.events, since = f.since,
                    "member was marked failed but is unchanged since; no redundancy, so no \
                     write skipped it: accepting");
                freshest.members[role] = super::superblock::RoleEntry::active(c.sb.member_uuid);
                self.members[role] = Some(f.member);
                return Ok(());
            }
            self.forceable.push(f);
        }
        match accept(&c, freshest, ctx)? {
            Verdict::Replacement(member) => self.replacement = Some((role, member)),
            Verdict::Active(member) => self.members[role] = Some(member),
            Verdict::Rebuild(member, recovering) if self.rebuild.is_some() => {
                self.second_rebuild(member, recovering, role, freshest, &c.path);
            }
            Verdict::Rebuild(member, recovering) => {
                let up_to = freshest.rebuild_checkpoint.unwrap_or(0);
                tracing::info!(path = %c.path, role, up_to, "member is being rebuilt; resuming");
                self.rebuild = Some(RebuildTarget {
                    role,
                    member,
                    up_to,
                    recovering,
                });
            }
            Verdict::ReAdd(member) => {
                tracing::info!(path = %c.path, role, "stale member can catch up from the bitmap");
                self.readd.push((role, member));
            }
            Verdict::Stale(reason) => {
                tracing::warn!(path = %c.path, role = c.sb.role, "excluding member: {reason}");
                // A removed member no longer names its old slot.
                let removed = freshest
                    .members
                    .get(role)
                    .is_some_and(|e| e.member_uuid.is_nil());
                self.excluded.push(Excluded {
                    path: c.path,
                    role: (!removed).then_some(c.sb.role),
                    reason,
                });
            }
        }
        Ok(())
    }
}

/// Reads every path's superblock: the candidates, and the paths left out
/// at once (hot spares, unreadable or invalid superblocks).
async fn read_candidates(
    devices: Vec<(String, Arc<dyn BlockDevice>)>,
) -> (Vec<Candidate>, Vec<Excluded>) {
    let mut excluded = Vec::new();
    let mut candidates = Vec::new();
    for (path, device) in devices {
        match read_superblock(device.as_ref()).await {
            Ok(read) if read.superblock.role == super::superblock::SPARE_ROLE => {
                excluded.push(Excluded {
                    path,
                    role: None,
                    reason: format!("hot spare of array {}", read.superblock.name),
                });
            }
            Ok(read) => {
                if let Some((copy, err)) = &read.bad_copy {
                    tracing::warn!(%path, ?copy, "superblock copy is bad, using the other: {err}");
                }
                candidates.push(Candidate {
                    path,
                    device,
                    sb: read.superblock,
                });
            }
            Err(err) => {
                tracing::warn!(%path, "treating member as missing: {err}");
                excluded.push(Excluded {
                    path,
                    role: None,
                    reason: err.to_string(),
                });
            }
        }
    }
    (candidates, excluded)
}

/// A RAID-10 whose missing members hold different chunks keeps every
/// chunk (more missing than its redundancy, which counts the worst case).
fn raid10_survives(freshest: &Superblock, members: &[Option<AssembledMember>]) -> bool {
    use crate::raid::{ChunkSize, Geometry};
    if freshest.level.raid10_shape().is_none() {
        return false;
    }
    let down: Vec<bool> = members.iter().map(Option::is_none).collect();
    ChunkSize::new(u64::from(freshest.chunk_size))
        .and_then(|c| Geometry::new(freshest.level, members.len(), c, freshest.layout.data_size))
        .is_ok_and(|g| g.tolerates(&down))
}

/// Rule 7, with forced assembly (rule 5) when asked: `Ok(true)` when
/// members marked failed were taken to make up the level's redundancy.
fn enough_members(
    freshest: &mut Superblock,
    forceable: Vec<Forceable>,
    members: &mut [Option<AssembledMember>],
    readd: &mut Vec<(usize, AssembledMember)>,
    excluded: &mut Vec<Excluded>,
    force_it: bool,
) -> Result<bool, AssembleError> {
    let count = members.len();
    let tolerates = freshest.level.redundancy(count);
    let missing = |m: &[Option<AssembledMember>]| m.iter().filter(|m| m.is_none()).count();
    if missing(members) <= tolerates || raid10_survives(freshest, members) {
        return Ok(false);
    }
    let usable = forceable
        .iter()
        .filter(|f| members[f.role].is_none())
        .count();
    let forced = force_it && force(freshest, forceable, members, readd, excluded);
    let missing = missing(members);
    if missing <= tolerates {
        return Ok(forced);
    }
    let hint = if force_it {
        "; --force-assemble found too few failed members that were in sync when they failed"
            .to_string()
    } else if usable > 0 && missing - usable.min(missing) <= tolerates {
        format!(
            "; {usable} member(s) marked failed still hold the data they had when they \
             failed: `vraid serve --force-assemble` (config: force_assemble = true) \
             assembles from them"
        )
    } else {
        String::new()
    };
    Err(AssembleError::TooManyMissing {
        name: freshest.name.clone(),
        missing,
        count,
        level: freshest.level,
        tolerates,
        hint,
    })
}

/// Decides what becomes of a replace recorded in the freshest superblock
/// (FORMAT.md §3 rule 5a). With the old member active, the new one resumes
/// as the replacement. With the old member absent, failed or stale, the new
/// one takes the role as an ordinary rebuild from the checkpoint (everything
/// below it is a copy of the role that also got every later write). With
/// the new member absent, the replace is dropped. Changes the in-memory
/// `freshest` accordingly; the first update writes it.
fn resolve_replace(
    freshest: &mut Superblock,
    replacement: Option<(usize, AssembledMember)>,
    members: &[Option<AssembledMember>],
    rebuild: &mut Option<RebuildTarget>,
    readd: &mut Vec<(usize, AssembledMember)>,
    excluded: &mut Vec<Excluded>,
) -> (Option<RebuildTarget>, Option<usize>) {
    let Some(record) = freshest.replace else {
        return (None, None);
    };
    let role = record.role as usize;
    let up_to = freshest.rebuild_checkpoint.unwrap_or(0);
    let Some((_, member)) = replacement else {
        tracing::warn!(name = %freshest.name, role, new = %record.member_uuid,
            "the new member of the replace of role {role} is absent; dropping the replace, the old member keeps the role");
        freshest.replace = None;
        freshest.rebuild_checkpoint = None;
        return (None, Some(role));
    };
    if members[role].is_some() {
        tracing::info!(name = %freshest.name, role, path = %member.path, up_to,
            "member is replacing role {role}; resuming the copy");
        let target = RebuildTarget {
            role,
            member,
            up_to,
            recovering: false,
        };
        return (Some(target), None);
    }
    tracing::warn!(name = %freshest.name, role, path = %member.path, up_to,
        "the member being replaced in role {role} is absent; its replacement continues as a rebuild");
    // An old member that could have been re-added yields to its replacement.
    let (yielded, kept): (Vec<_>, Vec<_>) = std::mem::take(readd)
        .into_iter()
        .partition(|(r, _)| *r == role);
    *readd = kept;
    for (_, old) in yielded {
        excluded.push(Excluded {
            path: old.path,
            role: Some(record.role),
            reason: "stale: its replacement continues as a rebuild of the role".into(),
        });
    }
    let entry = &mut freshest.members[role];
    entry.member_uuid = record.member_uuid;
    entry.state = MemberState::Rebuilding;
    freshest.replace = None;
    *rebuild = Some(RebuildTarget {
        role,
        member,
        up_to,
        recovering: false,
    });
    (None, None)
}

/// The array UUID held by most candidates (first seen on a tie).
fn home_array(candidates: &[Candidate]) -> Option<&Superblock> {
    let count = |u: Uuid| candidates.iter().filter(|c| c.sb.array_uuid == u).count();
    let mut best: Option<(&Superblock, usize)> = None;
    for c in candidates {
        let n = count(c.sb.array_uuid);
        if best.is_none_or(|(_, m)| n > m) {
            best = Some((&c.sb, n));
        }
    }
    best.map(|(sb, _)| sb)
}

fn check_foreign_and_duplicates(
    candidates: &[Candidate],
    home: &Superblock,
) -> Result<(), AssembleError> {
    for (i, c) in candidates.iter().enumerate() {
        if c.sb.array_uuid != home.array_uuid {
            return Err(AssembleError::Foreign {
                path: c.path.clone(),
                found_uuid: c.sb.array_uuid,
                found_name: c.sb.name.clone(),
                uuid: home.array_uuid,
                name: home.name.clone(),
            });
        }
        if let Some(first) = candidates[..i]
            .iter()
            .find(|o| o.sb.member_uuid == c.sb.member_uuid)
        {
            return Err(AssembleError::DuplicateMember {
                first: first.path.clone(),
                second: c.path.clone(),
                member_uuid: c.sb.member_uuid,
            });
        }
    }
    Ok(())
}

/// The candidate with the highest events; refuses if another candidate with
/// the same events disagrees on the table or geometry (split brain).
fn freshest(candidates: &[Candidate]) -> Result<&Candidate, AssembleError> {
    let mut best = &candidates[0];
    for c in &candidates[1..] {
        if c.sb.events > best.sb.events {
            best = c;
        }
    }
    let same_history = |a: &Superblock, b: &Superblock| {
        a.members == b.members
            && a.replace == b.replace
            && a.level == b.level
            && a.chunk_size == b.chunk_size
            && a.layout == b.layout
    };
    for c in candidates {
        if c.sb.events == best.sb.events && !same_history(&c.sb, &best.sb) {
            return Err(AssembleError::SplitBrain {
                name: best.sb.name.clone(),
                first: best.path.clone(),
                second: c.path.clone(),
                events: best.sb.events,
            });
        }
    }
    Ok(best)
}

/// What rule 5 needs to know about the array as a whole.
struct Context {
    /// The ORed write-intent bitmap of the members in sync has a bit set.
    bits_set: bool,
}

/// Whether the member is in sync by events alone: it holds the freshest
/// events, or it is one behind and either took part in the run that wrote
/// the freshest (its own superblock says dirty: a crash during an update)
/// or the freshest says clean (no write ran across the update it missed).
fn current(c: &Candidate, freshest: &Superblock) -> bool {
    c.sb.events == freshest.events
        || (c.sb.events + 1 == freshest.events
            && (c.sb.state == ArrayState::Dirty || freshest.state == ArrayState::Clean))
}

/// Whether every write the member can have missed lies in a region set in
/// the bitmap: no bit was cleared on disk since its superblock was written
/// (FORMAT.md §3 rule 5, md's `events_cleared`).
fn recoverable(c: &Candidate, freshest: &Superblock) -> bool {
    freshest.bitmap_valid && freshest.events_cleared != 0 && c.sb.events >= freshest.events_cleared
}

/// Whether any bit is set in the ORed bitmaps of the members in sync.
async fn bits_set(candidates: &[Candidate], freshest: &Superblock) -> bool {
    let layout = &freshest.layout;
    let regions = layout.data_size.div_ceil(1 << layout.bitmap_region_shift);
    let len = super::bitmap_image::image_len(regions, layout.bitmap_len);
    let mut image = vec![0u8; len];
    for c in candidates.iter().filter(|c| current(c, freshest)) {
        let mut buf = vec![0u8; len];
        let at = crate::units::ByteOffset(layout.bitmap_offset);
        match c.device.read(at, &mut buf).await {
            Ok(()) => super::bitmap_image::merge_into(&mut image, &buf),
            // Unreadable: assume bits are set (the safe side).
            Err(_) => return true,
        }
    }
    super::bitmap_image::mask_tail(&mut image, regions);
    image.iter().any(|&b| b != 0)
}

/// A member whose role is failed or missing with its own UUID, that was in
/// sync when it left and received every update up to its failure.
fn forceable_member(c: &Candidate, freshest: &Superblock) -> Option<Forceable> {
    let role = c.sb.role as usize;
    let entry = freshest.members.get(role)?;
    let down = matches!(entry.state, MemberState::Failed | MemberState::Missing);
    let own_active =
        c.sb.members
            .get(role)
            .is_some_and(|e| e.state == MemberState::Active);
    let intact = entry.since != 0 && c.sb.events + 1 >= entry.since;
    if !down || entry.member_uuid != c.sb.member_uuid || !own_active || !intact {
        return None;
    }
    if geometry_differs(c, freshest).is_some() {
        return None;
    }
    let member = assembled(c, freshest).ok()?;
    Some(Forceable {
        role,
        member,
        since: entry.since,
    })
}

/// Forced assembly (FORMAT.md §3 rule 5): takes forceable members, most
/// recent first, until the level's redundancy is met. Returns whether any
/// was taken (the array is then resynced where the bitmap is set).
fn force(
    freshest: &mut Superblock,
    mut forceable: Vec<Forceable>,
    members: &mut [Option<AssembledMember>],
    readd: &mut Vec<(usize, AssembledMember)>,
    excluded: &mut Vec<Excluded>,
) -> bool {
    let count = members.len();
    let tolerates = freshest.level.redundancy(count);
    forceable.sort_by_key(|f| std::cmp::Reverse(f.member.events));
    let mut taken = false;
    for f in forceable {
        if members.iter().filter(|m| m.is_none()).count() <= tolerates {
            break;
        }
        if members[f.role].is_some() {
            continue;
        }
        tracing::warn!(name = %freshest.name, path = %f.member.path, role = f.role,
            member_events = f.member.events, failed_at = f.since, array_events = freshest.events,
            "--force-assemble: trusting member {} ({}) marked {:?} at event {}: its superblock \
             is at event {}, so it held every write up to its failure; the regions written \
             after that (the write-intent bitmap, or everything without one) are resynced",
            f.role, f.member.path, freshest.members[f.role].state, f.since, f.member.events);
        readd.retain(|(r, _)| *r != f.role);
        excluded.retain(|e| e.path != f.member.path);
        freshest.members[f.role] = super::superblock::RoleEntry::active(f.member.member_uuid);
        members[f.role] = Some(f.member);
        taken = true;
    }
    taken
}

/// The first geometry field where the candidate differs from the array.
fn geometry_differs(c: &Candidate, freshest: &Superblock) -> Option<(&'static str, u64, u64)> {
    let g = |sb: &Superblock| {
        [
            ("level", sb.level.number() as u64),
            ("chunk_size", sb.chunk_size as u64),
            ("member_count", sb.member_count as u64),
            ("data_offset", sb.layout.data_offset),
            ("data_size", sb.layout.data_size),
            // The live-journal bit changes with clean/dirty (case 84).
            (
                "flags",
                u64::from(sb.flags & !super::superblock::FLAG_RAID6_JOURNAL),
            ),
        ]
    };
    g(freshest)
        .into_iter()
        .zip(g(&c.sb))
        .find(|((_, expected), (_, found))| expected != found)
        .map(|((field, expected), (_, found))| (field, expected, found))
}

/// The candidate as a member of the array (its data window).
fn assembled(c: &Candidate, freshest: &Superblock) -> Result<AssembledMember, String> {
    let data = Window::new(
        c.device.clone(),
        freshest.layout.data_offset,
        freshest.layout.data_size,
    )
    .map_err(|err| format!("device is smaller than its data area: {err}"))?;
    Ok(AssembledMember {
        path: c.path.clone(),
        device: c.device.clone(),
        data,
        member_uuid: c.sb.member_uuid,
        events: c.sb.events,
    })
}

/// What rule 5 makes of a member whose role is listed active with its UUID.
enum ActiveKind {
    InSync,
    Recover,
    Stale(String),
}

/// Rule 5 for a role listed active: in sync by events, else by the bitmap.
fn judge_active(c: &Candidate, freshest: &Superblock, ctx: &Context) -> ActiveKind {
    if current(c, freshest) {
        if c.sb.events < freshest.events {
            tracing::info!(path = %c.path, events = c.sb.events, current = freshest.events,
                "member missed the last superblock update of a run it took part in; accepting");
        }
        return ActiveKind::InSync;
    }
    if !recoverable(c, freshest) {
        if c.sb.events + 1 == freshest.events {
            // Crash during clean→dirty (case 3) without a bitmap to check:
            // no write started before every member was dirty.
            tracing::info!(path = %c.path, events = c.sb.events, current = freshest.events,
                "member missed the clean→dirty update; no bitmap to check it by; accepting");
            return ActiveKind::InSync;
        }
        return ActiveKind::Stale(format!(
            "stale: its superblock is at event {} but the array is at {} and write-intent bits \
             were cleared since (events_cleared {}): it missed writes; add it back as a new \
             member",
            c.sb.events, freshest.events, freshest.events_cleared
        ));
    }
    if ctx.bits_set {
        tracing::warn!(path = %c.path, events = c.sb.events, current = freshest.events,
            "member was away while the array ran; catching it up from the bitmap");
        ActiveKind::Recover
    } else {
        tracing::info!(path = %c.path, events = c.sb.events, current = freshest.events,
            "member missed superblock updates but no write since (bitmap empty); accepting");
        ActiveKind::InSync
    }
}

/// The candidate's verdict; `Err` if its geometry contradicts the array.
fn accept(c: &Candidate, freshest: &Superblock, ctx: &Context) -> Result<Verdict, AssembleError> {
    let role = c.sb.role as usize;
    let Some(entry) = freshest.members.get(role) else {
        return Ok(Verdict::Stale(format!(
            "role {role} is beyond the array's {} members",
            freshest.member_count
        )));
    };
    let replacing = freshest
        .replace
        .is_some_and(|r| r.role as usize == role && r.member_uuid == c.sb.member_uuid);
    if entry.member_uuid.is_nil() && !replacing {
        return Ok(Verdict::Stale(format!(
            "removed: role {role} was taken out of the array with `vraid remove` \
             (recorded at event {}; member has event {}); add it back as a new member",
            freshest.events, c.sb.events
        )));
    }
    if entry.member_uuid != c.sb.member_uuid && !replacing {
        return Ok(Verdict::Stale(format!(
            "stale: role {role} now belongs to member {}",
            entry.member_uuid
        )));
    }
    let stale = || {
        format!(
            "stale: recorded as {:?} at event {} (member has event {})",
            entry.state, freshest.events, c.sb.events
        )
    };
    // In sync when it left, or a bitmap recovery target cut half-way
    // (in sync outside the bits, none cleared since: crash case 94).
    let own_active =
        c.sb.members
            .get(role)
            .is_some_and(|e| matches!(e.state, MemberState::Active | MemberState::Recovering));
    let kind = match entry.state {
        _ if replacing => 4,
        MemberState::Active => match judge_active(c, freshest, ctx) {
            ActiveKind::InSync => 0,
            ActiveKind::Recover => 3,
            ActiveKind::Stale(reason) => return Ok(Verdict::Stale(reason)),
        },
        MemberState::Rebuilding => 1,
        MemberState::Recovering => 2,
        MemberState::Missing | MemberState::Failed if own_active && recoverable(c, freshest) => 3,
        _ => return Ok(Verdict::Stale(stale())),
    };
    if kind == 3 && freshest.level.redundancy(freshest.member_count as usize) == 0 {
        return Ok(Verdict::Stale(format!(
            "stale: its superblock is at event {} but the array is at {} and it may have \
             missed writes; {} has no redundancy to catch it up from",
            c.sb.events, freshest.events, freshest.level
        )));
    }
    if let Some((field, expected, found)) = geometry_differs(c, freshest) {
        if kind == 3 {
            return Ok(Verdict::Stale(stale()));
        }
        return Err(AssembleError::Geometry {
            path: c.path.clone(),
            field,
            expected,
            found,
        });
    }
    let member = match assembled(c, freshest) {
        Ok(m) => m,
        Err(reason) => return Ok(Verdict::Stale(reason)),
    };
    Ok(match kind {
        0 => Verdict::Active(member),
        1 => Verdict::Rebuild(member, false),
        2 => Verdict::Rebuild(member, true),
        4 => Verdict::Replacement(member),
        _ => Verdict::ReAdd(member),
    })
}
