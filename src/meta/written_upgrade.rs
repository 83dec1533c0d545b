//! Giving an array created before the written-region map one, in place
//! (docs/FORMAT.md §10 "Upgrade"): at a read-write start of a clean, whole
//! array, the members' holes say which regions were ever written.
//!
//! ```text
//!  upgradable? (read-write, clean, whole, no pass pending, checksums kept)
//!     no ─► None, with the reason (the array runs without the map)
//!  scan every member's data area: SEEK_DATA ─► region with a non-hole byte
//!     on any member = written (block devices: all written)
//!  image ─► every member + flush ─► superblock update with the flag
//! ```
//!
//! Nothing writes the array between the scan and the flag: the upgrade
//! runs before it serves, replays, resyncs or rebuilds.

use std::sync::Arc;

use super::assemble::Assembly;
use super::layout::ChecksumLayout;
use super::written::{write_all, written_shift, WrittenImage, WrittenMap};
use crate::block::{BlockDevice, BlockResult};
use crate::integrity::page::BLOCK;
use crate::integrity::tag::STRIDE;
use crate::units::ByteOffset;

/// Why an array without the map is not upgraded at this start, if it is
/// not.
pub fn not_upgradable(assembly: &Assembly, read_only: bool) -> Option<&'static str> {
    if read_only {
        Some("the array is served read-only")
    } else if assembly.was_dirty {
        Some("the array was not shut down cleanly")
    } else if assembly.is_degraded() || !assembly.readd.is_empty() {
        Some("a member is missing")
    } else if assembly.rebuild.is_some() || assembly.replace.is_some() {
        Some("a rebuild or replace is pending")
    } else if !assembly.checksums_valid {
        Some("its last run kept no block checksums")
    } else {
        None
    }
}

/// The data area of one member as the scan sees it.
struct Area {
    device: Arc<dyn BlockDevice>,
    offset: u64,
    inline: bool,
}

impl Area {
    /// Member bytes of `logical` data bytes.
    fn physical(&self, logical: u64) -> u64 {
        if self.inline {
            logical / BLOCK * STRIDE
        } else {
            logical
        }
    }

    /// The logical data bytes whose blocks member bytes `p..p + len` touch.
    fn logical(&self, p: u64, len: u64) -> (u64, u64) {
        if self.inline {
            (p / STRIDE * BLOCK, (p + len).div_ceil(STRIDE) * BLOCK)
        } else {
            (p, p + len)
        }
    }
}

/// Sets in `image` every region where `area` holds a byte that is not a
/// hole, asking the device one extent at a time and skipping the rest of
/// each region found written.
async fn scan_area(area: &Area, data_size: u64, image: &mut WrittenImage) -> BlockResult {
    let end = area.physical(data_size);
    let region = image.region_size();
    let mut p = 0;
    while p < end {
        let map = area
            .device
            .allocation(ByteOffset(area.offset + p), end - p)
            .await?;
        let Some(first) = map.first().filter(|x| x.len > 0) else {
            break;
        };
        let len = first.len.min(end - p);
        if first.state.zero {
            p += len;
            continue;
        }
        let (a, b) = area.logical(p, len);
        image.set_range(a, b.min(data_size));
        let next_region = (b.saturating_sub(1) / region + 1) * region;
        p = (p + len).max(area.physical(next_region));
    }
    Ok(())
}

/// The image of the regions the members of `assembly` hold data in.
pub async fn scan(assembly: &Assembly) -> BlockResult<WrittenImage> {
    let shift = written_shift(assembly.layout.bitmap_region_shift, assembly.data_size);
    let mut image = WrittenImage::empty(shift, assembly.data_size);
    let inline = assembly.checksum_layout == ChecksumLayout::Inline;
    for m in assembly.members.iter().flatten() {
        let area = Area {
            device: m.device.clone(),
            offset: assembly.data_offset,
            inline,
        };
        scan_area(&area, assembly.data_size, &mut image).await?;
    }
    Ok(image)
}

/// Upgrades `assembly` (which must be upgradable): scans, writes the image
/// to every member, then records the flag. Returns the map to run with.
pub async fn upgrade(assembly: &Assembly) -> Result<WrittenMap, String> {
    let image = scan(assembly).await.map_err(|e| format!("scanning: {e}"))?;
    let devices: Vec<Arc<dyn BlockDevice>> = assembly
        .members
        .iter()
        .flatten()
        .map(|m| m.device.clone())
        .collect();
    let every = write_all(&devices, &image.encode())
        .await
        .map_err(|e| format!("writing the map: {e}"))?;
    if !every {
        return Err("a member did not take the map".into());
    }
    assembly
        .metadata
        .enable_written_map()
        .await
        .map_err(|e| format!("recording it in the superblocks: {e}"))?;
    Ok(WrittenMap::new(image, assembly.data_size))
}

#[cfg(test)]
#[path = "written_upgrade_tests.rs"]
mod tests;
