//! Assembling an md array from its members, as mdadm does: every member's
//! superblock read and checked, all of one array (one UUID), the freshest
//! (highest event count) taken as the truth, members more than one event
//! behind it or that it records as failed left out, members placed by
//! their role; arrays vraid cannot serve safely refused with the reason.
//!
//! ```text
//!  [(device, superblock)] ─► one UUID? ─► freshest ─► agree on geometry?
//!      ─► slots by role (stale / spare / faulty / rebuilding left out)
//!      ─► servable? (level, reshape, journal, redundancy, clean)
//!      ─► MdArray
//! ```

use std::sync::Arc;

use thiserror::Error;

use super::superblock::{feature, mdadm_uuid, MdSuperblock, Role};
use super::zones::{LinearMap, Raid0Layout, Raid0Map};
use crate::block::BlockDevice;
use crate::raid::md_layout::{MdLayoutError, ParityLayout, Raid10Layout};

/// Why an array cannot be served.
#[derive(Debug, Error)]
pub enum MdAssembleError {
    #[error("no md members given")]
    Empty,
    #[error("{device}: {source}")]
    Superblock {
        device: String,
        #[source]
        source: super::MdSuperblockError,
    },
    #[error("the members belong to different md arrays: {0}")]
    Mixed(String),
    #[error("md array {uuid}: {device} disagrees with the freshest member on {field}")]
    Disagree {
        uuid: String,
        device: String,
        field: &'static str,
    },
    #[error("md array {uuid}: {why}")]
    Refused { uuid: String, why: String },
    #[error("md array {uuid}: {0}", uuid = .1)]
    Layout(#[source] MdLayoutError, String),
}

/// md's levels that vraid serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MdLevel {
    /// RAID-0 in md's strip zones (one zone when the members are of a size).
    Raid0(Raid0Map),
    Linear(LinearMap),
    Raid1,
    /// RAID-4, 5 or 6 in md's algorithm.
    Parity(ParityLayout),
    Raid10(Raid10Layout),
}

/// A member in its slot.
#[derive(Clone)]
pub struct Slot {
    pub device: Arc<dyn BlockDevice>,
    /// Byte offset of the member's data area.
    pub data_offset: u64,
    /// Sectors of its data area (`data_size`).
    pub data_sectors: u64,
    /// Byte offset of its md superblock.
    pub super_offset: u64,
    /// Byte offset of its copy of the write-intent bitmap, if any.
    pub bitmap_at: Option<u64>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("device", &self.device.name())
            .field("data_offset", &self.data_offset)
            .finish()
    }
}

/// A member given but not used, and why.
#[derive(Clone, Debug)]
pub struct LeftOut {
    pub device: String,
    pub why: String,
}

/// An assembled array, ready for [`super::MdVolume`].
#[derive(Clone, Debug)]
pub struct MdArray {
    /// The export name: the md name without its host part, or the UUID.
    pub name: String,
    /// The array UUID as mdadm prints it.
    pub uuid: String,
    /// md's level number.
    pub level_number: i32,
    pub level: MdLevel,
    /// Chunk size in bytes (RAID-1: 0).
    pub chunk_bytes: u64,
    /// Array size in bytes.
    pub size: u64,
    /// Members by role; `None` where one is missing.
    pub slots: Vec<Option<Slot>>,
    pub left_out: Vec<LeftOut>,
    /// The freshest superblock.
    pub freshest: MdSuperblock,
}

impl MdArray {
    /// Roles without a member.
    pub fn missing(&self) -> usize {
        self.slots.iter().filter(|s| s.is_none()).count()
    }
}

