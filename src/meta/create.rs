//! Creating an array on blank (or, with `force`, reused) members (FORMAT.md §4).
//!
//! ```text
//! validate ─► refuse existing superblocks (unless force)
//!          ─► invalidate old superblocks (all members, flushed)
//!          ─► zero metadata area + discard data area (flushed)
//!          ─► copy A on all members (flushed) ─► copy B on all members (flushed)
//! ```

use std::sync::Arc;

use futures::future::try_join_all;
use uuid::Uuid;

use super::layout::{inline_layout, ChecksumLayout, MetaLayout};
use super::superblock::{
    metadata_layout, read_superblock, valid_chunk_size, valid_name, ArrayState, MemberState,
    RoleEntry, Superblock, COPY_OFFSETS, DATA_ALIGN, FLAG_INLINE_CSUM, MAX_MEMBERS,
    SUPERBLOCK_SIZE,
};
use super::{now, signature, MetaError};
use crate::block::{BlockDevice, Durability};
use crate::integrity::tag::physical_len;
use crate::raid::Level;
use crate::units::ByteOffset;

/// What to create.
#[derive(Clone, Debug)]
pub struct CreateSpec {
    /// Array name (`[A-Za-z0-9._-]`, 1..=64).
    pub name: String,
    /// RAID level.
    pub level: Level,
    /// Chunk size in bytes (power of two, 4K..=16M).
    pub chunk_size: u64,
    /// Overwrite members that hold a vraid superblock or anything else
    /// (`signature`); members held by another process stay refused.
    pub force: bool,
}

/// What was created.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ArrayInfo {
    /// Array name.
    pub name: String,
    /// Array UUID.
    pub array_uuid: Uuid,
    /// Member UUIDs, by role (= order of the devices given).
    pub member_uuids: Vec<Uuid>,
    /// RAID level number.
    pub level: u32,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Members.
    pub member_count: u32,
    /// Start of the data area on every member.
    pub data_offset: u64,
    /// Data area size per member.
    pub data_size: u64,
}

fn io_err(device: &dyn BlockDevice) -> impl FnOnce(crate::block::BlockError) -> MetaError + '_ {
    move |source| MetaError::Io {
        device: device.name().to_string(),
        source,
    }
}

fn validate(devices: &[Arc<dyn BlockDevice>], spec: &CreateSpec) -> Result<(), MetaError> {
    if !valid_name(&spec.name) {
        return Err(MetaError::InvalidName(spec.name.clone()));
    }
    if !valid_chunk_size(spec.chunk_size) {
        return Err(MetaError::InvalidChunk(spec.chunk_size));
    }
    let min = spec.level.min_members();
    if !(min..=MAX_MEMBERS).contains(&devices.len()) {
        return Err(MetaError::MemberCount {
            level: spec.level,
            min,
            max: MAX_MEMBERS,
            got: devices.len(),
        });
    }
    for (i, a) in devices.iter().enumerate() {
        if devices[..i].iter().any(|b| Arc::ptr_eq(a, b)) {
            return Err(MetaError::DuplicateDevice(a.name().to_string()));
        }
        let same =
            |b: &&Arc<dyn BlockDevice>| a.device_id().is_some() && a.device_id() == b.device_id();
        if let Some(b) = devices[..i].iter().find(same) {
            return Err(MetaError::SameDevice(
                b.name().to_string(),
                a.name().to_string(),
            ));
        }
    }
    Ok(())
}

/// Creates an array: role `i` is `devices[i]`. Refuses members that hold a
/// valid superblock unless `spec.force`. Discards the data area, so RAID-1
/// mirrors and RAID-5 parity are consistent without a resync.
pub async fn create_array(
    devices: &[Arc<dyn BlockDevice>],
    spec: &CreateSpec,
) -> Result<ArrayInfo, MetaError> {
    create_array_with(devices, spec, ChecksumLayout::Separate).await
}

