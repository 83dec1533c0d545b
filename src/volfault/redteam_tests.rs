//! Red-team unit tests of the client stack: each one a break found by
//! trying odd orders and sizes of requests (see the report of RTF).

use std::sync::Arc;
use std::time::Duration;

use super::cache_state::{CacheState, Payload};
use super::*;
use crate::block::Durability;
use crate::member::fault::FaultSpec;
use crate::member::memory::MemDevice;
use crate::units::ByteOffset;

const SIZE: u64 = 1 << 20;

fn stack() -> (Arc<MemDevice>, ClientStack) {
    let mem = Arc::new(MemDevice::new("vol", SIZE));
    let stack = ClientStack::new(mem.clone());
    (mem, stack)
}

fn backing(p: &super::cache_state::Piece) -> usize {
    match &p.payload {
        Payload::Data { data, .. } => data.len(),
        Payload::Zero { .. } => 0,
    }
}

/// A piece trimmed down by a newer durable write must not keep the whole
/// buffer of its write alive: the budget charges only what is left, so a
/// client alternating big cached writes and FUA writes over most of them
/// would otherwise hold unbounded memory under a tiny budget.
#[test]
fn a_trimmed_piece_holds_only_its_own_bytes() {
    // Arrange
    let mut s = CacheState::new();
    let len = 1u64 << 20;
    let data: Arc<[u8]> = Arc::from(vec![3u8; len as usize]);
    s.insert(0, len, Payload::Data { data, start: 0 });
    // Act: a FUA write over all but the first and last sector.
    let fua = s.next_seq();
    s.trim(512, len - 1024, fua);
    // Assert
    let left = s.overlapping(0, len);
    assert_eq!(left.len(), 2);
    assert_eq!(s.cost(), 1024 + 2 * super::cache_state::PIECE_OVERHEAD);
    for p in &left {
        assert!(
            backing(p) <= p.len as usize,
            "a {}-byte piece keeps {} bytes alive",
            p.len,
            backing(p)
        );
        let mut buf = vec![0u8; 512];
        p.overlay(&mut buf, p.offset);
        assert_eq!(buf, vec![3u8; 512]);
    }
}

/// A zeroing that was stalled while the cache was volatile and released
/// after `set --cache writethrough` is acknowledged in write-through mode:
/// it must reach the volume, not sit in the cache for a power cut to drop.
#[tokio::test]
async fn a_zeroing_released_after_the_switch_to_writethrough_is_durable() {
    // Arrange
    let (mem, s) = stack();
    s.device
        .write(ByteOffset(0), &[9; 4096], Durability::Fua)
        .await
        .unwrap();
    s.cache.set_mode(CacheMode::Volatile).await.unwrap();
    let spec = FaultSpec {
        op: crate::member::fault::FaultOp::Write,
        ..FaultSpec::new(FaultKind::Stall)
    };
    s.faults.add(Arc::new(FaultRule::new(1, spec)));
    let dev = s.device.clone();
    let zero = tokio::spawn(async move { dev.write_zeroes(ByteOffset(0), 4096, false).await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while s.faults.status().stalled == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never stalled");
        tokio::task::yield_now().await;
    }
    // Act
    s.cache.set_mode(CacheMode::Writethrough).await.unwrap();
    s.faults.remove(1);
    zero.await.unwrap().unwrap();
    let cut = s.cache.power_cut(super::KeepPolicy::None, 1).await.unwrap();
    // Assert
    assert_eq!(cut.dropped_writes, 0, "{cut:?}");
    assert_eq!(mem.snapshot()[..4096], [0u8; 4096]);
}
