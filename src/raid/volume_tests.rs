//! Named behaviour tests of `Volume` (the model-based suite is `conformance`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::layout::{ChunkSize, Geometry, MemberIndex};
use super::test_support::{pattern, Array, Events};
use super::volume::{MemberState, RaidError, Volume};
use super::Level;
use crate::block::{BlockDevice, BlockError, Durability};
use crate::member::memory::MemDevice;
use crate::units::ByteOffset;

const C: u64 = 4096;

async fn read(vol: &Volume, at: u64, len: usize) -> Result<Vec<u8>, BlockError> {
    let mut buf = vec![0; len];
    vol.read(ByteOffset(at), &mut buf).await.map(|()| buf)
}

#[tokio::test]
async fn degraded_raid5_read_reconstructs_missing_chunk() {
    // Arrange: data written with all members, then member 1 goes missing.
    let full = Array::new(Level::Raid5, 4, C, 8 * C, &[]);
    let data = pattern(7 * 3 * C as usize, 1);
    full.volume
        .write(ByteOffset(0), &data, Durability::Normal)
        .await
        .unwrap();
    let degraded = Array::over(*full.volume.geometry(), full.devices.clone(), &[1]);
    // Act
    let got = read(&degraded.volume, 0, data.len()).await.unwrap();
    // Assert
    assert!(degraded.volume.is_degraded());
    assert_eq!(degraded.volume.member_states()[1], MemberState::Missing);
    assert!(got == data);
}

#[tokio::test]
async fn degraded_raid5_write_to_missing_chunk_is_recoverable() {
    let array = Array::new(Level::Raid5, 3, C, 4 * C, &[0]);
    let data = pattern(1000, 2);
    // Stripe 0: parity on member 2, data chunk 0 on member 0 (missing).
    array
        .volume
        .write(ByteOffset(100), &data, Durability::Normal)
        .await
        .unwrap();
    assert_eq!(&read(&array.volume, 100, 1000).await.unwrap(), &data);
    let p = array.devices[2].mem.snapshot();
    let d1 = array.devices[1].mem.snapshot();
    let rebuilt: Vec<u8> = p[100..1100]
        .iter()
        .zip(&d1[100..1100])
        .map(|(a, b)| a ^ b)
        .collect();
    assert_eq!(rebuilt, data);
}

#[tokio::test]
async fn raid5_full_stripe_write_reads_nothing() {
    let array = Array::new(Level::Raid5, 4, C, 8 * C, &[]);
    let data = pattern(2 * 3 * C as usize, 3);
    array
        .volume
        .write(ByteOffset(3 * C), &data, Durability::Normal)
        .await
        .unwrap();
    assert_eq!(array.read_bytes(), 0);
    assert!(read(&array.volume, 3 * C, data.len()).await.unwrap() == data);
}

#[tokio::test]
async fn raid5_small_write_uses_read_modify_write() {
    // 5 members: a 512-byte write reads old data + old parity (1 KiB)
    // rather than the 3 untouched chunks' rows (1.5 KiB).
    let array = Array::new(Level::Raid5, 5, C, 4 * C, &[]);
    array
        .volume
        .write(ByteOffset(C + 512), &[7; 512], Durability::Normal)
        .await
        .unwrap();
    assert_eq!(array.read_bytes(), 1024);
}

#[tokio::test]
async fn raid5_wide_partial_write_uses_reconstruct_write() {
    // 5 members, 3 of 4 data chunks written: read only the 4th chunk.
    let array = Array::new(Level::Raid5, 5, C, 4 * C, &[]);
    array
        .volume
        .write(
            ByteOffset(0),
            &pattern(3 * C as usize, 4),
            Durability::Normal,
        )
        .await
        .unwrap();
    assert_eq!(array.read_bytes(), C);
}

