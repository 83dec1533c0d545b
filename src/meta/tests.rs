//! Tests of create, examine and assemble against in-memory members.

use std::sync::Arc;

use super::*;
use crate::block::{BlockDevice, Durability};
use crate::member::memory::MemDevice;
use crate::units::ByteOffset;

const MEMBER_SIZE: u64 = 8 << 20;

fn mem_devices(prefix: &str, n: usize) -> Vec<Arc<MemDevice>> {
    (0..n)
        .map(|i| Arc::new(MemDevice::new(format!("{prefix}{i}"), MEMBER_SIZE)))
        .collect()
}

fn dyns(devs: &[Arc<MemDevice>]) -> Vec<Arc<dyn BlockDevice>> {
    devs.iter()
        .map(|d| d.clone() as Arc<dyn BlockDevice>)
        .collect()
}

fn named(devs: &[Arc<MemDevice>], order: &[usize]) -> Vec<(String, Arc<dyn BlockDevice>)> {
    order
        .iter()
        .map(|&i| (format!("/m{i}"), devs[i].clone() as Arc<dyn BlockDevice>))
        .collect()
}

fn spec(name: &str, level: Level) -> CreateSpec {
    CreateSpec {
        name: name.into(),
        level,
        chunk_size: 64 << 10,
        force: false,
    }
}

async fn new_array(name: &str, level: Level, n: usize) -> (Vec<Arc<MemDevice>>, ArrayInfo) {
    let devs = mem_devices(name, n);
    let info = create_array(&dyns(&devs), &spec(name, level))
        .await
        .unwrap();
    (devs, info)
}

/// Restores a member's superblock area to an earlier snapshot (simulates a
/// member that missed later updates).
async fn restore_superblocks(dev: &MemDevice, snapshot: &[u8]) {
    dev.write(ByteOffset(0), &snapshot[..8192], Durability::Normal)
        .await
        .unwrap();
}

#[tokio::test]
async fn create_writes_identical_copies_and_reports_geometry() {
    let (devs, info) = new_array("vol0", Level::Raid5, 3).await;

    assert_eq!(info.data_offset, 1 << 20);
    assert_eq!(info.data_size, 7 << 20);
    for (role, dev) in devs.iter().enumerate() {
        let snap = dev.snapshot();
        assert_eq!(&snap[..4096], &snap[4096..8192]);
        let sb = Superblock::decode(&snap[..4096]).unwrap();
        assert_eq!(sb.role as usize, role);
        assert_eq!(sb.member_uuid, info.member_uuids[role]);
        assert_eq!((sb.events, sb.state), (1, ArrayState::Clean));
    }
}

#[tokio::test]
async fn create_refuses_existing_member_unless_forced() {
    let (devs, first) = new_array("vol0", Level::Raid1, 2).await;

    let err = create_array(&dyns(&devs), &spec("other", Level::Raid1))
        .await
        .unwrap_err();
    assert!(matches!(err, MetaError::AlreadyMember { .. }), "{err}");
    assert!(err.to_string().contains("use --force"));

    let forced = CreateSpec {
        force: true,
        ..spec("other", Level::Raid1)
    };
    let second = create_array(&dyns(&devs), &forced).await.unwrap();
    assert_ne!(second.array_uuid, first.array_uuid);
}

#[tokio::test]
async fn forced_create_discards_old_data_and_metadata() {
    let devs = mem_devices("d", 3);
    for d in &devs {
        d.write(ByteOffset(64 << 10), &[0xaa; 4096], Durability::Normal)
            .await
            .unwrap();
        d.write(ByteOffset(3 << 20), &[0xbb; 4096], Durability::Normal)
            .await
            .unwrap();
    }

    let forced = CreateSpec {
        force: true,
        ..spec("vol0", Level::Raid5)
    };
    create_array(&dyns(&devs), &forced).await.unwrap();

    for d in &devs {
        // Zero past the superblocks, except an empty written-region map
        // (FORMAT.md §10): a header, no bit set.
        let snap = d.snapshot();
        let map_end = 8192 + 4096;
        assert!(snap[map_end..].iter().all(|&b| b == 0));
        assert_eq!(&snap[8192..8200], b"VRAIDWR1");
        let image = crate::meta::written::WrittenImage::decode(
            &snap[8192..map_end],
            26,
            crate::meta::read_superblock(d.as_ref())
                .await
                .unwrap()
                .superblock
                .layout
                .data_size,
        )
        .unwrap();
        assert_eq!(image.count(), 0);
    }
}