/// [`create_array`] with the block checksums kept in `csum_layout`: inline,
/// `data_size` is the logical data area and each member holds 4608 bytes
/// per 4 KiB block of it (FORMAT.md §8 "Inline layout").
pub async fn create_array_with(
    devices: &[Arc<dyn BlockDevice>],
    spec: &CreateSpec,
    csum_layout: ChecksumLayout,
) -> Result<ArrayInfo, MetaError> {
    validate(devices, spec)?;
    let layout = choose_layout(devices, spec, csum_layout)?;
    check_geometry(spec, devices.len(), layout.data_size)?;
    let (flags, physical) = match csum_layout {
        ChecksumLayout::Separate => (0, layout.data_size),
        ChecksumLayout::Inline => (FLAG_INLINE_CSUM, physical_len(layout.data_size)),
    };
    // Every new array keeps the written-region map (FORMAT.md §10).
    let flags = flags | super::superblock::FLAG_WRITTEN_MAP;
    if !spec.force {
        for device in devices {
            refuse_occupied(device.as_ref()).await?;
        }
    }
    try_join_all(
        devices
            .iter()
            .map(|d| wipe(d.as_ref(), layout.data_offset, physical)),
    )
    .await?;
    // An empty written-region map on every member (FORMAT.md §10).
    let shift = super::written::written_shift(layout.bitmap_region_shift, layout.data_size);
    let empty = super::written::WrittenImage::empty(shift, layout.data_size).encode();
    try_join_all(devices.iter().map(|d| async {
        let d = d.as_ref();
        let at = ByteOffset(super::written::WRITTEN_OFFSET);
        d.write(at, &empty, crate::block::Durability::Normal)
            .await
            .map_err(io_err(d))?;
        d.flush().await.map_err(io_err(d))
    }))
    .await?;
    let array_uuid = Uuid::new_v4();
    let members: Vec<RoleEntry> = devices
        .iter()
        .map(|_| RoleEntry {
            member_uuid: Uuid::new_v4(),
            state: MemberState::Active,
            since: 0,
        })
        .collect();
    let superblocks = first_superblocks(spec, flags, array_uuid, layout, &members);
    write_superblocks(devices, &superblocks).await?;
    refuse_aliases(devices).await?;
    tracing::info!(name = %spec.name, uuid = %array_uuid, level = %spec.level,
        members = devices.len(), data_size = layout.data_size, "created array");
    Ok(ArrayInfo {
        name: spec.name.clone(),
        array_uuid,
        member_uuids: members.iter().map(|m| m.member_uuid).collect(),
        level: spec.level.number(),
        chunk_size: spec.chunk_size as u32,
        member_count: devices.len() as u32,
        data_offset: layout.data_offset,
        data_size: layout.data_size,
    })
}

/// The level's geometry over `members` data areas of `data_size` bytes
/// can be built (RAID-10: every copy of a chunk fits).
fn check_geometry(spec: &CreateSpec, members: usize, data_size: u64) -> Result<(), MetaError> {
    use crate::raid::{ChunkSize, Geometry};
    ChunkSize::new(spec.chunk_size)
        .and_then(|c| Geometry::new(spec.level, members, c, data_size))
        .map(drop)
        .map_err(MetaError::Geometry)
}

/// The member layout for the smallest device, its data area a whole
/// number of chunks; refuses devices too small for one chunk.
fn choose_layout(
    devices: &[Arc<dyn BlockDevice>],
    spec: &CreateSpec,
    csum_layout: ChecksumLayout,
) -> Result<MetaLayout, MetaError> {
    let smallest = devices.iter().map(|d| d.size()).min().unwrap_or(0);
    let layout = match csum_layout {
        ChecksumLayout::Separate => metadata_layout(smallest),
        ChecksumLayout::Inline => inline_layout(smallest),
    };
    match layout {
        Some(mut l) if l.data_size >= spec.chunk_size => {
            l.data_size = l.data_size / spec.chunk_size * spec.chunk_size;
            Ok(l)
        }
        _ => {
            let small = devices.iter().min_by_key(|d| d.size());
            let needed = metadata_layout(smallest)
                .map(|l| l.data_offset)
                .unwrap_or(DATA_ALIGN)
                + spec.chunk_size;
            Err(MetaError::TooSmall {
                device: small.map(|d| d.name().to_string()).unwrap_or_default(),
                size: smallest,
                needed,
            })
        }
    }
}

