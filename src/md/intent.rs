//! The write-intent bitmap of a writable md session (docs/FORMAT.md §12
//! "Internal bitmap"): every present member's copy read and checked when
//! the session opens, their bits ORed into one in-memory area, and the
//! area's sectors written back to every member (then flushed) when bits
//! are set or the superblock's events change.
//!
//! ```text
//!  load(array) ─► for each member: parse + check (bitmap.rs), area in the
//!                 device, outside data and superblock ─► Bits (ORed)
//!  write(members, bits, sectors) ─► each member: sectors ─► flush all
//! ```

use super::assemble::{MdArray, MdLevel, Slot};
use super::bitmap::{self, Bits, Expect, Geometry, SB_LEN};
use super::writable::StateError;
use crate::block::Durability;
use crate::units::ByteOffset;

/// Sectors of `array`'s bitmap domain (md's `resync_max_sectors`), or why
/// its level has none.
fn domain_sectors(array: &MdArray) -> Result<u64, String> {
    let sb = &array.freshest;
    let chunk = (array.chunk_bytes / 512).max(1);
    match &array.level {
        MdLevel::Raid1 => Ok(sb.component_sectors),
        MdLevel::Parity(_) => Ok(sb.component_sectors / chunk * chunk),
        MdLevel::Raid10(_) => Ok(array.size / 512),
        MdLevel::Raid0(_) | MdLevel::Linear(_) => {
            Err("a bitmap on a level without redundancy (md has none there)".into())
        }
    }
}

/// The session's bitmap: `None` without one; `Err` with the one-line
/// reason (prefixed "bitmap: ") when a member's copy fails a check.
pub async fn load(array: &MdArray) -> Result<Option<Bits>, String> {
    if array.freshest.bitmap_offset.is_none() {
        return Ok(None);
    }
    let fail = |why: String| format!("bitmap: {why}");
    let want = Expect {
        uuid: &array.freshest.array_uuid,
        events: array.freshest.events,
        domain_sectors: domain_sectors(array).map_err(fail)?,
    };
    let mut merged: Option<Bits> = None;
    for slot in array.slots.iter().flatten() {
        let name = slot.device.name().to_string();
        let used = array.freshest.component_sectors;
        let (geometry, area) = read_copy(slot, &want, used)
            .await
            .map_err(|why| fail(format!("{name}: {why}")))?;
        match &mut merged {
            None => merged = Some(Bits::new(geometry, area)),
            Some(m) if m.geometry == geometry => m.merge(&area),
            Some(_) => {
                return Err(fail(format!(
                    "{name}: its chunk size or size differs from the first member's"
                )))
            }
        }
    }
    Ok(merged)
}

/// One member's bitmap copy: checked, and its area read whole.
async fn read_copy(
    slot: &Slot,
    want: &Expect<'_>,
    used: u64,
) -> Result<(Geometry, Vec<u8>), String> {
    let at = slot
        .bitmap_at
        .ok_or("its superblock records no bitmap, or one outside the device")?;
    let dev = &slot.device;
    let mut head = vec![0u8; SB_LEN];
    if at
        .checked_add(SB_LEN as u64)
        .is_none_or(|end| end > dev.size())
    {
        return Err(format!("at byte {at}, past the end of the device"));
    }
    dev.read(ByteOffset(at), &mut head)
        .await
        .map_err(|e| format!("reading it: {e}"))?;
    let sb = bitmap::parse(&head).map_err(|e| e.to_string())?;
    let geometry = sb.check(want)?;
    check_place(slot, at, geometry.area_bytes, used)?;
    let mut area = vec![0u8; geometry.area_bytes as usize];
    dev.read(ByteOffset(at), &mut area)
        .await
        .map_err(|e| format!("reading it: {e}"))?;
    Ok((geometry, area))
}

/// The area `at..at+len` lies in the device, outside the part of the data
/// area md uses (`used` sectors from the data offset, md's `dev_sectors`,
/// as md's `write_sb_page` checks) and the md superblock's 4 KiB.
fn check_place(slot: &Slot, at: u64, len: u64, used: u64) -> Result<(), String> {
    let size = slot.device.size();
    let end = at.checked_add(len).filter(|e| *e <= size).ok_or_else(|| {
        format!("{len} bytes at byte {at} reach past the end of the device ({size} bytes)")
    })?;
    let overlaps = |start: u64, stop: u64| at < stop && start < end;
    let data_end = slot.data_offset.saturating_add(used.saturating_mul(512));
    if overlaps(slot.data_offset, data_end) {
        return Err(format!(
            "{len} bytes at byte {at} overlap the data area (bytes {}..{data_end})",
            slot.data_offset
        ));
    }
    if overlaps(slot.super_offset, slot.super_offset.saturating_add(4096)) {
        return Err(format!(
            "{len} bytes at byte {at} overlap the md superblock at byte {}",
            slot.super_offset
        ));
    }
    Ok(())
}

/// Writes the 512-byte `sectors` of the area to every member's copy, then
/// flushes every member (the bits are on disk before data goes out).
pub async fn write(array: &MdArray, bits: &Bits, sectors: &[u64]) -> Result<(), StateError> {
    let slots: Vec<&Slot> = array.slots.iter().flatten().collect();
    for slot in &slots {
        let io = |source| StateError::Io {
            device: slot.device.name().to_string(),
            source,
        };
        let Some(at) = slot.bitmap_at else {
            return Err(StateError::Changed {
                device: slot.device.name().to_string(),
                why: "no bitmap".into(),
            });
        };
        for &s in sectors {
            let from = (s * 512) as usize;
            let Some(bytes) = bits.area.get(from..from + 512) else {
                continue;
            };
            let to = ByteOffset(at + s * 512);
            slot.device
                .write(to, bytes, Durability::Normal)
                .await
                .map_err(io)?;
        }
    }
    for slot in &slots {
        slot.device.flush().await.map_err(|source| StateError::Io {
            device: slot.device.name().to_string(),
            source,
        })?;
    }
    Ok(())
}

/// Every sector of the area.
pub fn all_sectors(bits: &Bits) -> Vec<u64> {
    (0..bits.geometry.area_bytes / 512).collect()
}
