//! What a device already holds, from its first and last MiB: the pure
//! parser behind the pre-write check (`create`, `add`, `replace`, spares)
//! and `vraid examine`.
//!
//! ```text
//!  head = bytes [0, HEAD_LEN)   tail = bytes [size - TAIL_LEN, size)
//!        └──────────────┬───────────────┘
//!                 probe(head, tail, size) ─► Vec<Signature>
//!   vraid superblock ─► only that (the rest of the area is ours)
//!   md, filesystems, swap, LUKS, LVM2, GPT, MBR ─► each one found
//!   nothing named but non-zero bytes ─► Data { offset }
//! ```
//!
//! Offsets follow the formats' own definitions: md `md_p.h` (0.90 at the
//! last 64 KiB-aligned 64 KiB, 1.0 at 8 KiB from the end, 1.1 at 0, 1.2 at
//! 4 KiB), the ext2 superblock at 1024, btrfs at 64 KiB, swap at the end of
//! the first page, LVM2's label in one of the first four sectors, GPT in
//! LBA 1 (512- or 4096-byte sectors). The parser never panics on any
//! input (proptest below, fuzz target `signature`).

use std::fmt;

use uuid::Uuid;

use super::superblock::{Superblock, COPY_OFFSETS, SPARE_ROLE, SUPERBLOCK_SIZE};
use crate::block::{BlockDevice, BlockError};
use crate::units::ByteOffset;

/// Bytes read from the start of a device.
pub const HEAD_LEN: u64 = 1 << 20;
/// Bytes read from the end of a device.
pub const TAIL_LEN: u64 = 1 << 20;

/// One thing found on a device.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Signature {
    /// A vraid superblock (either copy).
    Vraid {
        /// Array name.
        name: String,
        /// Array UUID.
        array_uuid: Uuid,
        /// This member's UUID.
        member_uuid: Uuid,
        /// Role, `None` for a hot spare.
        role: Option<u32>,
    },
    /// A Linux md superblock.
    Md {
        /// "0.90", "1.0", "1.1" or "1.2".
        version: &'static str,
        /// Byte offset of the superblock.
        offset: u64,
    },
    /// A filesystem.
    Filesystem {
        /// ext2, ext3, ext4, xfs, btrfs, vfat, exfat, ntfs.
        fs: &'static str,
    },
    /// A Linux swap area.
    Swap,
    /// A LUKS header.
    Luks {
        /// 1 or 2.
        version: u16,
    },
    /// An LVM2 physical volume label.
    LvmPv,
    /// A GPT partition table.
    Gpt,
    /// An MBR partition table.
    Mbr,
    /// Non-zero bytes of no known format.
    Data {
        /// Offset of the first non-zero byte.
        offset: u64,
    },
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Signature::Vraid {
                name,
                array_uuid,
                role,
                ..
            } => match role {
                Some(r) => write!(
                    f,
                    "a vraid superblock (array {name}, {array_uuid}, role {r})"
                ),
                None => write!(f, "a vraid superblock (hot spare of {name}, {array_uuid})"),
            },
            Signature::Md { version, offset } => {
                write!(
                    f,
                    "a Linux md superblock (version {version}, at byte {offset})"
                )
            }
            Signature::Filesystem { fs } => {
                let an = matches!(fs.as_bytes().first(), Some(b'e' | b'x' | b'n'));
                write!(f, "{} {fs} filesystem", if an { "an" } else { "a" })
            }
            Signature::Swap => write!(f, "a swap area"),
            Signature::Luks { version } => write!(f, "a LUKS{version} header"),
            Signature::LvmPv => write!(f, "an LVM2 physical volume"),
            Signature::Gpt => write!(f, "a GPT partition table"),
            Signature::Mbr => write!(f, "an MBR partition table"),
            Signature::Data { offset } => write!(f, "data (a non-zero byte at {offset})"),
        }
    }
}

/// The device's bytes as far as the probe sees them.
struct View<'a> {
    head: &'a [u8],
    tail: &'a [u8],
    size: u64,
}

