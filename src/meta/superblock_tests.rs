//! Tests of the superblock codec, the layout and the two-copy reader.

use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::member::memory::MemDevice;

fn sample() -> Superblock {
    let layout = metadata_layout(256 << 20).unwrap();
    let members: Vec<RoleEntry> = (0..4)
        .map(|i| RoleEntry {
            member_uuid: Uuid::from_u128(0x1000 + i),
            state: MemberState::Active,
            since: 0,
        })
        .collect();
    Superblock {
        flags: 0,
        array_uuid: Uuid::from_u128(0xabcd),
        member_uuid: members[2].member_uuid,
        role: 2,
        level: Level::Raid5,
        member_count: 4,
        chunk_size: 64 << 10,
        layout,
        events: 7,
        state: ArrayState::Dirty,
        creation_time: 1_700_000_000,
        update_time: 1_700_000_100,
        rebuild_checkpoint: None,
        bitmap_valid: false,
        checksums_valid: true,
        journal_valid: true,
        scrub_time: 0,
        replace: None,
        events_cleared: 0,
        mirror: Default::default(),
        name: "vol0".into(),
        members,
    }
}

fn field_of(err: SuperblockError) -> &'static str {
    match err {
        SuperblockError::Field { field, .. } => field,
        other => panic!("expected a field error, got {other}"),
    }
}

#[test]
fn layout_of_256m_member_matches_format_doc() {
    let l = metadata_layout(256 << 20).unwrap();
    assert_eq!((l.bitmap_offset, l.bitmap_len), (64 << 10, 4096));
    assert_eq!((l.journal_offset, l.journal_len), (68 << 10, 256 << 10));
    assert_eq!((l.csum_offset, l.csum_len), (324 << 10, 256 << 10));
    assert_eq!(l.data_offset, 1 << 20);
    assert_eq!(l.data_size, 255 << 20);
}

#[test]
fn layout_refuses_member_without_room_for_data() {
    assert_eq!(metadata_layout(0), None);
    assert_eq!(metadata_layout(1 << 20), None);
    assert!(metadata_layout((1 << 20) + 4096).is_some());
}

proptest! {
    #[test]
    fn layout_regions_are_ordered_aligned_and_fit(size in 0u64..(1 << 50)) {
        if let Some(l) = metadata_layout(size) {
            prop_assert!(l.bitmap_offset >= 8192);
            prop_assert!(l.bitmap_offset + l.bitmap_len <= l.journal_offset);
            prop_assert!(l.journal_offset + l.journal_len <= l.csum_offset);
            prop_assert!(l.csum_offset + l.csum_len <= l.data_offset);
            prop_assert_eq!(l.data_offset % DATA_ALIGN, 0);
            prop_assert!(l.csum_len >= l.data_size / 4096 * 4);
            prop_assert!(l.bitmap_len * 8 >= l.data_size.div_ceil(1 << l.bitmap_region_shift));
            prop_assert!(l.data_offset + l.data_size <= size);
        }
    }

    #[test]
    fn encode_decode_round_trips(
        array in 1u128..,
        count in 3u32..=32,
        role_seed in any::<u32>(),
        level in prop::sample::select(vec![
            Level::Raid0,
            Level::Raid1,
            Level::Raid5,
            Level::Raid6,
            Level::Raid10(crate::raid::Raid10Shape::N2),
            Level::Raid10("o3".parse().unwrap()),
        ]),
        chunk_shift in 12u32..=24,
        events in 1u64..,
        dirty in any::<bool>(),
        times in (any::<u64>(), any::<u64>()),
        checkpoint in prop::option::of(0u64..=(64 << 20)),
        name in "[A-Za-z0-9._-]{1,64}",
        states in prop::collection::vec(1u32..=4, 32),
        uuids in prop::collection::vec(1u128.., 32),
    ) {
        let chunk = 1u32 << chunk_shift;
        let count = count.max(level.min_members() as u32);
        let mut layout = metadata_layout(1 << 30).unwrap();
        layout.data_size = (64 << 20) / chunk as u64 * chunk as u64;
        let role = role_seed % count;
        let members: Vec<RoleEntry> = (0..count as usize)
            .map(|i| RoleEntry {
                member_uuid: Uuid::from_u128(uuids[i]),
                state: MemberState::from_code(states[i]).unwrap(),
                since: events / (i as u64 + 1),
            })
            .collect();
        let sb = Superblock {
            flags: 0,
            array_uuid: Uuid::from_u128(array),
            member_uuid: members[role as usize].member_uuid,
            role,
            level,
            member_count: count,
            chunk_size: chunk,
            layout,
            events,
            state: if dirty { ArrayState::Dirty } else { ArrayState::Clean },
            creation_time: times.0,
            update_time: times.1,
            rebuild_checkpoint: checkpoint,
            bitmap_valid: false,
            checksums_valid: false,
            journal_valid: false,
            scrub_time: 1_700_000_000,
            replace: None,
            events_cleared: events / 2,
            mirror: Default::default(),
            name,
            members,
        };
        let decoded = Superblock::decode(&sb.encode()).unwrap();
        prop_assert_eq!(decoded, sb);
    }

    #[test]
    fn mutated_block_with_fixed_crc_is_refused_or_round_trips(
        edits in prop::collection::vec(
            (prop_oneof![0usize..330, 1024usize..1160, 0usize..CRC_OFFSET], any::<u8>()),
            1..4,
        ),
    ) {
        let mut b = sample().encode();
        for (pos, value) in edits {
            b[pos] = value;
        }
        let crc = crc_of(&b);
        b[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        if let Ok(sb) = Superblock::decode(&b) {
            prop_assert_eq!(&sb.encode()[..], &b[..]);
        }
    }

    #[test]
    fn decode_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..5000)) {
        let _ = Superblock::decode(&bytes);
    }
}