/// Assembles the array the `members` (device and its superblock, checked
/// by the caller) belong to.
pub fn assemble(
    members: Vec<(Arc<dyn BlockDevice>, MdSuperblock)>,
) -> Result<MdArray, MdAssembleError> {
    let mut left_out = Vec::new();
    let members: Vec<_> = members
        .into_iter()
        .filter(|(d, sb)| match sb.verify() {
            Ok(()) => true,
            Err(e) => {
                left_out.push(LeftOut {
                    device: d.name().to_string(),
                    why: e.to_string(),
                });
                false
            }
        })
        .collect();
    one_array(&members, &left_out)?;
    let freshest = members
        .iter()
        .map(|(_, sb)| sb)
        .max_by_key(|sb| sb.events)
        .cloned()
        .ok_or(MdAssembleError::Empty)?;
    let uuid = freshest.uuid_string();
    refuse_unservable(&freshest)?;
    device_size_fits(&freshest, &members)?;
    let level = level_of(&freshest, &members)?;
    let slots = place(&freshest, members, &mut left_out)?;
    let mut array = MdArray {
        name: export_name(&freshest),
        uuid,
        level_number: freshest.level,
        level,
        chunk_bytes: freshest.chunk_bytes,
        size: 0,
        slots,
        left_out,
        freshest,
    };
    check_redundancy(&array)?;
    array.level = with_sizes(&array)?;
    array.size = array_bytes(&array.freshest, &array.level);
    Ok(array)
}

/// RAID-0 and linear with their maps, from every member's size (all
/// present: `check_redundancy` refused them otherwise).
fn with_sizes(a: &MdArray) -> Result<MdLevel, MdAssembleError> {
    let sizes: Vec<u64> = a.slots.iter().flatten().map(|s| s.data_sectors).collect();
    let chunk = a.chunk_bytes / 512;
    Ok(match &a.level {
        MdLevel::Raid0(_) => {
            let layout = match (
                a.freshest.feature_map & feature::RAID0_LAYOUT,
                a.freshest.layout,
            ) {
                (0, _) => None,
                (_, 1) => Some(Raid0Layout::Original),
                (_, 2) => Some(Raid0Layout::Alternate),
                _ => None,
            };
            MdLevel::Raid0(Raid0Map::new(&sizes, chunk, layout).ok_or_else(|| {
                MdAssembleError::Refused {
                    uuid: a.uuid.clone(),
                    why: "RAID-0 over members of different sizes (several zones) without a \
                          zone layout (original or alternate) recorded; md refuses it too"
                        .into(),
                }
            })?)
        }
        MdLevel::Linear(_) => MdLevel::Linear(LinearMap::new(&sizes, chunk)),
        other => other.clone(),
    })
}

/// Every member is of one array (UUID).
fn one_array(
    members: &[(Arc<dyn BlockDevice>, MdSuperblock)],
    left_out: &[LeftOut],
) -> Result<(), MdAssembleError> {
    let Some((_, first)) = members.first() else {
        if let Some(l) = left_out.first() {
            return Err(MdAssembleError::Refused {
                uuid: "?".into(),
                why: format!("no usable member ({}: {})", l.device, l.why),
            });
        }
        return Err(MdAssembleError::Empty);
    };
    if members
        .iter()
        .all(|(_, sb)| sb.array_uuid == first.array_uuid)
    {
        return Ok(());
    }
    let mut groups: Vec<([u8; 16], Vec<String>)> = Vec::new();
    for (d, sb) in members {
        match groups.iter_mut().find(|(u, _)| *u == sb.array_uuid) {
            Some((_, names)) => names.push(d.name().to_string()),
            None => groups.push((sb.array_uuid, vec![d.name().to_string()])),
        }
    }
    let text: Vec<String> = groups
        .iter()
        .map(|(u, names)| format!("{} ({})", mdadm_uuid(u), names.join(", ")))
        .collect();
    Err(MdAssembleError::Mixed(text.join("; ")))
}

