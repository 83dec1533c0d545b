//! md's internal write-intent bitmap (docs/FORMAT.md §12 "Internal
//! bitmap"): `bitmap_super_t` parsed from untrusted bytes (fuzz target
//! `md_bitmap`), the checks a bitmap must pass before vraid writes the
//! array, and the bit math: which bit covers which sector, where it lies in
//! the area, which 512-byte sectors of the area a change rewrites.
//!
//! ```text
//!  member bytes at super_offset + bitmap_offset·512
//!     ─► parse (256 bytes) ─► BitmapSuper
//!     ─► check(array) ─► Geometry (chunk, bits, area bytes) or one-line reason
//!  Bits (area bytes in memory) ─► set_range(domain sectors) ─► dirty sectors
//! ```

use thiserror::Error;

/// `BITMAP_MAGIC`.
pub const MAGIC: u32 = 0x6d74_6962;
/// Bytes of `bitmap_super_t`; the bits follow it.
pub const SB_LEN: usize = 256;
/// The version md writes (`BITMAP_MAJOR_HI`: little-endian bit order).
pub const VERSION: u32 = 4;
/// State bits (`BITMAP_STALE`, `BITMAP_WRITE_ERROR`).
pub const STATE_STALE: u32 = 1 << 1;
pub const STATE_WRITE_ERROR: u32 = 1 << 2;
/// md's `COUNTER_MAX`, the largest `write_behind`.
const WRITE_BEHIND_MAX: u32 = 16383;
/// Largest area vraid keeps in memory (md's are at most a few hundred KiB).
pub const AREA_MAX: u64 = 64 << 20;

/// Byte offsets of the fields vraid writes.
pub const EVENTS_AT: usize = 24;
pub const EVENTS_CLEARED_AT: usize = 32;

/// A bitmap superblock, decoded.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BitmapSuper {
    pub version: u32,
    pub uuid: [u8; 16],
    pub events: u64,
    pub events_cleared: u64,
    /// Sectors the bits cover.
    pub sync_size: u64,
    pub state: u32,
    /// Bytes per bit.
    pub chunk_bytes: u32,
    pub daemon_sleep: u32,
    pub write_behind: u32,
    pub sectors_reserved: u32,
    pub nodes: u32,
}

/// Why bytes are not a bitmap superblock.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BitmapError {
    #[error("{0} bytes, not {SB_LEN}")]
    Short(usize),
    #[error("magic {0:#010x}, not {MAGIC:#010x}")]
    Magic(u32),
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    (le32(b, at) as u64) | ((le32(b, at + 4) as u64) << 32)
}

/// Decodes the first 256 bytes of `b` (the magic checked; the other
/// fields are checked by [`BitmapSuper::check`]).
pub fn parse(b: &[u8]) -> Result<BitmapSuper, BitmapError> {
    if b.len() < SB_LEN {
        return Err(BitmapError::Short(b.len()));
    }
    if le32(b, 0) != MAGIC {
        return Err(BitmapError::Magic(le32(b, 0)));
    }
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&b[8..24]);
    Ok(BitmapSuper {
        version: le32(b, 4),
        uuid,
        events: le64(b, EVENTS_AT),
        events_cleared: le64(b, EVENTS_CLEARED_AT),
        sync_size: le64(b, 40),
        state: le32(b, 48),
        chunk_bytes: le32(b, 52),
        daemon_sleep: le32(b, 56),
        write_behind: le32(b, 60),
        sectors_reserved: le32(b, 64),
        nodes: le32(b, 68),
    })
}

/// What a checked bitmap covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Sectors per bit.
    pub chunk_sectors: u64,
    /// Bits in the area.
    pub bits: u64,
    /// Bytes of the area written: superblock and bits, rounded up to 512.
    pub area_bytes: u64,
}

/// What the array expects of its bitmap.
#[derive(Clone, Copy, Debug)]
pub struct Expect<'a> {
    pub uuid: &'a [u8; 16],
    /// The freshest md superblock's event count.
    pub events: u64,
    /// Sectors of the level's bitmap domain (per member, or the array for
    /// RAID-10).
    pub domain_sectors: u64,
}

impl BitmapSuper {
    /// The bitmap is one vraid can keep for an array expecting `want`:
    /// its geometry, or the one-line reason it is not.
    pub fn check(&self, want: &Expect<'_>) -> Result<Geometry, String> {
        self.check_fields()?;
        if &self.uuid != want.uuid {
            return Err("its UUID is not the array's".into());
        }
        if self.events < want.events {
            return Err(format!(
                "out of date (events {} < the array's {}): md does a full resync; \
                 assemble it with mdadm first",
                self.events, want.events
            ));
        }
        if self.sync_size < want.domain_sectors {
            return Err(format!(
                "covers {} sectors, the array needs {}",
                self.sync_size, want.domain_sectors
            ));
        }
        let chunk_sectors = u64::from(self.chunk_bytes / 512);
        let bits = self.sync_size.div_ceil(chunk_sectors);
        let area_bytes = (SB_LEN as u64 + bits.div_ceil(8)).next_multiple_of(512);
        if area_bytes > AREA_MAX {
            return Err(format!("{bits} bits ({area_bytes} bytes) is too large"));
        }
        let reserved = u64::from(self.sectors_reserved) * 512;
        if reserved != 0 && area_bytes > reserved {
            return Err(format!(
                "{bits} bits need {area_bytes} bytes, past its {reserved} reserved"
            ));
        }
        Ok(Geometry {
            chunk_sectors,
            bits,
            area_bytes,
        })
    }

