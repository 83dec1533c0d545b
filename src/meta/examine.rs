//! `examine`: what a member's superblock says, as JSON or text.

use std::fmt;

use uuid::Uuid;

use super::superblock::{read_superblock, ArrayState, CopyId, RoleEntry};
use super::{bitmap_image, MetaError};
use crate::block::BlockDevice;
use crate::units::format_size;

/// A member's superblock, for `vraid examine` (serializes to JSON).
#[derive(Clone, Debug, serde::Serialize)]
pub struct ExamineReport {
    /// Member name (path).
    pub device: String,
    /// Array UUID.
    pub array_uuid: Uuid,
    /// This member's UUID.
    pub member_uuid: Uuid,
    /// Array name.
    pub name: String,
    /// RAID level number (0, 1, 5, 6, 10).
    pub level: u32,
    /// RAID-10 layout (n2, n3, f2, f3, o2, o3); absent for other levels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layout: Option<String>,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Members in the array.
    pub member_count: u32,
    /// This member's role (4294967295 for a hot spare).
    pub role: u32,
    /// A hot spare of the array (holds no role yet).
    pub spare: bool,
    /// Start of the data area in bytes.
    pub data_offset: u64,
    /// Start of the block checksum area in bytes (FORMAT.md §8).
    pub csum_offset: u64,
    /// Data area size in bytes (per member).
    pub data_size: u64,
    /// Event counter.
    pub events: u64,
    /// Clean or dirty.
    pub state: ArrayState,
    /// Unix seconds at creation.
    pub creation_time: u64,
    /// Unix seconds of the last superblock write.
    pub update_time: u64,
    /// Member table, by role.
    pub members: Vec<RoleEntry>,
    /// Rebuild progress of the member being rebuilt (member data bytes in sync).
    pub rebuild_checkpoint: Option<u64>,
    /// The write-intent bitmap is maintained.
    pub bitmap_valid: bool,
    /// The block checksum area is maintained (`csum_state` = 1).
    pub checksums_valid: bool,
    /// Where the block checksums live: `"inline"` (a tag sector after each
    /// 4 KiB block, superblock flag `INLINE_CSUM`) or `"separate"`.
    pub checksum_layout: &'static str,
    /// The written-region map is kept (superblock flag `WRITTEN_MAP`, §10).
    pub written_map: bool,
    /// The RAID-5 partial-parity journal is maintained (`journal_state` = 1).
    pub journal_valid: bool,
    /// Unix seconds of the last completed scrub (0 = never).
    pub scrub_time: u64,
    /// A `vraid replace` in progress: role and new member UUID.
    pub replace: Option<super::superblock::ReplaceRecord>,
    /// Set write-intent bits (region indexes) in this member's bitmap.
    pub bitmap_dirty_regions: Vec<u64>,
    /// Which superblock copy is in use.
    pub copy_used: CopyId,
    /// The other copy, if it is invalid, with the reason.
    pub bad_copy: Option<String>,
    /// Another process holds the device exclusively (a serving vraid,
    /// a `flock`, a mount); `None` when not probed.
    pub in_use_elsewhere: Option<bool>,
}

/// What a device without a vraid superblock holds (`vraid examine`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct ForeignReport {
    /// Device name (path).
    pub device: String,
    /// Always false: no valid vraid superblock.
    pub vraid: bool,
    /// Everything the pre-write check finds (empty: all zero).
    pub found: Vec<super::signature::Signature>,
    /// Another process holds the device exclusively.
    pub in_use_elsewhere: Option<bool>,
    /// An md superblock was found but cannot be read: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub md_error: Option<String>,
}

impl ForeignReport {
    /// Probes `device` (its first and last MiB).
    pub async fn probe(device: &dyn BlockDevice) -> Result<ForeignReport, MetaError> {
        let found = super::signature::scan(device)
            .await
            .map_err(|source| MetaError::Io {
                device: device.name().to_string(),
                source,
            })?;
        Ok(ForeignReport {
            device: device.name().to_string(),
            vraid: false,
            found,
            in_use_elsewhere: None,
            md_error: None,
        })
    }

    /// "an ext4 filesystem", or "nothing (all zero)".
    pub fn summary(&self) -> String {
        if self.found.is_empty() {
            "nothing (first and last MiB all zero)".to_string()
        } else {
            super::signature::describe(&self.found)
        }
    }
}

impl fmt::Display for ForeignReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}:", self.device)?;
        writeln!(f, "  vraid superblock : none")?;
        writeln!(f, "            Holds : {}", self.summary())?;
        if let Some(e) = &self.md_error {
            writeln!(f, "    md superblock : unreadable: {e}")?;
        }
        if let Some(busy) = self.in_use_elsewhere {
            writeln!(f, "           In use : {}", in_use_text(busy))?;
        }
        Ok(())
    }
}

fn in_use_text(busy: bool) -> &'static str {
    if busy {
        "yes, held exclusively by another process"
    } else {
        "no"
    }
}

