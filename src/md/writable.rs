//! The md superblock side of a writable session (docs/FORMAT.md §12): who
//! may be written (redundant levels may be degraded, clean, no reshape,
//! journal, PPL or cluster, members within one event; a bitmap is checked
//! by `intent::load`) and the clean/dirty
//! updates md itself makes (`super_1_sync`, `super_90_sync`): events + 1,
//! utime, 1.x `resync_offset` or 0.90 `MD_SB_CLEAN`/`recovery_cp`/
//! `cp_events`, checksum recomputed in the superblock's own byte order;
//! missing roles recorded as md records a device it runs without
//! (`record_missing`: 1.x `dev_roles` 0xffff, 0.90 descriptor faulty +
//! removed and its counts).
//!
//! ```text
//!  refusal(array) ─► None, or the one-line reason
//!  set_state(members, NewState { events, clean, missing })
//!     for each member: read its superblock again (same array, checksum ok)
//!        ─► record_missing ─► patch(raw 4 KiB) ─► write ─► flush every member
//! ```

use super::assemble::{MdArray, MdLevel};
use super::superblock::{self, feature, fold_csum, Fields, MdSuperblock, MdVersion, SB_BYTES};
use super::superblock0 as v0;
use super::superblock1 as v1;
use crate::block::{BlockDevice, BlockError, Durability};
use crate::units::ByteOffset;

/// Why `array` cannot be served writable, if it cannot.
pub fn refusal(array: &MdArray) -> Option<String> {
    let sb = &array.freshest;
    let missing = array.missing();
    if missing > 0 && matches!(array.level, MdLevel::Raid0(_) | MdLevel::Linear(_)) {
        return Some(format!(
            "{missing} member(s) missing: RAID-0 and linear have no redundancy and are \
             never written degraded"
        ));
    }
    if !sb.clean() {
        return Some(
            "not stopped cleanly: md resyncs it first; assemble it with mdadm to resync, \
             or serve read-only"
                .into(),
        );
    }
    // A session adds 2 to the event count: one at its limit would wrap
    // to 0, and md would take every member as the stalest.
    if sb.events > u64::MAX - 2 {
        return Some(format!(
            "event count {} is at its limit (a hostile or corrupt superblock)",
            sb.events
        ));
    }
    let unsafe_features = feature::PPL | feature::MULTIPLE_PPLS | feature::JOURNAL;
    if sb.feature_map & (unsafe_features | feature::CLUSTERED | feature::RESHAPE_ACTIVE) != 0 {
        return Some(format!(
            "feature map {:#x} (PPL, journal, cluster or reshape) is not written by vraid",
            sb.feature_map
        ));
    }
    None
}

/// md's `MaxSector` as 0.90 stores `recovery_cp` (32 bits).
const V0_IN_SYNC: u32 = u32::MAX;

/// The superblock `block` (parsed as `sb`) with events, utime and the
/// clean state set as md writes them, and its checksum recomputed.
pub fn patch(sb: &MdSuperblock, block: &mut [u8], events: u64, clean: bool, now: u64) {
    let big = sb.big_endian;
    let put32 = |b: &mut [u8], at: usize, v: u32| {
        let w = if big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        };
        b[at..at + 4].copy_from_slice(&w);
    };
    match sb.version {
        MdVersion::V0_90 => {
            let (lo, hi) = (events as u32, (events >> 32) as u32);
            let (first, second) = if big { (hi, lo) } else { (lo, hi) };
            put32(block, 39 * 4, first);
            put32(block, 40 * 4, second);
            put32(block, 32 * 4, now as u32);
            let state = Fields { b: block, big }.u32(33 * 4);
            let state = match clean {
                true => state | v0::SB_CLEAN,
                false => state & !v0::SB_CLEAN,
            };
            put32(block, 33 * 4, state);
            if clean {
                put32(block, 41 * 4, first);
                put32(block, 42 * 4, second);
            }
            put32(block, 43 * 4, if clean { V0_IN_SYNC } else { 0 });
            let csum = fold_csum(&Fields { b: block, big }, SB_BYTES, v0::CSUM_AT);
            put32(block, v0::CSUM_AT, csum);
        }
        _ => {
            block[192..200].copy_from_slice(&now.to_le_bytes());
            block[200..208].copy_from_slice(&events.to_le_bytes());
            let resync = if clean { superblock::IN_SYNC } else { 0 };
            block[208..216].copy_from_slice(&resync.to_le_bytes());
            let len = 256 + 2 * sb.roles.len();
            let csum = fold_csum(
                &Fields {
                    b: block,
                    big: false,
                },
                len,
                v1::CSUM_AT,
            );
            block[v1::CSUM_AT..v1::CSUM_AT + 4].copy_from_slice(&csum.to_le_bytes());
        }
    }
}

