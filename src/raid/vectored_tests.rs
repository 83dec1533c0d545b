//! Scatter-gather reads and writes through a volume (`read_vectored`,
//! `write_vectored`): same bytes as the contiguous calls on every level,
//! healthy and degraded, and no bounce copy down to aligned file members.

use std::io::{IoSlice, IoSliceMut};
use std::sync::Arc;

use super::layout::{ChunkSize, Geometry};
use super::test_support::{pattern, Array, Events};
use super::volume::Volume;
use super::Level;
use crate::block::{BlockDevice, Durability};
use crate::member::buf::AlignedBuf;
use crate::member::{open_member, EngineKind, MemberOptions};
use crate::units::ByteOffset;

const C: u64 = 4096;

/// Cuts `len` bytes into uneven segment lengths (odd sizes, chunk-crossing).
fn cuts(len: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut left = len;
    for n in [5000usize, 3, 12_288, 777].iter().cycle() {
        if left == 0 {
            break;
        }
        let n = (*n).min(left);
        out.push(n);
        left -= n;
    }
    out
}

async fn write_v(vol: &Volume, at: u64, data: &[u8]) {
    let mut rest = data;
    let mut list = Vec::new();
    for n in cuts(data.len()) {
        let (piece, tail) = rest.split_at(n);
        list.push(IoSlice::new(piece));
        rest = tail;
    }
    vol.write_vectored(ByteOffset(at), &list, Durability::Normal)
        .await
        .unwrap();
}

async fn read_v(vol: &Volume, at: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0xEE; len];
    let mut rest: &mut [u8] = &mut out;
    let mut list = Vec::new();
    for n in cuts(len).into_iter().rev() {
        let (piece, tail) = std::mem::take(&mut rest).split_at_mut(n);
        list.push(IoSliceMut::new(piece));
        rest = tail;
    }
    vol.read_vectored(ByteOffset(at), &mut list).await.unwrap();
    drop(list);
    out
}

async fn read(vol: &Volume, at: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    vol.read(ByteOffset(at), &mut buf).await.unwrap();
    buf
}

#[tokio::test]
async fn vectored_io_matches_contiguous_io_on_every_level_healthy_and_degraded() {
    for (level, missing) in [
        (Level::Raid0, vec![]),
        (Level::Raid1, vec![]),
        (Level::Raid1, vec![0]),
        (Level::Raid5, vec![]),
        (Level::Raid5, vec![1]),
    ] {
        // Arrange
        let array = Array::new(level, 3, C, 16 * C, &missing);
        let data = pattern(9 * C as usize + 1234, 41);

        // Act
        write_v(&array.volume, 777, &data).await;
        let got = read_v(&array.volume, 777, data.len()).await;

        // Assert
        let plain = read(&array.volume, 777, data.len()).await;
        assert!(plain == data, "{level:?} {missing:?}: contiguous read");
        assert!(got == data, "{level:?} {missing:?}: vectored read");
    }
}

/// A RAID-0 of two O_DIRECT file members: an aligned 1 MiB list of 4 KiB
/// segments (as a guest hands them over) reaches the members as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aligned_lists_reach_file_members_without_a_bounce() {
    let dir = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/target")).unwrap();
    let opts = MemberOptions {
        engine: EngineKind::Uring,
        direct: true,
        exclusive: true,
        read_only: false,
        ..MemberOptions::default()
    };
    let members: Vec<_> = (0..2)
        .map(|i| {
            let path = dir.path().join(format!("m{i}"));
            crate::member::create_sparse(&path, 4 << 20).unwrap();
            open_member(&path, &opts).unwrap()
        })
        .collect();
    let geometry = Geometry::new(Level::Raid0, 2, ChunkSize::new(64 << 10).unwrap(), 4 << 20);
    let devices = members
        .iter()
        .map(|m| Some(m.clone() as Arc<dyn BlockDevice>));
    let events = Arc::new(Events::default());
    let vol = Volume::new("v".into(), geometry.unwrap(), devices.collect(), events).unwrap();
    let data = pattern(1 << 20, 42);
    let src = AlignedBuf::copy_from(&data);
    let mut dst = AlignedBuf::new(1 << 20);

    let list: Vec<IoSlice<'_>> = src.as_slice().chunks(4096).map(IoSlice::new).collect();
    vol.write_vectored(ByteOffset(8192), &list, Durability::Fua)
        .await
        .unwrap();
    let mut list: Vec<IoSliceMut<'_>> = dst
        .as_mut_slice()
        .chunks_mut(4096)
        .map(IoSliceMut::new)
        .collect();
    vol.read_vectored(ByteOffset(8192), &mut list)
        .await
        .unwrap();
    drop(list);

    assert!(dst.as_slice() == &data[..]);
    assert_eq!(members.iter().map(|m| m.bounced_bytes()).sum::<u64>(), 0);
}