/// Reads and reports a member's superblock.
pub async fn examine(device: &dyn BlockDevice) -> Result<ExamineReport, MetaError> {
    let read = read_superblock(device)
        .await
        .map_err(|source| MetaError::Superblock {
            device: device.name().to_string(),
            source,
        })?;
    let sb = read.superblock;
    let regions = sb
        .layout
        .data_size
        .div_ceil(1 << sb.layout.bitmap_region_shift);
    let mut bits = vec![0u8; bitmap_image::image_len(regions, sb.layout.bitmap_len)];
    let bitmap_dirty_regions = match device
        .read(crate::units::ByteOffset(sb.layout.bitmap_offset), &mut bits)
        .await
    {
        Ok(()) => bitmap_image::dirty_regions(&bits, regions),
        Err(_) => Vec::new(),
    };
    Ok(ExamineReport {
        device: device.name().to_string(),
        array_uuid: sb.array_uuid,
        member_uuid: sb.member_uuid,
        name: sb.name,
        level: sb.level.number(),
        layout: sb.level.raid10_shape().map(|s| s.to_string()),
        chunk_size: sb.chunk_size,
        member_count: sb.member_count,
        role: sb.role,
        spare: sb.role == super::superblock::SPARE_ROLE,
        data_offset: sb.layout.data_offset,
        csum_offset: sb.layout.csum_offset,
        data_size: sb.layout.data_size,
        events: sb.events,
        state: sb.state,
        creation_time: sb.creation_time,
        update_time: sb.update_time,
        written_map: sb.flags & super::superblock::FLAG_WRITTEN_MAP != 0,
        members: sb.members,
        rebuild_checkpoint: sb.rebuild_checkpoint,
        bitmap_valid: sb.bitmap_valid,
        checksums_valid: sb.checksums_valid,
        checksum_layout: if sb.flags & super::superblock::FLAG_INLINE_CSUM != 0 {
            "inline"
        } else {
            "separate"
        },
        journal_valid: sb.journal_valid,
        scrub_time: sb.scrub_time,
        replace: sb.replace,
        bitmap_dirty_regions,
        copy_used: read.copy,
        bad_copy: read
            .bad_copy
            .map(|(copy, err)| format!("copy {copy:?}: {err}")),
        in_use_elsewhere: None,
    })
}

impl fmt::Display for ExamineReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_identity(f)?;
        self.fmt_metadata(f)
    }
}

impl ExamineReport {
    /// The array, this member's place in it and the data area.
    fn fmt_identity(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}:", self.device)?;
        writeln!(f, "       Array name : {}", self.name)?;
        writeln!(f, "       Array UUID : {}", self.array_uuid)?;
        writeln!(f, "      Member UUID : {}", self.member_uuid)?;
        writeln!(f, "       RAID level : raid{}", self.level)?;
        if let Some(layout) = &self.layout {
            writeln!(f, "           Layout : {layout}")?;
        }
        writeln!(
            f,
            "       Chunk size : {}",
            format_size(self.chunk_size as u64)
        )?;
        writeln!(f, "          Members : {}", self.member_count)?;
        if self.spare {
            writeln!(f, "             Role : spare")?;
        } else {
            writeln!(f, "             Role : {}", self.role)?;
        }
        writeln!(f, "      Data offset : {} bytes", self.data_offset)?;
        writeln!(
            f,
            "        Data size : {} bytes ({})",
            self.data_size,
            format_size(self.data_size)
        )?;
        writeln!(f, "           Events : {}", self.events)?;
        writeln!(f, "            State : {:?}", self.state)?;
        writeln!(f, "  Superblock copy : {:?}", self.copy_used)
    }

    /// The metadata areas' states, passes in progress and the member table.
    fn fmt_metadata(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(c) = self.rebuild_checkpoint {
            writeln!(f, "  Rebuild checkpt : {c} bytes ({})", format_size(c))?;
        }
        writeln!(
            f,
            "    Write bitmap  : {}, {} dirty regions",
            if self.bitmap_valid {
                "maintained"
            } else {
                "not maintained"
            },
            self.bitmap_dirty_regions.len()
        )?;
        let maintained = |on: bool| if on { "maintained" } else { "not maintained" };
        writeln!(
            f,
            "    Checksums     : {}, {} layout",
            maintained(self.checksums_valid),
            self.checksum_layout
        )?;
        writeln!(f, "    PPL journal   : {}", maintained(self.journal_valid))?;
        writeln!(
            f,
            "    Written map   : {}",
            if self.written_map {
                "kept (passes skip regions never written)"
            } else {
                "none (array made before it: passes walk everything)"
            }
        )?;
        if self.scrub_time > 0 {
            writeln!(f, "    Last scrub    : {} (Unix seconds)", self.scrub_time)?;
        }
        if let Some(r) = &self.replace {
            writeln!(
                f,
                "    Replacing     : role {} by member {}",
                r.role, r.member_uuid
            )?;
        }
        if let Some(bad) = &self.bad_copy {
            writeln!(f, "    Bad copy      : {bad}")?;
        }
        if let Some(busy) = self.in_use_elsewhere {
            writeln!(f, "    In use        : {}", in_use_text(busy))?;
        }
        writeln!(f, "    Member table  :")?;
        for (role, entry) in self.members.iter().enumerate() {
            writeln!(
                f,
                "      {role:>3}  {}  {:?}",
                entry.member_uuid, entry.state
            )?;
        }
        Ok(())
    }
}