#[tokio::test]
async fn fua_write_reaches_every_member_write_including_parity() {
    let array = Array::new(Level::Raid5, 3, C, 4 * C, &[]);
    array
        .volume
        .write(ByteOffset(10), &[1; 100], Durability::Fua)
        .await
        .unwrap();
    let fua: u64 = array
        .devices
        .iter()
        .map(|d| d.fua_writes.load(Ordering::SeqCst))
        .sum();
    let all: u64 = array
        .devices
        .iter()
        .map(|d| d.writes.load(Ordering::SeqCst))
        .sum();
    assert_eq!((fua, all), (2, 2));
}

#[tokio::test]
async fn flush_reaches_every_active_member() {
    for level in [Level::Raid0, Level::Raid1, Level::Raid5] {
        let array = Array::new(level, 3, C, 4 * C, &[]);
        array.volume.flush().await.unwrap();
        assert!(
            array.devices.iter().all(|d| d.mem.flushes() == 1),
            "{level}"
        );
    }
}

#[tokio::test]
async fn raid5_full_stripe_discard_clears_parity_without_writes() {
    let array = Array::new(Level::Raid5, 3, C, 4 * C, &[]);
    array
        .volume
        .write(
            ByteOffset(0),
            &pattern(8 * C as usize, 5),
            Durability::Normal,
        )
        .await
        .unwrap();
    array.reset_counters();
    array
        .volume
        .discard(ByteOffset(2 * C), 4 * C)
        .await
        .unwrap();
    for d in &array.devices {
        assert_eq!(d.clears.load(Ordering::SeqCst), 1);
        assert_eq!(d.writes.load(Ordering::SeqCst), 0);
        assert!(d.mem.snapshot()[C as usize..3 * C as usize]
            .iter()
            .all(|&b| b == 0));
    }
}

#[tokio::test]
async fn raid1_read_error_is_served_from_other_mirror_and_member_marked_failed() {
    let array = Array::new(Level::Raid1, 2, C, 4 * C, &[]);
    let data = pattern(3000, 6);
    array
        .volume
        .write(ByteOffset(5), &data, Durability::Normal)
        .await
        .unwrap();
    array.devices[0].mem.set_failing(true);
    // Two reads: round-robin guarantees one starts on the failing mirror.
    for _ in 0..2 {
        assert!(read(&array.volume, 5, 3000).await.unwrap() == data);
    }
    assert_eq!(
        array.volume.member_states(),
        [MemberState::Failed, MemberState::Active]
    );
    assert_eq!(*array.events.failed.lock().unwrap(), [MemberIndex(0)]);
}

#[tokio::test]
async fn raid1_transient_read_error_is_rewritten_and_member_stays_active() {
    let array = Array::new(Level::Raid1, 2, C, 4 * C, &[]);
    array
        .volume
        .write(ByteOffset(0), &[9; 512], Durability::Normal)
        .await
        .unwrap();
    // Reads rotate from mirror 0: it fails the first try and the retry.
    array.devices[0].fail_reads.store(2, Ordering::SeqCst);
    array.reset_counters();
    assert_eq!(read(&array.volume, 0, 512).await.unwrap(), [9; 512]);
    assert!(!array.volume.is_degraded());
    let rewrites: u64 = array
        .devices
        .iter()
        .map(|d| d.writes.load(Ordering::SeqCst))
        .sum();
    assert_eq!(rewrites, 1);
    assert!(array.events.failed.lock().unwrap().is_empty());
}

#[tokio::test]
async fn raid5_read_error_is_reconstructed_and_rewritten() {
    let array = Array::new(Level::Raid5, 3, C, 4 * C, &[]);
    let data = pattern(2 * C as usize, 7);
    array
        .volume
        .write(ByteOffset(0), &data, Durability::Normal)
        .await
        .unwrap();
    array.devices[0].fail_reads.store(2, Ordering::SeqCst);
    array.reset_counters();
    assert!(read(&array.volume, 0, C as usize).await.unwrap() == data[..C as usize]);
    assert_eq!(array.devices[0].writes.load(Ordering::SeqCst), 1);
    assert!(!array.volume.is_degraded());
}

