//! The written-region map (docs/FORMAT.md §10): which regions of the data
//! area were ever written, so rebuild, resync and scrub skip the rest.
//!
//! ```text
//!  assembly: every present member's image ─► decode (magic, CRC, shift)
//!      ─► valid ones ORed ─► none valid: all set
//!  data write (bitmap mark): note(range) ─► region not on disk yet?
//!      ─► bitmap write: pending image written to every member before the
//!      bitmap image, same flush (a full resync's set bits add nothing)
//!  passes: is_written(a, b) per region
//! ```
//!
//! The image is at most 56 KiB whatever the capacity (coarser regions for
//! members over 28 TiB). Decoding is a pure function over untrusted bytes
//! (fuzzed: `fuzz/fuzz_targets/written.rs`).

use std::sync::{Arc, Mutex};

use futures::future::join_all;

use super::update::ArrayMetadata;
use crate::block::{BlockDevice, BlockError, BlockResult, Durability};
use crate::units::ByteOffset;

/// Where the image lies on a member.
pub const WRITTEN_OFFSET: u64 = 8192;
/// The most bytes it may take (to 64K).
pub const WRITTEN_AREA: u64 = 57344;
const HEADER: usize = 16;
const MAGIC: &[u8; 8] = b"VRAIDWR1";

/// Why one member's image was not used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WrittenError {
    /// No image there (all zero: never written, or a wiped member).
    #[error("no written-region image")]
    Absent,
    /// Not an image.
    #[error("bad magic")]
    Magic,
    /// Written for another geometry.
    #[error("region shift {found}, expected {expected}")]
    Shift {
        /// On disk.
        found: u32,
        /// Derived from the superblock.
        expected: u32,
    },
    /// Torn or damaged.
    #[error("CRC mismatch")]
    Crc,
    /// Shorter than the image needs.
    #[error("short image ({0} bytes)")]
    Short(usize),
}

/// log2 of the bytes one written bit covers: the smallest shift from
/// `bitmap_shift` on whose image fits [`WRITTEN_AREA`].
pub fn written_shift(bitmap_shift: u32, data_size: u64) -> u32 {
    let mut s = bitmap_shift.min(63);
    while s < 63 && HEADER as u64 + regions(data_size, s).div_ceil(8) > WRITTEN_AREA {
        s += 1;
    }
    s
}

fn regions(data_size: u64, shift: u32) -> u64 {
    data_size.div_ceil(1u64 << shift)
}

/// One decoded (or in-memory) image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenImage {
    shift: u32,
    regions: u64,
    bits: Vec<u8>,
}

impl WrittenImage {
    /// No region written.
    pub fn empty(shift: u32, data_size: u64) -> WrittenImage {
        let regions = regions(data_size, shift);
        WrittenImage {
            shift,
            regions,
            bits: vec![0; regions.div_ceil(8) as usize],
        }
    }

    /// Every region written (the safe fallback).
    pub fn all_set(shift: u32, data_size: u64) -> WrittenImage {
        let mut w = WrittenImage::empty(shift, data_size);
        w.set_regions(0, w.regions);
        w
    }

    /// Decodes one member's raw image (any length) for a data area of
    /// `data_size` bytes and regions of `1 << shift` bytes.
    pub fn decode(raw: &[u8], shift: u32, data_size: u64) -> Result<WrittenImage, WrittenError> {
        if raw.iter().all(|&b| b == 0) {
            return Err(WrittenError::Absent);
        }
        if raw.len() < HEADER || &raw[..8] != MAGIC {
            return Err(WrittenError::Magic);
        }
        let found = u32::from_le_bytes(raw[8..12].try_into().expect("4 bytes"));
        if found != shift {
            return Err(WrittenError::Shift {
                found,
                expected: shift,
            });
        }
        let mut w = WrittenImage::empty(shift, data_size);
        let len = HEADER + w.bits.len();
        if raw.len() < len {
            return Err(WrittenError::Short(raw.len()));
        }
        let stored = u32::from_le_bytes(raw[12..16].try_into().expect("4 bytes"));
        if stored != crc(&raw[..len]) {
            return Err(WrittenError::Crc);
        }
        w.bits.copy_from_slice(&raw[HEADER..len]);
        w.mask_tail();
        Ok(w)
    }

    /// The on-disk bytes, padded to 4 KiB.
    pub fn encode(&self) -> Vec<u8> {
        let len = HEADER + self.bits.len();
        let mut out = vec![0u8; len.div_ceil(4096) * 4096];
        out[..8].copy_from_slice(MAGIC);
        out[8..12].copy_from_slice(&self.shift.to_le_bytes());
        out[HEADER..len].copy_from_slice(&self.bits);
        let c = crc(&out[..len]);
        out[12..16].copy_from_slice(&c.to_le_bytes());
        out
    }

