//! md's on-disk superblocks, parsed from untrusted bytes: version 0.90
//! (`mdp_super_t`, in the byte order of the machine that wrote it, at the
//! last 64 KiB-aligned 64 KiB of the device) and version 1
//! (`mdp_superblock_1`, little-endian, at the end (1.0), the start (1.1) or
//! 4 KiB from the start (1.2)), as `include/uapi/linux/raid/md_p.h` lays
//! them out.
//!
//! ```text
//!  read(device) ─► for each version: 4 KiB at offset(version, size)
//!                    └─ magic? ─► parse_at() ─► MdSuperblock
//!               ─► the one created last if several (as mdadm's guess_super)
//! ```
//!
//! Every field is bounded before use (roles, counts, offsets inside the
//! device); the checksum is computed as md computes it (`calc_sb_1_csum`,
//! `calc_sb_csum`) and kept beside the stored one: `vraid examine` shows a
//! bad one, assembly refuses it ([`MdSuperblock::verify`]). No input makes
//! the parser panic (proptests, fuzz target `md_superblock`).

use thiserror::Error;

use crate::block::{BlockDevice, BlockError};
use crate::units::ByteOffset;

/// Bytes of a superblock read (`MD_SB_BYTES`; 1.x uses 256 + 2 per device).
pub const SB_BYTES: usize = 4096;
/// md's magic (`MD_SB_MAGIC`).
pub const MAGIC: u32 = 0xa92b_4efc;
/// `resync_offset` of an array in sync (md's `MaxSector`).
pub const IN_SYNC: u64 = u64::MAX;
/// Most devices a 1.x superblock can describe in its 4 KiB ((4096-256)/2).
pub const MAX_DEV_1: u32 = 1920;
/// Device descriptors of a 0.90 superblock (`MD_SB_DISKS`).
pub const DISKS_0_90: usize = 27;

/// 1.x feature bits (`MD_FEATURE_*`).
pub mod feature {
    pub const BITMAP_OFFSET: u32 = 1;
    pub const RECOVERY_OFFSET: u32 = 2;
    pub const RESHAPE_ACTIVE: u32 = 4;
    pub const BAD_BLOCKS: u32 = 8;
    pub const REPLACEMENT: u32 = 16;
    pub const RESHAPE_BACKWARDS: u32 = 32;
    pub const NEW_OFFSET: u32 = 64;
    pub const RECOVERY_BITMAP: u32 = 128;
    pub const CLUSTERED: u32 = 256;
    pub const JOURNAL: u32 = 512;
    pub const PPL: u32 = 1024;
    pub const MULTIPLE_PPLS: u32 = 2048;
    pub const RAID0_LAYOUT: u32 = 4096;
}

/// The superblock versions md writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum MdVersion {
    #[serde(rename = "0.90")]
    V0_90,
    #[serde(rename = "1.0")]
    V1_0,
    #[serde(rename = "1.1")]
    V1_1,
    #[serde(rename = "1.2")]
    V1_2,
}

impl MdVersion {
    /// Every version, in the order `read` tries them.
    pub const ALL: [MdVersion; 4] = [
        MdVersion::V1_2,
        MdVersion::V1_1,
        MdVersion::V1_0,
        MdVersion::V0_90,
    ];

    /// "0.90", "1.0", "1.1" or "1.2".
    pub fn as_str(self) -> &'static str {
        match self {
            MdVersion::V0_90 => "0.90",
            MdVersion::V1_0 => "1.0",
            MdVersion::V1_1 => "1.1",
            MdVersion::V1_2 => "1.2",
        }
    }

    /// Byte offset of this version's superblock on a device of `size`
    /// bytes, if the device has room for it.
    pub fn offset(self, size: u64) -> Option<u64> {
        let at = match self {
            MdVersion::V1_1 => 0,
            MdVersion::V1_2 => 4096,
            // super1.c: 8 KiB before the end, rounded down to 4 KiB.
            MdVersion::V1_0 => ((size / 512).checked_sub(16)? & !7) * 512,
            // MD_NEW_SIZE_SECTORS: the last 64 KiB-aligned 64 KiB.
            MdVersion::V0_90 => (size & !0xffff).checked_sub(0x10000)?,
        };
        (at.checked_add(SB_BYTES as u64)? <= size).then_some(at)
    }
}

impl std::fmt::Display for MdVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a device is to its array.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(tag = "kind", content = "slot", rename_all = "snake_case")]
pub enum Role {
    /// Holds slot N of the array.
    Active(u32),
    /// A spare (or, in a role table, an unused entry).
    Spare,
    /// Failed out of the array.
    Faulty,
    /// The array's write journal device.
    Journal,
}

