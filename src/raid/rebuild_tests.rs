//! Rebuild, recovery, resync and write-intent ordering against in-memory members.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use proptest::prelude::*;

use super::intent::WriteIntent;
use super::layout::{ChunkSize, Geometry, MemberIndex, StripeIndex};
use super::parity::xor_into;
use super::rebuild::{RebuildControl, RebuildSink};
use super::test_support::{pattern, Array, TestDevice};
use super::{Level, MemberState, Volume};
use crate::block::{BlockDevice, BlockResult, BoxFuture, Durability};
use crate::units::ByteOffset;

const C: u64 = 64 << 10;

/// Records checkpoints and completion.
#[derive(Debug, Default)]
struct Sink {
    checkpoints: Mutex<Vec<u64>>,
    finished: Mutex<Vec<MemberIndex>>,
}

impl RebuildSink for Sink {
    fn checkpoint(&self, _m: MemberIndex, up_to: u64) -> BoxFuture<'_, Result<(), String>> {
        self.checkpoints.lock().unwrap().push(up_to);
        crate::block::BoxFuture::new(async { Ok(()) })
    }
    fn finished(&self, member: MemberIndex) -> BoxFuture<'_, Result<(), String>> {
        self.finished.lock().unwrap().push(member);
        crate::block::BoxFuture::new(async { Ok(()) })
    }
}

fn unlimited() -> RebuildControl {
    RebuildControl::new(0)
}

/// RAID-5: every stripe's chunks XOR to zero. RAID-1: all mirrors equal.
fn assert_redundant(g: &Geometry, snaps: &[Vec<u8>]) {
    let mds = g.member_data_size() as usize;
    match g.level() {
        Level::Raid5 => {
            let c = g.chunk().get() as usize;
            for s in 0..g.stripe_count() as usize {
                let mut x = vec![0u8; c];
                for snap in snaps {
                    xor_into(&mut x, &snap[s * c..(s + 1) * c]);
                }
                assert!(x.iter().all(|&b| b == 0), "stripe {s} parity wrong");
            }
        }
        _ => {
            for snap in &snaps[1..] {
                assert!(snap[..mds] == snaps[0][..mds], "mirrors differ");
            }
        }
    }
}

async fn rebuild_under_writes(level: Level, members: usize, seed: u64, writes: usize) {
    // Arrange: member 1 missing, data written degraded, a blank new member.
    let member_size = 8 << 20;
    let mut array = Array::new(level, members, C, member_size, &[1]);
    let vol = &array.volume;
    let size = vol.size();
    let mut model = vec![0u8; size as usize];
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..20u64 {
        let at = next() % (size - 300_000);
        let data = pattern(1 + (next() % 300_000) as usize, i);
        vol.write(ByteOffset(at), &data, Durability::Normal)
            .await
            .unwrap();
        model[at as usize..at as usize + data.len()].copy_from_slice(&data);
    }
    let fresh = TestDevice::new("new", member_size);
    fresh.yield_first.store(true, Ordering::SeqCst);
    for d in &array.devices {
        d.yield_first.store(true, Ordering::SeqCst);
    }
    vol.attach_rebuild_target(MemberIndex(1), fresh.clone(), 0)
        .unwrap();
    let sink = Sink::default();
    let ctl = unlimited();
    // Act: rebuild while random writes keep coming.
    let writer = async {
        let mut done = Vec::new();
        for i in 0..writes as u64 {
            let at = next() % (size - 200_000);
            let data = pattern(1 + (next() % 200_000) as usize, 1000 + i);
            vol.write(ByteOffset(at), &data, Durability::Normal)
                .await
                .unwrap();
            done.push((at, data));
            tokio::task::yield_now().await;
        }
        done
    };
    let (rebuilt, done) = futures::join!(vol.rebuild(MemberIndex(1), None, &ctl, &sink), writer);
    for (at, data) in done {
        model[at as usize..at as usize + data.len()].copy_from_slice(&data);
    }
    // Assert
    rebuilt.unwrap();
    assert_eq!(vol.state(MemberIndex(1)), MemberState::Active);
    assert_eq!(*sink.finished.lock().unwrap(), vec![MemberIndex(1)]);
    let mut whole = vec![0u8; size as usize];
    vol.read(ByteOffset(0), &mut whole).await.unwrap();
    assert!(whole == model, "volume differs from the model");
    array.devices[1] = fresh;
    let snaps: Vec<Vec<u8>> = array.devices.iter().map(|d| d.mem.snapshot()).collect();
    assert_redundant(vol.geometry(), &snaps);
}

