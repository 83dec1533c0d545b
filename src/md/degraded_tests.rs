//! Writes to degraded md arrays over in-memory members (docs/FORMAT.md
//! §12 "Degraded arrays"): every redundant level with each missing role
//! (RAID-6 with any two) reads back what was written, through the
//! session and through a fresh assembly with one more member left out;
//! the missing roles are recorded as md records them (1.x `dev_roles`
//! 0xffff, 0.90 faulty + removed with the disk counts); the stale member
//! given back is left out (M-11, M-14); RAID-0 is never written degraded.

use std::sync::Arc;

use super::encode::encode;
use super::superblock::{self, parse_at, MdSuperblock, MdVersion, Role};
use super::tests::{parsed, sb1};
use super::writable::{patch, record_missing};
use super::write_tests::{members, read_all, reread, scribble};
use super::*;
use crate::block::{BlockDevice, Durability};
use crate::member::memory::MemDevice;
use crate::units::ByteOffset;

/// The members of `devs` but those in `lose`, with their superblocks.
async fn without(
    devs: &[Arc<MemDevice>],
    lose: &[usize],
) -> Vec<(Arc<dyn BlockDevice>, MdSuperblock)> {
    let keep: Vec<Arc<MemDevice>> = (0..devs.len())
        .filter(|i| !lose.contains(i))
        .map(|i| devs[i].clone())
        .collect();
    reread(&keep).await
}

/// A whole session fills the array; then a session without the members
/// in `lose` writes over it. Returns the members and what the array
/// holds.
async fn degraded_session(
    level: i32,
    layout: u32,
    disks: u32,
    lose: &[usize],
) -> (Vec<Arc<MemDevice>>, Vec<u8>) {
    let what = format!("level {level} layout {layout:#x} over {disks}, {lose:?} missing");
    let (devs, _) = members(level, layout, disks).await;
    let vol = MdVolume::writable(assemble(reread(&devs).await).unwrap())
        .await
        .unwrap();
    let mut model = vec![0u8; vol.size() as usize];
    scribble(&vol, &mut model, 1).await;
    vol.close().await.unwrap();
    let array = assemble(without(&devs, lose).await).unwrap();
    assert_eq!(array.missing(), lose.len(), "{what}");
    let vol = MdVolume::writable(array).await.unwrap();
    scribble(&vol, &mut model, 2 + lose.len() as u64).await;
    assert!(read_all(&vol).await == model, "{what}: read in the session");
    vol.flush().await.unwrap();
    vol.close().await.unwrap();
    (devs, model)
}

/// After `degraded_session`: the array reads the model through a fresh
/// assembly, and with each further member left out that the level
/// survives (P and Q both right); the superblocks are clean, 4 events on,
/// the missing roles recorded as spare entries.
async fn check_after(devs: &[Arc<MemDevice>], lose: &[usize], model: &[u8], spare: usize) {
    let what = format!("{lose:?} missing");
    let vol = MdVolume::new(assemble(without(devs, lose).await).unwrap());
    assert!(read_all(&vol).await == model, "{what}: fresh assembly");
    for extra in 0..devs.len() {
        let mut more = lose.to_vec();
        if more.contains(&extra) || more.len() + 1 > spare {
            continue;
        }
        more.push(extra);
        let vol = MdVolume::new(assemble(without(devs, &more).await).unwrap());
        assert!(read_all(&vol).await == model, "{what}, {extra} too");
    }
    for (_, sb) in without(devs, lose).await {
        assert!(sb.clean() && sb.events == 24 && sb.csum_ok(), "{what}");
        for &r in lose {
            assert_eq!(
                sb.roles[r],
                Role::Spare,
                "{what}: role {r} recorded missing"
            );
        }
    }
}

#[tokio::test]
async fn degraded_writes_of_every_redundant_level_read_back_with_any_member_lost() {
    let cases: Vec<(i32, u32, u32, Vec<Vec<usize>>)> = vec![
        (1, 0, 3, vec![vec![0], vec![2], vec![0, 1]]),
        (10, 0x102, 4, vec![vec![1], vec![0, 3]]),
        (4, 0, 3, vec![vec![0], vec![2]]),
        (5, 0, 4, vec![vec![1]]),
        (5, 1, 4, vec![vec![3]]),
        (5, 2, 4, vec![vec![0], vec![1], vec![2], vec![3]]),
        (5, 3, 3, vec![vec![2]]),
        (
            6,
            2,
            5,
            vec![vec![0], vec![4], vec![0, 1], vec![2, 3], vec![1, 4]],
        ),
        (6, 8, 5, vec![vec![2], vec![0, 4]]),
    ];
    for (level, layout, disks, loses) in cases {
        let spare = match level {
            1 => disks as usize - 1,
            6 => 2,
            _ => 1,
        };
        for lose in loses {
            let (devs, model) = degraded_session(level, layout, disks, &lose).await;
            let spare = if level == 10 { lose.len() } else { spare };
            check_after(&devs, &lose, &model, spare).await;
        }
    }
}