#[tokio::test]
async fn raid0_member_failure_fails_only_requests_touching_it() {
    let array = Array::new(Level::Raid0, 2, C, 4 * C, &[]);
    array.devices[1].mem.set_failing(true);
    // Chunk 0 lives on member 0, chunk 1 on member 1.
    assert!(read(&array.volume, 0, C as usize).await.is_ok());
    let err = read(&array.volume, C, 10).await.unwrap_err();
    assert!(matches!(err, BlockError::DataLost { .. }));
    assert!(array
        .volume
        .write(ByteOffset(2 * C), &[1; 10], Durability::Normal)
        .await
        .is_ok());
    assert_eq!(array.volume.member_states()[1], MemberState::Failed);
    assert_eq!(*array.events.failed.lock().unwrap(), [MemberIndex(1)]);
}

#[tokio::test]
async fn raid5_second_failure_fails_only_requests_needing_lost_data() {
    let array = Array::new(Level::Raid5, 3, C, 4 * C, &[2]);
    array.devices[1].mem.set_failing(true);
    // Stripe 0: member 0 holds data chunk 0 (alive), member 1 chunk 1 (lost).
    assert!(read(&array.volume, 0, 100).await.is_ok());
    let err = read(&array.volume, C, 100).await.unwrap_err();
    assert!(matches!(err, BlockError::DataLost { .. }));
    assert!(read(&array.volume, 0, 100).await.is_ok());
}

#[tokio::test]
async fn out_of_range_requests_are_refused() {
    let array = Array::new(Level::Raid5, 3, C, 4 * C, &[]);
    let size = array.volume.size();
    let err = read(&array.volume, size - 1, 2).await.unwrap_err();
    assert!(matches!(err, BlockError::OutOfRange { .. }));
    assert!(array.volume.discard(ByteOffset(u64::MAX), 2).await.is_err());
}

#[test]
fn volume_new_refuses_too_many_missing_and_small_members() {
    let g = Geometry::new(Level::Raid5, 3, ChunkSize::new(C).unwrap(), 4 * C).unwrap();
    let dev = |size| Some(Arc::new(MemDevice::new("m", size)) as Arc<dyn BlockDevice>);
    let events = Arc::new(Events::default());
    let err = Volume::new("v".into(), g, vec![dev(4 * C), None, None], events.clone()).unwrap_err();
    assert!(matches!(err, RaidError::TooManyMissing { missing: 2, .. }));
    let err = Volume::new(
        "v".into(),
        g,
        vec![dev(4 * C), dev(C), dev(4 * C)],
        events.clone(),
    )
    .unwrap_err();
    assert!(matches!(
        err,
        RaidError::MemberTooSmall {
            member: MemberIndex(1),
            ..
        }
    ));
    let err = Volume::new("v".into(), g, vec![dev(4 * C)], events).unwrap_err();
    assert!(matches!(
        err,
        RaidError::MemberCount {
            expected: 3,
            got: 1
        }
    ));
}