#[tokio::test]
async fn create_validates_name_chunk_count_and_size() {
    let devs = mem_devices("d", 3);
    let small = vec![Arc::new(MemDevice::new("tiny", 1 << 20)) as Arc<dyn BlockDevice>; 1];
    let mut two = dyns(&devs[..2]);

    let bad_name = create_array(&dyns(&devs), &spec("no spaces", Level::Raid5)).await;
    let bad_chunk = create_array(
        &dyns(&devs),
        &CreateSpec {
            chunk_size: 3000,
            ..spec("v", Level::Raid5)
        },
    )
    .await;
    let too_few = create_array(&two, &spec("v", Level::Raid5)).await;
    two.push(small[0].clone());
    let too_small = create_array(&two, &spec("v", Level::Raid5)).await;
    let twice = create_array(&[two[0].clone(), two[0].clone()], &spec("v", Level::Raid1)).await;

    assert!(matches!(bad_name, Err(MetaError::InvalidName(_))));
    assert!(matches!(bad_chunk, Err(MetaError::InvalidChunk(3000))));
    assert_eq!(
        too_few.unwrap_err().to_string(),
        "raid5 needs 3..=32 members, got 2"
    );
    assert!(matches!(too_small, Err(MetaError::TooSmall { .. })));
    assert!(matches!(twice, Err(MetaError::DuplicateDevice(_))));
}

#[tokio::test]
async fn examine_reports_superblock_as_json_and_text() {
    let (devs, info) = new_array("vol0", Level::Raid5, 3).await;

    let report = examine(devs[1].as_ref()).await.unwrap();
    let json = serde_json::to_value(&report).unwrap();
    let text = report.to_string();

    assert_eq!(json["array_uuid"], info.array_uuid.to_string());
    assert_eq!(json["name"], "vol0");
    assert_eq!(json["level"], 5);
    assert_eq!(json["chunk_size"], 65536);
    assert_eq!(json["member_count"], 3);
    assert_eq!(json["role"], 1);
    assert_eq!(json["data_offset"], 1 << 20);
    assert_eq!(json["data_size"], 7 << 20);
    assert_eq!(json["events"], 1);
    assert_eq!(json["state"], "clean");
    assert_eq!(json["members"][2]["state"], "active");
    assert!(text.contains("RAID level : raid5"), "{text}");
}

#[tokio::test]
async fn examine_of_blank_device_says_no_superblock() {
    let dev = MemDevice::new("blank", MEMBER_SIZE);

    let err = examine(&dev).await.unwrap_err();

    let MetaError::Superblock { source, .. } = err else {
        panic!("wrong error {err}");
    };
    assert!(source.to_string().contains("no superblock"));
}

#[tokio::test]
async fn assemble_takes_roles_from_superblocks_not_argument_order() {
    let (devs, info) = new_array("vol0", Level::Raid5, 4).await;

    let a = assemble(named(&devs, &[2, 0, 3, 1])).await.unwrap();

    assert_eq!((a.name.as_str(), a.array_uuid), ("vol0", info.array_uuid));
    assert_eq!(
        (a.level, a.chunk_size, a.member_count),
        (Level::Raid5, 65536, 4)
    );
    assert_eq!(a.data_size, 7 << 20);
    assert!(!a.is_degraded() && !a.was_dirty && a.excluded.is_empty());
    for (role, m) in a.members.iter().enumerate() {
        let m = m.as_ref().unwrap();
        assert_eq!(m.path, format!("/m{role}"));
        assert_eq!(m.member_uuid, info.member_uuids[role]);
        assert_eq!(m.data.size(), 7 << 20);
    }
}

