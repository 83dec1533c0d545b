//! Scrub (check and repair) against in-memory members.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::layout::{ChunkSize, Geometry};
use super::rebuild::RebuildControl;
use super::scrub::{ScrubReport, BLOCK};
use super::test_support::{pattern, xor_byte, Events, TestDevice};
use super::{Level, Volume};
use crate::block::{BlockDevice, BlockError, BlockResult, BoxFuture, Durability};
use crate::units::ByteOffset;

const C: u64 = 64 << 10;
const MEMBER: u64 = 8 << 20;

/// A member that fails reads of chosen 4 KiB blocks, like the checksum
/// layer (`Corrupt`) or a bad sector (`Io`); writing a block heals it.
struct BadBlocks {
    inner: Arc<TestDevice>,
    bad: Mutex<Vec<u64>>,
    corrupt: bool,
}

impl BlockDevice for BadBlocks {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read<'a>(&'a self, offset: ByteOffset, buf: &'a mut [u8]) -> BoxFuture<'a, BlockResult> {
        let end = offset.get() + buf.len() as u64;
        let hit = self
            .bad
            .lock()
            .unwrap()
            .iter()
            .copied()
            .filter(|&b| b < end && offset.get() < b + BLOCK as u64)
            .min();
        crate::block::BoxFuture::new(async move {
            match hit {
                Some(b) if self.corrupt => Err(BlockError::Corrupt {
                    device: self.name().into(),
                    offset: b,
                    blocks: 1,
                }),
                Some(_) => Err(BlockError::io(
                    self.name(),
                    std::io::Error::from_raw_os_error(libc::EIO),
                )),
                None => self.inner.read(offset, buf).await,
            }
        })
    }
    fn write<'a>(
        &'a self,
        offset: ByteOffset,
        buf: &'a [u8],
        durability: Durability,
    ) -> BoxFuture<'a, BlockResult> {
        let end = offset.get() + buf.len() as u64;
        self.bad
            .lock()
            .unwrap()
            .retain(|&b| !(offset.get() <= b && b + BLOCK as u64 <= end));
        self.inner.write(offset, buf, durability)
    }
    fn flush(&self) -> BoxFuture<'_, BlockResult> {
        self.inner.flush()
    }
    fn discard(&self, offset: ByteOffset, len: u64) -> BoxFuture<'_, BlockResult> {
        self.inner.discard(offset, len)
    }
    fn write_zeroes(&self, o: ByteOffset, len: u64, unmap: bool) -> BoxFuture<'_, BlockResult> {
        self.inner.write_zeroes(o, len, unmap)
    }
}

struct Rig {
    devices: Vec<Arc<TestDevice>>,
    wrapped: Option<Arc<BadBlocks>>,
    volume: Volume,
}

impl Rig {
    /// An array filled with a pattern; member `bad` (if any) behind a
    /// [`BadBlocks`] wrapper.
    async fn new(level: Level, members: usize, bad: Option<(usize, bool)>) -> Rig {
        let g = Geometry::new(level, members, ChunkSize::new(C).unwrap(), MEMBER).unwrap();
        let devices: Vec<Arc<TestDevice>> = (0..members)
            .map(|i| TestDevice::new(&format!("m{i}"), MEMBER))
            .collect();
        let mut wrapped = None;
        let devs = devices
            .iter()
            .enumerate()
            .map(|(i, d)| match bad {
                Some((m, corrupt)) if m == i => {
                    let w = Arc::new(BadBlocks {
                        inner: d.clone(),
                        bad: Mutex::new(Vec::new()),
                        corrupt,
                    });
                    wrapped = Some(w.clone());
                    Some(w as Arc<dyn BlockDevice>)
                }
                _ => Some(d.clone() as Arc<dyn BlockDevice>),
            })
            .collect();
        let volume = Volume::new("vol".into(), g, devs, Arc::new(Events::default())).unwrap();
        let data = pattern(volume.size() as usize, 7);
        volume
            .write(ByteOffset(0), &data, Durability::Normal)
            .await
            .unwrap();
        Rig {
            devices,
            wrapped,
            volume,
        }
    }

    /// Flips one byte of member `m` behind the volume's back.
    async fn flip(&self, m: usize, at: u64) {
        xor_byte(&self.devices[m].mem, at, 0x5a).await.unwrap();
    }

    async fn scrub(&self, repair: bool) -> ScrubReport {
        self.devices.iter().for_each(|d| d.reset_counters());
        self.volume
            .scrub(repair, &RebuildControl::new(0), &AtomicBool::new(false))
            .await
    }

    fn writes(&self) -> u64 {
        self.devices
            .iter()
            .map(|d| d.writes.load(Ordering::SeqCst))
            .sum()
    }

    async fn member_bytes(&self, m: usize, at: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.devices[m]
            .mem
            .read(ByteOffset(at), &mut b)
            .await
            .unwrap();
        b
    }
}