/// Records every role in `missing` as md's `super_1_sync` /
/// `super_90_sync` leave a device md runs without, in the raw superblock
/// `block` (parsed as `sb`; the checksum is `patch`'s to recompute): 1.x
/// `dev_roles` entries holding such a role become 0xffff; 0.90
/// descriptors of such a role (active, in sync) become faulty + removed
/// and the disk counts follow. Roles already recorded are left alone.
pub fn record_missing(sb: &MdSuperblock, block: &mut [u8], missing: &[u32]) {
    match sb.version {
        MdVersion::V0_90 => record_missing_v0(sb.big_endian, block, missing),
        _ => {
            let max_dev = sb.roles.len();
            for i in 0..max_dev {
                let at = 256 + 2 * i;
                let raw = u16::from_le_bytes([block[at], block[at + 1]]);
                if missing.contains(&u32::from(raw)) {
                    block[at..at + 2].copy_from_slice(&v1::ROLE_SPARE.to_le_bytes());
                }
            }
        }
    }
}

/// 0.90: descriptors (`number, major, minor, raid_disk, state`) of a
/// missing role get `MD_DISK_FAULTY | MD_DISK_REMOVED`; per descriptor
/// changed, `nr_disks` (word 9), `active_disks` (34) and `working_disks`
/// (35) drop by one and `failed_disks` (36) grows by one, as
/// `super_90_sync` counts an absent device.
fn record_missing_v0(big: bool, block: &mut [u8], missing: &[u32]) {
    let get = |b: &[u8], at: usize| Fields { b, big }.u32(at);
    let put = |b: &mut [u8], at: usize, v: u32| {
        let w = if big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        };
        b[at..at + 4].copy_from_slice(&w);
    };
    let mut changed = 0u32;
    for i in 0..superblock::DISKS_0_90 {
        let at = v0::DISKS_AT + i * v0::DESC_BYTES;
        let (raid_disk, state) = (get(block, at + 12), get(block, at + 16));
        let in_sync = v0::DISK_ACTIVE | v0::DISK_SYNC;
        if state & v0::DISK_FAULTY == 0
            && state & in_sync == in_sync
            && missing.contains(&raid_disk)
        {
            put(block, at + 16, v0::DISK_FAULTY | v0::DISK_REMOVED);
            changed += 1;
        }
    }
    for (word, up) in [(9, false), (34, false), (35, false), (36, true)] {
        let v = get(block, word * 4);
        let v = match up {
            true => v.saturating_add(changed),
            false => v.saturating_sub(changed),
        };
        put(block, word * 4, v);
    }
}

/// What a superblock update writes: the event count, clean or dirty, and
/// the roles to record missing.
#[derive(Clone, Copy, Debug)]
pub struct NewState<'a> {
    pub events: u64,
    pub clean: bool,
    pub missing: &'a [u32],
}

/// Why a member's superblock could not be updated.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{device}: {why}")]
    Changed { device: String, why: String },
    #[error("{device}: writing its md superblock")]
    Io {
        device: String,
        #[source]
        source: BlockError,
    },
}

/// Writes every member's superblock with the new events, clean state and
/// missing roles, then flushes every member (docs/FORMAT.md §12 "Write
/// order").
pub async fn set_state(
    uuid: &[u8; 16],
    members: &[&dyn BlockDevice],
    new: &NewState<'_>,
) -> Result<(), StateError> {
    let NewState { events, clean, .. } = *new;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for dev in members {
        let device = dev.name().to_string();
        let changed = |why: String| StateError::Changed {
            device: device.clone(),
            why,
        };
        let sb = superblock::read(*dev)
            .await
            .map_err(|e| changed(e.to_string()))?;
        if &sb.array_uuid != uuid || !sb.csum_ok() {
            return Err(changed("its md superblock changed under vraid".into()));
        }
        let io = |source| StateError::Io {
            device: device.clone(),
            source,
        };
        let mut block = vec![0u8; SB_BYTES];
        dev.read(ByteOffset(sb.super_offset), &mut block)
            .await
            .map_err(io)?;
        record_missing(&sb, &mut block, new.missing);
        patch(&sb, &mut block, events, clean, now);
        dev.write(ByteOffset(sb.super_offset), &block, Durability::Normal)
            .await
            .map_err(io)?;
    }
    for dev in members {
        dev.flush().await.map_err(|source| StateError::Io {
            device: dev.name().to_string(),
            source,
        })?;
    }
    Ok(())
}