#[tokio::test]
async fn raid1_rebuild_under_concurrent_writes_yields_identical_mirror() {
    rebuild_under_writes(Level::Raid1, 2, 7, 40).await;
}

#[tokio::test]
async fn raid5_rebuild_under_concurrent_writes_yields_consistent_parity() {
    rebuild_under_writes(Level::Raid5, 4, 11, 40).await;
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn rebuild_is_correct_under_any_random_write_sequence(
        raid5 in any::<bool>(), seed in any::<u64>(), writes in 1usize..30
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (level, n) = if raid5 { (Level::Raid5, 3) } else { (Level::Raid1, 3) };
        rt.block_on(rebuild_under_writes(level, n, seed, writes));
    }
}

#[tokio::test]
async fn replace_copies_a_live_member_and_promotes_the_new_one() {
    // Arrange
    let member_size = 4 << 20;
    let array = Array::new(Level::Raid5, 3, C, member_size, &[]);
    let data = pattern(3 << 20, 3);
    array
        .volume
        .write(ByteOffset(0), &data, Durability::Normal)
        .await
        .unwrap();
    let fresh = TestDevice::new("new", member_size);
    array
        .volume
        .attach_rebuild_target(MemberIndex(2), fresh.clone(), 0)
        .unwrap();
    assert_eq!(array.volume.state(MemberIndex(2)), MemberState::Active);
    // Act
    array
        .volume
        .rebuild(MemberIndex(2), None, &unlimited(), &Sink::default())
        .await
        .unwrap();
    // Assert
    let mds = array.volume.geometry().member_data_size() as usize;
    assert!(fresh.mem.snapshot()[..mds] == array.devices[2].mem.snapshot()[..mds]);
    let before = array.devices[2].writes.load(Ordering::SeqCst);
    array
        .volume
        .write(ByteOffset(0), &[9; 4096], Durability::Normal)
        .await
        .unwrap();
    assert_eq!(array.devices[2].writes.load(Ordering::SeqCst), before);
}

#[tokio::test]
async fn rebuild_checkpoints_and_resumes_from_up_to() {
    // Arrange: 136 MiB members, resumed at 8 MiB: checkpoints at the 64 MiB
    // boundaries after it (64 and 128 MiB), none at the end.
    let member_size = 136 << 20;
    let array = Array::new(Level::Raid1, 2, C, member_size, &[1]);
    let data = pattern(1 << 20, 5);
    for at in [0u64, 100 << 20, 130 << 20] {
        array
            .volume
            .write(ByteOffset(at), &data, Durability::Normal)
            .await
            .unwrap();
    }
    let fresh = TestDevice::new("new", member_size);
    let resume_at = 8 << 20;
    array
        .volume
        .attach_rebuild_target(MemberIndex(1), fresh.clone(), resume_at)
        .unwrap();
    let sink = Sink::default();
    // Act
    let copied = array
        .volume
        .rebuild(MemberIndex(1), None, &unlimited(), &sink)
        .await
        .unwrap();
    // Assert: only bytes from the checkpoint on were copied.
    assert_eq!(copied, member_size - resume_at);
    assert_eq!(*sink.checkpoints.lock().unwrap(), vec![64 << 20, 128 << 20]);
    let snap = fresh.mem.snapshot();
    assert!(
        snap[..1 << 20].iter().all(|&b| b == 0),
        "below the checkpoint is not rewritten"
    );
    assert!(snap[100 << 20..101 << 20] == data[..]);
}