#[test]
fn every_single_byte_corruption_is_detected() {
    let good = sample().encode();
    for pos in 0..SUPERBLOCK_SIZE {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bad = good;
            bad[pos] ^= flip;
            assert!(
                Superblock::decode(&bad).is_err(),
                "flip {flip:#x} at byte {pos} went unnoticed"
            );
        }
    }
}

#[test]
fn decode_names_bad_magic_blank_length_and_checksum() {
    let mut b = sample().encode();
    assert_eq!(
        Superblock::decode(&b[..100]).unwrap_err().to_string(),
        "superblock must be 4096 bytes, got 100"
    );
    assert!(matches!(
        Superblock::decode(&[0; 4096]),
        Err(SuperblockError::Blank)
    ));
    b[100] ^= 1;
    assert!(Superblock::decode(&b)
        .unwrap_err()
        .to_string()
        .starts_with("checksum mismatch"));
    b[0] = b'X';
    assert_eq!(
        Superblock::decode(&b).unwrap_err().to_string(),
        "bad magic: not a vraid member"
    );
}

#[test]
fn decode_refuses_well_checksummed_out_of_range_fields() {
    type Mutation = Box<dyn Fn(&mut Superblock)>;
    let cases: Vec<(&str, Mutation)> = vec![
        ("chunk_size", Box::new(|s| s.chunk_size = 3 << 12)),
        ("chunk_size", Box::new(|s| s.chunk_size = 32 << 20)),
        ("role", Box::new(|s| s.role = 4)),
        (
            "member_count",
            Box::new(|s| {
                s.member_count = 2;
                s.members.truncate(2);
                s.role = 1;
                s.member_uuid = s.members[1].member_uuid;
            }),
        ),
        ("data_offset", Box::new(|s| s.layout.data_offset += 4096)),
        ("data_size", Box::new(|s| s.layout.data_size += 4096)),
        ("layout", Box::new(|s| s.layout.journal_offset -= 4096)),
        ("array_uuid", Box::new(|s| s.array_uuid = Uuid::nil())),
        ("events", Box::new(|s| s.events = 0)),
        ("name", Box::new(|s| s.name = String::new())),
        (
            "rebuild_checkpoint",
            Box::new(|s| s.rebuild_checkpoint = Some(u64::MAX - 1)),
        ),
        (
            "member table",
            Box::new(|s| s.members[2].member_uuid = Uuid::from_u128(9)),
        ),
    ];
    for (expected, mutate) in cases {
        let mut sb = sample();
        mutate(&mut sb);
        let err = Superblock::decode(&sb.encode()).unwrap_err();
        assert_eq!(field_of(err), expected);
    }
}