#[tokio::test]
async fn data_window_maps_onto_the_data_area() {
    let (devs, _) = new_array("vol0", Level::Raid1, 2).await;
    let a = assemble(named(&devs, &[0, 1])).await.unwrap();

    let m = a.members[0].as_ref().unwrap();
    m.data
        .write(ByteOffset(0), &[7; 512], Durability::Normal)
        .await
        .unwrap();

    assert_eq!(devs[0].snapshot()[1 << 20], 7);
    assert!(examine(devs[0].as_ref()).await.is_ok());
}

#[tokio::test]
async fn raid5_with_one_member_missing_assembles_degraded() {
    let (devs, _) = new_array("vol0", Level::Raid5, 4).await;

    let a = assemble(named(&devs, &[0, 1, 3])).await.unwrap();

    assert!(a.is_degraded());
    assert_eq!(a.missing(), 1);
    assert!(a.members[2].is_none());
}

#[tokio::test]
async fn raid5_with_two_members_missing_is_refused() {
    let (devs, _) = new_array("vol0", Level::Raid5, 4).await;

    let err = assemble(named(&devs, &[0, 3])).await.unwrap_err();

    assert_eq!(
        err.to_string(),
        "cannot assemble vol0: 2 of 4 members missing, raid5 tolerates 1"
    );
}

#[tokio::test]
async fn raid0_with_one_member_missing_is_refused() {
    let (devs, _) = new_array("stripe", Level::Raid0, 2).await;

    let err = assemble(named(&devs, &[1])).await.unwrap_err();

    assert!(matches!(
        err,
        AssembleError::TooManyMissing { missing: 1, .. }
    ));
}

#[tokio::test]
async fn corrupt_superblock_is_treated_as_missing() {
    let (devs, _) = new_array("vol0", Level::Raid5, 3).await;
    devs[1]
        .write(ByteOffset(100), &[0xff; 5000], Durability::Normal)
        .await
        .unwrap();

    let a = assemble(named(&devs, &[0, 1, 2])).await.unwrap();

    assert!(a.members[1].is_none());
    assert_eq!(a.excluded.len(), 1);
    assert_eq!(a.excluded[0].path, "/m1");
    assert!(
        a.excluded[0].reason.contains("checksum mismatch"),
        "{:?}",
        a.excluded
    );
}

#[tokio::test]
async fn unreadable_member_is_treated_as_missing() {
    let (devs, _) = new_array("vol0", Level::Raid1, 2).await;
    devs[0].set_failing(true);

    let a = assemble(named(&devs, &[0, 1])).await.unwrap();

    assert!(a.members[0].is_none() && a.members[1].is_some());
    assert_eq!(a.excluded[0].path, "/m0");
}

#[tokio::test]
async fn one_torn_copy_per_member_still_assembles() {
    let (devs, _) = new_array("vol0", Level::Raid5, 3).await;
    devs[0]
        .write(ByteOffset(10), &[1; 10], Durability::Normal)
        .await
        .unwrap();
    devs[1]
        .write(ByteOffset(4106), &[1; 10], Durability::Normal)
        .await
        .unwrap();

    let a = assemble(named(&devs, &[0, 1, 2])).await.unwrap();

    assert!(!a.is_degraded());
}

#[tokio::test]
async fn foreign_member_is_refused_with_both_arrays_named() {
    let (devs, info) = new_array("vol0", Level::Raid5, 3).await;
    let (other, other_info) = new_array("vol1", Level::Raid1, 2).await;
    let mut paths = named(&devs, &[0, 1, 2]);
    paths.push(("/x".into(), other[0].clone()));

    let err = assemble(paths).await.unwrap_err().to_string();

    assert_eq!(
        err,
        format!(
            "member /x belongs to array {} (vol1), not {} (vol0)",
            other_info.array_uuid, info.array_uuid
        )
    );
}

#[tokio::test]
async fn same_member_under_two_paths_is_refused() {
    let (devs, _) = new_array("vol0", Level::Raid1, 2).await;
    let mut paths = named(&devs, &[0, 1]);
    paths.push(("/alias".into(), devs[0].clone()));

    let err = assemble(paths).await.unwrap_err();

    assert!(
        matches!(&err, AssembleError::DuplicateMember { first, second, .. } if first == "/m0" && second == "/alias"),
        "{err}"
    );
}

