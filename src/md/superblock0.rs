//! md's version-0.90 superblock (`mdp_super_t`): 1024 32-bit words in the
//! byte order of the machine that wrote it (the magic tells which), at the
//! last 64 KiB-aligned 64 KiB of the device; data from sector 0 up to it.
//!
//! ```text
//!  words  0-31  constant: magic, major/minor/patch, uuid0, ctime, level,
//!               size (KiB), nr_disks, raid_disks, ..., uuid1-3 (13-15)
//!        32-63  state: utime, state, counts, sb_csum (38), events (39-40),
//!               cp_events, recovery_cp, reshape (44-49, minor > 90)
//!       64-127  personality: layout (64), chunk_size in bytes (65)
//!      128-991  disks[27]: number, major, minor, raid_disk, state
//!     992-1023  this_disk
//! ```

use super::superblock::{
    bad, fold_csum, Fields, MdSuperblock, MdSuperblockError, MdVersion, Reshape, Role, DISKS_0_90,
    IN_SYNC, MAGIC, SB_BYTES,
};

/// Byte offset of `sb_csum` (word 38).
pub(super) const CSUM_AT: usize = 38 * 4;
/// Byte offset of `disks[0]` (word 128) and of `this_disk` (word 992).
pub(super) const DISKS_AT: usize = 128 * 4;
pub(super) const THIS_DISK_AT: usize = 992 * 4;
/// Bytes of a device descriptor (32 words).
pub(super) const DESC_BYTES: usize = 128;

/// Descriptor state bits (`MD_DISK_*`).
pub(super) const DISK_FAULTY: u32 = 1 << 0;
pub(super) const DISK_ACTIVE: u32 = 1 << 1;
pub(super) const DISK_SYNC: u32 = 1 << 2;
pub(super) const DISK_REMOVED: u32 = 1 << 3;
/// Superblock state bits (`MD_SB_CLEAN`, `MD_SB_BITMAP_PRESENT`).
pub(super) const SB_CLEAN: u32 = 1 << 0;
pub(super) const SB_BITMAP_PRESENT: u32 = 1 << 8;

/// The role a descriptor (`number, major, minor, raid_disk, state`) gives.
fn descriptor_role(f: &Fields<'_>, at: usize, raid_disks: u32) -> Role {
    let (raid_disk, state) = (f.u32(at + 12), f.u32(at + 16));
    if state & DISK_FAULTY != 0 {
        Role::Faulty
    } else if state & DISK_ACTIVE != 0 && state & DISK_SYNC != 0 && raid_disk < raid_disks {
        Role::Active(raid_disk)
    } else {
        Role::Spare
    }
}

/// The byte order of the superblock at `at` (true: big-endian), from its
/// magic.
fn byte_order(block: &[u8], at: u64) -> Result<bool, MdSuperblockError> {
    let little = Fields {
        b: block,
        big: false,
    };
    match little.u32(0) {
        MAGIC => Ok(false),
        m if m.swap_bytes() == MAGIC => Ok(true),
        _ => Err(MdSuperblockError::BadMagic {
            version: MdVersion::V0_90,
            at,
        }),
    }
}

/// `raid_disks`, this disk's number and the component size in sectors,
/// each checked against its bound.
fn checked_counts(f: &Fields<'_>, at: u64) -> Result<(u32, u32, u64), MdSuperblockError> {
    let version = MdVersion::V0_90;
    if f.u32(4) != 0 {
        return Err(MdSuperblockError::BadMajor {
            version,
            at,
            major: f.u32(4),
        });
    }
    let raid_disks = f.u32(40);
    if raid_disks == 0 || raid_disks as usize > DISKS_0_90 {
        let why = "not 1 to 27";
        return Err(bad(version, at, "raid_disks", raid_disks.into(), why));
    }
    let dev_number = f.u32(THIS_DISK_AT);
    if dev_number as usize >= DISKS_0_90 {
        let why = "not 0 to 26";
        return Err(bad(version, at, "this_disk.number", dev_number.into(), why));
    }
    let component_sectors = f.u32(32) as u64 * 2;
    if component_sectors * 512 > at {
        let why = "reaches past the superblock";
        return Err(bad(version, at, "size", component_sectors / 2, why));
    }
    Ok((raid_disks, dev_number, component_sectors))
}

/// Decodes a 0.90 superblock found at byte `at` of a device of `size` bytes.
pub(super) fn parse(block: &[u8], at: u64) -> Result<MdSuperblock, MdSuperblockError> {
    let version = MdVersion::V0_90;
    let big = byte_order(block, at)?;
    let f = Fields { b: block, big };
    let (raid_disks, dev_number, component_sectors) = checked_counts(&f, at)?;
    let roles = (0..DISKS_0_90)
        .map(|i| descriptor_role(&f, DISKS_AT + i * DESC_BYTES, raid_disks))
        .collect();
    Ok(MdSuperblock {
        version,
        big_endian: big,
        super_offset: at,
        array_uuid: uuid_of(&f),
        name: String::new(),
        ctime: f.u32(24) as u64,
        utime: f.u32(128) as u64,
        level: f.u32(28) as i32,
        layout: f.u32(256),
        chunk_bytes: f.u32(260) as u64,
        raid_disks,
        component_sectors,
        data_offset: 0,
        data_size: at / 512,
        events: events_of(&f),
        resync_offset: if f.u32(132) & SB_CLEAN != 0 {
            IN_SYNC
        } else {
            0
        },
        dev_number,
        device_uuid: None,
        role: descriptor_role(&f, THIS_DISK_AT, raid_disks),
        roles,
        feature_map: 0,
        bitmap_offset: (f.u32(132) & SB_BITMAP_PRESENT != 0).then_some(0),
        recovery_offset: None,
        reshape: (f.u32(8) > 90).then(|| reshape_of(&f)),
        stored_csum: f.u32(CSUM_AT),
        computed_csum: fold_csum(&f, SB_BYTES, CSUM_AT),
    })
}

/// `set_uuid0` then `set_uuid1..3`, each printed big-endian by mdadm.
fn uuid_of(f: &Fields<'_>) -> [u8; 16] {
    let words = [f.u32(20), f.u32(52), f.u32(56), f.u32(60)];
    let mut out = [0u8; 16];
    for (dst, w) in out.chunks_mut(4).zip(words) {
        dst.copy_from_slice(&w.to_be_bytes());
    }
    out
}

/// Words 39 and 40: low then high on a little-endian writer, high then
/// low on a big-endian one (the struct declares them in that order).
fn events_of(f: &Fields<'_>) -> u64 {
    let (a, b) = (f.u32(39 * 4) as u64, f.u32(40 * 4) as u64);
    if f.big {
        (a << 32) | b
    } else {
        (b << 32) | a
    }
}

fn reshape_of(f: &Fields<'_>) -> Reshape {
    Reshape {
        position: f.u64(44 * 4),
        new_level: f.u32(46 * 4) as i32,
        delta_disks: f.u32(47 * 4) as i32,
        new_layout: f.u32(48 * 4),
        new_chunk_bytes: f.u32(49 * 4) as u64,
    }
}
