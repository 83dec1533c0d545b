//! ArrayHandle against real member files: add into a missing slot, replace
//! a live member, live re-add from the bitmap.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::array::{AddOutcome, ArrayOptions};
use super::bringup::{self, assemble_volume_with, CreateRequest};
use crate::block::{BlockDevice, Durability};
use crate::member::MemberOptions;
use crate::raid::{Level, MemberIndex, MemberState, Volume};
use crate::units::ByteOffset;

const SIZE: u64 = 80 << 20;

fn scratch() -> tempfile::TempDir {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/unit-tmp");
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

async fn create(dir: &Path, n: usize) -> Vec<PathBuf> {
    let paths: Vec<PathBuf> = (0..n).map(|i| dir.join(format!("m{i}.img"))).collect();
    let req = CreateRequest {
        name: "t".into(),
        level: Level::Raid1,
        chunk_size: 64 << 10,
        member_size: SIZE,
        force: false,
        checksum_layout: Default::default(),
    };
    bringup::create_array(&paths, &req, &MemberOptions::default())
        .await
        .unwrap();
    paths
}

async fn wait_active(vol: &Volume, role: usize) {
    for _ in 0..500 {
        if vol.state(MemberIndex(role)) == MemberState::Active && vol.sync_progress().is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "member {role} did not become active: {:?}",
        vol.member_states()
    );
}

fn sparse(path: &Path) {
    std::fs::File::create(path).unwrap().set_len(SIZE).unwrap();
}

fn unlimited() -> ArrayOptions {
    ArrayOptions {
        rebuild_max_mbps: 0,
        ..ArrayOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_member_is_rebuilt_into_the_missing_slot_and_replace_swaps_a_live_one() {
    // Arrange: member 1 missing, data written degraded.
    let dir = scratch();
    let paths = create(dir.path(), 2).await;
    std::fs::remove_file(&paths[1]).unwrap();
    let a = assemble_volume_with(&paths, &MemberOptions::default(), &unlimited())
        .await
        .unwrap();
    let data: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    a.volume
        .write(ByteOffset(3 << 20), &data, Durability::Normal)
        .await
        .unwrap();
    let new = dir.path().join("new.img");
    sparse(&new);

    // Act
    let outcome = a.array.add_member(&new, false).await.unwrap();
    wait_active(&a.volume, 1).await;

    // Assert
    assert_eq!(outcome, AddOutcome::Rebuilding { role: 1 });
    let states = a.assembly.metadata.member_states().await;
    assert_eq!(states, vec![crate::meta::MemberState::Active; 2]);
    let mut buf = vec![0u8; 1 << 20];
    let off = a.assembly.data_offset + (3 << 20);
    let raw: Arc<dyn BlockDevice> =
        crate::member::open_member(&new, &MemberOptions::default()).unwrap();
    raw.read(ByteOffset(off), &mut buf).await.unwrap();
    assert!(buf == data, "rebuilt member holds the data");

    // Act: replace member 0 while it serves.
    let repl = dir.path().join("repl.img");
    sparse(&repl);
    a.array.replace_member(0, &repl, false).await.unwrap();
    for _ in 0..500 {
        if a.volume.rebuild_target(MemberIndex(0)).is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Assert: the old member 0 is no longer part of the array.
    let old = crate::member::open_member(&paths[0], &MemberOptions::default()).unwrap();
    let old_uuid = crate::meta::read_superblock(old.as_ref())
        .await
        .unwrap()
        .superblock
        .member_uuid;
    let (uuid, _) = a.assembly.metadata.role_entry(0).await.unwrap();
    assert_ne!(uuid, old_uuid, "role 0 now belongs to the replacement");
    let repl_name = repl.display().to_string();
    assert_eq!(a.array.member_path(0).as_deref(), Some(repl_name.as_str()));
    assert_eq!(a.array.role_of(&repl_name), Some(0));
    assert_eq!(a.array.role_of(&new.display().to_string()), Some(1));
    assert_eq!(a.array.role_of("1"), Some(1));
    assert_eq!(a.array.role_of("2"), None);
    let mut back = vec![0u8; 1 << 20];
    a.volume.read(ByteOffset(3 << 20), &mut back).await.unwrap();
    assert!(back == data);
    assert!(a.array.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_readd_of_a_failed_member_copies_only_dirty_regions() {
    let dir = scratch();
    let paths = create(dir.path(), 2).await;
    // First run: whole, so the bitmap becomes maintained.
    let a = assemble_volume_with(&paths, &MemberOptions::default(), &unlimited())
        .await
        .unwrap();
    assert!(a.array.shutdown().await);
    a.assembly.mark_clean().await.unwrap();
    drop(a);
    // Second run without member 1; write into one region; then re-add it.
    let away = dir.path().join("m1.away");
    std::fs::rename(&paths[1], &away).unwrap();
    let a = assemble_volume_with(&paths, &MemberOptions::default(), &unlimited())
        .await
        .unwrap();
    a.volume
        .write(ByteOffset(100), &[7; 5000], Durability::Normal)
        .await
        .unwrap();
    std::fs::rename(&away, &paths[1]).unwrap();
    // Act
    let outcome = a.array.add_member(&paths[1], false).await.unwrap();
    wait_active(&a.volume, 1).await;
    // Assert: one 64 MiB region at most, not the whole member.
    assert_eq!(outcome, AddOutcome::Rebuilding { role: 1 });
    let copied = a
        .array
        .rebuilt_bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(copied > 0 && copied <= 64 << 20, "copied {copied}");
    assert!(copied < a.assembly.data_size);
    assert!(a.array.shutdown().await);
}