    /// The fields md checks (`md_bitmap_read_sb`) and those vraid needs.
    fn check_fields(&self) -> Result<(), String> {
        match self.version {
            VERSION => {}
            3 => return Err("version 3 (host-endian bit order) is not written by vraid".into()),
            5 => return Err("version 5 (clustered) is not written by vraid".into()),
            v => return Err(format!("unsupported version {v}")),
        }
        if self.nodes != 0 {
            return Err(format!("{} cluster nodes", self.nodes));
        }
        if self.chunk_bytes < 512 || !self.chunk_bytes.is_power_of_two() {
            return Err(format!(
                "chunk size {} bytes is not a power of two of at least 512",
                self.chunk_bytes
            ));
        }
        if self.daemon_sleep == 0 {
            return Err("daemon sleep 0 is out of range".into());
        }
        if self.write_behind > WRITE_BEHIND_MAX {
            return Err(format!(
                "write-behind {} is out of range",
                self.write_behind
            ));
        }
        if self.state & STATE_STALE != 0 {
            return Err(
                "md marked it stale: md does a full resync; assemble it with mdadm first".into(),
            );
        }
        if self.state & STATE_WRITE_ERROR != 0 {
            return Err("md recorded a write error on it".into());
        }
        Ok(())
    }
}

/// The bitmap area as one member holds it (superblock and bits), kept in
/// memory while the array is written.
#[derive(Clone, Debug)]
pub struct Bits {
    pub geometry: Geometry,
    /// `area_bytes` bytes: the superblock, then the bits.
    pub area: Vec<u8>,
    /// Bits this session set (cleared again at an orderly close).
    set_here: Vec<u64>,
}

impl Bits {
    /// The area `area` (`geometry.area_bytes` long) as read.
    pub fn new(geometry: Geometry, area: Vec<u8>) -> Bits {
        Bits {
            geometry,
            area,
            set_here: Vec::new(),
        }
    }

    /// Byte of the area and mask of bit `bit`.
    fn at(bit: u64) -> (usize, u8) {
        (SB_LEN + (bit / 8) as usize, 1 << (bit % 8))
    }

    /// Bit `bit` is set.
    pub fn is_set(&self, bit: u64) -> bool {
        let (byte, mask) = Bits::at(bit);
        self.area.get(byte).is_some_and(|b| b & mask != 0)
    }

    /// ORs `other`'s bits (another member's copy) into these.
    pub fn merge(&mut self, other: &[u8]) {
        for (a, b) in self.area[SB_LEN..].iter_mut().zip(&other[SB_LEN..]) {
            *a |= b;
        }
    }

    /// Sets the bits covering domain sectors `first..=last`; returns the
    /// 512-byte sectors of the area that changed (empty: all were set).
    pub fn set_range(&mut self, first: u64, last: u64) -> Vec<u64> {
        let cs = self.geometry.chunk_sectors;
        let top = self.geometry.bits.saturating_sub(1);
        let mut sectors: Vec<u64> = Vec::new();
        for bit in (first / cs).min(top)..=(last / cs).min(top) {
            if self.is_set(bit) {
                continue;
            }
            let (byte, mask) = Bits::at(bit);
            self.area[byte] |= mask;
            self.set_here.push(bit);
            let sector = byte as u64 / 512;
            if sectors.last() != Some(&sector) {
                sectors.push(sector);
            }
        }
        sectors
    }

    /// Clears the bits this session set and sets both event counts to
    /// `events` (an orderly close); true if any bit was set here.
    pub fn clear_session(&mut self, events: u64) -> bool {
        let had = !self.set_here.is_empty();
        for bit in std::mem::take(&mut self.set_here) {
            let (byte, mask) = Bits::at(bit);
            self.area[byte] &= !mask;
        }
        self.set_events(events, Some(events));
        had
    }

    /// Writes `events` (and `events_cleared` if given) into the superblock.
    pub fn set_events(&mut self, events: u64, cleared: Option<u64>) {
        self.area[EVENTS_AT..EVENTS_AT + 8].copy_from_slice(&events.to_le_bytes());
        if let Some(c) = cleared {
            self.area[EVENTS_CLEARED_AT..EVENTS_CLEARED_AT + 8].copy_from_slice(&c.to_le_bytes());
        }
    }

    /// Bits set in the area.
    pub fn count_set(&self) -> u64 {
        (0..self.geometry.bits).filter(|b| self.is_set(*b)).count() as u64
    }
}