/// A mirror that fails a vectored read is skipped, the other serves the
/// list, and the failing mirror is rewritten from it (not failed).
#[tokio::test]
async fn raid1_vectored_read_error_is_served_by_the_other_mirror_and_repaired() {
    // Arrange
    let array = Array::new(Level::Raid1, 2, C, 16 * C, &[]);
    let data = pattern(3 * C as usize, 43);
    array
        .volume
        .write(ByteOffset(0), &data, Durability::Normal)
        .await
        .unwrap();
    array.devices[0].reset_counters();
    array.devices[0]
        .fail_reads
        .store(2, std::sync::atomic::Ordering::SeqCst);

    // Act: two reads, so the rotation tries mirror 0 first in one of them.
    let first = read_v(&array.volume, 0, data.len()).await;
    let second = read_v(&array.volume, 0, data.len()).await;

    // Assert
    assert!(first == data && second == data);
    let repairs = array.devices[0]
        .writes
        .load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(repairs, 1, "the failing mirror is rewritten once");
    assert!(array.events.failed.lock().unwrap().is_empty());
}

/// A RAID-0 request over several rows (1 MiB over 4 members of 64 KiB
/// chunks: 16 chunks) costs one transfer per member, not one per chunk,
/// contiguous or vectored, and the bytes land where single-chunk I/O
/// puts them.
#[tokio::test]
async fn raid0_request_over_several_rows_is_one_transfer_per_member() {
    // Arrange
    let chunk = 64 << 10;
    let array = Array::new(Level::Raid0, 4, chunk, 64 * chunk, &[]);
    let data = pattern(1 << 20, 44);
    let src = AlignedBuf::copy_from(&data);
    for d in &array.devices {
        d.merge_limit
            .store(8 << 20, std::sync::atomic::Ordering::SeqCst);
    }
    let per_member = |count: fn(&super::test_support::TestDevice) -> u64| {
        array.devices.iter().map(|d| count(d)).collect::<Vec<_>>()
    };

    // Act: a vectored write and a contiguous read of 1 MiB at 4 KiB.
    let list: Vec<IoSlice<'_>> = src.as_slice().chunks(64 << 10).map(IoSlice::new).collect();
    (array.volume)
        .write_vectored(ByteOffset(4096), &list, Durability::Normal)
        .await
        .unwrap();
    let writes = per_member(|d| d.writes.load(std::sync::atomic::Ordering::SeqCst));
    let got = read(&array.volume, 4096, data.len()).await;
    let reads = per_member(|d| d.reads.load(std::sync::atomic::Ordering::SeqCst));

    // Assert: member 0's run starts 4 KiB into its first chunk and ends
    // 4 KiB into its fifth; the others hold 4 whole chunks each.
    assert!(got == data, "bytes read back differ");
    assert_eq!(writes, [1, 1, 1, 1], "member writes");
    assert_eq!(reads, [1, 1, 1, 1], "member reads");
    let mut chunk_by_chunk = vec![0u8; data.len()];
    for (i, piece) in chunk_by_chunk.chunks_mut(4096).enumerate() {
        let at = 4096 + i as u64 * 4096;
        array.volume.read(ByteOffset(at), piece).await.unwrap();
    }
    assert!(chunk_by_chunk == data, "4 KiB reads see other bytes");
}

/// Members whose merge limit is one chunk (the inline engine of a tmpfs
/// file: longer transfers would leave the caller's thread) keep one
/// transfer per chunk.
#[tokio::test]
async fn raid0_runs_stop_at_the_member_merge_limit() {
    let chunk = 64 << 10;
    let array = Array::new(Level::Raid0, 4, chunk, 64 * chunk, &[]);
    for d in &array.devices {
        d.merge_limit
            .store(chunk, std::sync::atomic::Ordering::SeqCst);
    }
    let data = pattern(1 << 20, 45);
    let src = AlignedBuf::copy_from(&data);
    let list: Vec<IoSlice<'_>> = src.as_slice().chunks(64 << 10).map(IoSlice::new).collect();
    (array.volume)
        .write_vectored(ByteOffset(0), &list, Durability::Normal)
        .await
        .unwrap();
    let writes: Vec<u64> = (array.devices.iter())
        .map(|d| d.writes.load(std::sync::atomic::Ordering::SeqCst))
        .collect();
    assert_eq!(writes, [4, 4, 4, 4], "one member write per chunk");
    assert!(read(&array.volume, 0, data.len()).await == data);
}