#[tokio::test]
async fn raid1_check_finds_exactly_the_flipped_blocks_and_writes_nothing() {
    // Arrange: three bytes flipped in three distinct blocks of mirror 1,
    // two of them in the same block (counted once).
    let rig = Rig::new(Level::Raid1, 2, None).await;
    for at in [5, 100, 3 * 4096 + 9, 5 << 20] {
        rig.flip(1, at).await;
    }

    // Act
    let report = rig.scrub(false).await;

    // Assert
    assert_eq!(report.members[1].mismatch, 3);
    assert_eq!(report.members[0].mismatch, 0);
    assert_eq!(report.found(), 3);
    assert_eq!(report.repaired(), 0);
    assert_eq!(rig.writes(), 0);
    assert!(!report.cancelled && !report.degraded);
    assert_eq!(
        report.bytes_checked,
        2 * rig.volume.geometry().member_data_size()
    );
}

#[tokio::test]
async fn raid1_repair_copies_the_first_mirror_and_a_second_check_is_clean() {
    // Arrange
    let rig = Rig::new(Level::Raid1, 3, None).await;
    rig.flip(2, 4096 * 7).await;
    rig.flip(1, 1 << 20).await;

    // Act
    let repaired = rig.scrub(true).await;
    let again = rig.scrub(false).await;

    // Assert
    assert_eq!(repaired.mismatches(), 2);
    assert_eq!(repaired.members[2].repaired, 1);
    assert_eq!(repaired.members[1].repaired, 1);
    assert_eq!(again.found(), 0);
    assert_eq!(
        rig.member_bytes(2, 0, 1 << 21).await,
        rig.member_bytes(0, 0, 1 << 21).await
    );
}

#[tokio::test]
async fn raid5_check_finds_flipped_data_and_parity_blocks_and_writes_nothing() {
    // Arrange: flips in data and parity chunks of different members.
    let rig = Rig::new(Level::Raid5, 3, None).await;
    for (m, at) in [(0, 3 * 4096 + 1), (1, 1 << 20), (2, (6 << 20) + 77)] {
        rig.flip(m, at).await;
    }

    // Act
    let report = rig.scrub(false).await;

    // Assert
    assert_eq!(report.mismatches(), 3);
    assert_eq!(report.found(), 3);
    assert_eq!(rig.writes(), 0);
}

#[tokio::test]
async fn raid5_repair_rewrites_parity_and_a_second_check_is_clean() {
    // Arrange
    let rig = Rig::new(Level::Raid5, 4, None).await;
    rig.flip(3, 4096).await;
    rig.flip(0, (2 << 20) + 4096 * 9).await;

    // Act
    let repaired = rig.scrub(true).await;
    let again = rig.scrub(false).await;

    // Assert: only the two parity blocks were written.
    assert_eq!(repaired.mismatches(), 2);
    assert_eq!(repaired.repaired(), 2);
    assert_eq!(again.found(), 0);
}

async fn corrupt_block_is_rebuilt_from_redundancy(level: Level, members: usize, corrupt: bool) {
    // Arrange: member 0's block at 1 MiB + 8 KiB holds garbage and its read
    // fails (checksum or I/O).
    let rig = Rig::new(level, members, Some((0, corrupt))).await;
    let at = (1 << 20) + 8192;
    let good = rig.member_bytes(0, at, BLOCK).await;
    rig.devices[0]
        .mem
        .write(ByteOffset(at), &[0xEE; BLOCK], Durability::Normal)
        .await
        .unwrap();
    rig.wrapped.as_ref().unwrap().bad.lock().unwrap().push(at);

    // Act
    let check = rig.scrub(false).await;
    let check_writes = rig.writes();
    let repair = rig.scrub(true).await;
    let again = rig.scrub(false).await;

    // Assert
    let (kind_check, kind_repair) = if corrupt {
        (check.members[0].checksum, repair.members[0].checksum)
    } else {
        (check.members[0].io, repair.members[0].io)
    };
    assert_eq!((kind_check, check.found(), check_writes), (1, 1, 0));
    assert_eq!((kind_repair, repair.members[0].repaired), (1, 1));
    assert_eq!(repair.mismatches(), 0);
    assert_eq!(again.found(), 0);
    assert_eq!(rig.member_bytes(0, at, BLOCK).await, good);
}

#[tokio::test]
async fn raid1_corrupt_block_on_the_first_mirror_is_rewritten_from_the_other() {
    corrupt_block_is_rebuilt_from_redundancy(Level::Raid1, 2, true).await;
}

#[tokio::test]
async fn raid5_corrupt_block_is_rewritten_from_the_others() {
    corrupt_block_is_rebuilt_from_redundancy(Level::Raid5, 3, true).await;
}

#[tokio::test]
async fn raid5_unreadable_block_counts_as_io_and_is_rewritten() {
    corrupt_block_is_rebuilt_from_redundancy(Level::Raid5, 3, false).await;
}

#[tokio::test]
async fn raid0_corrupt_block_is_counted_but_not_repairable() {
    // Arrange
    let rig = Rig::new(Level::Raid0, 2, Some((0, true))).await;
    rig.wrapped.as_ref().unwrap().bad.lock().unwrap().push(4096);

    // Act
    let report = rig.scrub(true).await;

    // Assert
    assert_eq!(report.members[0].checksum, 1);
    assert_eq!(report.repaired(), 0);
    assert_eq!(rig.writes(), 0);
}

