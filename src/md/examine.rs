//! `vraid examine` of an md member: the fields `mdadm --examine` shows,
//! as text (mdadm's labels) or JSON.

use std::fmt;

use super::assemble::level_name;
use super::superblock::{feature, mdadm_uuid, MdSuperblock, Reshape, Role};
use crate::units::format_size;

/// An md member's superblock, for `vraid examine`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MdReport {
    /// Device name (path).
    pub device: String,
    /// Always "md".
    pub kind: &'static str,
    /// "0.90", "1.0", "1.1" or "1.2".
    pub version: &'static str,
    /// 0.90 only: written by a big-endian machine.
    pub big_endian: bool,
    /// 1.x feature bits.
    pub feature_map: u32,
    /// Array UUID as mdadm prints it.
    pub array_uuid: String,
    /// Array name (1.x; empty for 0.90).
    pub name: String,
    /// Unix seconds.
    pub creation_time: u64,
    /// Unix seconds.
    pub update_time: u64,
    /// "raid5", "linear", ...
    pub raid_level: String,
    pub raid_devices: u32,
    /// Sectors of this device available for data.
    pub avail_dev_size: u64,
    /// Sectors of each device the array uses.
    pub used_dev_size: u64,
    /// Sectors.
    pub data_offset: u64,
    /// Sectors.
    pub super_offset: u64,
    /// Bytes (0 when the level has none).
    pub chunk_size: u64,
    /// md's layout number.
    pub layout: u32,
    /// The layout by name (left-symmetric, near=2, ...), if the level has one.
    pub layout_name: Option<String>,
    /// This device's role.
    pub device_role: Role,
    /// Device UUID (1.x).
    pub device_uuid: Option<String>,
    /// One letter per role: 'A' active, '.' missing.
    pub array_state: String,
    /// "clean" or "active" (not stopped cleanly).
    pub state: &'static str,
    pub events: u64,
    /// The stored checksum.
    pub checksum: u32,
    /// The checksum matches the superblock's bytes.
    pub checksum_ok: bool,
    /// The checksum of the bytes as read.
    pub checksum_computed: u32,
    /// A write-intent bitmap is present.
    pub bitmap: bool,
    /// Its offset from the superblock in sectors (1.x).
    pub bitmap_offset: Option<i32>,
    /// A reshape in progress (such arrays are not served).
    pub reshape: Option<Reshape>,
    /// This device is being rebuilt up to this sector.
    pub recovery_offset: Option<u64>,
}

impl MdReport {
    pub fn new(device: &str, sb: &MdSuperblock) -> MdReport {
        MdReport {
            device: device.to_string(),
            kind: "md",
            version: sb.version.as_str(),
            big_endian: sb.big_endian,
            feature_map: sb.feature_map,
            array_uuid: sb.uuid_string(),
            name: sb.name.clone(),
            creation_time: sb.ctime,
            update_time: sb.utime,
            raid_level: level_name(sb.level),
            raid_devices: sb.raid_disks,
            avail_dev_size: sb.data_size,
            used_dev_size: sb.component_sectors,
            data_offset: sb.data_offset,
            super_offset: sb.super_offset / 512,
            chunk_size: sb.chunk_bytes,
            layout: sb.layout,
            layout_name: layout_name(sb.level, sb.layout, sb.feature_map),
            device_role: sb.role,
            device_uuid: sb.device_uuid.as_ref().map(mdadm_uuid),
            array_state: array_state(sb),
            state: if sb.clean() { "clean" } else { "active" },
            events: sb.events,
            checksum: sb.stored_csum,
            checksum_ok: sb.csum_ok(),
            checksum_computed: sb.computed_csum,
            bitmap: sb.bitmap_offset.is_some(),
            bitmap_offset: sb.bitmap_offset,
            reshape: sb.reshape,
            recovery_offset: sb.recovery_offset,
        }
    }
}

/// mdadm's names of md's layouts.
pub fn layout_name(level: i32, layout: u32, feature_map: u32) -> Option<String> {
    let parity = |l: u32| -> String {
        match l {
            0 => "left-asymmetric",
            1 => "right-asymmetric",
            2 => "left-symmetric",
            3 => "right-symmetric",
            4 => "parity-first",
            5 => "parity-last",
            8 => "ddf-zero-restart",
            9 => "ddf-N-restart",
            10 => "ddf-N-continue",
            16 => "left-asymmetric-6",
            17 => "right-asymmetric-6",
            18 => "left-symmetric-6",
            19 => "right-symmetric-6",
            20 => "parity-first-6",
            _ => return format!("unknown ({l})"),
        }
        .to_string()
    };
    match level {
        5 | 6 => Some(parity(layout)),
        4 => Some("parity-last".into()),
        10 => Some(raid10_layout_name(layout)),
        0 if feature_map & feature::RAID0_LAYOUT != 0 => Some(
            match layout {
                1 => "original",
                2 => "alternate",
                _ => "unknown",
            }
            .into(),
        ),
        _ => None,
    }
}