#[tokio::test]
async fn recovery_copies_only_the_given_dirty_ranges() {
    let member_size = 8 << 20;
    let array = Array::new(Level::Raid1, 2, C, member_size, &[]);
    array
        .volume
        .write(ByteOffset(0), &pattern(8 << 20, 1), Durability::Normal)
        .await
        .unwrap();
    let stale = TestDevice::new("stale", member_size);
    array
        .volume
        .attach_rebuild_target(MemberIndex(1), stale.clone(), 0)
        .unwrap();
    // Act
    let copied = array
        .volume
        .rebuild(
            MemberIndex(1),
            Some(vec![(4 << 20, 6 << 20)]),
            &unlimited(),
            &Sink::default(),
        )
        .await
        .unwrap();
    // Assert
    assert_eq!(copied, 2 << 20);
    let snap = stale.mem.snapshot();
    assert!(snap[..4 << 20].iter().all(|&b| b == 0));
    assert!(snap[4 << 20..6 << 20] == pattern(8 << 20, 1)[4 << 20..6 << 20]);
}

#[tokio::test]
async fn resync_fixes_inconsistent_parity_in_dirty_ranges_only() {
    // Arrange: good data, then parity corrupted in stripes 0 and 40.
    let member_size = 4 << 20;
    let array = Array::new(Level::Raid5, 3, C, member_size, &[]);
    let g = *array.volume.geometry();
    array
        .volume
        .write(
            ByteOffset(0),
            &pattern(g.volume_size() as usize, 2),
            Durability::Normal,
        )
        .await
        .unwrap();
    for s in [0u64, 40] {
        let p = g.parity_member(StripeIndex(s)).unwrap();
        array.devices[p.0]
            .mem
            .write(ByteOffset(s * C), &[0xAA; 512], Durability::Normal)
            .await
            .unwrap();
    }
    // Act: only the first 1 MiB of member data (stripes 0..16) is dirty.
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let r2 = ranges.clone();
    let fixed = array
        .volume
        .resync(vec![(0, 1 << 20)], &unlimited(), &move |a, b| {
            r2.lock().unwrap().push((a, b))
        })
        .await
        .unwrap();
    // Assert
    assert_eq!(fixed, 4096, "exactly one parity block rewritten");
    assert_eq!(*ranges.lock().unwrap(), vec![(0, 1 << 20)]);
    let snaps: Vec<Vec<u8>> = array.devices.iter().map(|d| d.mem.snapshot()).collect();
    let stripe_ok = |s: usize| {
        let mut x = vec![0u8; C as usize];
        for snap in &snaps {
            xor_into(&mut x, &snap[s * C as usize..(s + 1) * C as usize]);
        }
        x.iter().all(|&b| b == 0)
    };
    assert!(stripe_ok(0));
    assert!(!stripe_ok(40), "a clean region must not be touched");
}

#[tokio::test]
async fn raid1_resync_rewrites_only_mirror_steps_that_differ_from_the_first() {
    let array = Array::new(Level::Raid1, 3, C, 4 << 20, &[]);
    array
        .volume
        .write(ByteOffset(0), &pattern(4 << 20, 4), Durability::Normal)
        .await
        .unwrap();
    array.devices[2]
        .mem
        .write(ByteOffset(5000), &[1; 100], Durability::Normal)
        .await
        .unwrap();
    let rewritten = array
        .volume
        .resync(vec![(0, 4 << 20)], &unlimited(), &|_, _| {})
        .await
        .unwrap();
    let snaps: Vec<Vec<u8>> = array.devices.iter().map(|d| d.mem.snapshot()).collect();
    assert!(snaps[2] == snaps[0]);
    assert_eq!(
        rewritten,
        2 << 20,
        "only the differing step of mirror 2 is rewritten"
    );
}