/// The array's device size (md's `size`) fits in some member's data area,
/// so the layout math over it stays within the members (a hostile value
/// near 2^64 would overflow it). RAID-0 does not use it.
fn device_size_fits(
    sb: &MdSuperblock,
    members: &[(Arc<dyn BlockDevice>, MdSuperblock)],
) -> Result<(), MdAssembleError> {
    let largest = members.iter().map(|(_, m)| m.data_size).max().unwrap_or(0);
    if sb.level == 0 || sb.component_sectors <= largest {
        return Ok(());
    }
    Err(MdAssembleError::Refused {
        uuid: sb.uuid_string(),
        why: format!(
            "device size of {} sectors is larger than every member's data area \
             (at most {largest} sectors)",
            sb.component_sectors
        ),
    })
}

/// Reshape, a journal device and clustered arrays: one-line refusals.
fn refuse_unservable(sb: &MdSuperblock) -> Result<(), MdAssembleError> {
    let refuse = |why: String| MdAssembleError::Refused {
        uuid: sb.uuid_string(),
        why,
    };
    if let Some(r) = &sb.reshape {
        return Err(refuse(format!(
            "a reshape is in progress (at array sector {}, to level {}, {:+} disks); \
             finish it with mdadm first",
            r.position, r.new_level, r.delta_disks
        )));
    }
    if sb.feature_map & feature::JOURNAL != 0 {
        return Err(refuse(
            "it has a write journal device, whose pending writes vraid does not replay".into(),
        ));
    }
    if sb.feature_map & feature::CLUSTERED != 0 {
        return Err(refuse("it is a clustered array".into()));
    }
    Ok(())
}

/// The level's geometry, every member agreeing with the freshest on it.
fn level_of(
    sb: &MdSuperblock,
    members: &[(Arc<dyn BlockDevice>, MdSuperblock)],
) -> Result<MdLevel, MdAssembleError> {
    let uuid = sb.uuid_string();
    for (d, other) in members {
        let field = if other.level != sb.level {
            "the level"
        } else if other.layout != sb.layout {
            "the layout"
        } else if other.chunk_bytes != sb.chunk_bytes {
            "the chunk size"
        } else if other.raid_disks != sb.raid_disks {
            "the number of devices"
        } else if other.component_sectors != sb.component_sectors && sb.level != 0 {
            "the device size"
        } else {
            continue;
        };
        return Err(MdAssembleError::Disagree {
            uuid,
            device: d.name().to_string(),
            field,
        });
    }
    let refuse = |why: String| MdAssembleError::Refused {
        uuid: uuid.clone(),
        why,
    };
    if !matches!(sb.level, 0 | -1) && sb.component_sectors > sb.data_size {
        return Err(refuse(format!(
            "device size {} sectors is larger than the freshest member's data area of {}",
            sb.component_sectors, sb.data_size
        )));
    }
    let striped = matches!(sb.level, 0 | 4 | 5 | 6 | 10);
    if sb.level == -1 && !sb.chunk_bytes.is_multiple_of(512) {
        return Err(refuse(format!("rounding of {} bytes", sb.chunk_bytes)));
    }
    if striped
        && (sb.chunk_bytes == 0 || !sb.chunk_bytes.is_multiple_of(4096) || sb.chunk_bytes > 1 << 30)
    {
        return Err(refuse(format!(
            "chunk size {} bytes is not a multiple of 4 KiB up to 1 GiB",
            sb.chunk_bytes
        )));
    }
    let disks = sb.raid_disks as usize;
    let layout_err = |e| MdAssembleError::Layout(e, uuid.clone());
    Ok(match sb.level {
        0 => MdLevel::Raid0(Raid0Map::new(&[], 1, None).expect("no zones")),
        -1 => MdLevel::Linear(LinearMap::new(&[], 0)),
        1 => MdLevel::Raid1,
        4..=6 => MdLevel::Parity(
            ParityLayout::new(sb.level as u32, disks, sb.layout).map_err(layout_err)?,
        ),
        10 => MdLevel::Raid10(
            Raid10Layout::new(sb.layout, disks, sb.chunk_bytes / 512, sb.component_sectors)
                .map_err(layout_err)?,
        ),
        l => return Err(refuse(format!("level {l} is not served"))),
    })
}