/// A reshape (restripe) in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Reshape {
    /// Next array sector to reshape.
    pub position: u64,
    pub new_level: i32,
    pub delta_disks: i32,
    pub new_layout: u32,
    pub new_chunk_bytes: u64,
}

/// One member's md superblock, decoded.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MdSuperblock {
    pub version: MdVersion,
    /// 0.90 only: written by a big-endian machine.
    pub big_endian: bool,
    /// Byte offset of the superblock on the device.
    pub super_offset: u64,
    /// The array UUID, in the byte order mdadm prints it.
    pub array_uuid: [u8; 16],
    /// The array name (1.x `set_name`; empty for 0.90).
    pub name: String,
    /// Creation time, Unix seconds.
    pub ctime: u64,
    /// Last superblock update, Unix seconds.
    pub utime: u64,
    /// md's level number (-1 linear, 0, 1, 4, 5, 6, 10, ...).
    pub level: i32,
    /// md's `layout` field (an algorithm for 4/5/6, copies for 10).
    pub layout: u32,
    /// Chunk size in bytes (0 for RAID-1).
    pub chunk_bytes: u64,
    /// Slots of the array.
    pub raid_disks: u32,
    /// Sectors of each member the array uses (md's `size`, `dev_sectors`).
    pub component_sectors: u64,
    /// First data sector of this member.
    pub data_offset: u64,
    /// Sectors of this member available for data from `data_offset`.
    pub data_size: u64,
    /// Update counter.
    pub events: u64,
    /// Array sectors known in sync ([`IN_SYNC`]: all).
    pub resync_offset: u64,
    /// This device's number (index into `roles`).
    pub dev_number: u32,
    /// 1.x only: this device's UUID.
    pub device_uuid: Option<[u8; 16]>,
    /// This device's role.
    pub role: Role,
    /// The role of every device number, as this superblock records them.
    pub roles: Vec<Role>,
    /// 1.x `feature_map` (0.90: 0).
    pub feature_map: u32,
    /// A write-intent bitmap is present (1.x: its offset from the
    /// superblock in sectors; 0.90: `Some(0)` when the state bit is set).
    pub bitmap_offset: Option<i32>,
    /// This member is being rebuilt: sectors before this are valid.
    pub recovery_offset: Option<u64>,
    /// A reshape in progress.
    pub reshape: Option<Reshape>,
    /// The checksum stored in the superblock.
    pub stored_csum: u32,
    /// The checksum of the bytes as read.
    pub computed_csum: u32,
}

/// Why a superblock cannot be used.
#[derive(Debug, Error)]
pub enum MdSuperblockError {
    #[error("no md superblock (none of versions 0.90, 1.0, 1.1 or 1.2)")]
    NotMd,
    #[error("md {version} superblock: {len} bytes, not {SB_BYTES}")]
    Short { version: MdVersion, len: usize },
    #[error("md {version}: a device of {size} bytes has no room for it")]
    NoRoom { version: MdVersion, size: u64 },
    #[error("md {version} superblock at byte {at}: no md magic")]
    BadMagic { version: MdVersion, at: u64 },
    #[error("md {version} superblock at byte {at}: major version {major}")]
    BadMajor {
        version: MdVersion,
        at: u64,
        major: u32,
    },
    #[error("md {version} superblock at byte {at}: {field} = {value}: {why}")]
    Field {
        version: MdVersion,
        at: u64,
        field: &'static str,
        value: u64,
        why: &'static str,
    },
    #[error(
        "md {version} superblock at byte {at}: checksum {stored:#010x} stored, \
         {computed:#010x} computed"
    )]
    Checksum {
        version: MdVersion,
        at: u64,
        stored: u32,
        computed: u32,
    },
    #[error("reading the md superblock")]
    Io(#[from] BlockError),
}

impl MdSuperblock {
    /// The stored checksum matches the bytes.
    pub fn csum_ok(&self) -> bool {
        self.stored_csum == self.computed_csum
    }

    /// Refuses a superblock whose checksum does not match.
    pub fn verify(&self) -> Result<(), MdSuperblockError> {
        if self.csum_ok() {
            return Ok(());
        }
        Err(MdSuperblockError::Checksum {
            version: self.version,
            at: self.super_offset,
            stored: self.stored_csum,
            computed: self.computed_csum,
        })
    }

    /// The array was stopped cleanly (nothing left to resync).
    pub fn clean(&self) -> bool {
        self.resync_offset == IN_SYNC
    }