/// Logs member writes and intent marks in one shared order.
struct OrderLog(Mutex<Vec<String>>);

struct LoggingDevice {
    inner: Arc<TestDevice>,
    log: Arc<OrderLog>,
}

impl BlockDevice for LoggingDevice {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read<'a>(&'a self, offset: ByteOffset, buf: &'a mut [u8]) -> BoxFuture<'a, BlockResult> {
        self.inner.read(offset, buf)
    }
    fn write<'a>(
        &'a self,
        offset: ByteOffset,
        buf: &'a [u8],
        durability: Durability,
    ) -> BoxFuture<'a, BlockResult> {
        self.log
            .0
            .lock()
            .unwrap()
            .push(format!("write {}", offset.get()));
        self.inner.write(offset, buf, durability)
    }
    fn flush(&self) -> BoxFuture<'_, BlockResult> {
        self.inner.flush()
    }
    fn discard(&self, offset: ByteOffset, len: u64) -> BoxFuture<'_, BlockResult> {
        self.inner.discard(offset, len)
    }
    fn write_zeroes(&self, offset: ByteOffset, len: u64, u: bool) -> BoxFuture<'_, BlockResult> {
        self.inner.write_zeroes(offset, len, u)
    }
}

struct SlowIntent(Arc<OrderLog>);

impl WriteIntent for SlowIntent {
    fn mark(&self, start: ByteOffset, end: ByteOffset) -> BoxFuture<'_, BlockResult> {
        crate::block::BoxFuture::new(async move {
            tokio::task::yield_now().await;
            self.0
                 .0
                .lock()
                .unwrap()
                .push(format!("mark {}..{}", start.get(), end.get()));
            Ok(())
        })
    }
    fn done(&self, start: ByteOffset, end: ByteOffset) {
        self.0
             .0
            .lock()
            .unwrap()
            .push(format!("done {}..{}", start.get(), end.get()));
    }
}

#[tokio::test]
async fn raid5_write_intent_is_recorded_before_any_member_write_and_done_after() {
    // Arrange
    let log = Arc::new(OrderLog(Mutex::new(Vec::new())));
    let g = Geometry::new(Level::Raid5, 3, ChunkSize::new(C).unwrap(), 1 << 20).unwrap();
    let members = (0..3)
        .map(|i| {
            Some(Arc::new(LoggingDevice {
                inner: TestDevice::new(&format!("m{i}"), 1 << 20),
                log: log.clone(),
            }) as Arc<dyn BlockDevice>)
        })
        .collect();
    let events = Arc::new(super::test_support::Events::default());
    let vol = Volume::new("v".into(), g, members, events)
        .unwrap()
        .with_write_intent(Arc::new(SlowIntent(log.clone())));
    // Act: a write into stripe 1 (volume bytes 128K..).
    vol.write(ByteOffset(2 * C + 10), &[5; 100], Durability::Normal)
        .await
        .unwrap();
    // Assert: the whole stripe span is marked before the first member write.
    let log = log.0.lock().unwrap().clone();
    assert_eq!(log[0], format!("mark {}..{}", C, 2 * C));
    assert_eq!(log.last().unwrap(), &format!("done {}..{}", C, 2 * C));
    assert!(log[1..log.len() - 1].iter().all(|e| e.starts_with("write")));
    assert_eq!(log.len(), 4, "data + parity writes: {log:?}");
}

#[test]
fn raid0_volume_ignores_write_intent_and_refuses_rebuild() {
    let array = Array::new(Level::Raid0, 2, C, 1 << 20, &[]);
    let err = array
        .volume
        .attach_rebuild_target(MemberIndex(0), TestDevice::new("x", 1 << 20), 0)
        .unwrap_err();
    assert!(err.to_string().contains("cannot be rebuilt"));
}

