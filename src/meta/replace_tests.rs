//! Persisted `replace` and `remove` (FORMAT.md §3 rule 5a, crash cases
//! 18-21) against in-memory members.

use std::sync::Arc;

use uuid::Uuid;

use super::*;
use crate::block::BlockDevice;
use crate::member::memory::MemDevice;

const MEMBER_SIZE: u64 = 8 << 20;

async fn raid5(n: usize) -> Vec<Arc<MemDevice>> {
    let devs: Vec<Arc<MemDevice>> = (0..n)
        .map(|i| Arc::new(MemDevice::new(format!("m{i}"), MEMBER_SIZE)))
        .collect();
    let dyns: Vec<Arc<dyn BlockDevice>> = devs
        .iter()
        .map(|d| d.clone() as Arc<dyn BlockDevice>)
        .collect();
    let spec = CreateSpec {
        name: "vol".into(),
        level: crate::raid::Level::Raid5,
        chunk_size: 64 << 10,
        force: false,
    };
    create_array(&dyns, &spec).await.unwrap();
    devs
}

fn named(devs: &[&Arc<MemDevice>]) -> Vec<(String, Arc<dyn BlockDevice>)> {
    devs.iter()
        .map(|d| {
            (
                format!("/{}", d.name()),
                (*d).clone() as Arc<dyn BlockDevice>,
            )
        })
        .collect()
}

/// A RAID-5 of m0..m2 with role 1 being replaced by `new`, checkpointed at 1 MiB.
async fn replacing() -> (Vec<Arc<MemDevice>>, Arc<MemDevice>, Uuid) {
    let devs = raid5(3).await;
    let new = Arc::new(MemDevice::new("new".to_string(), MEMBER_SIZE));
    let a = assemble(named(&[&devs[0], &devs[1], &devs[2]]))
        .await
        .unwrap();
    let uuid = Uuid::new_v4();
    a.metadata
        .begin_replace(1, new.clone(), uuid)
        .await
        .unwrap();
    a.metadata.checkpoint(1, 1 << 20).await.unwrap();
    (devs, new, uuid)
}

#[tokio::test]
async fn begin_replace_records_the_new_member_and_keeps_the_old_one_active() {
    // Act
    let (devs, new, uuid) = replacing().await;

    // Assert
    let old = read_superblock(devs[1].as_ref()).await.unwrap().superblock;
    let target = read_superblock(new.as_ref()).await.unwrap().superblock;
    assert_eq!(old.members[1].state, MemberState::Active);
    assert_eq!(old.members[1].member_uuid, old.member_uuid);
    assert_eq!(old.rebuild_checkpoint, Some(1 << 20));
    assert_eq!(
        old.replace.map(|r| (r.role, r.member_uuid)),
        Some((1, uuid))
    );
    assert!(target.is_replacement());
    assert_eq!(target.events, old.events);
}

#[tokio::test]
async fn replace_resumes_from_its_checkpoint_with_the_old_member_serving() {
    // Arrange
    let (devs, new, uuid) = replacing().await;

    // Act: paths in any order, the new member among them.
    let a = assemble(named(&[&new, &devs[2], &devs[1], &devs[0]]))
        .await
        .unwrap();

    // Assert
    assert!(a.members.iter().all(Option::is_some), "old member serves");
    let t = a.replace.as_ref().expect("replace resumed");
    assert_eq!((t.role, t.up_to, t.member.member_uuid), (1, 1 << 20, uuid));
    assert!(a.rebuild.is_none() && a.excluded.is_empty());
    a.mark_dirty().await.unwrap();
    a.metadata.checkpoint(1, 2 << 20).await.unwrap();
    assert_eq!(
        read_superblock(new.as_ref())
            .await
            .unwrap()
            .superblock
            .rebuild_checkpoint,
        Some(2 << 20),
        "the new member is written with the others"
    );
    a.metadata.finish_replace(1).await.unwrap();
    let next = assemble(named(&[&new, &devs[2], &devs[1], &devs[0]]))
        .await
        .unwrap();
    assert_eq!(next.members[1].as_ref().unwrap().member_uuid, uuid);
    assert!(next.replace.is_none() && next.rebuild.is_none());
    assert_eq!(next.excluded.len(), 1, "the old member is stale");
    assert!(
        next.excluded[0].reason.contains("now belongs to"),
        "{:?}",
        next.excluded
    );
}

#[tokio::test]
async fn replace_without_its_old_member_continues_as_a_rebuild() {
    // Arrange
    let (devs, new, uuid) = replacing().await;

    // Act
    let a = assemble(named(&[&devs[0], &devs[2], &new])).await.unwrap();

    // Assert
    assert!(a.members[1].is_none() && a.replace.is_none());
    let t = a.rebuild.as_ref().expect("continues as a rebuild");
    assert_eq!((t.role, t.up_to, t.recovering), (1, 1 << 20, false));
    assert_eq!(
        a.metadata.role_entry(1).await,
        Some((uuid, MemberState::Rebuilding))
    );
    a.mark_dirty().await.unwrap();
    let sb = read_superblock(new.as_ref()).await.unwrap().superblock;
    assert_eq!((sb.members[1].member_uuid, sb.replace), (uuid, None));
    assert_eq!(sb.rebuild_checkpoint, Some(1 << 20));
    // The old member is stale from then on.
    let next = assemble(named(&[&devs[0], &devs[1], &devs[2], &new]))
        .await
        .unwrap();
    assert!(next.rebuild.is_some());
    assert!(next.excluded.iter().any(|e| e.path == "/m1"));
}