// The clock is paused: a sleep or timeout ends only once every task waits
// (in-memory members, no real I/O), so "still waiting" is deterministic.
#[tokio::test(start_paused = true)]
async fn writers_of_different_stripes_do_not_serialize() {
    // Arrange: member 0's writes are held, so a write to stripe 0 (which
    // touches member 0) hangs while holding stripe 0's lock.
    let array = Arc::new(Array::new(Level::Raid5, 3, C, 8 * C, &[]));
    let stripe = 2 * C; // data bytes per stripe
    array.devices[0].gate_closed.store(true, Ordering::SeqCst);
    let held = {
        let a = array.clone();
        tokio::spawn(async move {
            a.volume
                .write(ByteOffset(0), &[1; 10], Durability::Normal)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Act + Assert. Left-symmetric, 3 members: stripe 1 has data chunk 0 on
    // member 2 and parity on member 1, so this write needs no member-0 write.
    let other = tokio::time::timeout(
        Duration::from_secs(2),
        array
            .volume
            .write(ByteOffset(stripe), &[2; 10], Durability::Normal),
    )
    .await;
    assert!(other.is_ok(), "a writer of stripe 1 waited for stripe 0");
    let same = tokio::time::timeout(
        Duration::from_millis(50),
        array
            .volume
            .write(ByteOffset(C), &[3; 10], Durability::Normal),
    )
    .await;
    assert!(same.is_err(), "a second writer of stripe 0 did not wait");
    array.devices[0].gate_closed.store(false, Ordering::SeqCst);
    array.devices[0].gate_open.notify_waiters();
    held.await.unwrap().unwrap();
}

/// Records failures only once `release` is notified.
#[derive(Default)]
struct SlowEvents {
    release: tokio::sync::Notify,
}

impl super::volume::VolumeEvents for SlowEvents {
    fn member_failed(
        &self,
        _member: MemberIndex,
        _error: &BlockError,
        _states: &[super::MemberState],
    ) -> crate::block::BoxFuture<'_, ()> {
        crate::block::BoxFuture::new(self.release.notified())
    }
}

/// A RAID-1 volume whose member 0 fails every I/O, over events that record
/// a failure only once `release` is notified.
fn mirror_failing_slowly() -> (Arc<Volume>, Arc<SlowEvents>) {
    let g = Geometry::new(Level::Raid1, 2, ChunkSize::new(C).unwrap(), 2 << 20).unwrap();
    let devs: Vec<Arc<MemDevice>> = (0..2)
        .map(|_| Arc::new(MemDevice::new("m", 2 << 20)))
        .collect();
    let events = Arc::new(SlowEvents::default());
    let members = devs
        .iter()
        .map(|d| Some(d.clone() as Arc<dyn BlockDevice>))
        .collect();
    let vol = Arc::new(Volume::new("v".into(), g, members, events.clone()).unwrap());
    devs[0].set_failing(true);
    (vol, events)
}

// Paused clock: the sleep and the timeout end only once every task waits.
#[tokio::test(start_paused = true)]
async fn writes_are_not_acknowledged_before_member_failure_is_recorded() {
    // Arrange: a mirror that fails, and an event sink that has not yet
    // persisted the failure.
    let (vol, events) = mirror_failing_slowly();
    let first = {
        let vol = vol.clone();
        tokio::spawn(async move { vol.write(ByteOffset(0), &[1; 10], Durability::Normal).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Act: a second write, in another lock region, skips the failed mirror.
    let second = tokio::time::timeout(
        Duration::from_millis(50),
        vol.write(ByteOffset(1 << 20), &[2; 10], Durability::Normal),
    )
    .await;
    // Assert
    assert!(
        second.is_err(),
        "write acknowledged before the failure was recorded"
    );
    assert_eq!(vol.member_states()[0], MemberState::Failed);
    events.release.notify_waiters();
    first.await.unwrap().unwrap();
    vol.write(ByteOffset(1 << 20), &[2; 10], Durability::Normal)
        .await
        .unwrap();
}

// Paused clock: the 20 ms timeout fires only once the write waits for the
// failure to be recorded, so it is dropped exactly there.
#[tokio::test(start_paused = true)]
async fn failure_is_recorded_even_if_the_failing_request_is_cancelled() {
    let (vol, events) = mirror_failing_slowly();
    // Act: the request that hits the failure is dropped while recording.
    let cancelled = tokio::time::timeout(
        Duration::from_millis(20),
        vol.write(ByteOffset(0), &[1; 10], Durability::Normal),
    )
    .await;
    events.release.notify_waiters();
    let later = tokio::time::timeout(
        Duration::from_secs(2),
        vol.write(ByteOffset(1 << 20), &[2; 10], Durability::Normal),
    )
    .await;
    // Assert
    assert!(cancelled.is_err());
    assert!(
        matches!(later, Ok(Ok(()))),
        "later writes must not wait forever"
    );
}

/// A member whose filesystem is full: every write fails with ENOSPC.
struct FullDisk(Arc<dyn BlockDevice>);

impl BlockDevice for FullDisk {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn size(&self) -> u64 {
        self.0.size()
    }

    fn read<'a>(
        &'a self,
        offset: ByteOffset,
        buf: &'a mut [u8],
    ) -> crate::block::BoxFuture<'a, crate::block::BlockResult> {
        self.0.read(offset, buf)
    }

    fn write<'a>(
        &'a self,
        _offset: ByteOffset,
        _buf: &'a [u8],
        _durability: Durability,
    ) -> crate::block::BoxFuture<'a, crate::block::BlockResult> {
        let e = std::io::Error::from_raw_os_error(libc::ENOSPC);
        crate::block::BoxFuture::new(async move { Err(BlockError::io(self.name(), e)) })
    }

    fn flush(&self) -> crate::block::BoxFuture<'_, crate::block::BlockResult> {
        self.0.flush()
    }

    fn discard(
        &self,
        offset: ByteOffset,
        len: u64,
    ) -> crate::block::BoxFuture<'_, crate::block::BlockResult> {
        self.0.discard(offset, len)
    }

    fn write_zeroes(
        &self,
        offset: ByteOffset,
        len: u64,
        may_unmap: bool,
    ) -> crate::block::BoxFuture<'_, crate::block::BlockResult> {
        self.0.write_zeroes(offset, len, may_unmap)
    }
}