#[tokio::test]
async fn degraded_raid5_check_reports_degraded_and_finds_nothing_to_compare() {
    // Arrange: a flipped byte, then member 2 fails.
    let rig = Rig::new(Level::Raid5, 3, None).await;
    rig.flip(0, 4096).await;
    rig.volume
        .fail_member_by_request(super::MemberIndex(2), "test")
        .await;

    // Act
    let report = rig.scrub(false).await;

    // Assert
    assert!(report.degraded);
    assert_eq!(report.found(), 0);
}

#[tokio::test]
async fn scrub_is_throttled_by_the_rate_limit_and_shows_progress() {
    // Arrange: 8 MiB of member data at 32 MB/s takes about 0.26 s.
    let rig = Rig::new(Level::Raid1, 2, None).await;
    let ctl = RebuildControl::new(32);
    let cancel = AtomicBool::new(false);

    // Act
    let started = Instant::now();
    let (report, seen) = tokio::join!(
        rig.volume.scrub(false, &ctl, &cancel),
        first_progress(&rig.volume)
    );

    // Assert
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(!report.cancelled);
    let seen = seen.expect("progress shown while running");
    assert_eq!(seen.kind, super::SyncKind::Scrub);
    assert!(seen.done_bytes < seen.total_bytes);
    assert!(rig.volume.sync_progress().is_none());
}

/// The first progress the running scrub shows with some bytes done,
/// polled (bounded: 2 s) rather than guessed with one sleep.
async fn first_progress(volume: &super::Volume) -> Option<super::SyncProgress> {
    for _ in 0..2000 {
        match volume.sync_progress() {
            Some(p) if p.done_bytes > 0 => return Some(p),
            _ => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
    None
}

#[tokio::test]
async fn cancelled_scrub_stops_early() {
    // Arrange: throttled to 4 MB/s, 8 MiB would take 2 s.
    let rig = Rig::new(Level::Raid5, 3, None).await;
    let ctl = RebuildControl::new(4);
    let cancel = AtomicBool::new(false);

    // Act
    let started = Instant::now();
    let (report, ()) = tokio::join!(rig.volume.scrub(false, &ctl, &cancel), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        cancel.store(true, Ordering::Relaxed);
    });

    // Assert
    assert!(report.cancelled);
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert!(report.bytes_checked < 3 * rig.volume.geometry().member_data_size());
}

#[tokio::test]
async fn raid6_check_names_the_wrong_member_p_q_or_data() {
    // Arrange: in stripe 0 (5 members: P on 4, Q on 0) one byte flipped
    // on P, one on Q in another block, one on data member 2 in a third.
    let rig = Rig::new(Level::Raid6, 5, None).await;
    let g = *rig.volume.geometry();
    let s0 = super::StripeIndex(0);
    let (p, q) = (g.parity_member(s0).unwrap().0, g.q_member(s0).unwrap().0);
    let d = g.data_member(s0, 1).0;
    rig.flip(p, 5).await;
    rig.flip(q, 4096 + 7).await;
    rig.flip(d, 2 * 4096 + 11).await;

    // Act
    let report = rig.scrub(false).await;

    // Assert: each counted once, on the member that holds the wrong byte.
    assert_eq!((p, q, d), (4, 0, 2));
    assert_eq!(report.members[p].mismatch, 1);
    assert_eq!(report.members[q].mismatch, 1);
    assert_eq!(report.members[d].mismatch, 1);
    assert_eq!(report.found(), 3);
    assert_eq!(rig.writes(), 0);
}

#[tokio::test]
async fn raid6_repair_makes_p_and_q_match_and_a_second_check_is_clean() {
    // Arrange
    let rig = Rig::new(Level::Raid6, 4, None).await;
    rig.flip(1, 3 << 20).await;
    rig.flip(3, (1 << 20) + 4096 * 3).await;

    // Act
    let repaired = rig.scrub(true).await;
    let again = rig.scrub(false).await;

    // Assert
    assert_eq!(repaired.found(), 2);
    assert_eq!(repaired.repaired(), 2);
    assert_eq!(again.found(), 0);
}

#[tokio::test]
async fn raid6_repair_rewrites_an_unreadable_block_from_the_others() {
    // Arrange: member 1 has a bad sector (its bytes flipped too).
    let rig = Rig::new(Level::Raid6, 5, Some((1, false))).await;
    let w = rig.wrapped.as_ref().unwrap();
    w.bad.lock().unwrap().push(8192);
    let before = rig.member_bytes(1, 8192, 4096).await;
    rig.flip(1, 8192 + 3).await;

    // Act
    let report = rig.scrub(true).await;

    // Assert: the bad block came back from the others.
    assert_eq!(report.members[1].io, 1);
    assert_eq!(report.members[1].repaired, 1);
    assert_eq!(rig.member_bytes(1, 8192, 4096).await, before);
    assert_eq!(rig.scrub(false).await.found(), 0);
}
