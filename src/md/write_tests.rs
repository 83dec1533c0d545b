//! Writable md arrays over in-memory members: writes of every level and
//! layout read back, keep parity, Q and every copy consistent (checked by
//! reading the array again with members left out), and leave md's
//! superblocks as md leaves them (events, clean/dirty, checksum, both 0.90
//! byte orders); refusals of what cannot be written safely.

use std::sync::Arc;

use proptest::prelude::*;

use super::encode::encode;
use super::superblock::{self, parse_at, MdSuperblock, MdVersion, IN_SYNC};
use super::tests::{parsed, sb1, v0_strategy, v1_strategy};
use super::writable::patch;
use super::*;
use crate::block::{BlockDevice, Durability};
use crate::member::memory::MemDevice;
use crate::units::ByteOffset;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 2 * MIB;

/// Zeroed members (consistent at every level: parity of zeroes is zero)
/// of a clean 1.2 array, their superblocks written.
pub(super) async fn members(
    level: i32,
    layout: u32,
    disks: u32,
) -> (Vec<Arc<MemDevice>>, Vec<MdSuperblock>) {
    let mut devs = Vec::new();
    let mut sbs = Vec::new();
    for role in 0..disks {
        let dev = Arc::new(MemDevice::new(format!("m{role}"), SIZE));
        let mut sb = sb1(level, disks, role, SIZE);
        sb.layout = layout;
        if level == 1 {
            sb.chunk_bytes = 0;
        }
        let sb = parsed(&sb, SIZE);
        dev.write(ByteOffset(4096), &encode(&sb), Durability::Normal)
            .await
            .unwrap();
        devs.push(dev);
        sbs.push(sb);
    }
    (devs, sbs)
}

pub(super) async fn reread(devs: &[Arc<MemDevice>]) -> Vec<(Arc<dyn BlockDevice>, MdSuperblock)> {
    let mut out = Vec::new();
    for d in devs {
        let sb = superblock::read(&**d).await.unwrap();
        out.push((d.clone() as Arc<dyn BlockDevice>, sb));
    }
    out
}

fn rng(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *seed >> 33
}

/// Writes random pieces (odd offsets and lengths, across chunks) through
/// `vol` and into `model`.
pub(super) async fn scribble(vol: &MdVolume, model: &mut [u8], seed: u64) {
    let mut s = seed;
    for _ in 0..40 {
        let len = (rng(&mut s) % 200_000 + 1) as usize;
        let at = (rng(&mut s) as usize) % (model.len() - len);
        let data: Vec<u8> = (0..len).map(|_| rng(&mut s) as u8).collect();
        vol.write(ByteOffset(at as u64), &data, Durability::Normal)
            .await
            .unwrap();
        model[at..at + len].copy_from_slice(&data);
    }
}

pub(super) async fn read_all(vol: &MdVolume) -> Vec<u8> {
    let mut out = vec![0u8; vol.size() as usize];
    for (i, piece) in out.chunks_mut(300_000).enumerate() {
        vol.read(ByteOffset(i as u64 * 300_000), piece)
            .await
            .unwrap();
    }
    out
}

/// Writes through a writable array, closes it, then checks the bytes read
/// back whole and with every set in `lose` left out, and the superblocks.
async fn round_trip(level: i32, layout: u32, disks: u32, lose: &[&[usize]]) {
    let what = format!("level {level} layout {layout:#x} over {disks}");
    let (devs, _) = members(level, layout, disks).await;
    // Members given in reverse order: placed by their roles.
    let mut given = reread(&devs).await;
    given.reverse();
    let vol = MdVolume::writable(assemble(given).unwrap()).await.unwrap();
    let mut model = vec![0u8; vol.size() as usize];
    scribble(&vol, &mut model, disks as u64 * 7 + layout as u64).await;
    let mid = reread(&devs).await;
    assert!(
        mid.iter()
            .all(|(_, sb)| sb.events == 21 && !sb.clean() && sb.csum_ok()),
        "{what}: dirty with events + 1 while written"
    );
    assert!(read_all(&vol).await == model, "{what}: read back");
    vol.close().await.unwrap();
    let after = reread(&devs).await;
    assert!(
        after
            .iter()
            .all(|(_, sb)| sb.events == 22 && sb.clean() && sb.csum_ok()),
        "{what}: clean with events + 2 after close"
    );
    for gone in lose {
        let mut m = reread(&devs).await;
        for &g in gone.iter().rev() {
            m.remove(g);
        }
        let vol = MdVolume::new(assemble(m).unwrap());
        assert!(
            read_all(&vol).await == model,
            "{what}: without members {gone:?} (parity or copies not kept)"
        );
    }
}