    fn mask_tail(&mut self) {
        let total = self.bits.len() as u64 * 8;
        for r in self.regions..total {
            self.bits[(r / 8) as usize] &= !(1 << (r % 8));
        }
    }

    fn get(&self, r: u64) -> bool {
        self.bits
            .get((r / 8) as usize)
            .is_some_and(|b| b & (1 << (r % 8)) != 0)
    }

    /// Sets regions `r0..r1`; true if any was clear.
    fn set_regions(&mut self, r0: u64, r1: u64) -> bool {
        let mut changed = false;
        for r in r0..r1.min(self.regions) {
            changed |= !self.get(r);
            self.bits[(r / 8) as usize] |= 1 << (r % 8);
        }
        changed
    }

    /// ORs `other` (same geometry) in.
    pub fn merge(&mut self, other: &WrittenImage) {
        self.bits
            .iter_mut()
            .zip(&other.bits)
            .for_each(|(a, b)| *a |= b);
    }

    /// Sets the regions covering member bytes `a..b`; true if any was clear.
    pub fn set_range(&mut self, a: u64, b: u64) -> bool {
        if b <= a {
            return false;
        }
        self.set_regions(a >> self.shift, ((b - 1) >> self.shift) + 1)
    }

    /// Does any region overlapping member bytes `a..b` hold a write?
    pub fn is_written(&self, a: u64, b: u64) -> bool {
        b > a && (a >> self.shift..=(b - 1) >> self.shift).any(|r| self.get(r))
    }

    /// Is any region overlapping member bytes `a..b` not set?
    pub fn missing(&self, a: u64, b: u64) -> bool {
        b > a && (a >> self.shift..=(b - 1) >> self.shift).any(|r| r < self.regions && !self.get(r))
    }

    /// Bytes of one region.
    pub fn region_size(&self) -> u64 {
        1 << self.shift
    }

    /// Bytes of a data area of `data_size` bytes in set regions (the last
    /// region may be partial).
    pub fn bytes(&self, data_size: u64) -> u64 {
        let full = self.count() * self.region_size();
        let last = self.regions.saturating_sub(1);
        let overhang = (self.regions << self.shift).saturating_sub(data_size);
        if self.regions > 0 && self.get(last) {
            full - overhang
        } else {
            full
        }
    }

    /// Regions set.
    pub fn count(&self) -> u64 {
        self.bits.iter().map(|b| u64::from(b.count_ones())).sum()
    }
}

fn crc(bytes: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&bytes[..12]);
    h.update(&[0; 4]);
    h.update(&bytes[16..]);
    h.finalize()
}

/// The map of one running array: the bits set in memory, the bits on disk
/// (on at least one member) and whether every member holds them.
#[derive(Debug)]
pub struct WrittenMap {
    state: Mutex<MapState>,
    data_size: u64,
}

#[derive(Debug)]
struct MapState {
    /// Every region known written (what the next image write carries).
    mem: WrittenImage,
    /// The bits some present member took (a superset of what a later
    /// assembly can lose: the images are ORed).
    on_disk: WrittenImage,
    /// Every present member took `on_disk`, and `mem` had no other bit.
    everywhere: bool,
}

/// An image to write: its bytes and the bits it carries.
#[derive(Debug)]
pub struct PendingImage {
    /// The encoded image.
    pub bytes: Vec<u8>,
    bits: WrittenImage,
}