/// Members into their slots; stale, failed, spare and half-rebuilt
/// members left out with the reason.
fn place(
    fresh: &MdSuperblock,
    members: Vec<(Arc<dyn BlockDevice>, MdSuperblock)>,
    left_out: &mut Vec<LeftOut>,
) -> Result<Vec<Option<Slot>>, MdAssembleError> {
    let mut slots: Vec<Option<(Slot, u64)>> = vec![None; fresh.raid_disks as usize];
    for (device, sb) in members {
        let why = unusable(fresh, &sb);
        let role = match (why, sb.role) {
            (None, Role::Active(r)) => r as usize,
            (why, _) => {
                left_out.push(LeftOut {
                    device: device.name().to_string(),
                    why: why.unwrap_or_else(|| format!("not an active member ({:?})", sb.role)),
                });
                continue;
            }
        };
        let slot = Slot {
            device,
            data_offset: sb.data_offset * 512,
            data_sectors: sb.data_size,
            super_offset: sb.super_offset,
            bitmap_at: bitmap_at(&sb),
        };
        if let Some(loser) = fresher_of(fresh, &mut slots[role], (slot, sb.events), role)? {
            left_out.push(loser);
        }
    }
    Ok(slots.into_iter().map(|s| s.map(|(slot, _)| slot)).collect())
}

/// Byte offset of `sb`'s member's bitmap copy: 1.x `bitmap_offset`
/// sectors from the superblock (signed), 0.90 4 KiB after it; `None`
/// without a bitmap or when the offset falls outside the byte range.
pub fn bitmap_at(sb: &MdSuperblock) -> Option<u64> {
    let off = sb.bitmap_offset?;
    match sb.version {
        super::MdVersion::V0_90 => sb.super_offset.checked_add(4096),
        _ => sb.super_offset.checked_add_signed(i64::from(off) * 512),
    }
}

/// Puts `new` into a role's `held` slot; with two members in one role the
/// one with more events stays and the other is left out (mdadm picks the
/// highest event count per role); equal events (a copied image, or one
/// device given twice) are refused.
fn fresher_of(
    fresh: &MdSuperblock,
    held: &mut Option<(Slot, u64)>,
    new: (Slot, u64),
    role: usize,
) -> Result<Option<LeftOut>, MdAssembleError> {
    let Some(old) = held.take() else {
        *held = Some(new);
        return Ok(None);
    };
    if old.1 == new.1 {
        return Err(MdAssembleError::Refused {
            uuid: fresh.uuid_string(),
            why: format!(
                "{} and {} both hold role {role}",
                old.0.device.name(),
                new.0.device.name()
            ),
        });
    }
    let (keep, lose) = if new.1 > old.1 {
        (new, old)
    } else {
        (old, new)
    };
    let why = format!(
        "role {role} is held by {} with more events ({} > {})",
        keep.0.device.name(),
        keep.1,
        lose.1
    );
    *held = Some(keep);
    Ok(Some(LeftOut {
        device: lose.0.device.name().to_string(),
        why,
    }))
}

/// Why the freshest superblock's view rules `sb`'s member out, if it does.
fn unusable(fresh: &MdSuperblock, sb: &MdSuperblock) -> Option<String> {
    if sb.events.saturating_add(1) < fresh.events {
        return Some(format!(
            "stale: events {} behind the freshest member's {}",
            sb.events, fresh.events
        ));
    }
    let Role::Active(r) = sb.role else {
        return None;
    };
    if r >= fresh.raid_disks {
        return Some(format!(
            "role {r} past the array's {} devices",
            fresh.raid_disks
        ));
    }
    match fresh.roles.get(sb.dev_number as usize) {
        Some(seen) if *seen != sb.role => {
            return Some(format!(
                "the freshest member records device {} as {seen:?}, not {:?}",
                sb.dev_number, sb.role
            ))
        }
        _ => {}
    }
    let needed = if fresh.level == 0 {
        0
    } else {
        fresh.component_sectors
    };
    if sb.data_size < needed {
        return Some(format!(
            "data area of {} sectors, smaller than the array's {needed}",
            sb.data_size
        ));
    }
    match sb.recovery_offset {
        Some(done) if done < needed => Some(format!(
            "being rebuilt (sector {done} of {needed} recovered)"
        )),
        _ => None,
    }
}

