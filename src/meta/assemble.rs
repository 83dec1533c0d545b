//! Assembling an array from its members (FORMAT.md §3).
//!
//! ```text
//! (path, device)* ─► read superblocks ─► one array UUID? ─► no duplicate members?
//!     ─► freshest events + table (split brain?) ─► accept roles listed active with their UUID
//!     ─► geometry agrees? ─► missing <= redundancy? ─► Assembly
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
    #[error("cannot assemble {name}: {missing} of {count} members missing, {level} tolerates {tolerates}")]
    TooManyMissing {
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
    /// The freshest superblock says the write-intent bitmap is maintained.
    pub bitmap_valid: bool,
    /// The freshest superblock says the block checksums are maintained.
    pub checksums_valid: bool,
    /// The freshest superblock says the partial-parity journal is maintained.
    pub journal_valid: bool,
    /// A member whose rebuild was interrupted; resume it.
    pub rebuild: Option<RebuildTarget>,
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
    let given = devices.len();
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
    let home = home_array(&candidates).ok_or(AssembleError::NoSuperblocks(given))?;
    check_foreign_and_duplicates(&candidates, home)?;
    let freshest = freshest(&candidates)?.sb.clone();
    let count = freshest.member_count as usize;
    let mut members: Vec<Option<AssembledMember>> = vec![None; count];
    let mut rebuild = None;
    let mut replacement = None;
    let mut readd = Vec::new();
    for c in candidates {
        let role = c.sb.role as usize;
        match accept(&c, &freshest)? {
            Verdict::Replacement(member) => replacement = Some((role, member)),
            Verdict::Active(member) => members[role] = Some(member),
            Verdict::Rebuild(member, recovering) => {
                let up_to = freshest.rebuild_checkpoint.unwrap_or(0);
                tracing::info!(path = %c.path, role, up_to, "member is being rebuilt; resuming");
                rebuild = Some(RebuildTarget {
                    role,
                    member,
                    up_to,
                    recovering,
                });
            }
            Verdict::ReAdd(member) => {
                tracing::info!(path = %c.path, role, "stale member can catch up from the bitmap");
                readd.push((role, member));
            }
            Verdict::Stale(reason) => {
                tracing::warn!(path = %c.path, role = c.sb.role, "excluding member: {reason}");
                // A removed member no longer names its old slot.
                let removed = freshest
                    .members
                    .get(role)
                    .is_some_and(|e| e.member_uuid.is_nil());
                excluded.push(Excluded {
                    path: c.path,
                    role: (!removed).then_some(c.sb.role),
                    reason,
                });
            }
        }
    }
    let mut freshest = freshest;
    let (replace, replace_dropped) = resolve_replace(
        &mut freshest,
        replacement,
        &members,
        &mut rebuild,
        &mut readd,
        &mut excluded,
    );
    let missing = members.iter().filter(|m| m.is_none()).count();
    let tolerates = freshest.level.redundancy(count);
    if missing > tolerates {
        return Err(AssembleError::TooManyMissing {
            name: freshest.name.clone(),
            missing,
            count,
            level: freshest.level,
            tolerates,
        });
    }
    if missing > 0 {
        tracing::warn!(name = %freshest.name, missing, "assembling degraded");
    }
    let mut devices: Vec<_> = members
        .iter()
        .map(|m| m.as_ref().map(|m| (m.device.clone(), m.member_uuid)))
        .collect();
    if let Some(t) = &rebuild {
        devices[t.role] = Some((t.member.device.clone(), t.member.member_uuid));
    }
    let replacement_device = replace.as_ref().map(|t| t.member.device.clone());
    Ok(Assembly {
        name: freshest.name.clone(),
        array_uuid: freshest.array_uuid,
        level: freshest.level,
        chunk_size: freshest.chunk_size,
        member_count: freshest.member_count,
        data_offset: freshest.layout.data_offset,
        data_size: freshest.layout.data_size,
        was_dirty: freshest.state == ArrayState::Dirty,
        members,
        layout: freshest.layout,
        bitmap_valid: freshest.bitmap_valid,
        checksums_valid: freshest.checksums_valid,
        journal_valid: freshest.journal_valid,
        rebuild,
        replace,
        replace_dropped,
        readd,
        excluded,
        metadata: Arc::new(ArrayMetadata::new(freshest, devices, replacement_device)),
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

/// The candidate's verdict; `Err` if its geometry contradicts the array.
fn accept(c: &Candidate, freshest: &Superblock) -> Result<Verdict, AssembleError> {
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
    let kind = match entry.state {
        _ if replacing => 4,
        MemberState::Active => 0,
        MemberState::Rebuilding => 1,
        MemberState::Recovering => 2,
        MemberState::Missing | MemberState::Failed if freshest.bitmap_valid => 3,
        _ => return Ok(Verdict::Stale(stale())),
    };
    let g = |sb: &Superblock| {
        [
            ("level", sb.level.number() as u64),
            ("chunk_size", sb.chunk_size as u64),
            ("member_count", sb.member_count as u64),
            ("data_offset", sb.layout.data_offset),
            ("data_size", sb.layout.data_size),
        ]
    };
    for ((field, expected), (_, found)) in g(freshest).into_iter().zip(g(&c.sb)) {
        if expected != found {
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
    }
    if kind == 0 && c.sb.events < freshest.events {
        tracing::info!(path = %c.path, events = c.sb.events, current = freshest.events,
            "member missed superblock updates but is listed active; accepting");
    }
    let data = match Window::new(
        c.device.clone(),
        freshest.layout.data_offset,
        freshest.layout.data_size,
    ) {
        Ok(w) => w,
        Err(err) => {
            return Ok(Verdict::Stale(format!(
                "device is smaller than its data area: {err}"
            )))
        }
    };
    let member = AssembledMember {
        path: c.path.clone(),
        device: c.device.clone(),
        data,
        member_uuid: c.sb.member_uuid,
        events: c.sb.events,
    };
    Ok(match kind {
        0 => Verdict::Active(member),
        1 => Verdict::Rebuild(member, false),
        2 => Verdict::Rebuild(member, true),
        4 => Verdict::Replacement(member),
        _ => Verdict::ReAdd(member),
    })
}
