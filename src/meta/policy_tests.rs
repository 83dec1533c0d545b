//! Write-mostly follows the member, not the role (FORMAT.md §6, crash case
//! 95): a new device rebuilt into a write-mostly role, or a replacement,
//! does not inherit it; the role's own member coming back keeps it.

use std::sync::Arc;

use uuid::Uuid;

use super::*;
use crate::block::BlockDevice;
use crate::member::memory::MemDevice;

const MEMBER_SIZE: u64 = 8 << 20;

/// A RAID-1 of m0, m1 (role 1 write-mostly, write-behind on), assembled.
async fn mirror_with_policy() -> (Vec<Arc<MemDevice>>, Assembly) {
    let devs: Vec<Arc<MemDevice>> = (0..2)
        .map(|i| Arc::new(MemDevice::new(format!("m{i}"), MEMBER_SIZE)))
        .collect();
    let dyns: Vec<Arc<dyn BlockDevice>> = devs
        .iter()
        .map(|d| d.clone() as Arc<dyn BlockDevice>)
        .collect();
    let spec = CreateSpec {
        name: "vol".into(),
        level: crate::raid::Level::Raid1,
        chunk_size: 64 << 10,
        force: false,
    };
    create_array(&dyns, &spec).await.unwrap();
    let named = devs
        .iter()
        .map(|d| (format!("/{}", d.name()), d.clone() as Arc<dyn BlockDevice>))
        .collect();
    let a = assemble(named).await.unwrap();
    let policy = MirrorPolicy {
        write_mostly: 0b10,
        write_behind: Some((8192, 256)),
    };
    a.metadata.set_mirror_policy(policy, true).await.unwrap();
    (devs, a)
}

async fn stored(dev: &MemDevice) -> MirrorPolicy {
    read_superblock(dev).await.unwrap().superblock.mirror
}

#[tokio::test]
async fn a_new_member_rebuilt_into_a_write_mostly_role_does_not_inherit_it() {
    // Arrange
    let (devs, a) = mirror_with_policy().await;
    a.metadata.record_member_failed(1).await.unwrap();
    let new = Arc::new(MemDevice::new("new".to_string(), MEMBER_SIZE));

    // Act
    a.metadata
        .begin_rebuild(1, new.clone(), Uuid::new_v4(), Joining::New)
        .await
        .unwrap();

    // Assert: gone in the update that names the new member, on every
    // member; write-behind stays stored.
    for dev in [&devs[0], &new] {
        let p = stored(dev).await;
        assert!(!p.is_write_mostly(1), "{}", dev.name());
        assert_eq!(p.write_behind, Some((8192, 256)));
    }
}

#[tokio::test]
async fn the_roles_own_member_coming_back_keeps_its_write_mostly_bit() {
    for joining in [Joining::Recovery, Joining::Returning] {
        // Arrange
        let (devs, a) = mirror_with_policy().await;
        a.metadata.record_member_failed(1).await.unwrap();
        let own = stored(&devs[0]).await;

        // Act
        let uuid = read_superblock(devs[1].as_ref())
            .await
            .unwrap()
            .superblock
            .member_uuid;
        a.metadata
            .begin_rebuild(1, devs[1].clone(), uuid, joining)
            .await
            .unwrap();

        // Assert
        assert!(own.is_write_mostly(1));
        assert!(stored(&devs[0]).await.is_write_mostly(1), "{joining:?}");
        assert!(stored(&devs[1]).await.is_write_mostly(1), "{joining:?}");
    }
}

#[tokio::test]
async fn a_replacement_takes_the_role_without_its_write_mostly_bit() {
    // Arrange
    let (devs, a) = mirror_with_policy().await;
    let new = Arc::new(MemDevice::new("new".to_string(), MEMBER_SIZE));
    a.metadata
        .begin_replace(1, new.clone(), Uuid::new_v4())
        .await
        .unwrap();
    let during = stored(&devs[0]).await;

    // Act
    a.metadata.finish_replace(1).await.unwrap();

    // Assert: the old member keeps it while it holds the role.
    assert!(during.is_write_mostly(1));
    for dev in [&devs[0], &new] {
        assert!(!stored(dev).await.is_write_mostly(1), "{}", dev.name());
    }
}