impl View<'_> {
    /// `len` bytes at absolute offset `at`, from the head or the tail.
    fn at(&self, at: u64, len: usize) -> Option<&[u8]> {
        let end = at.checked_add(len as u64)?;
        if end > self.size {
            return None;
        }
        if end <= self.head.len() as u64 {
            return self.head.get(at as usize..end as usize);
        }
        let tail_start = self.size.checked_sub(self.tail.len() as u64)?;
        let from = at.checked_sub(tail_start)?;
        self.tail.get(from as usize..from as usize + len)
    }

    fn is(&self, at: u64, magic: &[u8]) -> bool {
        self.at(at, magic.len()) == Some(magic)
    }

    fn le32(&self, at: u64) -> Option<u32> {
        let b = self.at(at, 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn le16(&self, at: u64) -> Option<u16> {
        let b = self.at(at, 2)?;
        Some(u16::from_le_bytes([b[0], b[1]]))
    }
}

/// Everything found in `head` (the device's first bytes) and `tail` (its
/// last bytes) of a device of `size` bytes. Empty: all zero.
pub fn probe(head: &[u8], tail: &[u8], size: u64) -> Vec<Signature> {
    let v = View { head, tail, size };
    if let Some(sb) = vraid(&v) {
        return vec![sb];
    }
    let mut found = Vec::new();
    found.extend(md(&v));
    found.extend(filesystem(&v).map(|fs| Signature::Filesystem { fs }));
    found.extend(swap(&v));
    found.extend(luks(&v));
    found.extend(lvm(&v));
    found.extend(partition_table(&v, &found));
    if found.is_empty() {
        found.extend(first_non_zero(&v).map(|offset| Signature::Data { offset }));
    }
    found
}

fn vraid(v: &View<'_>) -> Option<Signature> {
    let sb = COPY_OFFSETS
        .iter()
        .filter_map(|&off| v.at(off, SUPERBLOCK_SIZE))
        .find_map(|block| Superblock::decode(block).ok())?;
    Some(Signature::Vraid {
        name: sb.name,
        array_uuid: sb.array_uuid,
        member_uuid: sb.member_uuid,
        role: (sb.role != SPARE_ROLE).then_some(sb.role),
    })
}

/// md superblocks where md puts them (`md::superblock::MdVersion::offset`),
/// by magic and major version.
fn md(v: &View<'_>) -> Vec<Signature> {
    use crate::md::superblock::{MdVersion, MAGIC};
    [
        MdVersion::V1_1,
        MdVersion::V1_2,
        MdVersion::V1_0,
        MdVersion::V0_90,
    ]
    .into_iter()
    .filter_map(|version| {
        let off = version.offset(v.size)?;
        let v0 = version == MdVersion::V0_90;
        // 0.90 is in its writer's byte order; its major version is 0 either way.
        let magic = v.le32(off) == Some(MAGIC) || (v0 && v.le32(off) == Some(MAGIC.swap_bytes()));
        (magic && v.le32(off + 4) == Some(u32::from(!v0))).then_some(Signature::Md {
            version: version.as_str(),
            offset: off,
        })
    })
    .collect()
}

fn filesystem(v: &View<'_>) -> Option<&'static str> {
    if v.le16(1024 + 0x38) == Some(0xef53) {
        return Some(ext_kind(v));
    }
    if v.is(0, b"XFSB") {
        return Some("xfs");
    }
    if v.is(0x10040, b"_BHRfS_M") {
        return Some("btrfs");
    }
    if v.is(3, b"NTFS    ") {
        return Some("ntfs");
    }
    if v.is(3, b"EXFAT   ") {
        return Some("exfat");
    }
    let boot = v.is(510, &[0x55, 0xaa]);
    let fat = v.is(54, b"FAT1") || v.is(82, b"FAT32   ");
    (boot && fat).then_some("vfat")
}

/// ext4 if it uses ext4-only features, ext3 if it has a journal, else ext2.
fn ext_kind(v: &View<'_>) -> &'static str {
    let compat = v.le32(1024 + 0x5c).unwrap_or(0);
    let incompat = v.le32(1024 + 0x60).unwrap_or(0);
    // extents, 64bit, flex_bg
    if incompat & (0x40 | 0x80 | 0x200) != 0 {
        "ext4"
    } else if compat & 0x4 != 0 {
        "ext3"
    } else {
        "ext2"
    }
}

fn swap(v: &View<'_>) -> Option<Signature> {
    [4096u64, 8192, 16384, 65536]
        .iter()
        .any(|&page| v.is(page - 10, b"SWAPSPACE2") || v.is(page - 10, b"SWAP-SPACE"))
        .then_some(Signature::Swap)
}

fn luks(v: &View<'_>) -> Option<Signature> {
    if !v.is(0, b"LUKS\xba\xbe") {
        return None;
    }
    let b = v.at(6, 2)?;
    Some(Signature::Luks {
        version: u16::from_be_bytes([b[0], b[1]]),
    })
}

fn lvm(v: &View<'_>) -> Option<Signature> {
    (0..4u64)
        .any(|s| v.is(s * 512, b"LABELONE") && v.is(s * 512 + 24, b"LVM2 001"))
        .then_some(Signature::LvmPv)
}

fn partition_table(v: &View<'_>, found: &[Signature]) -> Option<Signature> {
    if v.is(512, b"EFI PART") || v.is(4096, b"EFI PART") {
        return Some(Signature::Gpt);
    }
    // A boot sector of a filesystem also ends in 55 AA; only an MBR whose
    // four entries look like partition entries counts.
    let named = found
        .iter()
        .any(|s| matches!(s, Signature::Filesystem { .. } | Signature::Luks { .. }));
    if named || !v.is(510, &[0x55, 0xaa]) {
        return None;
    }
    let entries = v.at(446, 64)?;
    let sane = entries.chunks(16).all(|e| e[0] == 0 || e[0] == 0x80);
    let used = entries.chunks(16).any(|e| e[4] != 0);
    (sane && used).then_some(Signature::Mbr)
}

fn first_non_zero(v: &View<'_>) -> Option<u64> {
    if let Some(i) = v.head.iter().position(|&b| b != 0) {
        return Some(i as u64);
    }
    let tail_start = v.size.saturating_sub(v.tail.len() as u64);
    v.tail
        .iter()
        .position(|&b| b != 0)
        .map(|i| tail_start + i as u64)
}

/// What was found, as one phrase: "an ext4 filesystem and a swap area".
pub fn describe(found: &[Signature]) -> String {
    found
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(" and ")
}

/// Reads the first and last MiB of `device` and probes them.
pub async fn scan(device: &dyn BlockDevice) -> Result<Vec<Signature>, BlockError> {
    let size = device.size();
    let mut head = vec![0u8; HEAD_LEN.min(size) as usize];
    device.read(ByteOffset(0), &mut head).await?;
    let tail_len = TAIL_LEN.min(size);
    let mut tail = vec![0u8; tail_len as usize];
    device.read(ByteOffset(size - tail_len), &mut tail).await?;
    Ok(probe(&head, &tail, size))
}

#[cfg(test)]
#[path = "signature_tests.rs"]
mod tests;