#[tokio::test]
async fn writes_through_every_level_keep_parity_q_and_copies() {
    round_trip(1, 0, 3, &[&[0, 1], &[1, 2]]).await;
    for algo in [0, 1, 2, 3, 4, 5] {
        round_trip(5, algo, 4, &[&[0], &[1], &[2], &[3]]).await;
    }
    round_trip(4, 5, 3, &[&[0], &[2]]).await;
    for algo in [2, 0, 1, 3, 8, 9, 10, 16, 17, 18, 19, 20] {
        let pairs: &[&[usize]] = &[&[0, 1], &[0, 4], &[1, 3], &[2, 4], &[3]];
        round_trip(6, algo, 5, pairs).await;
    }
    round_trip(10, 0x102, 3, &[&[0], &[1], &[2]]).await;
    round_trip(10, 0x102, 4, &[&[0, 2], &[1, 3]]).await;
    round_trip(10, 0x201, 4, &[&[0], &[1, 3]]).await;
    round_trip(10, 0x10201, 4, &[&[2]]).await;
    round_trip(0, 0, 3, &[]).await;
    round_trip(-1, 0, 2, &[]).await;
}

#[tokio::test]
async fn a_session_that_never_writes_changes_no_byte() {
    let (devs, _) = members(5, 2, 4).await;
    let before: Vec<Vec<u8>> = devs.iter().map(|d| d.snapshot()).collect();
    let vol = MdVolume::writable(assemble(reread(&devs).await).unwrap())
        .await
        .unwrap();
    read_all(&vol).await;
    vol.flush().await.unwrap();
    vol.close().await.unwrap();
    let after: Vec<Vec<u8>> = devs.iter().map(|d| d.snapshot()).collect();
    assert!(before == after);
}

#[tokio::test]
async fn a_failed_member_write_fails_the_session_and_leaves_it_dirty() {
    let (devs, _) = members(1, 0, 2).await;
    let vol = MdVolume::writable(assemble(reread(&devs).await).unwrap())
        .await
        .unwrap();
    vol.write(ByteOffset(0), &[1; 4096], Durability::Normal)
        .await
        .unwrap();
    devs[1].set_failing(true);
    assert!(vol
        .write(ByteOffset(0), &[2; 4096], Durability::Normal)
        .await
        .is_err());
    devs[1].set_failing(false);
    let later = vol
        .write(ByteOffset(8192), &[3; 512], Durability::Normal)
        .await;
    assert!(later.is_err(), "writes after a failure are refused");
    vol.close().await.unwrap();
    let sbs = reread(&devs).await;
    assert!(
        sbs.iter().all(|(_, sb)| !sb.clean() && sb.events == 21),
        "left dirty for md to resync"
    );
}

#[tokio::test]
async fn unclean_and_bitmap_arrays_are_refused_writable_and_degraded_ones_are_not() {
    async fn refused(m: Vec<(Arc<dyn BlockDevice>, MdSuperblock)>) -> String {
        MdVolume::writable(assemble(m).unwrap()).await.unwrap_err()
    }
    let (devs, _) = members(5, 2, 4).await;
    let mut m = reread(&devs).await;
    m.pop();
    // Degraded (§12 "Degraded arrays"): writable, see degraded_tests.
    assert!(MdVolume::writable(assemble(m).unwrap()).await.is_ok());
    let mut m = reread(&devs).await;
    for (_, sb) in &mut m {
        sb.resync_offset = 0;
    }
    let e = refused(m).await;
    assert!(e.contains("not stopped cleanly"), "{e}");
    let mut m = reread(&devs).await;
    for (_, sb) in &mut m {
        sb.bitmap_offset = Some(8);
    }
    let e = refused(m).await;
    // No bitmap superblock where the md superblock says: refused.
    assert!(e.contains("bitmap: m0: magic"), "{e}");
    // Red team: an event count a session's two increments would wrap.
    let mut m = reread(&devs).await;
    for (_, sb) in &mut m {
        sb.events = u64::MAX - 1;
    }
    let e = refused(m).await;
    assert!(e.contains("event count") && e.contains("limit"), "{e}");
    // Read-only serving of the same arrays is unaffected; a read-only
    // volume refuses writes.
    let vol = MdVolume::new(assemble(reread(&devs).await).unwrap());
    let w = vol.write(ByteOffset(0), &[1], Durability::Normal).await;
    assert!(matches!(w, Err(crate::block::BlockError::ReadOnly)));
}

