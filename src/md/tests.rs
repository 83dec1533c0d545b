//! md superblock round trips, malformed input, assembly refusals and
//! degraded reads over in-memory members.

use std::sync::Arc;

use proptest::prelude::*;

use super::encode::encode;
use super::superblock::{parse_at, MdSuperblock, MdSuperblockError, MdVersion, Role, IN_SYNC};
use super::*;
use crate::block::BlockDevice;
use crate::member::memory::MemDevice;
use crate::units::ByteOffset;

const MIB: u64 = 1 << 20;

/// A clean 1.2 member of a `level` array of `disks` in role `role`.
pub(super) fn sb1(level: i32, disks: u32, role: u32, size: u64) -> MdSuperblock {
    MdSuperblock {
        version: MdVersion::V1_2,
        big_endian: false,
        super_offset: 4096,
        array_uuid: [7; 16],
        name: "host:vol".into(),
        ctime: 1_700_000_000,
        utime: 1_700_000_100,
        level,
        layout: if level == 10 { 0x102 } else { 2 },
        chunk_bytes: 64 << 10,
        raid_disks: disks,
        component_sectors: (size - MIB) / 512,
        data_offset: 2048,
        data_size: (size - MIB) / 512,
        events: 20,
        resync_offset: IN_SYNC,
        dev_number: role,
        device_uuid: Some([role as u8; 16]),
        role: Role::Active(role),
        roles: (0..disks).map(Role::Active).collect(),
        feature_map: 0,
        bitmap_offset: None,
        recovery_offset: None,
        reshape: None,
        stored_csum: 0,
        computed_csum: 0,
    }
}

/// `sb` as `parse_at` gives it back: the checksum fields filled in.
pub(super) fn parsed(sb: &MdSuperblock, size: u64) -> MdSuperblock {
    parse_at(sb.version, &encode(sb), size).expect("encoded superblock parses")
}

fn role_strategy(disks: u32) -> impl Strategy<Value = Role> {
    prop_oneof![
        (0..disks).prop_map(Role::Active),
        Just(Role::Spare),
        Just(Role::Faulty),
    ]
}

pub(super) fn v1_strategy() -> impl Strategy<Value = (MdSuperblock, u64)> {
    let versions = prop_oneof![
        Just(MdVersion::V1_0),
        Just(MdVersion::V1_1),
        Just(MdVersion::V1_2)
    ];
    (
        versions,
        1u32..40,
        8u64..4096,
        any::<u64>(),
        any::<[u8; 16]>(),
        "[a-z:0-9]{0,32}",
    )
        .prop_flat_map(|(version, disks, mib, events, uuid, name)| {
            let roles = prop::collection::vec(role_strategy(disks), 1..64);
            (
                Just((version, disks, mib, events, uuid, name)),
                roles,
                any::<u16>(),
                any::<bool>(),
            )
        })
        .prop_map(
            |((version, disks, mib, events, uuid, name), roles, pick, reshape)| {
                let size = mib * MIB;
                let mut sb = sb1(5, disks, 0, size);
                sb.version = version;
                sb.super_offset = version.offset(size).unwrap();
                sb.data_offset = if version == MdVersion::V1_0 { 0 } else { 2048 };
                sb.data_size = size / 512 - 2048 - 16;
                sb.events = events;
                sb.array_uuid = uuid;
                sb.name = name;
                sb.dev_number = pick as u32 % roles.len() as u32;
                sb.role = roles[sb.dev_number as usize];
                sb.roles = roles;
                sb.ctime = events & ((1 << 40) - 1);
                sb.feature_map = if reshape { 4 } else { 0 };
                sb.reshape = reshape.then_some(superblock::Reshape {
                    position: events / 3,
                    new_level: 6,
                    delta_disks: -1,
                    new_layout: 18,
                    new_chunk_bytes: 128 << 10,
                });
                (sb, size)
            },
        )
}

pub(super) fn v0_strategy() -> impl Strategy<Value = (MdSuperblock, u64)> {
    (
        1u32..27,
        1u64..1024,
        any::<u64>(),
        any::<[u8; 16]>(),
        any::<bool>(),
        0u32..27,
    )
        .prop_flat_map(|(disks, mib, events, uuid, big, number)| {
            let roles = prop::collection::vec(role_strategy(disks), 27);
            (
                Just((disks, mib, events, uuid, big, number)),
                roles,
                role_strategy(disks),
            )
        })
        .prop_map(|((disks, mib, events, uuid, big, number), roles, role)| {
            let size = mib * MIB + 12345;
            let at = MdVersion::V0_90.offset(size).unwrap();
            let mut sb = sb1(1, disks, 0, size);
            sb.version = MdVersion::V0_90;
            sb.big_endian = big;
            sb.super_offset = at;
            sb.name = String::new();
            sb.ctime = events as u32 as u64;
            sb.utime = (events >> 32) as u32 as u64;
            sb.component_sectors = at / 512 / 2 * 2;
            sb.data_offset = 0;
            sb.data_size = at / 512;
            sb.events = events;
            sb.array_uuid = uuid;
            sb.device_uuid = None;
            sb.dev_number = number;
            sb.role = role;
            sb.roles = roles;
            sb.resync_offset = if events % 2 == 0 { IN_SYNC } else { 0 };
            sb.bitmap_offset = (events % 3 == 0).then_some(0);
            (sb, size)
        })
}