#[tokio::test]
async fn raid5_reads_below_up_to_come_from_the_new_member_above_it_are_reconstructed() {
    // Arrange: member 2 lost; its exact copy attached as in sync below 1 MiB.
    let member_size = 4 << 20;
    let full = Array::new(Level::Raid5, 3, C, member_size, &[]);
    let data = pattern(6 << 20, 8);
    full.volume
        .write(ByteOffset(0), &data, Durability::Normal)
        .await
        .unwrap();
    let copy = TestDevice::new("copy", member_size);
    copy.mem
        .write(
            ByteOffset(0),
            &full.devices[2].mem.snapshot(),
            Durability::Normal,
        )
        .await
        .unwrap();
    let g = *full.volume.geometry();
    let array = Array::over(g, full.devices.clone(), &[2]);
    array
        .volume
        .attach_rebuild_target(MemberIndex(2), copy.clone(), 1 << 20)
        .unwrap();
    // Stripes where member 2 holds a data chunk, below and above 1 MiB.
    let on_member_2 =
        |stripe: u64| (0..2).find(|&d| g.data_member(StripeIndex(stripe), d) == MemberIndex(2));
    let below = (0..16)
        .find_map(|s| on_member_2(s).map(|d| (s, d)))
        .unwrap();
    let above = (20..60)
        .find_map(|s| on_member_2(s).map(|d| (s, d)))
        .unwrap();
    let at = |(s, d): (u64, usize)| s * 2 * C + d as u64 * C;
    array.reset_counters();
    copy.reset_counters();
    // Act + Assert
    let mut buf = vec![0u8; 4096];
    array
        .volume
        .read(ByteOffset(at(below)), &mut buf)
        .await
        .unwrap();
    assert!(buf[..] == data[at(below) as usize..at(below) as usize + 4096]);
    assert_eq!(copy.reads.load(Ordering::SeqCst), 1);
    assert_eq!(array.read_bytes(), 0, "nothing reconstructed below up_to");
    array
        .volume
        .read(ByteOffset(at(above)), &mut buf)
        .await
        .unwrap();
    assert!(buf[..] == data[at(above) as usize..at(above) as usize + 4096]);
    assert_eq!(
        copy.reads.load(Ordering::SeqCst),
        1,
        "never read above up_to"
    );
    assert_eq!(array.read_bytes(), 2 * 4096);
}

#[tokio::test]
async fn a_rebuilt_member_that_fails_again_is_recorded_again() {
    // Arrange: member 1 fails, is rebuilt onto a new device, which fails too.
    let array = Array::new(Level::Raid1, 2, C, 2 << 20, &[]);
    array.devices[1].mem.set_failing(true);
    array
        .volume
        .write(ByteOffset(0), &[1; 4096], Durability::Normal)
        .await
        .unwrap();
    assert_eq!(array.volume.state(MemberIndex(1)), MemberState::Failed);
    let fresh = TestDevice::new("new", 2 << 20);
    array
        .volume
        .attach_rebuild_target(MemberIndex(1), fresh.clone(), 0)
        .unwrap();
    array
        .volume
        .rebuild(MemberIndex(1), None, &unlimited(), &Sink::default())
        .await
        .unwrap();
    assert_eq!(array.volume.state(MemberIndex(1)), MemberState::Active);
    fresh.mem.set_failing(true);
    // Act
    let write = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        array
            .volume
            .write(ByteOffset(8192), &[2; 4096], Durability::Normal),
    )
    .await;
    // Assert
    assert!(
        matches!(write, Ok(Ok(()))),
        "write must complete: {write:?}"
    );
    assert_eq!(array.volume.state(MemberIndex(1)), MemberState::Failed);
    assert_eq!(
        *array.events.failed.lock().unwrap(),
        vec![MemberIndex(1), MemberIndex(1)]
    );
}