impl WrittenMap {
    /// Reads and ORs the present members' images (all set if none decodes).
    pub async fn load(meta: &ArrayMetadata, bitmap_shift: u32, data_size: u64) -> WrittenMap {
        let shift = written_shift(bitmap_shift, data_size);
        let mut merged: Option<WrittenImage> = None;
        let mut same = true;
        let want = HEADER + regions(data_size, shift).div_ceil(8) as usize;
        for dev in meta.present_devices().await {
            let mut raw = vec![0u8; want.div_ceil(4096) * 4096];
            let decoded = match dev.read(ByteOffset(WRITTEN_OFFSET), &mut raw).await {
                Ok(()) => WrittenImage::decode(&raw, shift, data_size).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match decoded {
                Ok(w) => {
                    let m = merged.get_or_insert_with(|| w.clone());
                    same &= *m == w;
                    m.merge(&w);
                }
                Err(e) => {
                    same = false;
                    tracing::warn!(device = dev.name(), %e, "written-region map not used");
                }
            }
        }
        let image = merged.unwrap_or_else(|| {
            tracing::warn!(
                "no member holds a valid written-region map: every region counts as written"
            );
            same = false;
            WrittenImage::all_set(shift, data_size)
        });
        let map = WrittenMap::new(image, data_size);
        // A member that missed bits (or holds no image) gets them with the
        // next image write.
        map.lock().everywhere = same;
        map
    }

    /// A map holding `image`, taken to be on every member.
    pub fn new(image: WrittenImage, data_size: u64) -> WrittenMap {
        WrittenMap {
            state: Mutex::new(MapState {
                on_disk: image.clone(),
                mem: image,
                everywhere: true,
            }),
            data_size,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MapState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets every region (a run that cannot track writes).
    pub fn set_all(&self) {
        let mut st = self.lock();
        let r = st.mem.regions;
        st.mem.set_regions(0, r);
    }

    /// A write is about to change member bytes `a..b`: sets their regions
    /// in memory. True when one of them is not on disk yet: the image must
    /// be written ([`WrittenMap::pending`]) before the data.
    pub fn note(&self, a: u64, b: u64) -> bool {
        let mut st = self.lock();
        st.mem.set_range(a, b);
        st.on_disk.missing(a, b)
    }

    /// Is a region of member bytes `a..b` not on disk yet?
    pub fn missing(&self, a: u64, b: u64) -> bool {
        self.lock().on_disk.missing(a, b)
    }

    /// The image to write with the next metadata write, when some member
    /// may lack a bit of it.
    pub fn pending(&self) -> Option<PendingImage> {
        let st = self.lock();
        (!st.everywhere || st.mem != st.on_disk).then(|| PendingImage {
            bytes: st.mem.encode(),
            bits: st.mem.clone(),
        })
    }

    /// `image` was written to at least one present member (`every`: to all
    /// of them).
    pub fn wrote(&self, image: &PendingImage, every: bool) {
        let mut st = self.lock();
        st.on_disk.merge(&image.bits);
        st.everywhere = every && st.mem == image.bits;
    }

    /// The encoded image.
    pub fn encoded(&self) -> Vec<u8> {
        self.lock().mem.encode()
    }

    /// Bytes of the data area counted as written.
    pub fn written_bytes(&self) -> u64 {
        self.lock().mem.bytes(self.data_size)
    }

    /// Writes the image to every present member and flushes; succeeds if
    /// one took it. Until every member took it, the next bitmap write sends
    /// it again, so a member that missed it cannot keep a stale map (it
    /// could be the only copy left for a later rebuild).
    pub async fn persist(&self, meta: &ArrayMetadata) -> BlockResult {
        let image = {
            let st = self.lock();
            PendingImage {
                bytes: st.mem.encode(),
                bits: st.mem.clone(),
            }
        };
        let every = write_all(&meta.present_devices().await, &image.bytes).await?;
        self.wrote(&image, every);
        Ok(())
    }
}

/// Writes `image` at [`WRITTEN_OFFSET`] of every device and flushes.
/// Succeeds if one device took it; `true` if every device did.
pub async fn write_all(devices: &[Arc<dyn BlockDevice>], image: &[u8]) -> BlockResult<bool> {
    let results = join_all(devices.iter().map(|d| async move {
        d.write(ByteOffset(WRITTEN_OFFSET), image, Durability::Normal)
            .await?;
        d.flush().await
    }))
    .await;
    any_took(devices, results, "written-region map", "written map")
}

/// The outcome of one metadata write to every device (`results` in the
/// order of `devices`): it succeeds if one device took it, `true` if every
/// device did. Each failure is logged as a failed `what` write; none
/// taking it is [`BlockError::DataLost`] of `volume`.
pub(super) fn any_took(
    devices: &[Arc<dyn BlockDevice>],
    results: Vec<BlockResult>,
    what: &str,
    volume: &str,
) -> BlockResult<bool> {
    let mut ok = false;
    let mut first_err = None;
    for (d, r) in devices.iter().zip(results) {
        match r {
            Ok(()) => ok = true,
            Err(e) => {
                tracing::warn!(device = d.name(), %e, "{what} write failed");
                first_err.get_or_insert(e);
            }
        }
    }
    if ok {
        return Ok(first_err.is_none());
    }
    Err(first_err.unwrap_or(BlockError::DataLost {
        volume: volume.into(),
    }))
}

impl crate::raid::WrittenRegions for WrittenMap {
    fn region_size(&self) -> u64 {
        self.lock().mem.region_size()
    }

    fn is_written(&self, start: u64, end: u64) -> bool {
        self.lock().mem.is_written(start, end)
    }

    fn written_bytes(&self) -> u64 {
        WrittenMap::written_bytes(self)
    }
}

#[cfg(test)]
#[path = "written_tests.rs"]
mod tests;