/// "near=2", "far=2", "offset=2", "near=2, far=2".
fn raid10_layout_name(layout: u32) -> String {
    let near = layout & 0xff;
    let far = (layout >> 8) & 0xff;
    let mut parts = Vec::new();
    if near != 1 {
        parts.push(format!("near={near}"));
    }
    if far != 1 {
        let kind = if layout & 0x10000 != 0 {
            "offset"
        } else {
            "far"
        };
        parts.push(format!("{kind}={far}"));
    }
    parts.join(", ")
}

/// 'A' for each role some device holds in this superblock's table, '.'
/// for the others.
fn array_state(sb: &MdSuperblock) -> String {
    (0..sb.raid_disks)
        .map(|r| {
            if sb.roles.contains(&Role::Active(r)) {
                'A'
            } else {
                '.'
            }
        })
        .collect()
}

fn role_text(role: Role) -> String {
    match role {
        Role::Active(r) => format!("Active device {r}"),
        Role::Spare => "spare".into(),
        Role::Faulty => "faulty".into(),
        Role::Journal => "Journal".into(),
    }
}

fn sectors_text(s: u64) -> String {
    format!("{s} sectors ({})", format_size(s.saturating_mul(512)))
}

impl fmt::Display for MdReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}:", self.device)?;
        let endian = if self.big_endian { " (big-endian)" } else { "" };
        writeln!(f, "          Magic : a92b4efc")?;
        writeln!(f, "        Version : {}{endian}", self.version)?;
        writeln!(f, "    Feature Map : {:#x}", self.feature_map)?;
        writeln!(f, "     Array UUID : {}", self.array_uuid)?;
        if !self.name.is_empty() {
            writeln!(f, "           Name : {}", self.name)?;
        }
        writeln!(f, "  Creation Time : {} (Unix seconds)", self.creation_time)?;
        writeln!(f, "     Raid Level : {}", self.raid_level)?;
        writeln!(f, "   Raid Devices : {}", self.raid_devices)?;
        writeln!(f, " Avail Dev Size : {}", sectors_text(self.avail_dev_size))?;
        writeln!(f, "  Used Dev Size : {}", sectors_text(self.used_dev_size))?;
        writeln!(f, "    Data Offset : {} sectors", self.data_offset)?;
        writeln!(f, "   Super Offset : {} sectors", self.super_offset)?;
        writeln!(f, "          State : {}", self.state)?;
        if let Some(u) = &self.device_uuid {
            writeln!(f, "    Device UUID : {u}")?;
        }
        self.fmt_state(f)
    }
}

impl MdReport {
    fn fmt_state(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(off) = self.bitmap_offset {
            writeln!(f, "  Internal Bitmap : {off} sectors from superblock")?;
        }
        if let Some(r) = &self.reshape {
            writeln!(
                f,
                "  Reshape pos'n : {} sectors (to {}, {:+} devices); not served",
                r.position,
                level_name(r.new_level),
                r.delta_disks
            )?;
        }
        if let Some(r) = self.recovery_offset {
            writeln!(f, "Recovery Offset : {r} sectors")?;
        }
        writeln!(f, "    Update Time : {} (Unix seconds)", self.update_time)?;
        if self.checksum_ok {
            writeln!(f, "       Checksum : {:08x} - correct", self.checksum)?;
        } else {
            writeln!(
                f,
                "       Checksum : {:08x} - expected {:08x} (BAD)",
                self.checksum, self.checksum_computed
            )?;
        }
        writeln!(f, "         Events : {}", self.events)?;
        if let Some(l) = &self.layout_name {
            writeln!(f, "         Layout : {l}")?;
        }
        if self.chunk_size > 0 {
            writeln!(f, "     Chunk Size : {}K", self.chunk_size / 1024)?;
        }
        writeln!(f, "    Device Role : {}", role_text(self.device_role))?;
        writeln!(
            f,
            "    Array State : {} ('A' == active, '.' == missing)",
            self.array_state
        )
    }
}