#[tokio::test]
async fn the_stale_member_given_back_is_left_out_after_a_session_or_a_crash() {
    // Orderly: two events behind.
    let (devs, _) = degraded_session(5, 2, 4, &[2]).await;
    let array = assemble(reread(&devs).await).unwrap();
    assert_eq!(array.missing(), 1);
    assert!(array.slots[2].is_none());
    assert!(
        array.left_out.iter().any(|l| l.device == "m2"),
        "{:?}",
        array.left_out
    );
    // Crash after the first write (M-11): one event behind, but the
    // freshest records its role missing.
    let (devs, _) = members(1, 0, 3).await;
    let vol = MdVolume::writable(assemble(without(&devs, &[1]).await).unwrap())
        .await
        .unwrap();
    vol.write(ByteOffset(4096), &[9; 4096], Durability::Normal)
        .await
        .unwrap();
    drop(vol);
    let given = reread(&devs).await;
    assert_eq!(given[1].1.events + 1, given[0].1.events);
    let array = assemble(given).unwrap();
    assert!(array.slots[1].is_none(), "the stale mirror is not used");
    let why = &array
        .left_out
        .iter()
        .find(|l| l.device == "m1")
        .unwrap()
        .why;
    assert!(why.contains("records device 1 as Spare"), "{why}");
    // And nothing wrote it: its copy of the block is still zero.
    let mut b = vec![0u8; 4096];
    devs[1]
        .read(ByteOffset((1 << 20) + 4096), &mut b)
        .await
        .unwrap();
    assert!(b.iter().all(|x| *x == 0));
}

#[tokio::test]
async fn raid0_missing_a_member_is_never_written() {
    let (devs, _) = members(0, 0, 3).await;
    let e = assemble(without(&devs, &[1]).await)
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing"), "{e}");
}

/// A 0.90 superblock of a 4-disk RAID-5 with the disk counts md keeps.
fn v0_block(big: bool) -> (MdSuperblock, Vec<u8>, u64) {
    let size = 64 << 20;
    let mut sb = sb1(5, 4, 0, size);
    sb.version = MdVersion::V0_90;
    sb.big_endian = big;
    sb.super_offset = MdVersion::V0_90.offset(size).unwrap();
    sb.data_offset = 0;
    sb.component_sectors = sb.super_offset / 512;
    let sb = parsed(&sb, size);
    let mut block = encode(&sb);
    for (word, v) in [(9u32, 4u32), (34, 4), (35, 4), (36, 0), (37, 0)] {
        let at = word as usize * 4;
        let w = if big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        };
        block[at..at + 4].copy_from_slice(&w);
    }
    (sb, block, size)
}

#[test]
fn v0_90_missing_roles_become_faulty_removed_with_the_counts_md_keeps() {
    for big in [false, true] {
        let (sb, mut block, size) = v0_block(big);
        record_missing(&sb, &mut block, &[2]);
        record_missing(&sb, &mut block, &[2]);
        patch(&sb, &mut block, 30, true, 7);
        let back = parse_at(MdVersion::V0_90, &block, size).unwrap();
        assert!(back.csum_ok());
        assert_eq!(back.roles[2], Role::Faulty);
        assert_eq!(&back.roles[..2], &[Role::Active(0), Role::Active(1)]);
        assert_eq!(back.roles[3], Role::Active(3));
        let word = |i: usize| {
            let w: [u8; 4] = block[i * 4..i * 4 + 4].try_into().unwrap();
            if big {
                u32::from_be_bytes(w)
            } else {
                u32::from_le_bytes(w)
            }
        };
        let desc = 128 + 2 * 32;
        assert_eq!(word(desc + 4), 1 | 8, "MD_DISK_FAULTY | MD_DISK_REMOVED");
        assert_eq!(word(desc + 3), 2, "raid_disk kept");
        assert_eq!((word(9), word(34), word(35), word(36)), (3, 3, 3, 1));
    }
}

#[test]
fn v1_missing_roles_become_spare_entries_and_others_are_untouched() {
    let size = 2 << 20;
    let mut sb = sb1(6, 5, 0, size);
    sb.roles[4] = Role::Faulty;
    let sb = parsed(&sb, size);
    let mut block = encode(&sb);
    record_missing(&sb, &mut block, &[1, 3]);
    patch(&sb, &mut block, 30, false, 7);
    let back = parse_at(MdVersion::V1_2, &block, size).unwrap();
    assert!(back.csum_ok());
    let want = [
        Role::Active(0),
        Role::Spare,
        Role::Active(2),
        Role::Spare,
        Role::Faulty,
    ];
    assert_eq!(back.roles, want);
    assert_eq!(back.feature_map, sb.feature_map);
    let raw = u16::from_le_bytes([block[256 + 2], block[256 + 3]]);
    assert_eq!(raw, 0xffff);
    let _ = superblock::SB_BYTES;
}