#[tokio::test]
async fn mark_dirty_and_mark_clean_round_trip_through_superblocks() {
    let (devs, _) = new_array("vol0", Level::Raid5, 3).await;
    let a = assemble(named(&devs, &[0, 1, 2])).await.unwrap();

    a.mark_dirty().await.unwrap();
    let dirty = examine(devs[2].as_ref()).await.unwrap();
    let reassembled = assemble(named(&devs, &[0, 1, 2])).await.unwrap();
    a.mark_clean().await.unwrap();
    let clean = examine(devs[0].as_ref()).await.unwrap();
    let after_clean = assemble(named(&devs, &[0, 1, 2])).await.unwrap();

    assert_eq!((dirty.events, dirty.state), (2, ArrayState::Dirty));
    assert!(reassembled.was_dirty);
    // dirty (2), closing update (3, still dirty), clean (4): FORMAT.md case 47.
    assert_eq!((clean.events, clean.state), (4, ArrayState::Clean));
    assert!(!after_clean.was_dirty);
    assert_eq!(a.metadata.events().await, 4);
}

#[tokio::test]
async fn member_absent_while_written_is_stale_at_next_assembly() {
    let (devs, _) = new_array("vol0", Level::Raid5, 3).await;
    let degraded = assemble(named(&devs, &[0, 1])).await.unwrap();
    degraded.mark_dirty().await.unwrap();

    let a = assemble(named(&devs, &[2, 1, 0])).await.unwrap();

    assert!(a.members[2].is_none());
    assert_eq!(a.excluded.len(), 1);
    assert_eq!(a.excluded[0].path, "/m2");
    assert!(
        a.excluded[0].reason.starts_with("stale"),
        "{:?}",
        a.excluded
    );
}

#[tokio::test]
async fn member_absent_while_only_read_may_rejoin() {
    let (devs, _) = new_array("vol0", Level::Raid5, 3).await;
    let _read_only = assemble(named(&devs, &[0, 1])).await.unwrap();

    let a = assemble(named(&devs, &[0, 1, 2])).await.unwrap();

    assert!(!a.is_degraded());
}

#[tokio::test]
async fn recorded_failure_excludes_member_at_next_assembly() {
    let (devs, _) = new_array("vol0", Level::Raid5, 3).await;
    let a = assemble(named(&devs, &[0, 1, 2])).await.unwrap();
    let m1_before = devs[1].snapshot();

    a.record_member_failed(1).await.unwrap();
    a.record_member_failed(1).await.unwrap();
    let next = assemble(named(&devs, &[0, 1, 2])).await.unwrap();

    assert_eq!(devs[1].snapshot()[..8192], m1_before[..8192]);
    assert_eq!(a.metadata.events().await, 2);
    assert_eq!(
        a.metadata.member_states().await,
        [
            MemberState::Active,
            MemberState::Failed,
            MemberState::Active
        ]
    );
    assert!(next.members[1].is_none());
    assert!(
        next.excluded[0].reason.contains("Failed"),
        "{:?}",
        next.excluded
    );
    assert!(matches!(
        a.record_member_failed(7).await,
        Err(MetaError::NoSuchRole(7))
    ));
}

#[tokio::test]
async fn crash_during_failure_bump_keeps_members_that_missed_it() {
    let (devs, _) = new_array("vol0", Level::Raid5, 4).await;
    let a = assemble(named(&devs, &[0, 1, 2, 3])).await.unwrap();
    let m2_before = devs[2].snapshot();
    a.record_member_failed(3).await.unwrap();
    restore_superblocks(&devs[2], &m2_before).await;

    let next = assemble(named(&devs, &[0, 1, 2, 3])).await.unwrap();

    assert!(next.members[2].is_some(), "{:?}", next.excluded);
    assert!(next.members[3].is_none());
    assert_eq!(next.missing(), 1);
}

#[tokio::test]
async fn crash_during_clean_to_dirty_assembles_dirty_with_all_members() {
    let (devs, _) = new_array("vol0", Level::Raid1, 2).await;
    let a = assemble(named(&devs, &[0, 1])).await.unwrap();
    let m0_before = devs[0].snapshot();
    a.mark_dirty().await.unwrap();
    restore_superblocks(&devs[0], &m0_before).await;

    let next = assemble(named(&devs, &[1, 0])).await.unwrap();

    assert!(!next.is_degraded());
    assert!(next.was_dirty);
}

