//! Linux md member images written byte by byte for the md tests that need
//! no guest: md 1.2 superblocks of a clean 2-disk RAID-1 or 3-disk RAID-5
//! (mdadm's field offsets, a valid `sb_csum`) over sparse 8 MiB files.

use std::path::{Path, PathBuf};

use crate::poke;

const MIB: u64 = 1 << 20;
/// Bytes of each member image.
pub const SIZE: u64 = 8 * MIB;
/// The data offset in sectors (1 MiB).
pub const DATA_OFFSET: u64 = 2048;
/// Sectors of each member's data area (and of the array).
pub const DATA_SECTORS: u64 = (SIZE - MIB) / 512;

/// A 1.2 superblock of a clean 2-disk md RAID-1 named "host:redmd" whose
/// UUID is 16 bytes of `uuid`, device `role`, `events` events.
pub fn raid1_superblock(uuid: u8, role: u32, events: u64) -> Vec<u8> {
    superblock(uuid, role, events, &Geometry::RAID1)
}

/// An md array's shape: level, disks, chunk (sectors), layout.
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    pub level: u32,
    pub disks: u32,
    pub chunk_sectors: u32,
    pub layout: u32,
}

impl Geometry {
    /// 2-disk RAID-1.
    pub const RAID1: Geometry = Geometry {
        level: 1,
        disks: 2,
        chunk_sectors: 0,
        layout: 0,
    };
    /// 3-disk RAID-5, 64 KiB chunks, left-symmetric (mdadm's default).
    pub const RAID5: Geometry = Geometry {
        level: 5,
        disks: 3,
        chunk_sectors: 128,
        layout: 2,
    };
}

/// A 1.2 superblock of a clean md array of shape `g` (see
/// [`raid1_superblock`]).
pub fn superblock(uuid: u8, role: u32, events: u64, g: &Geometry) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    let mut put = |at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
    put(0, &0xa92b_4efcu32.to_le_bytes());
    put(4, &1u32.to_le_bytes());
    put(16, &[uuid; 16]);
    put(32, b"host:redmd");
    put(64, &1_700_000_000u64.to_le_bytes());
    put(72, &g.level.to_le_bytes());
    put(76, &g.layout.to_le_bytes());
    put(80, &DATA_SECTORS.to_le_bytes());
    put(88, &g.chunk_sectors.to_le_bytes());
    put(92, &g.disks.to_le_bytes());
    put(128, &DATA_OFFSET.to_le_bytes());
    put(136, &DATA_SECTORS.to_le_bytes());
    put(144, &8u64.to_le_bytes());
    put(160, &role.to_le_bytes());
    put(168, &[role as u8 + 1; 16]);
    put(192, &1_700_000_100u64.to_le_bytes());
    put(200, &events.to_le_bytes());
    put(208, &u64::MAX.to_le_bytes());
    put(220, &g.disks.to_le_bytes());
    for r in 0..g.disks as usize {
        put(256 + 2 * r, &(r as u16).to_le_bytes());
    }
    set_csum(&mut b);
    b
}

/// Recomputes the `sb_csum` of 1.x superblock `b` as md does
/// (`calc_sb_1_csum` over 256 + 2·max_dev bytes, at most 4 KiB).
pub fn set_csum(b: &mut [u8]) {
    let max_dev = u32::from_le_bytes(b[220..224].try_into().unwrap()) as usize;
    let len = (256 + 2 * max_dev).min(4096);
    let sum: u64 = (0..len / 4)
        .filter(|w| *w * 4 != 216)
        .map(|w| u32::from_le_bytes(b[w * 4..w * 4 + 4].try_into().unwrap()) as u64)
        .sum::<u64>()
        // md's calc_sb_1_csum: an odd role count leaves a last 16-bit word.
        + (len % 4 == 2) as u64 * u16::from_le_bytes([b[len - 2], b[len - 1]]) as u64;
    let csum = ((sum & 0xffff_ffff) + (sum >> 32)) as u32;
    b[216..220].copy_from_slice(&csum.to_le_bytes());
}

/// The two member images (`md{uuid}-{role}.img` in `dir`) of that array,
/// 10 events, holding `data` at their data offset.
pub fn raid1_members(dir: &Path, uuid: u8, data: &[u8]) -> Vec<PathBuf> {
    (0..2u32)
        .map(|role| {
            let path = dir.join(format!("md{uuid:02x}-{role}.img"));
            let f = std::fs::File::create(&path).unwrap();
            f.set_len(SIZE).unwrap();
            drop(f);
            poke(&path, 4096, &raid1_superblock(uuid, role, 10));
            poke(&path, DATA_OFFSET * 512, data);
            path
        })
        .collect()
}

/// The member images (`md{uuid}-{role}.img` in `dir`) of a clean array of
/// shape `g`, 10 events, all data zero (so parity is consistent).
pub fn zeroed_members(dir: &Path, uuid: u8, g: &Geometry) -> Vec<PathBuf> {
    (0..g.disks)
        .map(|role| {
            let path = dir.join(format!("md{uuid:02x}-{role}.img"));
            let f = std::fs::File::create(&path).unwrap();
            f.set_len(SIZE).unwrap();
            drop(f);
            poke(&path, 4096, &superblock(uuid, role, 10, g));
            path
        })
        .collect()
}
