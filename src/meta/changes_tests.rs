//! `ArrayMetadata::changes` fires for each update of the recorded table
//! (failure, rebuild begin / abort / finish, replace begin / abort /
//! finish, removal): a waiter made before finds it without waiting.

use std::sync::Arc;

use futures::FutureExt;
use uuid::Uuid;

use super::*;
use crate::block::BlockDevice;
use crate::member::memory::MemDevice;
use crate::raid::changes::ChangeWatch;

const MEMBER_SIZE: u64 = 8 << 20;

async fn raid5() -> Arc<ArrayMetadata> {
    let devs: Vec<Arc<dyn BlockDevice>> = (0..3)
        .map(|i| Arc::new(MemDevice::new(format!("m{i}"), MEMBER_SIZE)) as Arc<dyn BlockDevice>)
        .collect();
    let spec = CreateSpec {
        name: "vol".into(),
        level: crate::raid::Level::Raid5,
        chunk_size: 64 << 10,
        force: false,
    };
    create_array(&devs, &spec).await.unwrap();
    let named = devs.iter().map(|d| (format!("/{}", d.name()), d.clone()));
    assemble(named.collect()).await.unwrap().metadata
}

fn fired(w: &mut ChangeWatch) -> bool {
    w.changed().now_or_never().is_some()
}

fn new_member() -> Arc<dyn BlockDevice> {
    Arc::new(MemDevice::new("new", MEMBER_SIZE))
}

#[tokio::test]
async fn failure_rebuild_and_removal_updates_each_fire() {
    let m = raid5().await;
    let mut w = m.changes().watch();
    assert!(!fired(&mut w), "fired with no update");
    m.record_member_failed(1).await.unwrap();
    assert!(fired(&mut w), "failure");
    m.begin_rebuild(1, new_member(), Uuid::new_v4(), Joining::New)
        .await
        .unwrap();
    assert!(fired(&mut w), "rebuild begins");
    m.checkpoint(1, 1 << 20).await.unwrap();
    assert!(fired(&mut w), "checkpoint");
    m.abort_rebuild(1).await.unwrap();
    assert!(fired(&mut w), "rebuild abandoned");
    m.record_member_removed(1).await.unwrap();
    assert!(fired(&mut w), "removal");
    m.begin_rebuild(1, new_member(), Uuid::new_v4(), Joining::New)
        .await
        .unwrap();
    w.mark_seen();
    m.finish_rebuild(1).await.unwrap();
    assert!(fired(&mut w), "rebuild finished");
}

#[tokio::test]
async fn replace_updates_each_fire() {
    let m = raid5().await;
    let mut w = m.changes().watch();
    m.begin_replace(0, new_member(), Uuid::new_v4())
        .await
        .unwrap();
    assert!(fired(&mut w), "replace begins");
    m.abort_replace(0).await.unwrap();
    assert!(fired(&mut w), "replace abandoned");
    let uuid = Uuid::new_v4();
    m.begin_replace(0, new_member(), uuid).await.unwrap();
    w.mark_seen();
    m.finish_replace(0).await.unwrap();
    assert!(fired(&mut w), "replace finished");
    assert_eq!(m.role_entry(0).await.map(|(u, _)| u), Some(uuid));
}

#[tokio::test]
async fn reads_do_not_fire() {
    let m = raid5().await;
    let mut w = m.changes().watch();
    let _ = (m.member_states().await, m.replace().await, m.events().await);
    assert!(!fired(&mut w));
}