#[tokio::test]
async fn journal_and_clustered_arrays_are_refused_with_the_reason() {
    for (bit, words) in [
        (superblock::feature::JOURNAL, "write journal"),
        (superblock::feature::CLUSTERED, "clustered"),
    ] {
        let (devs, _) = members(5, 2, 4).await;
        let mut m = reread(&devs).await;
        for (_, sb) in &mut m {
            sb.feature_map |= bit;
        }
        let e = assemble(m).unwrap_err().to_string();
        assert!(e.contains(words), "{e}");
        assert_eq!(e.lines().count(), 1, "one line: {e}");
    }
}

/// `patch` as md writes the state: the superblock parses back with the
/// new events and state, its checksum right, in either 0.90 byte order.
fn patched_back(sb: &MdSuperblock, size: u64, events: u64, clean: bool) -> MdSuperblock {
    let mut block = encode(sb);
    patch(sb, &mut block, events, clean, 1_800_000_000);
    parse_at(sb.version, &block, size).unwrap()
}

proptest! {
    #[test]
    fn v0_90_state_patches_keep_the_checksum_in_either_byte_order(
        (sb, size) in v0_strategy(), events in any::<u64>(), clean in any::<bool>()
    ) {
        let back = patched_back(&sb, size, events, clean);
        prop_assert!(back.csum_ok());
        prop_assert_eq!(back.events, events);
        prop_assert_eq!(back.clean(), clean);
        prop_assert_eq!(back.utime, 1_800_000_000);
        prop_assert_eq!(back.big_endian, sb.big_endian);
        prop_assert_eq!(back.roles, sb.roles);
        prop_assert_eq!(back.bitmap_offset, sb.bitmap_offset);
    }

    #[test]
    fn v1_state_patches_keep_the_checksum(
        (sb, size) in v1_strategy(), events in any::<u64>(), clean in any::<bool>()
    ) {
        let back = patched_back(&sb, size, events, clean);
        prop_assert!(back.csum_ok());
        prop_assert_eq!(back.events, events);
        prop_assert_eq!(back.resync_offset, if clean { IN_SYNC } else { 0 });
        prop_assert_eq!(back.roles, sb.roles);
        prop_assert_eq!(back.array_uuid, sb.array_uuid);
    }
}

#[test]
fn v0_90_clean_patch_sets_recovery_cp_and_cp_events_as_md() {
    for big in [false, true] {
        let size = 64 * MIB;
        let mut sb = sb1(5, 4, 0, size);
        sb.version = MdVersion::V0_90;
        sb.big_endian = big;
        sb.super_offset = MdVersion::V0_90.offset(size).unwrap();
        sb.data_offset = 0;
        sb.component_sectors = sb.super_offset / 512;
        let sb = parsed(&sb, size);
        let mut block = encode(&sb);
        patch(&sb, &mut block, 0x1_0000_0005, true, 7);
        let word = |i: usize| {
            let w: [u8; 4] = block[i * 4..i * 4 + 4].try_into().unwrap();
            if big {
                u32::from_be_bytes(w)
            } else {
                u32::from_le_bytes(w)
            }
        };
        assert_eq!((word(39), word(40)), (word(41), word(42)), "cp_events");
        assert_eq!(word(43), u32::MAX, "recovery_cp = MaxSector");
        assert_eq!(word(33) & 1, 1, "MD_SB_CLEAN");
    }
}