#[tokio::test]
async fn out_of_space_on_a_member_fails_the_write_with_enospc_and_keeps_the_member() {
    for level in [Level::Raid0, Level::Raid1, Level::Raid5] {
        // Arrange: member 1's filesystem is full.
        let array = Array::new_wrapped(level, 3, C, 8 * C, &[], |i, d| match i {
            1 => Arc::new(FullDisk(d)) as Arc<dyn BlockDevice>,
            _ => d,
        });
        let data = pattern(6 * C as usize, 9);
        // Act
        let result = array
            .volume
            .write(ByteOffset(0), &data, Durability::Normal)
            .await;
        // Assert: ENOSPC, nobody failed, a resync is owed.
        let errno = result.as_ref().map_err(BlockError::errno);
        assert_eq!(errno, Err(libc::ENOSPC), "{level}");
        assert!(array.events.failed.lock().unwrap().is_empty(), "{level}");
        assert_eq!(array.volume.member_states(), vec![MemberState::Active; 3]);
        assert!(array.volume.needs_resync_after_no_space(), "{level}");
        assert!(read(&array.volume, 0, C as usize).await.is_ok(), "{level}");
    }
}

#[tokio::test]
async fn resync_that_runs_out_of_space_leaves_its_range_owed() {
    // Arrange: mirrors 0 and 2 agree, mirror 1 differs and must be
    // rewritten, but its filesystem is full.
    let array = Array::new_wrapped(Level::Raid1, 3, C, 8 * C, &[], |i, d| match i {
        1 => Arc::new(FullDisk(d)) as Arc<dyn BlockDevice>,
        _ => d,
    });
    for m in [0, 2] {
        array.devices[m]
            .mem
            .write(ByteOffset(0), &pattern(C as usize, 3), Durability::Normal)
            .await
            .unwrap();
    }
    let done = std::sync::Mutex::new(Vec::new());
    // Act
    let result = array
        .volume
        .resync(
            vec![(0, 8 * C)],
            &super::rebuild::RebuildControl::new(0),
            &|a, b| done.lock().unwrap().push((a, b)),
        )
        .await;
    // Assert: the resync stops, nothing is reported synced, nobody failed.
    assert!(result.is_err());
    assert!(done.lock().unwrap().is_empty());
    assert!(array.events.failed.lock().unwrap().is_empty());
    assert_eq!(array.volume.member_states(), vec![MemberState::Active; 3]);
}