#[tokio::test]
async fn split_brain_mirror_is_refused() {
    let (devs, _) = new_array("mirror", Level::Raid1, 2).await;
    assemble(named(&devs, &[0]))
        .await
        .unwrap()
        .mark_dirty()
        .await
        .unwrap();
    assemble(named(&devs, &[1]))
        .await
        .unwrap()
        .mark_dirty()
        .await
        .unwrap();

    let err = assemble(named(&devs, &[0, 1])).await.unwrap_err();

    assert!(
        matches!(err, AssembleError::SplitBrain { events: 2, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn no_superblocks_at_all_is_refused() {
    let devs = mem_devices("blank", 2);

    let err = assemble(named(&devs, &[0, 1])).await.unwrap_err();

    assert!(matches!(err, AssembleError::NoSuperblocks(2)));
}

#[tokio::test]
async fn superblock_write_failure_names_the_member() {
    let (devs, _) = new_array("vol0", Level::Raid1, 2).await;
    let a = assemble(named(&devs, &[0, 1])).await.unwrap();
    devs[1].set_failing(true);

    let err = a.mark_dirty().await.unwrap_err();

    assert!(
        matches!(&err, MetaError::Io { device, .. } if device == "vol01"),
        "{err}"
    );
}

#[tokio::test]
async fn repeated_mark_dirty_writes_once_but_first_one_always_writes() {
    let (devs, _) = new_array("vol0", Level::Raid5, 3).await;
    let first = assemble(named(&devs, &[0, 1, 2])).await.unwrap();
    first.mark_dirty().await.unwrap();
    let crashed = assemble(named(&devs, &[0, 1])).await.unwrap();

    crashed.mark_dirty().await.unwrap();
    crashed.mark_dirty().await.unwrap();

    assert!(crashed.was_dirty);
    assert_eq!(crashed.metadata.events().await, 3);
    assert_eq!(
        crashed.metadata.member_states().await,
        [
            MemberState::Active,
            MemberState::Active,
            MemberState::Missing
        ]
    );
    assert_eq!(examine(devs[0].as_ref()).await.unwrap().events, 3);
}

#[tokio::test]
async fn examine_reports_which_copy_is_bad() {
    let (devs, _) = new_array("vol0", Level::Raid1, 2).await;
    devs[0]
        .write(ByteOffset(300), &[9; 8], Durability::Normal)
        .await
        .unwrap();

    let report = examine(devs[0].as_ref()).await.unwrap();

    assert_eq!(report.copy_used, CopyId::B);
    let bad = report.bad_copy.unwrap();
    assert!(bad.starts_with("copy A: checksum mismatch"), "{bad}");
}

/// Flips one byte of `dev` at `at`.
async fn flip_byte(dev: &MemDevice, at: u64) {
    crate::raid::test_support::xor_byte(dev, at, 0x5a)
        .await
        .unwrap();
}

#[tokio::test]
async fn every_single_byte_corruption_of_a_copy_is_survived_by_the_other_copy() {
    let (devs, _) = new_array("vol0", Level::Raid5, 3).await;
    let mut pristine = vec![0u8; 8192];
    devs[0].read(ByteOffset(0), &mut pristine).await.unwrap();

    for at in 0..8192u64 {
        flip_byte(&devs[0], at).await;

        let a = assemble(named(&devs, &[0, 1, 2])).await.unwrap();
        let report = examine(devs[0].as_ref()).await.unwrap();

        assert!(!a.is_degraded(), "byte {at}: member 0 left out");
        let bad = report.bad_copy.unwrap_or_default();
        let expect = if at < 4096 { "copy A" } else { "copy B" };
        assert!(bad.starts_with(expect), "byte {at}: bad copy {bad:?}");
        restore_superblocks(&devs[0], &pristine).await;
    }
}

#[tokio::test]
async fn member_with_both_copies_corrupt_is_left_out_and_the_others_assemble() {
    let (devs, _) = new_array("vol0", Level::Raid5, 3).await;
    for at in [7u64, 4096 + 2048] {
        flip_byte(&devs[2], at).await;
    }

    let a = assemble(named(&devs, &[0, 1, 2])).await.unwrap();

    assert!(a.members[0].is_some() && a.members[1].is_some());
    assert!(a.members[2].is_none());
    assert_eq!(a.excluded.len(), 1);
    assert!(a.excluded[0].reason.contains("copy"), "{:?}", a.excluded);
}

/// Runs one write session on a fresh assembly of `devs` with the bitmap on:
/// dirty, (optionally) a bitmap clearing, then clean.
async fn run_session(devs: &[Arc<MemDevice>], clearing: bool) {
    let order: Vec<usize> = (0..devs.len()).collect();
    let a = assemble(named(devs, &order)).await.unwrap();
    a.metadata.set_bitmap_enabled(true).await;
    a.mark_dirty().await.unwrap();
    if clearing {
        a.metadata.clearing_allowed().await.unwrap();
    }
    a.mark_clean().await.unwrap();
}

/// Sets bit 0 of the write-intent bitmap on `dev` (a write in flight).
async fn set_bitmap_bit(dev: &MemDevice) {
    let at = ByteOffset(dev.snapshot_superblock().layout.bitmap_offset);
    dev.write(at, &[1u8; 4096], Durability::Normal)
        .await
        .unwrap();
}

trait SnapshotSuperblock {
    fn snapshot_superblock(&self) -> Superblock;
}

impl SnapshotSuperblock for MemDevice {
    fn snapshot_superblock(&self) -> Superblock {
        Superblock::decode(&self.snapshot()[..4096]).unwrap()
    }
}

#[tokio::test]
async fn stale_copy_put_back_after_a_run_that_cleared_bits_is_left_out() {
    // Arrange: m2 copied while stopped, then a session writes and clears.
    let (devs, _) = new_array("vol0", Level::Raid5, 4).await;
    run_session(&devs, false).await;
    let copy = devs[2].snapshot();
    run_session(&devs, true).await;
    restore_superblocks(&devs[2], &copy).await;

    // Act
    let next = assemble(named(&devs, &[0, 1, 2, 3])).await.unwrap();

    // Assert: staleness by data, not by the role list.
    assert!(next.members[2].is_none());
    assert!(next.readd.is_empty());
    assert!(
        next.excluded[0].reason.contains("missed writes"),
        "{:?}",
        next.excluded
    );
}

#[tokio::test]
async fn copy_put_back_into_a_crashed_run_is_recovered_from_the_bitmap() {
    // Arrange: m2 copied while stopped; the next run dirties the array,
    // sets a bit and crashes before clearing anything.
    let (devs, _) = new_array("vol0", Level::Raid5, 4).await;
    run_session(&devs, false).await;
    let copy = devs[2].snapshot();
    let a = assemble(named(&devs, &[0, 1, 2, 3])).await.unwrap();
    a.metadata.set_bitmap_enabled(true).await;
    a.mark_dirty().await.unwrap();
    set_bitmap_bit(&devs[0]).await;
    restore_superblocks(&devs[2], &copy).await;

    // Act
    let next = assemble(named(&devs, &[0, 1, 2, 3])).await.unwrap();

    // Assert
    assert!(next.members[2].is_none());
    assert_eq!(next.readd.len(), 1);
    assert_eq!(next.readd[0].0, 2);
}

#[tokio::test]
async fn crash_during_clean_to_dirty_with_bitmap_accepts_the_lagging_member() {
    // Arrange: the start-up mark_dirty reached every member but m1.
    let (devs, _) = new_array("vol0", Level::Raid5, 3).await;
    run_session(&devs, true).await;
    let before = devs[1].snapshot();
    let a = assemble(named(&devs, &[0, 1, 2])).await.unwrap();
    a.metadata.set_bitmap_enabled(true).await;
    a.mark_dirty().await.unwrap();
    restore_superblocks(&devs[1], &before).await;

    // Act
    let next = assemble(named(&devs, &[0, 1, 2])).await.unwrap();

    // Assert: nothing can differ (no bit set, none cleared since).
    assert!(!next.is_degraded(), "{:?}", next.excluded);
    assert!(next.readd.is_empty());
    assert!(next.was_dirty);
}

#[tokio::test]
async fn raid0_member_failed_and_unchanged_is_accepted_but_an_older_copy_is_not() {
    // Arrange: m1 fails during a run (recorded at `since`), unchanged since.
    let (devs, _) = new_array("vol0", Level::Raid0, 3).await;
    let old_copy = devs[1].snapshot();
    let a = assemble(named(&devs, &[0, 1, 2])).await.unwrap();
    a.mark_dirty().await.unwrap();
    a.mark_clean().await.unwrap();
    a.mark_dirty().await.unwrap();
    a.record_member_failed(1).await.unwrap();
    let since = devs[0].snapshot_superblock().members[1].since;
    assert_eq!(since, devs[0].snapshot_superblock().events);

    // Act
    let next = assemble(named(&devs, &[0, 1, 2])).await.unwrap();

    // Assert: back as active, written so by the first update.
    assert!(!next.is_degraded(), "{:?}", next.excluded);
    next.mark_clean().await.unwrap();
    let sb = devs[1].snapshot_superblock();
    assert_eq!(sb.members[1].state, MemberState::Active);
    assert_eq!(sb.members[1].since, 0);

    // An older copy of m1 (from before the failure) is stale.
    let b = assemble(named(&devs, &[0, 1, 2])).await.unwrap();
    b.mark_dirty().await.unwrap();
    b.record_member_failed(1).await.unwrap();
    restore_superblocks(&devs[1], &old_copy).await;
    let err = assemble(named(&devs, &[0, 1, 2])).await.unwrap_err();
    assert!(matches!(err, AssembleError::TooManyMissing { .. }), "{err}");
}

#[tokio::test]
async fn force_assemble_takes_the_most_recently_failed_members() {
    // Arrange: two RAID-5 members failed one after the other.
    let (devs, _) = new_array("vol0", Level::Raid5, 4).await;
    let a = assemble(named(&devs, &[0, 1, 2, 3])).await.unwrap();
    a.metadata.set_bitmap_enabled(true).await;
    a.mark_dirty().await.unwrap();
    a.record_member_failed(1).await.unwrap();
    a.record_member_failed(2).await.unwrap();

    // Act
    let refused = assemble(named(&devs, &[0, 1, 2, 3])).await.unwrap_err();
    let forced = assemble_with(named(&devs, &[0, 1, 2, 3]), AssembleOptions { force: true })
        .await
        .unwrap();

    // Assert: the refusal names the way out; the forced assembly takes
    // m2 (failed last), leaves m1 to catch up from the bitmap, resyncs.
    assert!(
        refused.to_string().contains("--force-assemble"),
        "{refused}"
    );
    assert!(forced.members[2].is_some());
    assert!(forced.members[1].is_none());
    assert_eq!(forced.readd.len(), 1);
    assert!(forced.was_dirty);
    forced.mark_dirty().await.unwrap();
    let sb = devs[0].snapshot_superblock();
    assert_eq!(sb.members[2].state, MemberState::Active);
    assert_eq!(sb.members[1].state, MemberState::Failed);
}

#[tokio::test]
async fn clearing_bits_first_records_events_cleared() {
    let (devs, _) = new_array("vol0", Level::Raid1, 2).await;
    let a = assemble(named(&devs, &[0, 1])).await.unwrap();
    a.mark_dirty().await.unwrap();
    let before = a.metadata.events().await;

    a.metadata.clearing_allowed().await.unwrap();
    a.metadata.clearing_allowed().await.unwrap();

    assert_eq!(a.metadata.events().await, before + 1);
    assert_eq!(devs[1].snapshot_superblock().events_cleared, before + 1);
}

/// A member copied while the array runs (dirty, after the first clearing),
/// the run then ends cleanly: the copy is left out (FORMAT.md case 47).
async fn copy_taken_mid_run(bitmap: bool) {
    let (devs, _) = new_array("vol0", Level::Raid5, 4).await;
    let a = assemble(named(&devs, &[0, 1, 2, 3])).await.unwrap();
    a.metadata.set_bitmap_enabled(bitmap).await;
    a.mark_dirty().await.unwrap();
    a.metadata.clearing_allowed().await.unwrap();
    let copy = devs[2].snapshot();
    a.mark_clean().await.unwrap();
    drop(a);
    restore_superblocks(&devs[2], &copy).await;

    let next = assemble(named(&devs, &[0, 1, 2, 3])).await.unwrap();

    assert!(next.members[2].is_none(), "bitmap {bitmap}");
    assert!(next.readd.is_empty(), "bitmap {bitmap}");
    assert_eq!(next.excluded.len(), 1, "bitmap {bitmap}");
}

#[tokio::test]
async fn copy_taken_while_running_then_clean_stop_is_left_out_with_bitmap() {
    copy_taken_mid_run(true).await;
}

#[tokio::test]
async fn copy_taken_while_running_then_clean_stop_is_left_out_without_bitmap() {
    copy_taken_mid_run(false).await;
}

#[tokio::test]
async fn member_failed_during_a_run_stays_recoverable_after_the_closing_update() {
    // Arrange: bits cleared once, then m2 fails (no clearing from then on)
    // and the run stops cleanly.
    let (devs, _) = new_array("vol0", Level::Raid5, 4).await;
    let a = assemble(named(&devs, &[0, 1, 2, 3])).await.unwrap();
    a.metadata.set_bitmap_enabled(true).await;
    a.mark_dirty().await.unwrap();
    a.metadata.clearing_allowed().await.unwrap();
    a.record_member_failed(2).await.unwrap();
    set_bitmap_bit(&devs[0]).await;
    a.mark_clean().await.unwrap();
    drop(a);

    // Act
    let next = assemble(named(&devs, &[0, 1, 2, 3])).await.unwrap();

    // Assert: the closing update did not move events_cleared past m2.
    assert!(next.members[2].is_none());
    assert_eq!(next.readd.len(), 1, "{:?}", next.excluded);
    assert_eq!(next.readd[0].0, 2);
}

#[tokio::test]
async fn an_inline_array_gets_the_flag_and_a_logical_data_size_that_fits() {
    use crate::integrity::tag::physical_len;
    use crate::meta::layout::ChecksumLayout;
    let devs = mem_devices("i", 3);
    let info = create_array_with(
        &dyns(&devs),
        &spec("inl", Level::Raid5),
        ChecksumLayout::Inline,
    )
    .await
    .unwrap();
    // No separate checksum area; 7 MiB of member data area hold 7 MiB ×
    // 8/9, rounded down to the chunk.
    assert_eq!(info.data_offset, 1 << 20);
    assert_eq!(
        info.data_size,
        (7 << 20) / 4608 * 4096 / (64 << 10) * (64 << 10)
    );
    assert!(info.data_offset + physical_len(info.data_size) <= MEMBER_SIZE);
    for dev in &devs {
        let sb = Superblock::decode(&dev.snapshot()[..4096]).unwrap();
        assert_eq!(sb.checksum_layout(), ChecksumLayout::Inline);
        assert_eq!(sb.layout.data_size, info.data_size);
        assert_eq!(sb.layout.csum_len, 0);
    }
    let assembled = assemble(named(&devs, &[0, 1, 2])).await.unwrap();
    assert_eq!(assembled.checksum_layout, ChecksumLayout::Inline);
}

#[tokio::test]
async fn create_refuses_a_raid10_whose_far_copies_do_not_fit() {
    // Arrange: members of two 16M chunk rows: three far copies need three.
    let devs: Vec<Arc<MemDevice>> = (0..3)
        .map(|i| Arc::new(MemDevice::new(format!("r10f{i}"), 40 << 20)))
        .collect();
    let with = |shape: &str| CreateSpec {
        chunk_size: 16 << 20,
        ..spec("r10", Level::Raid10(shape.parse().unwrap()))
    };

    // Act
    let f3 = create_array(&dyns(&devs), &with("f3")).await;
    let n2 = create_array(&dyns(&devs), &with("n2")).await;

    // Assert
    assert!(matches!(f3, Err(MetaError::Geometry(_))), "{f3:?}");
    assert_eq!(n2.unwrap().level, 10);
}
