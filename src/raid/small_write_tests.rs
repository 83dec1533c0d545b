//! Writes smaller than a 4 KiB block (issue 10): one read-modify-write of
//! the block per member the write touches, counted at the members (below
//! the checksum layer, which reads the edge block to seal it): RAID-0 and
//! RAID-1 read the block once and write once per member; RAID-5 reads old
//! data and old parity once each (the checksum layer takes the edge from
//! that read, not a second one) and writes data and parity once each.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::ppl::MemParityLog;
use super::test_support::{pattern, Array, TestDevice};
use super::volume::Volume;
use super::Level;
use crate::block::{BlockDevice, Durability};
use crate::integrity::Checksums;
use crate::units::ByteOffset;

const CHUNK: u64 = 64 << 10;
const MEMBER: u64 = 4 << 20;

/// A volume of `level` over `members` members with block checksums, its
/// first 1 MiB written, counters reset.
async fn written(level: Level, members: usize) -> (Vec<Arc<TestDevice>>, Volume) {
    let csums = Checksums::new();
    let errors = Arc::new(AtomicU64::new(0));
    let array = Array::new_wrapped(level, members, CHUNK, MEMBER, &[], |i, d| {
        csums.wrap_in_memory(i, d, false, errors.clone())
    });
    let Array {
        devices, volume, ..
    } = array;
    let vol = volume
        .with_checksums(csums.clone())
        .with_parity_log(Arc::new(MemParityLog::default()));
    vol.write(ByteOffset(0), &pattern(1 << 20, 3), Durability::Normal)
        .await
        .unwrap();
    for d in &devices {
        d.reset_counters();
    }
    (devices, vol)
}

/// (reads, read bytes, writes) per member.
fn counts(devices: &[Arc<TestDevice>]) -> Vec<(u64, u64, u64)> {
    let get = |c: &AtomicU64| c.load(Ordering::SeqCst);
    devices
        .iter()
        .map(|d| (get(&d.reads), get(&d.read_bytes), get(&d.writes)))
        .collect()
}

/// Writes 1 KiB at `at` and checks every member did no more than one
/// 4 KiB read and one write, and that `touched` members did exactly that.
async fn one_rmw_per_member(level: Level, members: usize, at: u64, touched: &[usize]) {
    let (devices, vol) = written(level, members).await;
    let patch = pattern(1024, 9);
    vol.write(ByteOffset(at), &patch, Durability::Normal)
        .await
        .unwrap();
    let got = counts(&devices);
    for (i, &c) in got.iter().enumerate() {
        let want = if touched.contains(&i) {
            (1, 4096, 1)
        } else {
            (0, 0, 0)
        };
        assert_eq!(
            c, want,
            "{level:?} member {i}: (reads, bytes, writes) {got:?}"
        );
    }
    let mut back = vec![0u8; 1024];
    vol.read(ByteOffset(at), &mut back).await.unwrap();
    assert!(back == patch);
}

#[tokio::test]
async fn raid0_1k_write_reads_its_block_once() {
    // 1 KiB into the middle of member 1's first block (chunk 1).
    one_rmw_per_member(Level::Raid0, 4, CHUNK + 1024, &[1]).await;
}

#[tokio::test]
async fn raid1_1k_write_reads_its_block_once_per_copy() {
    one_rmw_per_member(Level::Raid1, 2, 5 * 4096 + 2048, &[0, 1]).await;
}

#[tokio::test]
async fn raid5_1k_write_reads_data_and_parity_once() {
    // Chunk 0 of row 0: data on member 0, parity on member 3 (left-symmetric);
    // whichever members they are, two are touched once each.
    let (devices, vol) = written(Level::Raid5, 4).await;
    let patch = pattern(1024, 9);
    vol.write(ByteOffset(1024), &patch, Durability::Normal)
        .await
        .unwrap();
    let got = counts(&devices);
    let touched: Vec<_> = got.iter().filter(|c| **c != (0, 0, 0)).collect();
    assert_eq!(touched.len(), 2, "data and parity: {got:?}");
    for c in touched {
        assert_eq!(*c, (1, 4096, 1), "(reads, bytes, writes) {got:?}");
    }
    let mut back = vec![0u8; 1024];
    vol.read(ByteOffset(1024), &mut back).await.unwrap();
    assert!(back == patch);
}