proptest! {
    #[test]
    fn v1_superblocks_round_trip((sb, size) in v1_strategy()) {
        let back = parsed(&sb, size);
        prop_assert!(back.csum_ok());
        let mut expect = sb.clone();
        expect.stored_csum = back.stored_csum;
        expect.computed_csum = back.computed_csum;
        prop_assert_eq!(back, expect);
    }

    #[test]
    fn v0_90_superblocks_round_trip_in_either_byte_order((sb, size) in v0_strategy()) {
        let back = parsed(&sb, size);
        prop_assert!(back.csum_ok());
        let mut expect = sb.clone();
        expect.stored_csum = back.stored_csum;
        expect.computed_csum = back.computed_csum;
        prop_assert_eq!(back, expect);
    }

    #[test]
    fn a_flipped_byte_in_a_v1_superblock_fails_its_checksum(
        (sb, size) in v1_strategy(), at in 0usize..256, bit in 0u8..8,
    ) {
        prop_assume!(!(216..220).contains(&at));
        let mut block = encode(&sb);
        block[at] ^= 1 << bit;
        // Either a field check refuses it or the checksum does.
        if let Ok(back) = parse_at(sb.version, &block, size) {
            prop_assert!(!back.csum_ok());
            prop_assert!(back.verify().is_err());
        }
    }

    #[test]
    fn any_bytes_with_the_magic_never_panic(
        mut block in prop::collection::vec(any::<u8>(), 4096),
        size in any::<u64>(), big in any::<bool>(), v in 0usize..4,
    ) {
        let magic = if big { 0xa92b_4efcu32.to_be_bytes() } else { 0xa92b_4efcu32.to_le_bytes() };
        block[..4].copy_from_slice(&magic);
        block[4..8].copy_from_slice(&[if v == 3 { 0 } else { 1 }, 0, 0, 0]);
        let _ = parse_at(MdVersion::ALL[v], &block, size);
        let _ = parse_at(MdVersion::ALL[v], &block[..100], size);
    }
}

#[test]
fn v1_max_dev_past_4k_is_refused() {
    let size = 64 * MIB;
    let sb = sb1(5, 4, 0, size);
    let mut block = encode(&sb);
    block[220..224].copy_from_slice(&5000u32.to_le_bytes());
    let err = parse_at(MdVersion::V1_2, &block, size).unwrap_err();
    assert!(err.to_string().contains("max_dev = 5000"), "{err}");
}

#[test]
fn v1_data_area_past_the_device_is_refused() {
    let size = 64 * MIB;
    let mut sb = sb1(5, 4, 0, size);
    sb.data_size = size / 512;
    let err = parse_at(MdVersion::V1_2, &encode(&sb), size).unwrap_err();
    assert!(
        matches!(
            err,
            MdSuperblockError::Field {
                field: "data_offset + data_size",
                ..
            }
        ),
        "{err}"
    );
}

/// In-memory members of a RAID-5/6 written through the md layout math,
/// plus the array's bytes.
async fn parity_members(
    level: i32,
    disks: u32,
    size: u64,
) -> (Vec<Arc<MemDevice>>, Vec<MdSuperblock>) {
    let mut devs = Vec::new();
    let mut sbs = Vec::new();
    for role in 0..disks {
        let dev = Arc::new(MemDevice::new(format!("m{role}"), size));
        let sb = parsed(&sb1(level, disks, role, size), size);
        dev.write(
            ByteOffset(4096),
            &encode(&sb),
            crate::block::Durability::Normal,
        )
        .await
        .unwrap();
        devs.push(dev);
        sbs.push(sb);
    }
    (devs, sbs)
}

fn members(
    devs: &[Arc<MemDevice>],
    sbs: &[MdSuperblock],
) -> Vec<(Arc<dyn BlockDevice>, MdSuperblock)> {
    devs.iter()
        .zip(sbs)
        .map(|(d, s)| (d.clone() as Arc<dyn BlockDevice>, s.clone()))
        .collect()
}