/// The array size in bytes, as md computes it.
fn array_bytes(sb: &MdSuperblock, level: &MdLevel) -> u64 {
    let chunk_sectors = (sb.chunk_bytes / 512).max(1);
    let per_dev = sb.component_sectors / chunk_sectors * chunk_sectors;
    let sectors = match level {
        MdLevel::Raid0(z) => z.sectors(),
        MdLevel::Linear(l) => l.sectors(),
        MdLevel::Raid1 => sb.component_sectors,
        MdLevel::Parity(p) => per_dev * p.data_disks() as u64,
        MdLevel::Raid10(r) => r.array_sectors(sb.component_sectors),
    };
    sectors * 512
}

/// Enough members for every byte, and no torn parity used to rebuild.
fn check_redundancy(a: &MdArray) -> Result<(), MdAssembleError> {
    let missing = a.missing();
    let refuse = |why: String| MdAssembleError::Refused {
        uuid: a.uuid.clone(),
        why,
    };
    let tolerated = match &a.level {
        MdLevel::Raid0(_) | MdLevel::Linear(_) => 0,
        MdLevel::Raid1 => a.slots.len() - 1,
        MdLevel::Parity(p) => p.disks() - p.data_disks(),
        MdLevel::Raid10(r) => raid10_tolerates(r, &a.slots, a.chunk_bytes / 512),
    };
    if missing > tolerated {
        return Err(refuse(format!(
            "{missing} of {} members missing; {} can lose at most {tolerated}{}",
            a.slots.len(),
            level_name(a.level_number),
            left_out_text(&a.left_out)
        )));
    }
    if missing > 0 && matches!(a.level, MdLevel::Parity(_)) && !a.freshest.clean() {
        return Err(refuse(format!(
            "not stopped cleanly and {missing} member(s) missing: data rebuilt from stripes \
             torn at the crash could be wrong (md itself refuses to start it without --force)"
        )));
    }
    Ok(())
}

/// RAID-10 survives the missing members if every chunk keeps a copy:
/// `missing` if so (any number is fine), else 0.
fn raid10_tolerates(r: &Raid10Layout, slots: &[Option<Slot>], chunk_sectors: u64) -> usize {
    let missing = slots.iter().filter(|s| s.is_none()).count();
    // Copies repeat with a period of at most disks x copies chunks.
    let period = (slots.len() * r.copies() * 2) as u64;
    let covered = (0..period).all(|c| {
        r.find_phys(c * chunk_sectors)
            .iter()
            .any(|rep| slots.get(rep.disk).is_some_and(|s| s.is_some()))
    });
    if covered {
        missing
    } else {
        0
    }
}

fn left_out_text(left: &[LeftOut]) -> String {
    if left.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = left
        .iter()
        .map(|l| format!("{}: {}", l.device, l.why))
        .collect();
    format!(" (left out: {})", parts.join("; "))
}

/// "raid5", "linear", ...
pub fn level_name(level: i32) -> String {
    match level {
        -1 => "linear".into(),
        -4 => "multipath".into(),
        -5 => "faulty".into(),
        l => format!("raid{l}"),
    }
}

/// The md name without the `host:` part mdadm prefixes, else the UUID.
fn export_name(sb: &MdSuperblock) -> String {
    let short = sb.name.rsplit(':').next().unwrap_or("");
    if short.is_empty() {
        sb.uuid_string()
    } else {
        short.to_string()
    }
}
