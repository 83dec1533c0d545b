//! RAID-10 against in-memory members: degraded reads with failures in
//! different copies, a clean I/O error (no panic) when the last copy of
//! a chunk goes, rebuild, crash resync and scrub naming the wrong copy.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use super::layout::MemberIndex;
use super::raid10_layout::ChunkCopy;
use super::rebuild::RebuildControl;
use super::test_support::{pattern, xor_byte, Array, TestDevice};
use super::volume::MemberState;
use super::{Level, Raid10Shape};
use crate::block::{BlockDevice, BlockError, Durability};
use crate::units::ByteOffset;

const C: u64 = 64 << 10;
const MEMBER: u64 = 4 << 20;

fn level(name: &str) -> Level {
    Level::Raid10(name.parse::<Raid10Shape>().unwrap())
}

/// An array of `members` filled with a pattern; returns it and the data.
async fn filled(shape: &str, members: usize, missing: &[usize]) -> (Array, Vec<u8>) {
    let a = Array::new(level(shape), members, C, MEMBER, missing);
    let data = pattern(a.volume.size() as usize, 5);
    a.volume
        .write(ByteOffset(0), &data, Durability::Normal)
        .await
        .unwrap();
    (a, data)
}

/// The bytes of copy `k` of a chunk on its member.
fn copy_bytes(a: &Array, k: ChunkCopy) -> Vec<u8> {
    let snap = a.devices[k.member.0].mem.snapshot();
    snap[(k.row * C) as usize..((k.row + 1) * C) as usize].to_vec()
}

async fn read_all(a: &Array) -> Result<Vec<u8>, BlockError> {
    let mut buf = vec![0u8; a.volume.size() as usize];
    a.volume.read(ByteOffset(0), &mut buf).await.map(|()| buf)
}

#[tokio::test]
async fn n2_over_4_reads_everything_with_one_member_of_each_pair_failed() {
    // Arrange
    let (a, data) = filled("n2", 4, &[]).await;
    a.devices[0].mem.set_failing(true);
    a.devices[3].mem.set_failing(true);

    // Act
    let whole = read_all(&a).await;
    let flushed = a.volume.flush().await;

    // Assert: two members down, more than the redundancy, data all there.
    assert_eq!(whole.unwrap(), data);
    flushed.unwrap();
    assert_eq!(a.volume.state(MemberIndex(0)), MemberState::Failed);
    assert_eq!(a.volume.state(MemberIndex(3)), MemberState::Failed);
}

#[tokio::test]
async fn losing_both_copies_of_a_chunk_fails_its_io_cleanly() {
    // Arrange: n2 over 4, members 0 and 1 hold the same chunks.
    let (a, _) = filled("n2", 4, &[]).await;
    a.devices[0].mem.set_failing(true);
    a.devices[1].mem.set_failing(true);

    // Act
    let mut buf = vec![0u8; C as usize];
    let read = a.volume.read(ByteOffset(0), &mut buf).await;
    let write = a.volume.write(ByteOffset(0), &buf, Durability::Fua).await;
    let other = a.volume.read(ByteOffset(C), &mut buf).await;

    // Assert: chunk 0 is gone (an error, no panic); chunk 1 (members
    // 2 and 3) still reads; a flush says data is lost.
    assert!(matches!(read, Err(BlockError::DataLost { .. })), "{read:?}");
    assert!(write.is_err());
    other.unwrap();
    assert!(a.volume.flush().await.is_err());
}

#[tokio::test]
async fn a_volume_starts_with_missing_members_only_while_every_chunk_has_a_copy() {
    let g = |missing: &[usize]| {
        let a = Array::new(level("n2"), 4, C, MEMBER, &[]);
        let members = (0..4)
            .map(|i| (!missing.contains(&i)).then(|| a.devices[i].clone() as Arc<dyn BlockDevice>))
            .collect();
        super::Volume::new("v".into(), *a.volume.geometry(), members, a.events.clone())
    };
    assert!(g(&[0, 2]).is_ok());
    assert!(g(&[1, 3]).is_ok());
    assert!(g(&[2, 3]).is_err());
}

#[tokio::test]
async fn rebuild_copies_every_chunk_of_the_new_member_from_other_copies() {
    for shape in ["n2", "n3", "f2", "o2", "f3", "o3"] {
        // Arrange: 3 members (odd for n2), member 1 missing from the start.
        let (a, data) = filled(shape, 3, &[1]).await;
        let fresh = TestDevice::new("fresh", MEMBER);
        a.volume
            .attach_rebuild_target(MemberIndex(1), fresh.clone(), 0)
            .unwrap();

        // Act
        let ctl = RebuildControl::new(0);
        a.volume
            .rebuild(MemberIndex(1), None, &ctl, &NoSink)
            .await
            .unwrap();

        // Assert: every copy on the new member is its chunk's data.
        let map = *a.volume.geometry().raid10().unwrap();
        let snap = fresh.mem.snapshot();
        for v in 0..map.chunks() {
            for k in map.copies(v).into_iter().filter(|k| k.member.0 == 1) {
                let got = &snap[(k.row * C) as usize..((k.row + 1) * C) as usize];
                let want = &data[(v * C) as usize..((v + 1) * C) as usize];
                assert!(got == want, "{shape}: chunk {v} row {}", k.row);
            }
        }
        assert_eq!(a.volume.state(MemberIndex(1)), MemberState::Active);
    }
}

