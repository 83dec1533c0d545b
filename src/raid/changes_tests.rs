//! `Volume::changes` fires for each kind of member change (and not for
//! client I/O): a waiter made before the change finds it without waiting
//! (`now_or_never`: no clock involved).

use std::sync::Arc;

use futures::FutureExt;

use super::changes::ChangeWatch;
use super::layout::MemberIndex;
use super::rebuild::{RebuildControl, RebuildSink};
use super::test_support::Array;
use super::{Level, MemberState};
use crate::block::{BlockDevice, BoxFuture, Durability};
use crate::member::fault::{FaultDevice, FaultKind, FaultOp, FaultRule, FaultSet, FaultSpec};
use crate::member::memory::MemDevice;
use crate::units::ByteOffset;

const C: u64 = 64 << 10;

struct NoSink;

impl RebuildSink for NoSink {
    fn checkpoint(&self, _: MemberIndex, _: u64) -> BoxFuture<'_, Result<(), String>> {
        crate::block::BoxFuture::new(async { Ok(()) })
    }
    fn finished(&self, _: MemberIndex) -> BoxFuture<'_, Result<(), String>> {
        crate::block::BoxFuture::new(async { Ok(()) })
    }
}

/// True when `w` has a change waiting (it resolves without a wait).
fn fired(w: &mut ChangeWatch) -> bool {
    w.changed().now_or_never().is_some()
}

fn target(name: &str) -> Arc<dyn BlockDevice> {
    Arc::new(MemDevice::new(name, 4 * C))
}

#[tokio::test]
async fn member_failure_fires() {
    let a = Array::new(Level::Raid5, 3, C, 4 * C, &[]);
    let mut w = a.volume.changes().watch();
    a.volume
        .fail_member_by_request(MemberIndex(1), "test")
        .await;
    assert!(fired(&mut w));
    assert_eq!(a.volume.state(MemberIndex(1)), MemberState::Failed);
}

#[tokio::test]
async fn attach_abandon_detach_each_fire() {
    let a = Array::new(Level::Raid5, 3, C, 4 * C, &[1]);
    let m = MemberIndex(1);
    let mut w = a.volume.changes().watch();
    assert!(!fired(&mut w), "fired with no change");
    a.volume.attach_rebuild_target(m, target("new"), 0).unwrap();
    assert!(fired(&mut w), "attach");
    assert!(a.volume.abandon_rebuild_by_request(m, "test"));
    assert!(fired(&mut w), "abandon");
    a.volume.detach_rebuild_target(m);
    assert!(fired(&mut w), "detach");
    assert_eq!(a.volume.state(m), MemberState::Missing);
}

#[tokio::test]
async fn rebuild_promotion_fires() {
    let a = Array::new(Level::Raid5, 3, C, 4 * C, &[2]);
    let m = MemberIndex(2);
    a.volume.attach_rebuild_target(m, target("new"), 0).unwrap();
    let mut w = a.volume.changes().watch();
    a.volume
        .rebuild(m, None, &RebuildControl::new(0), &NoSink)
        .await
        .unwrap();
    assert!(fired(&mut w));
    assert_eq!(a.volume.state(m), MemberState::Active);
}

#[tokio::test]
async fn target_write_error_fires_and_client_io_does_not() {
    let a = Array::new(Level::Raid5, 3, C, 4 * C, &[0]);
    let m = MemberIndex(0);
    let faults = Arc::new(FaultSet::new());
    let dev = Arc::new(FaultDevice::new(target("new"), faults.clone(), 1));
    a.volume.attach_rebuild_target(m, dev, 0).unwrap();
    let mut w = a.volume.changes().watch();
    let data = vec![7u8; 4096];
    a.volume
        .write(ByteOffset(0), &data, Durability::Normal)
        .await
        .unwrap();
    assert!(!fired(&mut w), "a client write is no member change");
    faults.add(Arc::new(FaultRule::new(
        1,
        FaultSpec {
            op: FaultOp::Write,
            ..FaultSpec::new(FaultKind::Error)
        },
    )));
    a.volume
        .write(ByteOffset(0), &data, Durability::Normal)
        .await
        .unwrap();
    assert!(fired(&mut w), "the target broke: its rebuild is abandoned");
}