#[test]
fn decode_refuses_unknown_level_and_flags() {
    for unknown in [3u8, 4, 7, 11] {
        let mut b = sample().encode();
        b[52] = unknown;
        let crc = crc_of(&b);
        b[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        let err = Superblock::decode(&b).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("unknown RAID level {unknown}")),
            "{err}"
        );
        assert_eq!(field_of(err), "level");
    }
    let mut sb = sample();
    sb.flags = 8;
    assert!(matches!(
        Superblock::decode(&sb.encode()),
        Err(SuperblockError::Flags(8))
    ));
}

#[test]
fn a_raid6_journal_is_replayable_only_with_the_live_journal_flag() {
    // RAID-5: journal_state alone, as every build wrote it.
    let mut sb = sample();
    assert!(sb.journal_replayable());
    // RAID-6: journal_state 1 without bit 2 is what a build before it
    // left (case 84): not replayable.
    sb.level = Level::Raid6;
    assert!(!sb.journal_replayable());
    sb.flags = FLAG_RAID6_JOURNAL;
    let back = Superblock::decode(&sb.encode()).unwrap();
    assert!(back.journal_replayable());
    sb.journal_valid = false;
    assert!(!sb.journal_replayable());
}

#[test]
fn level_6_is_stored_as_6_and_read_back() {
    let sb = Superblock {
        level: Level::Raid6,
        ..sample()
    };
    let b = sb.encode();
    assert_eq!(u32::from_le_bytes(b[52..56].try_into().unwrap()), 6);
    assert_eq!(Superblock::decode(&b).unwrap().level, Level::Raid6);
}

#[test]
fn raid10_layout_is_stored_at_180_and_read_back() {
    for name in ["n2", "n3", "f2", "f3", "o2", "o3"] {
        let shape: crate::raid::Raid10Shape = name.parse().unwrap();
        let sb = Superblock {
            level: Level::Raid10(shape),
            ..sample()
        };
        let b = sb.encode();
        assert_eq!(u32::from_le_bytes(b[52..56].try_into().unwrap()), 10);
        assert_eq!(
            u32::from_le_bytes(b[180..184].try_into().unwrap()),
            shape.code()
        );
        assert_eq!(Superblock::decode(&b).unwrap().level, Level::Raid10(shape));
    }
}

#[test]
fn raid10_layout_is_refused_when_unknown_or_set_for_another_level() {
    let with_layout = |level: Level, code: u32| {
        let mut b = Superblock { level, ..sample() }.encode();
        b[180..184].copy_from_slice(&code.to_le_bytes());
        reseal(&mut b);
        Superblock::decode(&b)
    };
    let n2 = Level::Raid10(crate::raid::Raid10Shape::N2);
    for code in [0, 0x101, 0x104, 0x202, 0x20102] {
        let err = with_layout(n2, code).unwrap_err();
        assert_eq!(field_of(err), "raid10_layout", "{code:#x}");
    }
    let err = with_layout(Level::Raid5, 0x102).unwrap_err();
    assert_eq!(field_of(err), "raid10_layout");
    assert!(with_layout(Level::Raid5, 0).is_ok());
}

async fn device_with(a: &[u8], b: &[u8]) -> Arc<MemDevice> {
    let dev = Arc::new(MemDevice::new("m", 2 << 20));
    dev.write(ByteOffset(0), a, Durability::Normal)
        .await
        .unwrap();
    dev.write(ByteOffset(4096), b, Durability::Normal)
        .await
        .unwrap();
    dev
}