/// The first superblock of every role of a new, clean array.
fn first_superblocks(
    spec: &CreateSpec,
    flags: u32,
    array_uuid: Uuid,
    layout: MetaLayout,
    members: &[RoleEntry],
) -> Vec<Superblock> {
    let time = now();
    members
        .iter()
        .enumerate()
        .map(|(role, entry)| Superblock {
            flags,
            array_uuid,
            member_uuid: entry.member_uuid,
            role: role as u32,
            level: spec.level,
            member_count: members.len() as u32,
            chunk_size: spec.chunk_size as u32,
            layout,
            events: 1,
            state: ArrayState::Clean,
            creation_time: time,
            update_time: time,
            rebuild_checkpoint: None,
            bitmap_valid: false,
            checksums_valid: true,
            journal_valid: true,
            scrub_time: 0,
            replace: None,
            events_cleared: 1,
            mirror: Default::default(),
            name: spec.name.clone(),
            members: members.to_vec(),
        })
        .collect()
}

/// Writes and flushes copy A on every member, then copy B.
async fn write_superblocks(
    devices: &[Arc<dyn BlockDevice>],
    superblocks: &[Superblock],
) -> Result<(), MetaError> {
    for offset in COPY_OFFSETS {
        try_join_all(devices.iter().zip(superblocks).map(|(d, sb)| async move {
            let block = sb.encode();
            let d = d.as_ref();
            d.write(ByteOffset(offset), &block, Durability::Normal)
                .await
                .map_err(io_err(d))?;
            d.flush().await.map_err(io_err(d))
        }))
        .await?;
    }
    Ok(())
}

/// Two member paths reaching one device by a route `device_id` cannot see
/// (an NBD export of a file that is also a local member): every member must
/// read back the superblock of its own role.
async fn refuse_aliases(devices: &[Arc<dyn BlockDevice>]) -> Result<(), MetaError> {
    for (role, d) in devices.iter().enumerate() {
        let found = read_superblock(d.as_ref())
            .await
            .map_err(|source| MetaError::Superblock {
                device: d.name().to_string(),
                source,
            })?;
        let other = found.superblock.role as usize;
        if other != role {
            let other = devices.get(other).map_or("another member", |o| o.name());
            return Err(MetaError::SameDevice(
                other.to_string(),
                d.name().to_string(),
            ));
        }
    }
    Ok(())
}

/// The pre-write check of `create` (FORMAT.md §4 step 1): refuses a
/// device holding a vraid superblock, md, a filesystem, swap, LUKS, LVM2,
/// a partition table or other non-zero bytes in its first or last MiB.
async fn refuse_occupied(device: &dyn BlockDevice) -> Result<(), MetaError> {
    if let Ok(found) = read_superblock(device).await {
        return Err(MetaError::AlreadyMember {
            device: device.name().to_string(),
            name: found.superblock.name,
            uuid: found.superblock.array_uuid,
        });
    }
    let found = signature::scan(device).await.map_err(io_err(device))?;
    if found.is_empty() {
        return Ok(());
    }
    Err(MetaError::Occupied {
        device: device.name().to_string(),
        found: signature::describe(&found),
    })
}

/// Steps 2 and 3 of FORMAT.md §4 on one member: invalidate both superblock
/// copies, zero the metadata area, discard the data area.
async fn wipe(device: &dyn BlockDevice, data_offset: u64, data_size: u64) -> Result<(), MetaError> {
    let sb_area = 2 * SUPERBLOCK_SIZE as u64;
    device
        .write_zeroes(ByteOffset(0), sb_area, false)
        .await
        .map_err(io_err(device))?;
    device.flush().await.map_err(io_err(device))?;
    device
        .write_zeroes(ByteOffset(sb_area), data_offset - sb_area, true)
        .await
        .map_err(io_err(device))?;
    device
        .write_zeroes(ByteOffset(data_offset), data_size, true)
        .await
        .map_err(io_err(device))?;
    device.flush().await.map_err(io_err(device))
}
