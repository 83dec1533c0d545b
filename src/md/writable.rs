//! The md superblock side of a writable session (docs/FORMAT.md §12): who
//! may be written (every member present, clean, no reshape,
//! journal, PPL or cluster, members within one event; a bitmap is checked
//! by `intent::load`) and the clean/dirty
//! updates md itself makes (`super_1_sync`, `super_90_sync`): events + 1,
//! utime, 1.x `resync_offset` or 0.90 `MD_SB_CLEAN`/`recovery_cp`/
//! `cp_events`, checksum recomputed in the superblock's own byte order.
//!
//! ```text
//!  refusal(array) ─► None, or the one-line reason
//!  set_state(members, events, clean)
//!     for each member: read its superblock again (same array, checksum ok)
//!        ─► patch(raw 4 KiB) ─► write ─► then flush every member
//! ```

use super::assemble::MdArray;
use super::superblock::{self, feature, fold_csum, Fields, MdSuperblock, MdVersion, SB_BYTES};
use super::superblock0 as v0;
use super::superblock1 as v1;
use crate::block::{BlockDevice, BlockError, Durability};
use crate::units::ByteOffset;

/// Why `array` cannot be served writable, if it cannot.
pub fn refusal(array: &MdArray) -> Option<String> {
    let sb = &array.freshest;
    let missing = array.missing();
    if missing > 0 {
        return Some(format!(
            "{missing} member(s) missing: vraid does not write to a degraded md array \
             (md would have to record the member faulty and rebuild it); add it back \
             with mdadm, or serve read-only"
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

/// Writes every member's superblock with `events` and the clean state,
/// then flushes every member (docs/FORMAT.md §12 "Write order").
pub async fn set_state(
    uuid: &[u8; 16],
    members: &[&dyn BlockDevice],
    events: u64,
    clean: bool,
) -> Result<(), StateError> {
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