#[tokio::test]
async fn torn_copy_a_falls_back_to_copy_b_and_is_reported() {
    let good = sample().encode();
    let mut torn = good;
    torn[2000..].fill(0xee);
    let dev = device_with(&torn, &good).await;

    let read = read_superblock(dev.as_ref()).await.unwrap();

    assert_eq!(read.copy, CopyId::B);
    assert_eq!(read.superblock, sample());
    let (bad, err) = read.bad_copy.unwrap();
    assert_eq!(bad, CopyId::A);
    assert!(matches!(err, SuperblockError::Checksum { .. }));
}

#[tokio::test]
async fn newer_copy_wins_when_both_are_valid() {
    let old = sample();
    let mut new = sample();
    new.events += 1;
    let dev = device_with(&old.encode(), &new.encode()).await;

    let read = read_superblock(dev.as_ref()).await.unwrap();

    assert_eq!((read.copy, read.superblock.events), (CopyId::B, 8));
}

#[tokio::test]
async fn both_copies_bad_names_both_reasons() {
    let mut bad = sample().encode();
    bad[0] = 0;
    let dev = device_with(&bad, &[0; 4096]).await;

    let err = read_superblock(dev.as_ref()).await.unwrap_err().to_string();

    assert!(err.contains("copy A: bad magic"), "{err}");
    assert!(err.contains("copy B: no superblock"), "{err}");
}

#[tokio::test]
async fn write_superblock_writes_both_copies_and_flushes_each() {
    let dev = Arc::new(MemDevice::new("m", 2 << 20));

    write_superblock(dev.as_ref(), &sample()).await.unwrap();

    let snap = dev.snapshot();
    assert_eq!(&snap[..4096], &sample().encode()[..]);
    assert_eq!(&snap[4096..8192], &sample().encode()[..]);
    assert_eq!(dev.flushes(), 2);
}

#[test]
fn encoded_fields_sit_at_documented_offsets() {
    let sb = sample();
    let b = sb.encode();
    let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());

    assert_eq!(&b[..8], b"VRAIDSB1");
    assert_eq!((u32_at(8), u32_at(12)), (1, 0));
    assert_eq!(&b[16..32], sb.array_uuid.as_bytes());
    assert_eq!(&b[32..48], sb.member_uuid.as_bytes());
    assert_eq!(
        (u32_at(48), u32_at(52), u32_at(56), u32_at(60)),
        (2, 5, 4, 65536)
    );
    assert_eq!((u64_at(64), u64_at(72)), (1 << 20, 255 << 20));
    assert_eq!((u64_at(80), u32_at(88), u32_at(92)), (7, 1, 26));
    assert_eq!((u64_at(96), u64_at(104)), (1_700_000_000, 1_700_000_100));
    assert_eq!((u64_at(112), u64_at(120)), (64 << 10, 4096));
    assert_eq!((u64_at(128), u64_at(136)), (68 << 10, 256 << 10));
    assert_eq!((u64_at(144), u64_at(152)), (324 << 10, 256 << 10));
    assert_eq!(u64_at(160), u64::MAX);
    assert_eq!(&b[256..261], b"vol0\0");
    assert_eq!(
        &b[1024 + 3 * 32..1024 + 3 * 32 + 16],
        sb.members[3].member_uuid.as_bytes()
    );
    assert_eq!(u32_at(1024 + 3 * 32 + 16), 1);
    assert_eq!(
        u32_at(4092),
        crc32fast::hash(&[&b[..4092], &[0; 4][..]].concat())
    );
}