#[tokio::test]
async fn degraded_raid5_read_of_a_distrusted_range_fails_and_others_reconstruct() {
    // Arrange: data written with all members, member 1 missing, parity of
    // the member range of one of its chunks distrusted in two touching
    // pieces.
    let full = Array::new(Level::Raid5, 4, C, 8 * C, &[]);
    let data = pattern(7 * 3 * C as usize, 3);
    full.volume
        .write(ByteOffset(0), &data, Durability::Normal)
        .await
        .unwrap();
    let degraded = Array::over(*full.volume.geometry(), full.devices.clone(), &[1]);
    let geometry = *degraded.volume.geometry();
    let lost = (2..7 * 3)
        .find(|&c| {
            geometry
                .extents(ByteOffset(c * C), C)
                .next()
                .unwrap()
                .member
                == MemberIndex(1)
        })
        .unwrap();
    let at = geometry
        .extents(ByteOffset(lost * C), C)
        .next()
        .unwrap()
        .member_offset
        .get();
    degraded.volume.distrust_parity(at, at + 100);
    degraded.volume.distrust_parity(at + 100, at + C);

    // Act: every chunk of the volume, one at a time.
    let mut failed = Vec::new();
    for chunk in 0..7 * 3 {
        let at = chunk * C;
        match read(&degraded.volume, at, C as usize).await {
            Ok(got) => assert!(got == data[at as usize..(at + C) as usize], "chunk {chunk}"),
            Err(_) => failed.push(chunk),
        }
    }

    // Assert: only that chunk (rebuilt from the distrusted parity) fails.
    assert_eq!(failed, vec![lost]);
}

/// A RAID-1 over two test devices named like remote members, the second
/// one's link marked down past `member_timeout` in the remote book.
fn mirror_with_unreachable_second(tag: &str) -> (Array, Arc<crate::remote::RemoteStats>) {
    use super::test_support::TestDevice;
    let geometry = Geometry::new(Level::Raid1, 2, ChunkSize::new(C).unwrap(), 4 * C).unwrap();
    let names = [format!("nbd://{tag}/a"), format!("nbd://{tag}/b")];
    let devices = names.iter().map(|n| TestDevice::new(n, 4 * C)).collect();
    let array = Array::over(geometry, devices, &[]);
    let stats = Arc::new(crate::remote::RemoteStats::default());
    crate::remote::stats::enter(&names[1], &stats);
    stats.unreachable.store(true, Ordering::Release);
    (array, stats)
}

#[tokio::test]
async fn a_remote_member_down_past_its_timeout_fails_by_timeout_whatever_error_failed_it() {
    // Arrange: the failing write answers EIO (as a metadata or journal
    // path may), not TimedOut; the member's link is down.
    let (array, _stats) = mirror_with_unreachable_second("vt-timeout-eio");
    array.devices[1].mem.set_failing(true);

    // Act
    let data = pattern(4096, 9);
    array
        .volume
        .write(ByteOffset(0), &data, Durability::Normal)
        .await
        .unwrap();

    // Assert
    assert_eq!(
        array.volume.member_states(),
        [MemberState::Active, MemberState::Failed]
    );
    assert!(array.volume.failed_by_timeout(MemberIndex(1)));
    assert!(!array.volume.failed_by_timeout(MemberIndex(0)));
}

#[tokio::test]
async fn an_operators_fail_is_never_a_timeout_and_a_reachable_member_error_neither() {
    let (array, stats) = mirror_with_unreachable_second("vt-timeout-op");
    array
        .volume
        .fail_member_by_request(MemberIndex(1), "test")
        .await;
    assert!(!array.volume.failed_by_timeout(MemberIndex(1)));

    let (array, stats2) = mirror_with_unreachable_second("vt-timeout-up");
    stats2.unreachable.store(false, Ordering::Release);
    array.devices[1].mem.set_failing(true);
    array
        .volume
        .write(ByteOffset(0), &pattern(4096, 3), Durability::Normal)
        .await
        .unwrap();
    assert_eq!(array.volume.state(MemberIndex(1)), MemberState::Failed);
    assert!(!array.volume.failed_by_timeout(MemberIndex(1)));
    drop(stats);
}
