//! Write-mostly and write-behind on a RAID-1 of test devices: reads avoid
//! a write-mostly member, writes are acknowledged before a held
//! write-behind member has them, FLUSH and FUA wait for it, overlapping
//! writes reach it in order, the lag is bounded.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::behind::BehindLimits;
use super::intent::MemIntent;
use super::layout::MemberIndex;
use super::test_support::{pattern, Array, TestDevice};
use super::{Level, Volume};
use crate::block::{BlockDevice, Durability};
use crate::units::ByteOffset;

const SIZE: u64 = 8 << 20;

/// A RAID-1 of two test devices, member 1 write-mostly; write-behind on
/// with `limits` when given.
fn mirror(limits: Option<BehindLimits>) -> (Vec<Arc<TestDevice>>, Arc<Volume>, Arc<MemIntent>) {
    let Array {
        devices, volume, ..
    } = Array::new(Level::Raid1, 2, 64 << 10, SIZE, &[]);
    let intent = Arc::new(MemIntent::default());
    let vol = Arc::new(volume.with_write_intent(intent.clone()));
    vol.set_write_mostly(MemberIndex(1), true);
    if let Some(l) = limits {
        vol.start_write_behind(l);
    }
    (devices, vol, intent)
}

async fn bytes(dev: &TestDevice) -> Vec<u8> {
    let mut b = vec![0u8; 1 << 20];
    dev.mem.read(ByteOffset(0), &mut b).await.unwrap();
    b
}

#[tokio::test]
async fn reads_never_go_to_a_write_mostly_member_while_another_serves() {
    let (devices, vol, _) = mirror(None);
    vol.write(ByteOffset(0), &pattern(1 << 20, 1), Durability::Normal)
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    for i in 0..64u64 {
        vol.read(ByteOffset(i * 4096), &mut buf).await.unwrap();
    }
    assert_eq!(devices[1].reads.load(Ordering::SeqCst), 0);
    assert_eq!(devices[0].reads.load(Ordering::SeqCst), 64);
    // With the other member failed, the write-mostly one serves.
    vol.fail_member_by_request(MemberIndex(0), "test").await;
    vol.read(ByteOffset(0), &mut buf).await.unwrap();
    assert_eq!(buf, pattern(1 << 20, 1)[..4096]);
    assert_eq!(devices[1].reads.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_is_acknowledged_before_the_write_behind_member_has_it_and_flush_waits() {
    let (devices, vol, intent) = mirror(Some(BehindLimits::default()));
    devices[1].gate_closed.store(true, Ordering::SeqCst);
    let data = pattern(1 << 20, 2);

    // Acknowledged with member 1 held.
    vol.write(ByteOffset(0), &data, Durability::Normal)
        .await
        .unwrap();
    let (_, lag) = vol.write_behind().unwrap();
    assert_eq!((lag.requests, lag.bytes), (1, 1 << 20));
    assert_eq!(bytes(&devices[0]).await, data);
    assert_ne!(bytes(&devices[1]).await, data);
    // The region stays marked while the member lags: one more mark than done.
    let log = intent.log.lock().unwrap().clone();
    assert_eq!(log.iter().filter(|e| e.0).count(), 2, "{log:?}");
    assert_eq!(log.iter().filter(|e| !e.0).count(), 1, "{log:?}");

    // FLUSH waits for the lag.
    let flush = tokio::spawn({
        let vol = vol.clone();
        async move { vol.flush().await }
    });
    tokio::task::yield_now().await;
    assert!(!flush.is_finished());
    devices[1].gate_closed.store(false, Ordering::SeqCst);
    devices[1].gate_open.notify_waiters();
    flush.await.unwrap().unwrap();
    assert_eq!(vol.write_behind().unwrap().1.requests, 0);
    assert_eq!(bytes(&devices[1]).await, data);
    let log = intent.log.lock().unwrap().clone();
    assert_eq!(log.iter().filter(|e| !e.0).count(), 2, "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fua_write_waits_for_the_write_behind_member() {
    let (devices, vol, _) = mirror(Some(BehindLimits::default()));
    devices[1].gate_closed.store(true, Ordering::SeqCst);
    let write = tokio::spawn({
        let vol = vol.clone();
        async move {
            vol.write(ByteOffset(0), &pattern(4096, 3), Durability::Fua)
                .await
        }
    });
    // Bounded: the write cannot finish while member 1 is held.
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(!write.is_finished());
    devices[1].gate_closed.store(false, Ordering::SeqCst);
    devices[1].gate_open.notify_waiters();
    write.await.unwrap().unwrap();
    assert_eq!(devices[1].fua_writes.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_writes_reach_the_write_behind_member_in_order() {
    let (devices, vol, _) = mirror(Some(BehindLimits::default()));
    devices[1].yield_first.store(true, Ordering::SeqCst);
    for seed in 0..50 {
        let at = ByteOffset((seed % 3) * 2048);
        vol.write(at, &pattern(8192, seed), Durability::Normal)
            .await
            .unwrap();
    }
    vol.flush().await.unwrap();
    assert_eq!(bytes(&devices[0]).await, bytes(&devices[1]).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_never_exceeds_its_request_limit() {
    let limits = BehindLimits {
        max_bytes: 1 << 30,
        max_requests: 2,
    };
    let (devices, vol, _) = mirror(Some(limits));
    devices[1].gate_closed.store(true, Ordering::SeqCst);
    for i in 0..2u64 {
        vol.write(ByteOffset(i << 20), &[7u8; 4096], Durability::Normal)
            .await
            .unwrap();
    }
    let third = tokio::spawn({
        let vol = vol.clone();
        async move {
            vol.write(ByteOffset(4 << 20), &[7u8; 4096], Durability::Normal)
                .await
        }
    });
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(!third.is_finished(), "a third write passed a limit of 2");
    assert_eq!(vol.write_behind().unwrap().1.requests, 2);
    devices[1].gate_closed.store(false, Ordering::SeqCst);
    devices[1].gate_open.notify_waiters();
    third.await.unwrap().unwrap();
    vol.flush().await.unwrap();
    assert_eq!(vol.write_behind().unwrap().1.requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_other_member_failed_a_write_waits_for_the_write_behind_member() {
    let (devices, vol, _) = mirror(Some(BehindLimits::default()));
    vol.fail_member_by_request(MemberIndex(0), "test").await;
    devices[1].gate_closed.store(true, Ordering::SeqCst);
    let write = tokio::spawn({
        let vol = vol.clone();
        async move {
            vol.write(ByteOffset(0), &[9u8; 4096], Durability::Normal)
                .await
        }
    });
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(!write.is_finished());
    devices[1].gate_closed.store(false, Ordering::SeqCst);
    devices[1].gate_open.notify_waiters();
    write.await.unwrap().unwrap();
    assert_eq!(bytes(&devices[1]).await[..4096], [9u8; 4096]);
}