#[tokio::test]
async fn replace_without_its_new_member_is_dropped_and_the_old_one_serves() {
    // Arrange
    let (devs, _new, _) = replacing().await;

    // Act
    let a = assemble(named(&[&devs[0], &devs[1], &devs[2]]))
        .await
        .unwrap();
    a.mark_dirty().await.unwrap();

    // Assert
    assert_eq!(a.replace_dropped, Some(1));
    assert!(a.members.iter().all(Option::is_some) && a.replace.is_none());
    let sb = read_superblock(devs[0].as_ref()).await.unwrap().superblock;
    assert_eq!((sb.replace, sb.rebuild_checkpoint), (None, None));
}

#[tokio::test]
async fn abort_replace_forgets_the_new_member() {
    // Arrange
    let devs = raid5(3).await;
    let new = Arc::new(MemDevice::new("new".to_string(), MEMBER_SIZE));
    let a = assemble(named(&[&devs[0], &devs[1], &devs[2]]))
        .await
        .unwrap();
    a.metadata
        .begin_replace(2, new.clone(), Uuid::new_v4())
        .await
        .unwrap();

    // Act
    a.metadata.abort_replace(2).await.unwrap();
    let next = assemble(named(&[&devs[0], &devs[1], &devs[2], &new]))
        .await
        .unwrap();

    // Assert
    assert!(next.replace.is_none() && next.members.iter().all(Option::is_some));
    assert!(next.excluded.iter().any(|e| e.path == "/new"));
    assert!(matches!(
        a.metadata.finish_replace(2).await,
        Err(MetaError::NoSuchRole(2))
    ));
}

#[tokio::test]
async fn removed_member_is_left_out_with_its_reason_even_with_the_bitmap() {
    // Arrange: a failed member could rejoin by bitmap re-add...
    let devs = raid5(3).await;
    let a = assemble(named(&[&devs[0], &devs[1], &devs[2]]))
        .await
        .unwrap();
    a.metadata.set_bitmap_enabled(true).await;
    a.mark_dirty().await.unwrap();
    a.record_member_failed(2).await.unwrap();
    let readd = assemble(named(&[&devs[0], &devs[1], &devs[2]]))
        .await
        .unwrap();
    assert_eq!(readd.readd.len(), 1, "re-add candidate before remove");

    // Act: ...until it is removed.
    a.metadata.record_member_removed(2).await.unwrap();
    a.metadata.record_member_removed(2).await.unwrap();
    let next = assemble(named(&[&devs[0], &devs[1], &devs[2]]))
        .await
        .unwrap();

    // Assert
    assert!(next.members[2].is_none() && next.readd.is_empty());
    let ex = &next.excluded[0];
    assert_eq!((ex.path.as_str(), ex.role), ("/m2", None));
    assert!(ex.reason.contains("vraid remove"), "{}", ex.reason);
    assert_eq!(
        next.metadata.role_entry(2).await,
        Some((Uuid::nil(), MemberState::Missing))
    );
    assert!(matches!(
        a.metadata.record_member_removed(9).await,
        Err(MetaError::NoSuchRole(9))
    ));
}

#[tokio::test]
async fn old_member_failed_mid_replace_yields_to_its_replacement() {
    // Arrange: the bitmap is maintained, so the failed old member would be
    // a re-add candidate; its replacement was already copying.
    let devs = raid5(3).await;
    let new = Arc::new(MemDevice::new("new".to_string(), MEMBER_SIZE));
    let a = assemble(named(&[&devs[0], &devs[1], &devs[2]]))
        .await
        .unwrap();
    a.metadata.set_bitmap_enabled(true).await;
    a.mark_dirty().await.unwrap();
    let uuid = Uuid::new_v4();
    a.metadata
        .begin_replace(0, new.clone(), uuid)
        .await
        .unwrap();
    a.metadata.checkpoint(0, 3 << 20).await.unwrap();
    a.record_member_failed(0).await.unwrap();

    // Act
    let next = assemble(named(&[&devs[0], &devs[1], &devs[2], &new]))
        .await
        .unwrap();

    // Assert
    let t = next
        .rebuild
        .as_ref()
        .expect("replacement rebuilds the role");
    assert_eq!((t.role, t.up_to, t.member.member_uuid), (0, 3 << 20, uuid));
    assert!(next.readd.is_empty() && next.replace.is_none());
    let ex = next.excluded.iter().find(|e| e.path == "/m0").unwrap();
    assert!(ex.reason.contains("replacement"), "{}", ex.reason);
}