#[test]
fn bitmap_state_rebuild_states_and_spare_role_round_trip() {
    // Arrange
    let mut sb = sample();
    sb.bitmap_valid = true;
    sb.rebuild_checkpoint = Some(64 << 20);
    sb.members[1].state = MemberState::Rebuilding;
    sb.members[3].state = MemberState::Recovering;
    // Act
    let b = sb.encode();
    // Assert
    assert_eq!(u32::from_le_bytes(b[168..172].try_into().unwrap()), 1);
    assert_eq!(
        u32::from_le_bytes(b[1024 + 32 + 16..1024 + 32 + 20].try_into().unwrap()),
        5
    );
    assert_eq!(Superblock::decode(&b).unwrap(), sb);
    let mut spare = sample();
    spare.role = SPARE_ROLE;
    spare.member_uuid = uuid::Uuid::from_u128(0xABCD);
    assert_eq!(Superblock::decode(&spare.encode()).unwrap(), spare);
    spare.member_uuid = spare.members[0].member_uuid;
    assert!(
        Superblock::decode(&spare.encode()).is_err(),
        "a spare cannot hold a role's UUID"
    );
    let mut bad = sb.encode();
    bad[168] = 2;
    let crc = crc32fast::hash(&[&bad[..4092], &[0; 4][..]].concat());
    bad[4092..].copy_from_slice(&crc.to_le_bytes());
    assert_eq!(
        field_of(Superblock::decode(&bad).unwrap_err()),
        "bitmap_state"
    );
}

#[test]
fn replace_record_round_trips_at_its_offsets_and_lets_the_target_decode() {
    // Arrange: role 1 is being replaced by a new member copying it.
    let mut sb = sample();
    let new = Uuid::from_u128(0x7777);
    sb.rebuild_checkpoint = Some(64 << 20);
    sb.replace = Some(ReplaceRecord {
        role: 1,
        member_uuid: new,
    });
    let mut target = sb.clone();
    target.role = 1;
    target.member_uuid = new;

    // Act
    let b = target.encode();

    // Assert
    assert_eq!(&b[192..208], new.as_bytes());
    assert_eq!(u32::from_le_bytes(b[208..212].try_into().unwrap()), 1);
    let decoded = Superblock::decode(&b).unwrap();
    assert!(decoded.is_replacement());
    assert_eq!(decoded, target);
    assert!(!Superblock::decode(&sb.encode()).unwrap().is_replacement());
}

#[test]
fn decode_refuses_inconsistent_replace_records() {
    type Mutation = Box<dyn Fn(&mut Superblock)>;
    let record = |role, uuid| {
        Some(ReplaceRecord {
            role,
            member_uuid: Uuid::from_u128(uuid),
        })
    };
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "replace_role",
            Box::new(move |s| {
                s.rebuild_checkpoint = Some(0);
                s.replace = record(4, 0x7777);
            }),
        ),
        (
            "replace_uuid",
            Box::new(move |s| {
                s.rebuild_checkpoint = Some(0);
                s.replace = record(1, 0x1003);
            }),
        ),
        (
            "replace_uuid",
            Box::new(move |s| s.replace = record(1, 0x7777)),
        ),
        (
            "replace_uuid",
            Box::new(move |s| {
                s.rebuild_checkpoint = Some(0);
                s.members[3].state = MemberState::Rebuilding;
                s.replace = record(1, 0x7777);
            }),
        ),
    ];
    for (expected, mutate) in cases {
        let mut sb = sample();
        mutate(&mut sb);
        let err = Superblock::decode(&sb.encode()).unwrap_err();
        assert_eq!(field_of(err), expected);
    }
    // A role without a UUID, and bytes past the record, are refused.
    let mut b = sample().encode();
    b[208] = 1;
    let crc = crc32fast::hash(&[&b[..4092], &[0; 4][..]].concat());
    b[4092..].copy_from_slice(&crc.to_le_bytes());
    assert_eq!(
        field_of(Superblock::decode(&b).unwrap_err()),
        "replace_role"
    );
    let mut b = sample().encode();
    b[228] = 1;
    let crc = crc32fast::hash(&[&b[..4092], &[0; 4][..]].concat());
    b[4092..].copy_from_slice(&crc.to_le_bytes());
    assert_eq!(field_of(Superblock::decode(&b).unwrap_err()), "reserved");
    // events_cleared and since never exceed events.
    let mut sb = sample();
    sb.events_cleared = sb.events + 1;
    let err = Superblock::decode(&sb.encode()).unwrap_err();
    assert_eq!(field_of(err), "events_cleared");
    let mut sb = sample();
    sb.members[1].state = MemberState::Failed;
    sb.members[1].since = sb.events + 1;
    let err = Superblock::decode(&sb.encode()).unwrap_err();
    assert_eq!(field_of(err), "member table");
    let mut sb = sample();
    sb.events_cleared = 5;
    sb.members[1].state = MemberState::Failed;
    sb.members[1].since = 6;
    assert_eq!(Superblock::decode(&sb.encode()).unwrap(), sb);
}