/// Fills every member's data area with random bytes and recomputes P (and
/// Q) of every stripe as md does, then returns what the array reads.
async fn fill_parity(devs: &[Arc<MemDevice>], level: i32) -> Vec<u8> {
    use crate::raid::md_layout::ParityLayout;
    let disks = devs.len();
    let p = ParityLayout::new(level as u32, disks, 2).unwrap();
    let chunk = 64usize << 10;
    let stripes = 16u64;
    let mut seed = 1u64;
    for stripe in 0..stripes {
        let mut blocks = vec![vec![0u8; chunk]; disks];
        for (disk, b) in blocks.iter_mut().enumerate() {
            if p.data_index(stripe, disk).is_some() {
                for x in b.iter_mut() {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    *x = (seed >> 56) as u8;
                }
            }
        }
        let roles = p.roles(stripe);
        let mut slots = vec![vec![0u8; chunk]; p.q_slots()];
        for (disk, block) in blocks.iter().enumerate() {
            if let Some(s) = p.q_slot(stripe, disk) {
                slots[s] = block.clone();
            }
        }
        let refs: Vec<&[u8]> = slots.iter().map(|s| s.as_slice()).collect();
        let (mut pb, mut qb) = (vec![0u8; chunk], vec![0u8; chunk]);
        crate::raid::syndrome::gen_syndrome(&mut pb, &mut qb, &refs);
        if roles.q.is_none() {
            pb.fill(0);
            for disk in (0..disks).filter(|d| *d != roles.p) {
                crate::raid::parity::xor_into(&mut pb, &blocks[disk]);
            }
        }
        blocks[roles.p] = pb;
        if let Some(q) = roles.q {
            blocks[q] = qb;
        }
        for (disk, b) in blocks.iter().enumerate() {
            let at = MIB + stripe * chunk as u64;
            devs[disk]
                .write(ByteOffset(at), b, crate::block::Durability::Normal)
                .await
                .unwrap();
        }
    }
    let mut whole = vec![0u8; (stripes as usize) * chunk * p.data_disks()];
    for (i, piece) in whole.chunks_mut(chunk).enumerate() {
        let (stripe, disk) = p.locate(i as u64);
        devs[disk]
            .read(ByteOffset(MIB + stripe * chunk as u64), piece)
            .await
            .unwrap();
    }
    whole
}

async fn read_array(vol: &MdVolume, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    // Odd-sized reads crossing chunks.
    for (i, piece) in out.chunks_mut(100_000).enumerate() {
        vol.read(ByteOffset(i as u64 * 100_000), piece)
            .await
            .unwrap();
    }
    out
}

#[tokio::test]
async fn degraded_raid6_reads_reconstruct_any_two_missing_members() {
    let size = 8 * MIB;
    let (devs, sbs) = parity_members(6, 5, size).await;
    let want = fill_parity(&devs, 6).await;
    for (a, b) in [(0, 1), (0, 4), (2, 3), (1, 3)] {
        let mut m = members(&devs, &sbs);
        m.remove(b);
        m.remove(a);
        let vol = MdVolume::new(assemble(m).unwrap());
        assert_eq!(vol.array().missing(), 2);
        assert!(
            read_array(&vol, want.len()).await == want,
            "missing {a} and {b}"
        );
    }
}

#[tokio::test]
async fn degraded_raid5_reads_reconstruct_and_a_second_loss_is_refused() {
    let size = 8 * MIB;
    let (devs, sbs) = parity_members(5, 4, size).await;
    let want = fill_parity(&devs, 5).await;
    let mut m = members(&devs, &sbs);
    m.remove(2);
    let vol = MdVolume::new(assemble(m).unwrap());
    assert!(read_array(&vol, want.len()).await == want);
    let mut m = members(&devs, &sbs);
    m.truncate(2);
    let err = assemble(m).unwrap_err().to_string();
    assert!(err.contains("2 of 4 members missing"), "{err}");
}

#[tokio::test]
async fn stale_member_is_left_out_and_mixed_arrays_are_refused() {
    let size = 8 * MIB;
    let (devs, mut sbs) = parity_members(5, 4, size).await;
    sbs[1].events = 3;
    let a = assemble(members(&devs, &sbs)).unwrap();
    assert_eq!(a.missing(), 1);
    assert!(a.left_out[0].why.contains("stale"), "{:?}", a.left_out);
    sbs[1].events = 20;
    sbs[3].array_uuid = [9; 16];
    let err = assemble(members(&devs, &sbs)).unwrap_err().to_string();
    assert!(err.contains("different md arrays"), "{err}");
}

#[tokio::test]
async fn reshaping_and_dirty_degraded_arrays_are_refused() {
    let size = 8 * MIB;
    let (devs, mut sbs) = parity_members(5, 4, size).await;
    for sb in &mut sbs {
        sb.resync_offset = 0;
    }
    let mut m = members(&devs, &sbs);
    m.pop();
    let err = assemble(m).unwrap_err().to_string();
    assert!(err.contains("not stopped cleanly"), "{err}");
    sbs[0].reshape = Some(superblock::Reshape {
        position: 10,
        new_level: 5,
        delta_disks: 1,
        new_layout: 2,
        new_chunk_bytes: 65536,
    });
    sbs[0].events = 21;
    let err = assemble(members(&devs, &sbs)).unwrap_err().to_string();
    assert!(err.contains("reshape is in progress"), "{err}");
}

#[tokio::test]
async fn a_member_with_a_bad_checksum_is_left_out_with_the_reason() {
    let size = 8 * MIB;
    let (devs, mut sbs) = parity_members(5, 4, size).await;
    sbs[2].stored_csum ^= 1;
    let a = assemble(members(&devs, &sbs)).unwrap();
    assert_eq!(a.missing(), 1);
    assert!(a.left_out[0].why.contains("checksum"), "{:?}", a.left_out);
}
