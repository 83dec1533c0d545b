//! Volume fault device against an in-memory volume.

use std::sync::Arc;

use super::*;
use crate::block::{BlockDevice, BlockResult, Durability};
use crate::member::fault::{FaultOp, FaultSpec};
use crate::member::memory::MemDevice;
use crate::units::ByteOffset;

const SIZE: u64 = 1 << 20;

fn stack() -> (Arc<MemDevice>, ClientStack) {
    let mem = Arc::new(MemDevice::new("vol", SIZE));
    let stack = ClientStack::new(mem.clone());
    (mem, stack)
}

fn add(stack: &ClientStack, id: u64, spec: FaultSpec) -> Arc<FaultRule> {
    spec.validate().unwrap();
    let rule = Arc::new(FaultRule::new(id, spec));
    stack.faults.add(rule.clone());
    rule
}

fn errno(r: BlockResult) -> Option<i32> {
    r.err().map(|e| e.errno())
}

async fn read(dev: &dyn BlockDevice, at: u64, len: usize) -> BlockResult<Vec<u8>> {
    let mut buf = vec![0u8; len];
    dev.read(ByteOffset(at), &mut buf).await.map(|()| buf)
}

#[tokio::test]
async fn bad_sectors_fail_reads_until_written() {
    // Arrange
    let (_mem, s) = stack();
    let spec = FaultSpec {
        offset: Some(8192),
        length: Some(1024),
        ..FaultSpec::new(FaultKind::BadSector)
    };
    let rule = add(&s, 1, spec);
    let dev = &*s.device;
    // Act + Assert: reads touching a bad sector fail, others pass.
    assert_eq!(
        errno(read(dev, 8192, 4096).await.map(drop)),
        Some(libc::EIO)
    );
    assert!(read(dev, 8192 + 1024, 512).await.is_ok());
    dev.write(ByteOffset(8192), &[7; 512], Durability::Normal)
        .await
        .unwrap();
    assert_eq!(read(dev, 8192, 512).await.unwrap(), vec![7; 512]);
    assert!(read(dev, 8192 + 512, 512).await.is_err());
    assert_eq!(s.faults.status().bad_bytes, 512);
    dev.write_zeroes(ByteOffset(8192 + 512), 512, false)
        .await
        .unwrap();
    assert!(read(dev, 8192, 4096).await.is_ok());
    assert_eq!(rule.hits(), 2);
    assert_eq!(s.faults.status().bad_bytes, 0);
}

#[tokio::test]
async fn torn_write_lands_a_prefix_of_blocks_then_fails() {
    // Arrange
    let (mem, s) = stack();
    add(&s, 1, FaultSpec::new(FaultKind::Torn));
    // Act
    let r = s
        .device
        .write(ByteOffset(0), &[0xab; 65536], Durability::Normal)
        .await;
    let small = s
        .device
        .write(ByteOffset(65536), &[0xcd; 4096], Durability::Normal)
        .await;
    // Assert
    assert_eq!(errno(r), Some(libc::EIO));
    assert!(small.is_ok(), "a one-block write cannot tear");
    let img = mem.snapshot();
    let landed = img[..65536].iter().take_while(|&&b| b == 0xab).count();
    assert!(
        (4096..65536).contains(&landed) && landed % 4096 == 0,
        "{landed}"
    );
    assert!(img[landed..65536].iter().all(|&b| b == 0));
}

#[tokio::test]
async fn readonly_refuses_writes_in_its_range_with_eperm() {
    let (_mem, s) = stack();
    let spec = FaultSpec {
        offset: Some(0),
        length: Some(4096),
        ..FaultSpec::new(FaultKind::Readonly)
    };
    add(&s, 1, spec);
    let dev = &*s.device;
    let w = dev
        .write(ByteOffset(0), &[1; 512], Durability::Normal)
        .await;
    assert_eq!(errno(w), Some(libc::EPERM));
    assert!(dev.discard(ByteOffset(0), 4096).await.is_err());
    assert!(read(dev, 0, 4096).await.is_ok());
    assert!(dev
        .write(ByteOffset(4096), &[1; 512], Durability::Normal)
        .await
        .is_ok());
    assert!(dev.flush().await.is_ok());
}

#[tokio::test]
async fn stalled_request_runs_once_when_its_rule_is_cleared() {
    // Arrange
    let (mem, s) = stack();
    let spec = FaultSpec {
        op: FaultOp::Write,
        ..FaultSpec::new(FaultKind::Stall)
    };
    add(&s, 9, spec);
    let dev = s.device.clone();
    let task = tokio::spawn(async move {
        dev.write(ByteOffset(0), &[5; 512], Durability::Normal)
            .await
    });
    // Act: wait (by polling the counter) until the write is held.
    while s.faults.status().stalled == 0 {
        tokio::task::yield_now().await;
    }
    let held = mem.snapshot()[0];
    assert!(read(&*s.device, 0, 512).await.is_ok(), "reads pass");
    assert!(s.faults.remove(9));
    // Assert
    task.await.unwrap().unwrap();
    assert_eq!(held, 0, "nothing landed while stalled");
    assert_eq!(mem.snapshot()[..512], [5; 512]);
    assert_eq!(s.faults.status().stalled, 0);
}

#[tokio::test]
async fn error_and_corrupt_rules_act_on_what_the_client_sees() {
    let (mem, s) = stack();
    let err = FaultSpec {
        op: FaultOp::Read,
        offset: Some(4096),
        length: Some(4096),
        count: Some(1),
        ..FaultSpec::new(FaultKind::Error)
    };
    let rule = add(&s, 1, err);
    let bad = FaultSpec {
        op: FaultOp::Write,
        offset: Some(100),
        length: Some(1),
        ..FaultSpec::new(FaultKind::Corrupt)
    };
    add(&s, 2, bad);
    let dev = &*s.device;
    assert!(read(dev, 4096, 512).await.is_err());
    assert!(read(dev, 4096, 512).await.is_ok(), "count 1 spent");
    assert!(rule.expired());
    dev.write(ByteOffset(0), &[0x11; 512], Durability::Normal)
        .await
        .unwrap();
    assert_eq!(mem.snapshot()[100], !0x11);
    assert_eq!(mem.snapshot()[101], 0x11);
}