    /// The array UUID as mdadm prints it (`xxxxxxxx:xxxxxxxx:...`).
    pub fn uuid_string(&self) -> String {
        mdadm_uuid(&self.array_uuid)
    }
}

/// 16 bytes as mdadm prints a UUID: four groups of eight hex digits.
pub fn mdadm_uuid(bytes: &[u8; 16]) -> String {
    let groups: Vec<String> = bytes
        .chunks(4)
        .map(|g| g.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    groups.join(":")
}

/// Fixed-width fields of a superblock in one byte order.
pub(super) struct Fields<'a> {
    pub b: &'a [u8],
    pub big: bool,
}

impl Fields<'_> {
    pub fn u32(&self, at: usize) -> u32 {
        let w: [u8; 4] = self.bytes(at);
        if self.big {
            u32::from_be_bytes(w)
        } else {
            u32::from_le_bytes(w)
        }
    }

    pub fn u64(&self, at: usize) -> u64 {
        let w: [u8; 8] = self.bytes(at);
        if self.big {
            u64::from_be_bytes(w)
        } else {
            u64::from_le_bytes(w)
        }
    }

    pub fn u16(&self, at: usize) -> u16 {
        let w: [u8; 2] = self.bytes(at);
        if self.big {
            u16::from_be_bytes(w)
        } else {
            u16::from_le_bytes(w)
        }
    }

    /// `N` bytes at `at`; zeroes past the end (callers check the length
    /// first, so this never happens on a whole superblock).
    pub fn bytes<const N: usize>(&self, at: usize) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some(src) = self.b.get(at..at.saturating_add(N)) {
            out.copy_from_slice(src);
        }
        out
    }
}

/// md's checksum fold: a 64-bit sum of 32-bit words, high half added to
/// the low half (`md_csum_fold`), the checksum word counted as zero.
pub(super) fn fold_csum(f: &Fields<'_>, len: usize, csum_at: usize) -> u32 {
    let mut sum: u64 = 0;
    let mut at = 0;
    while at + 4 <= len {
        if at != csum_at {
            sum += f.u32(at) as u64;
        }
        at += 4;
    }
    if len - at == 2 {
        sum += f.u16(at) as u64;
    }
    ((sum & 0xffff_ffff) + (sum >> 32)) as u32
}

/// Decodes the `version` superblock in `block` (the 4 KiB at
/// `version.offset(device_size)`), bounding every field by the device.
pub fn parse_at(
    version: MdVersion,
    block: &[u8],
    device_size: u64,
) -> Result<MdSuperblock, MdSuperblockError> {
    if block.len() < SB_BYTES {
        return Err(MdSuperblockError::Short {
            version,
            len: block.len(),
        });
    }
    let at = version
        .offset(device_size)
        .ok_or(MdSuperblockError::NoRoom {
            version,
            size: device_size,
        })?;
    let block = &block[..SB_BYTES];
    match version {
        MdVersion::V0_90 => super::superblock0::parse(block, at),
        _ => super::superblock1::parse(version, block, at, device_size),
    }
}

/// True when `block` starts with md's magic in either byte order.
fn has_magic(block: &[u8]) -> bool {
    let w: [u8; 4] = Fields {
        b: block,
        big: false,
    }
    .bytes(0);
    u32::from_le_bytes(w) == MAGIC || u32::from_be_bytes(w) == MAGIC
}

/// Reads `device`'s md superblock. With several (an old one left behind
/// by a re-create), the one created last wins, as in mdadm.
pub async fn read(device: &dyn BlockDevice) -> Result<MdSuperblock, MdSuperblockError> {
    let size = device.size();
    let mut found: Vec<Result<MdSuperblock, MdSuperblockError>> = Vec::new();
    for version in MdVersion::ALL {
        let Some(at) = version.offset(size) else {
            continue;
        };
        let mut block = vec![0u8; SB_BYTES];
        device.read(ByteOffset(at), &mut block).await?;
        if has_magic(&block) {
            found.push(parse_at(version, &block, size));
        }
    }
    let newest = found
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .max_by_key(|sb| (sb.csum_ok(), sb.ctime))
        .cloned();
    if let Some(sb) = newest {
        return Ok(sb);
    }
    found
        .into_iter()
        .find_map(|r| r.err())
        .map_or(Err(MdSuperblockError::NotMd), Err)
}

/// A field error of the superblock at `at`.
pub(super) fn bad(
    version: MdVersion,
    at: u64,
    field: &'static str,
    value: u64,
    why: &'static str,
) -> MdSuperblockError {
    MdSuperblockError::Field {
        version,
        at,
        field,
        value,
        why,
    }
}