#[tokio::test]
async fn resync_makes_torn_copies_agree_and_counts_what_it_rewrote() {
    // Arrange: a "crash" left chunk 1's second copy with other bytes.
    let (a, data) = filled("n2", 3, &[]).await;
    let map = *a.volume.geometry().raid10().unwrap();
    let second = map.copies(1)[1];
    xor_byte(&a.devices[second.member.0].mem, second.row * C + 10, 0xff)
        .await
        .unwrap();

    // Act
    let ctl = RebuildControl::new(0);
    let rewritten = a
        .volume
        .resync(vec![(0, MEMBER)], &ctl, &|_, _| {})
        .await
        .unwrap();

    // Assert: both copies hold one version again (md's first copy here).
    assert_eq!(rewritten, C);
    for k in map.copies(1) {
        assert_eq!(copy_bytes(&a, k), data[C as usize..2 * C as usize]);
    }
}

#[tokio::test]
async fn scrub_counts_a_differing_copy_and_repair_rewrites_it() {
    // Arrange: n3 over 3: the majority of copies names the wrong one.
    let (a, data) = filled("n3", 3, &[]).await;
    let map = *a.volume.geometry().raid10().unwrap();
    let wrong = map.copies(2)[0];
    xor_byte(&a.devices[wrong.member.0].mem, wrong.row * C + 4096 + 1, 1)
        .await
        .unwrap();
    let scrub = |repair| {
        let v = &a.volume;
        async move {
            v.scrub(repair, &RebuildControl::new(0), &AtomicBool::new(false))
                .await
        }
    };

    // Act
    let check = scrub(false).await;
    let repair = scrub(true).await;
    let again = scrub(false).await;

    // Assert
    assert_eq!(check.members[wrong.member.0].mismatch, 1);
    assert_eq!(check.found(), 1);
    assert_eq!(repair.repaired(), 1);
    assert_eq!(again.found(), 0);
    assert_eq!(copy_bytes(&a, wrong), data[2 * C as usize..3 * C as usize]);
}

#[tokio::test]
async fn with_checksums_scrub_names_the_wrong_copy_even_when_it_is_the_first() {
    // Arrange: n2 over 4 with block checksums; the FIRST copy (the one a
    // plain mirror compare would keep) is the one flipped.
    let csums = crate::integrity::Checksums::new();
    let errors = Arc::new(AtomicU64::new(0));
    let a = Array::new_wrapped(level("n2"), 4, C, MEMBER, &[], |i, d| {
        csums.wrap_in_memory(i, d, false, errors.clone())
    });
    let vol = a.volume.with_checksums(csums.clone());
    let data = pattern(vol.size() as usize, 9);
    vol.write(ByteOffset(0), &data, Durability::Normal)
        .await
        .unwrap();
    let map = *vol.geometry().raid10().unwrap();
    let first = map.copies(3)[0];
    xor_byte(&a.devices[first.member.0].mem, first.row * C + 77, 0x10)
        .await
        .unwrap();

    // Act
    let ctl = RebuildControl::new(0);
    let repair = vol.scrub(true, &ctl, &AtomicBool::new(false)).await;
    let again = vol.scrub(false, &ctl, &AtomicBool::new(false)).await;

    // Assert: counted as a checksum error on that member, rewritten from
    // the good copy, nothing failed.
    assert_eq!(repair.members[first.member.0].checksum, 1);
    assert_eq!(repair.members[first.member.0].repaired, 1);
    assert_eq!(again.found(), 0);
    let snap = a.devices[first.member.0].mem.snapshot();
    let at = (first.row * C) as usize;
    assert!(snap[at..at + C as usize] == data[3 * C as usize..4 * C as usize]);
    assert!(a.events.failed.lock().unwrap().is_empty());
}

/// Rebuild progress goes nowhere.
struct NoSink;

impl super::rebuild::RebuildSink for NoSink {
    fn checkpoint(
        &self,
        _: MemberIndex,
        _: u64,
    ) -> crate::block::BoxFuture<'_, Result<(), String>> {
        crate::block::BoxFuture::new(async { Ok(()) })
    }
    fn finished(&self, _: MemberIndex) -> crate::block::BoxFuture<'_, Result<(), String>> {
        crate::block::BoxFuture::new(async { Ok(()) })
    }
}

#[tokio::test]
async fn reads_go_to_the_copy_with_fewer_member_ios_in_flight() {
    // Arrange: n2 over 2 (one chunk, two copies); a write to another chunk
    // held at member 0 keeps one I/O in flight there.
    let (a, data) = filled("n2", 2, &[]).await;
    let vol = Arc::new(a.volume);
    a.devices[0]
        .gate_closed
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let held = {
        let vol = vol.clone();
        tokio::spawn(async move {
            vol.write(ByteOffset(C), &[9u8; 4096], Durability::Normal)
                .await
        })
    };
    for _ in 0..1000 {
        if vol.pending(MemberIndex(0)) > 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(
        vol.pending(MemberIndex(0)),
        1,
        "the held write is not in flight"
    );
    a.devices[0].reset_counters();
    a.devices[1].reset_counters();

    // Act: reads of chunk 0 while member 0 is busy.
    for _ in 0..8 {
        let mut buf = vec![0u8; 4096];
        vol.read(ByteOffset(0), &mut buf).await.unwrap();
        assert_eq!(buf, data[..4096]);
    }

    // Assert: every read went to the idle copy; once idle, reads alternate.
    let reads = |m: usize| a.devices[m].reads.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!((reads(0), reads(1)), (0, 8));
    a.devices[0]
        .gate_closed
        .store(false, std::sync::atomic::Ordering::SeqCst);
    a.devices[0].gate_open.notify_waiters();
    held.await.unwrap().unwrap();
    for _ in 0..8 {
        let mut buf = vec![0u8; 4096];
        vol.read(ByteOffset(0), &mut buf).await.unwrap();
    }
    assert_eq!((reads(0), reads(1)), (4, 12));
}
