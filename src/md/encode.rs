//! Test-only encoder of md superblocks: the inverse of `parse_at`, for
//! round-trip property tests and for building md members in memory.

use super::superblock::{
    fold_csum, Fields, MdSuperblock, MdVersion, Role, IN_SYNC, MAGIC, SB_BYTES,
};
use super::superblock0 as v0;
use super::superblock1 as v1;

struct Out {
    b: Vec<u8>,
    big: bool,
}

impl Out {
    fn put(&mut self, at: usize, bytes: &[u8]) {
        let mut w = bytes.to_vec();
        if self.big {
            w.reverse();
        }
        self.b[at..at + w.len()].copy_from_slice(&w);
    }
    fn u16(&mut self, at: usize, v: u16) {
        self.put(at, &v.to_le_bytes())
    }
    fn u32(&mut self, at: usize, v: u32) {
        self.put(at, &v.to_le_bytes())
    }
    fn u64(&mut self, at: usize, v: u64) {
        self.put(at, &v.to_le_bytes())
    }
    fn raw(&mut self, at: usize, bytes: &[u8]) {
        self.b[at..at + bytes.len()].copy_from_slice(bytes);
    }
}

/// The 4 KiB superblock `sb` describes, with a correct checksum unless
/// `sb.stored_csum != sb.computed_csum` (then `stored_csum` is written).
pub fn encode(sb: &MdSuperblock) -> Vec<u8> {
    let mut o = Out {
        b: vec![0u8; SB_BYTES],
        big: sb.big_endian,
    };
    let (len, csum_at) = match sb.version {
        MdVersion::V0_90 => (encode0(&mut o, sb), v0::CSUM_AT),
        _ => (encode1(&mut o, sb), v1::CSUM_AT),
    };
    let csum = fold_csum(
        &Fields {
            b: &o.b,
            big: o.big,
        },
        len,
        csum_at,
    );
    let stored = if sb.csum_ok() { csum } else { sb.stored_csum };
    o.u32(csum_at, stored);
    o.b
}

fn encode1(o: &mut Out, sb: &MdSuperblock) -> usize {
    o.u32(0, MAGIC);
    o.u32(4, 1);
    o.u32(8, sb.feature_map);
    o.raw(16, &sb.array_uuid);
    o.raw(32, sb.name.as_bytes());
    o.u64(64, sb.ctime);
    o.u32(72, sb.level as u32);
    o.u32(76, sb.layout);
    o.u64(80, sb.component_sectors);
    o.u32(88, (sb.chunk_bytes / 512) as u32);
    o.u32(92, sb.raid_disks);
    o.u32(96, sb.bitmap_offset.unwrap_or(0) as u32);
    if let Some(r) = &sb.reshape {
        o.u32(100, r.new_level as u32);
        o.u64(104, r.position);
        o.u32(112, r.delta_disks as u32);
        o.u32(116, r.new_layout);
        o.u32(120, (r.new_chunk_bytes / 512) as u32);
    }
    o.u64(128, sb.data_offset);
    o.u64(136, sb.data_size);
    o.u64(144, sb.super_offset / 512);
    o.u64(152, sb.recovery_offset.unwrap_or(0));
    o.u32(160, sb.dev_number);
    o.raw(168, &sb.device_uuid.unwrap_or_default());
    o.u64(192, sb.utime);
    o.u64(200, sb.events);
    o.u64(208, sb.resync_offset);
    o.u32(220, sb.roles.len() as u32);
    for (i, role) in sb.roles.iter().enumerate() {
        let raw = match role {
            Role::Active(r) => *r as u16,
            Role::Spare => 0xffff,
            Role::Faulty => 0xfffe,
            Role::Journal => 0xfffd,
        };
        o.u16(256 + 2 * i, raw);
    }
    256 + 2 * sb.roles.len()
}

fn descriptor(o: &mut Out, at: usize, number: u32, role: Role) {
    o.u32(at, number);
    let (raid_disk, state) = match role {
        Role::Active(r) => (r, v0::DISK_ACTIVE | v0::DISK_SYNC),
        Role::Faulty => (0, v0::DISK_FAULTY),
        _ => (0, 0),
    };
    o.u32(at + 12, raid_disk);
    o.u32(at + 16, state);
}

fn encode0(o: &mut Out, sb: &MdSuperblock) -> usize {
    let u = &sb.array_uuid;
    let word = |i: usize| u32::from_be_bytes([u[i], u[i + 1], u[i + 2], u[i + 3]]);
    o.u32(0, MAGIC);
    o.u32(8, if sb.reshape.is_some() { 91 } else { 90 });
    o.u32(20, word(0));
    o.u32(24, sb.ctime as u32);
    o.u32(28, sb.level as u32);
    o.u32(32, (sb.component_sectors / 2) as u32);
    o.u32(40, sb.raid_disks);
    o.u32(52, word(4));
    o.u32(56, word(8));
    o.u32(60, word(12));
    o.u32(128, sb.utime as u32);
    let clean = if sb.resync_offset == IN_SYNC {
        v0::SB_CLEAN
    } else {
        0
    };
    let bitmap = if sb.bitmap_offset.is_some() {
        v0::SB_BITMAP_PRESENT
    } else {
        0
    };
    o.u32(132, clean | bitmap);
    let (lo, hi) = (sb.events as u32, (sb.events >> 32) as u32);
    let (first, second) = if o.big { (hi, lo) } else { (lo, hi) };
    o.u32(39 * 4, first);
    o.u32(40 * 4, second);
    if let Some(r) = &sb.reshape {
        o.u64(44 * 4, r.position);
        o.u32(46 * 4, r.new_level as u32);
        o.u32(47 * 4, r.delta_disks as u32);
        o.u32(48 * 4, r.new_layout);
        o.u32(49 * 4, r.new_chunk_bytes as u32);
    }
    o.u32(256, sb.layout);
    o.u32(260, sb.chunk_bytes as u32);
    for (i, role) in sb.roles.iter().enumerate() {
        descriptor(o, v0::DISKS_AT + i * v0::DESC_BYTES, i as u32, *role);
    }
    descriptor(o, v0::THIS_DISK_AT, sb.dev_number, sb.role);
    SB_BYTES
}
