//! RAID-10's shape and placement: which near/far/offset layout an array
//! uses ([`Raid10Shape`], md's `layout` number) and, in whole chunks, where
//! the copies of each volume chunk live ([`Raid10Map`]). The placement is
//! md's own (`md_layout::Raid10Layout`, md's `__raid10_find_phys` and
//! `raid10_find_virt`): this module only converts md's sectors to our
//! chunks and rows and adds the questions the data path asks.
//!
//! ```text
//!  n2 over 4:        n2 over 3:        f2 over 4:            o2 over 4:
//!  m0 m1 m2 m3       m0 m1 m2          m0 m1 m2 m3           m0 m1 m2 m3
//!  A  A  B  B        A  A  B           A  B  C  D            A  B  C  D
//!  C  C  D  D        B  C  C           ...                   D  A  B  C
//!                                      D  A  B  C  (half way down)
//! ```
//!
//! A member "row" is a chunk-sized slot of its data area (member offset /
//! chunk). Every copy of a chunk fills one whole row of one member.

use std::fmt;
use std::str::FromStr;

use super::layout::MemberIndex;
use super::md_layout::{MdLayoutError, Raid10Layout};

/// A RAID-10 layout: `near` adjacent copies or `far` copies a far stride
/// (or, `offset`, one chunk row) apart. md's `layout` number is
/// `near | far << 8 | offset << 16`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Raid10Shape {
    near: u8,
    far: u8,
    offset: bool,
}

/// Why a RAID-10 shape or map was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Raid10Error {
    /// Not `n2`, `n3`, `f2`, `f3`, `o2` or `o3`.
    #[error("unknown RAID-10 layout {0:?}: expected n2, n3, f2, f3, o2 or o3")]
    Name(String),
    /// A layout number this build does not make.
    #[error("unsupported RAID-10 layout number {0:#x}")]
    Code(u32),
    /// md's geometry refused it (too few members for the copies, ...).
    #[error(transparent)]
    Md(#[from] MdLayoutError),
}

impl Raid10Shape {
    /// md's default: two near copies.
    pub const N2: Raid10Shape = Raid10Shape {
        near: 2,
        far: 1,
        offset: false,
    };

    /// md's `layout` number.
    pub const fn code(self) -> u32 {
        self.near as u32 | (self.far as u32) << 8 | (self.offset as u32) << 16
    }

    /// Inverse of [`Raid10Shape::code`], for the six layouts we make.
    pub fn from_code(code: u32) -> Result<Raid10Shape, Raid10Error> {
        let s = Raid10Shape {
            near: (code & 0xff) as u8,
            far: ((code >> 8) & 0xff) as u8,
            offset: code & (1 << 16) != 0,
        };
        let known = matches!((s.near, s.far, s.offset), (2 | 3, 1, false) | (1, 2 | 3, _));
        if known && s.code() == code {
            Ok(s)
        } else {
            Err(Raid10Error::Code(code))
        }
    }

    /// Copies of every chunk (2 or 3).
    pub const fn copies(self) -> usize {
        self.near as usize * self.far as usize
    }
}

impl Default for Raid10Shape {
    fn default() -> Self {
        Raid10Shape::N2
    }
}

impl fmt::Display for Raid10Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.far, self.offset) {
            (1, _) => write!(f, "n{}", self.near),
            (n, false) => write!(f, "f{n}"),
            (n, true) => write!(f, "o{n}"),
        }
    }
}

impl FromStr for Raid10Shape {
    type Err = Raid10Error;
    fn from_str(s: &str) -> Result<Raid10Shape, Raid10Error> {
        let bad = || Raid10Error::Name(s.to_string());
        let t = s.trim().to_ascii_lowercase();
        let (kind, n) = t.split_at(t.len().min(1));
        let n: u32 = match n {
            "2" => 2,
            "3" => 3,
            _ => return Err(bad()),
        };
        let code = match kind {
            "n" => 1 << 8 | n,
            "f" => n << 8 | 1,
            "o" => n << 8 | 1 | 1 << 16,
            _ => return Err(bad()),
        };
        Raid10Shape::from_code(code)
    }
}

/// Where the copies of every chunk of one RAID-10 array live, in chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Raid10Map {
    md: Raid10Layout,
    shape: Raid10Shape,
    members: usize,
    /// Sectors per chunk.
    chunk_sectors: u64,
    /// Volume chunks.
    chunks: u64,
    /// Rows per member.
    rows: u64,
}

/// One copy of a volume chunk: row `row` of `member`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkCopy {
    pub member: MemberIndex,
    pub row: u64,
}

/// The copies of one chunk, in md's order.
pub type Copies = Vec<ChunkCopy>;

impl Raid10Map {
    /// The map of `shape` over `members` members of `rows` chunk rows of
    /// `chunk` bytes each.
    pub fn new(
        shape: Raid10Shape,
        members: usize,
        chunk: u64,
        rows: u64,
    ) -> Result<Raid10Map, Raid10Error> {
        let chunk_sectors = chunk / 512;
        let dev_sectors = rows * chunk_sectors;
        let md = Raid10Layout::new(shape.code(), members, chunk_sectors, dev_sectors)?;
        let chunks = md.array_sectors(dev_sectors) / chunk_sectors;
        if chunks == 0 {
            return Err(Raid10Error::Md(MdLayoutError::BadRaid10 {
                layout: shape.code(),
                why: "members too small for one chunk of every copy",
            }));
        }
        Ok(Raid10Map {
            md,
            shape,
            members,
            chunk_sectors,
            chunks,
            rows,
        })
    }

    /// The layout.
    pub fn shape(&self) -> Raid10Shape {
        self.shape
    }

    /// Volume chunks.
    pub fn chunks(&self) -> u64 {
        self.chunks
    }

    /// The copies of volume chunk `chunk` (`< chunks()`), md's order:
    /// the first is where md reads from when all members are up.
    pub fn copies(&self, chunk: u64) -> Copies {
        self.md
            .find_phys(chunk * self.chunk_sectors)
            .into_iter()
            .map(|r| ChunkCopy {
                member: MemberIndex(r.disk),
                row: r.sector / self.chunk_sectors,
            })
            .collect()
    }

    /// The volume chunk row `row` of `member` holds a copy of; `None` for
    /// a row no chunk uses (md leaves a few at the end of odd layouts).
    pub fn chunk_at(&self, member: MemberIndex, row: u64) -> Option<u64> {
        if member.0 >= self.members || row >= self.rows {
            return None;
        }
        let chunk = self.md.find_virt(member.0, row * self.chunk_sectors) / self.chunk_sectors;
        let mine = ChunkCopy { member, row };
        (chunk < self.chunks && self.copies(chunk).contains(&mine)).then_some(chunk)
    }

    /// True when every chunk keeps a copy on a member not in `down`.
    pub fn survives(&self, down: &[bool]) -> bool {
        // The members of a chunk's copies repeat with a period of at most
        // `members * near` chunks (md's placement depends only on the
        // chunk's first device and, for far copies, its far set).
        let period = (self.members * self.shape.copies()) as u64;
        (0..self.chunks.min(period)).all(|c| {
            self.copies(c)
                .iter()
                .any(|k| !down.get(k.member.0).copied().unwrap_or(true))
        })
    }
}

#[cfg(test)]
mod tests;