#[test]
fn the_inline_checksum_flag_round_trips_and_other_bits_stay_refused() {
    use crate::meta::layout::ChecksumLayout;
    let mut sb = sample();
    assert_eq!(sb.checksum_layout(), ChecksumLayout::Separate);
    sb.flags = FLAG_INLINE_CSUM;
    let back = Superblock::decode(&sb.encode()).unwrap();
    assert_eq!(back.flags, FLAG_INLINE_CSUM);
    assert_eq!(back.checksum_layout(), ChecksumLayout::Inline);
    sb.flags = FLAG_INLINE_CSUM | FLAG_WRITTEN_MAP;
    let back = Superblock::decode(&sb.encode()).unwrap();
    assert!(back.has_written_map());
    assert_eq!(back.checksum_layout(), ChecksumLayout::Inline);
    sb.flags = FLAG_INLINE_CSUM | 8;
    assert!(matches!(
        Superblock::decode(&sb.encode()),
        Err(SuperblockError::Flags(9))
    ));
}

/// A RAID-1 sample with role 1 write-mostly and write-behind on.
fn mirrored() -> Superblock {
    let mut sb = sample();
    sb.level = Level::Raid1;
    sb.journal_valid = false;
    sb.mirror.set_write_mostly(1, true);
    sb.mirror.write_behind = Some((8192, 256));
    sb
}

#[test]
fn mirror_policy_round_trips_in_the_member_table_and_header() {
    // Arrange
    let sb = mirrored();

    // Act
    let b = sb.encode();
    let back = Superblock::decode(&b).unwrap();

    // Assert: policy bit 0 of role 1's entry, the bounds at 220 and 224.
    assert_eq!(back.mirror, sb.mirror);
    assert_eq!(b[1024 + 32 + 28], 1);
    assert_eq!(b[1024 + 28], 0);
    assert_eq!(u32::from_le_bytes(b[220..224].try_into().unwrap()), 8192);
    assert_eq!(u32::from_le_bytes(b[224..228].try_into().unwrap()), 256);
    assert_eq!(sample().encode()[220..228], [0; 8]);
}

#[test]
fn unknown_policy_bits_and_half_set_write_behind_are_refused() {
    let reseal = |mut b: [u8; SUPERBLOCK_SIZE]| {
        let crc = crc32fast::hash(&[&b[..4092], &[0; 4][..]].concat());
        b[4092..].copy_from_slice(&crc.to_le_bytes());
        b
    };
    let mut b = mirrored().encode();
    b[1024 + 32 + 28] = 2;
    let err = Superblock::decode(&reseal(b)).unwrap_err();
    assert_eq!(field_of(err), "member table");
    let mut b = mirrored().encode();
    b[224..228].copy_from_slice(&[0; 4]);
    let err = Superblock::decode(&reseal(b)).unwrap_err();
    assert_eq!(field_of(err), "write_behind_kib");
    // Beyond member_count, and on a level other than RAID-1.
    let mut b = mirrored().encode();
    b[1024 + 5 * 32 + 28] = 1;
    let err = Superblock::decode(&reseal(b)).unwrap_err();
    assert_eq!(field_of(err), "member table");
    let mut sb = mirrored();
    sb.level = Level::Raid5;
    sb.journal_valid = true;
    assert_eq!(field_of(sb.validate().unwrap_err()), "member table");
}
