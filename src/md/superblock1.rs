//! md's version-1 superblock (`struct mdp_superblock_1`, little-endian):
//! 256 bytes of fields, then a 2-byte role per device number.
//!
//! ```text
//!    0 magic, major, feature_map, pad      16 set_uuid   32 set_name
//!   64 ctime  72 level  76 layout  80 size  88 chunksize  92 raid_disks
//!   96 bitmap_offset (signed)  100 new_level  104 reshape_position
//!  112 delta_disks  116 new_layout  120 new_chunk  124 new_offset
//!  128 data_offset  136 data_size  144 super_offset  152 recovery_offset
//!  160 dev_number  164 cnt_corrected_read  168 device_uuid  184 devflags..
//!  192 utime  200 events  208 resync_offset  216 sb_csum  220 max_dev
//!  256 dev_roles[max_dev]: role, 0xffff spare, 0xfffe faulty, 0xfffd journal
//! ```

use super::superblock::{
    bad, feature, fold_csum, Fields, MdSuperblock, MdSuperblockError, MdVersion, Reshape, Role,
    MAGIC, MAX_DEV_1,
};

/// Low 40 bits of the time fields are seconds.
const TIME_SEC_MASK: u64 = (1 << 40) - 1;
/// Offset of `sb_csum`.
pub(super) const CSUM_AT: usize = 216;
/// `MD_DISK_ROLE_SPARE`: the `dev_roles` entry of a device not in the
/// array (md fills every entry with it before writing its devices').
pub(super) const ROLE_SPARE: u16 = 0xffff;

/// A role entry of `dev_roles`.
pub(super) fn role_of(raw: u16) -> Role {
    match raw {
        0xffff => Role::Spare,
        0xfffe => Role::Faulty,
        0xfffd => Role::Journal,
        // 0xff00.. are reserved: read as spares (not part of the array).
        r if r >= 0xff00 => Role::Spare,
        r => Role::Active(r as u32),
    }
}

/// Magic, major version and `max_dev` (returned) of a 1.x superblock.
fn check_header(f: &Fields<'_>, version: MdVersion, at: u64) -> Result<u32, MdSuperblockError> {
    if f.u32(0) != MAGIC {
        return Err(MdSuperblockError::BadMagic { version, at });
    }
    if f.u32(4) != 1 {
        return Err(MdSuperblockError::BadMajor {
            version,
            at,
            major: f.u32(4),
        });
    }
    let max_dev = f.u32(220);
    if max_dev > MAX_DEV_1 {
        let why = "more than 4 KiB holds";
        return Err(bad(version, at, "max_dev", max_dev.into(), why));
    }
    Ok(max_dev)
}

/// Decodes a 1.x superblock found at byte `at` of a device of `size` bytes.
pub(super) fn parse(
    version: MdVersion,
    block: &[u8],
    at: u64,
    size: u64,
) -> Result<MdSuperblock, MdSuperblockError> {
    let f = Fields {
        b: block,
        big: false,
    };
    let max_dev = check_header(&f, version, at)?;
    check_offsets(&f, version, at, size)?;
    let roles: Vec<Role> = (0..max_dev as usize)
        .map(|i| role_of(f.u16(256 + 2 * i)))
        .collect();
    let dev_number = f.u32(160);
    let role = *roles
        .get(dev_number as usize)
        .ok_or_else(|| bad(version, at, "dev_number", dev_number.into(), "past max_dev"))?;
    let raid_disks = f.u32(92);
    if raid_disks == 0 || raid_disks > MAX_DEV_1 {
        let why = "out of range";
        return Err(bad(version, at, "raid_disks", raid_disks.into(), why));
    }
    let feature_map = f.u32(8);
    Ok(MdSuperblock {
        version,
        big_endian: false,
        super_offset: at,
        array_uuid: f.bytes(16),
        name: name_of(&f.bytes::<32>(32)),
        ctime: f.u64(64) & TIME_SEC_MASK,
        utime: f.u64(192) & TIME_SEC_MASK,
        level: f.u32(72) as i32,
        layout: f.u32(76),
        chunk_bytes: f.u32(88) as u64 * 512,
        raid_disks,
        component_sectors: f.u64(80),
        data_offset: f.u64(128),
        data_size: f.u64(136),
        events: f.u64(200),
        resync_offset: f.u64(208),
        dev_number,
        device_uuid: Some(f.bytes(168)),
        role,
        roles,
        feature_map,
        bitmap_offset: (feature_map & feature::BITMAP_OFFSET != 0).then(|| f.u32(96) as i32),
        recovery_offset: (feature_map & feature::RECOVERY_OFFSET != 0).then(|| f.u64(152)),
        reshape: (feature_map & feature::RESHAPE_ACTIVE != 0).then(|| Reshape {
            position: f.u64(104),
            new_level: f.u32(100) as i32,
            delta_disks: f.u32(112) as i32,
            new_layout: f.u32(116),
            new_chunk_bytes: f.u32(120) as u64 * 512,
        }),
        stored_csum: f.u32(CSUM_AT),
        computed_csum: fold_csum(&f, 256 + 2 * max_dev as usize, CSUM_AT),
    })
}

/// The superblock says it is where it was found, and its data area lies
/// inside the device.
fn check_offsets(
    f: &Fields<'_>,
    version: MdVersion,
    at: u64,
    size: u64,
) -> Result<(), MdSuperblockError> {
    let super_offset = f.u64(144);
    if super_offset.checked_mul(512) != Some(at) {
        return Err(bad(
            version,
            at,
            "super_offset",
            super_offset,
            "not the sector it was found at",
        ));
    }
    let (data_offset, data_size) = (f.u64(128), f.u64(136));
    let end = data_offset
        .checked_add(data_size)
        .and_then(|e| e.checked_mul(512));
    if end.is_none_or(|e| e > size) {
        return Err(bad(
            version,
            at,
            "data_offset + data_size",
            data_offset.saturating_add(data_size),
            "past the end of the device",
        ));
    }
    Ok(())
}

/// `set_name`: NUL-terminated, not necessarily UTF-8.
fn name_of(raw: &[u8; 32]) -> String {
    let len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..len]).into_owned()
}