/// A checksummed array of 3 with 2 MiB written (pattern `seed`), member 2
/// failed, the byte at member offset `at` flipped on each of `flipped`,
/// then a fresh member rebuilt into slot 2: the volume, the data, the new
/// member and the rebuild's outcome.
async fn rebuild_over_flipped_bytes(
    level: Level,
    seed: u64,
    at: u64,
    flipped: &[usize],
) -> (
    super::Volume,
    Vec<u8>,
    Arc<dyn BlockDevice>,
    Result<u64, super::RebuildError>,
) {
    let csums = crate::integrity::Checksums::new();
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let member_size = 4 << 20;
    let wrapped = Array::new_wrapped(level, 3, C, member_size, &[], |i, d| {
        csums.wrap_in_memory(i, d, false, errors.clone())
    });
    let volume = wrapped.volume.with_checksums(csums.clone());
    let data = pattern(2 << 20, seed);
    volume
        .write(ByteOffset(0), &data, Durability::Normal)
        .await
        .unwrap();
    volume.fail_member_by_request(MemberIndex(2), "test").await;
    for &m in flipped {
        let dev = &wrapped.devices[m].mem;
        let mut byte = [0u8; 1];
        dev.read(ByteOffset(at), &mut byte).await.unwrap();
        byte[0] ^= 0x5a;
        dev.write(ByteOffset(at), &byte, Durability::Normal)
            .await
            .unwrap();
    }
    let fresh = TestDevice::new("new", member_size);
    let target = csums.wrap_in_memory(2, fresh, true, errors.clone());
    volume
        .attach_rebuild_target(MemberIndex(2), target.clone(), 0)
        .unwrap();
    let result = volume
        .rebuild(MemberIndex(2), None, &unlimited(), &Sink::default())
        .await;
    (volume, data, target, result)
}

#[tokio::test]
async fn raid5_rebuild_marks_a_block_with_no_good_source_lost_and_finishes() {
    // Arrange + act: checksummed RAID-5, member 2 failed, and a data block
    // of member 0 silently flipped (no redundancy left for it); rebuild.
    let (volume, data, target, result) =
        rebuild_over_flipped_bytes(Level::Raid5, 11, 100, &[0]).await;

    // Assert: the rebuild finished; only the stripe row of the bad block is
    // lost (stripe 0: data on members 0 and 1, parity on member 2).
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(volume.state(MemberIndex(2)), MemberState::Active);
    let mut block = vec![0u8; 4096];
    assert!(volume.read(ByteOffset(0), &mut block).await.is_err());
    let mut rest = vec![0u8; (2 << 20) - 4096];
    volume.read(ByteOffset(4096), &mut rest).await.unwrap();
    assert!(rest == data[4096..]);
    let mut lost = vec![0u8; 4096];
    assert!(matches!(
        target.read(ByteOffset(0), &mut lost).await,
        Err(crate::block::BlockError::Corrupt { .. })
    ));
}

#[tokio::test]
async fn raid1_rebuild_marks_a_block_bad_on_every_mirror_lost_and_finishes() {
    // Arrange + act: checksummed 3-way RAID-1, member 2 failed, and the
    // same block silently flipped on both remaining mirrors; rebuild.
    let (volume, data, target, result) =
        rebuild_over_flipped_bytes(Level::Raid1, 12, 8192 + 7, &[0, 1]).await;

    // Assert: finished; only that block is lost, on the new member too,
    // and the mirrors that still have the bad bytes stay in the array.
    assert!(result.is_ok(), "{result:?}");
    for m in 0..3 {
        assert_eq!(
            volume.state(MemberIndex(m)),
            MemberState::Active,
            "member {m}"
        );
    }
    let mut rest = vec![0u8; (2 << 20) - 12288];
    volume.read(ByteOffset(12288), &mut rest).await.unwrap();
    assert!(rest == data[12288..]);
    let mut head = vec![0u8; 8192];
    volume.read(ByteOffset(0), &mut head).await.unwrap();
    assert!(head == data[..8192]);
    let mut lost = vec![0u8; 4096];
    assert!(matches!(
        target.read(ByteOffset(8192), &mut lost).await,
        Err(crate::block::BlockError::Corrupt { .. })
    ));
}
