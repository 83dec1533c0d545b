//! Crash resync and rebuild sources against in-memory members: a block
//! that fails its checksum is never the copy source (RAID-1) nor folded
//! into parity (RAID-5), and a source read error costs one block, not the
//! source member (docs/FORMAT.md §7, §8).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use proptest::prelude::*;

use super::checksum::Verdict;
use super::layout::{MemberIndex, StripeIndex};
use super::parity::xor_into;
use super::ppl::{replay, MemParityLog};
use super::rebuild::RebuildControl;
use super::test_support::{pattern, Array, TestDevice};
use super::trust::pick_copy;
use super::{Level, MemberState, RebuildSink};
use crate::block::{BlockDevice, BlockError, BlockResult, BoxFuture, Durability};
use crate::integrity::Checksums;
use crate::units::ByteOffset;

const C: u64 = 64 << 10;
const MEMBER: u64 = 4 << 20;

/// A checksummed array whose reads are verified only while `settled` is
/// set (a crash's dirty regions are not, until their resync is done).
struct Crashed {
    array: Array,
    settled: Arc<AtomicBool>,
}

impl Crashed {
    fn new(level: Level, members: usize) -> Crashed {
        let csums = Checksums::new();
        let errors = Arc::new(AtomicU64::new(0));
        let settled = Arc::new(AtomicBool::new(true));
        let flag = settled.clone();
        let mut array = Array::new_wrapped(level, members, C, MEMBER, &[], |i, d| {
            let flag = flag.clone();
            let trusted = Arc::new(move |_| flag.load(Ordering::SeqCst));
            csums.wrap_in_memory_trusting(i, d, errors.clone(), trusted)
        });
        array.volume = array.volume.with_checksums(csums);
        Crashed { array, settled }
    }

    /// Writes `data` at 0 through the volume (checksums recorded).
    async fn write(&self, data: &[u8]) {
        self.array
            .volume
            .write(ByteOffset(0), data, Durability::Normal)
            .await
            .unwrap();
    }

    /// Flips bytes under the checksum layer, like a `corrupt --op write`
    /// fault: the member holds other bytes than its entries describe.
    async fn corrupt(&self, member: usize, at: u64, len: usize) {
        let dev = &self.array.devices[member].mem;
        let mut buf = vec![0u8; len];
        dev.read(ByteOffset(at), &mut buf).await.unwrap();
        buf.iter_mut().for_each(|b| *b ^= 0xff);
        dev.write(ByteOffset(at), &buf, Durability::Normal)
            .await
            .unwrap();
    }

    /// The crash resync of `0..len` (reads unverified meanwhile), then a
    /// full read of the volume's first `len` bytes, verified.
    async fn resync_and_read(&self, len: usize) -> Vec<u8> {
        self.settled.store(false, Ordering::SeqCst);
        self.array
            .volume
            .resync(vec![(0, MEMBER)], &RebuildControl::new(0), &|_, _| {})
            .await
            .unwrap();
        self.settled.store(true, Ordering::SeqCst);
        let mut out = vec![0u8; len];
        self.array
            .volume
            .read(ByteOffset(0), &mut out)
            .await
            .unwrap();
        out
    }

    fn snapshots(&self) -> Vec<Vec<u8>> {
        self.array
            .devices
            .iter()
            .map(|d| d.mem.snapshot())
            .collect()
    }
}

async fn mirror_written_wrong_is_not_copied_over_the_good_ones(mirrors: usize) {
    // Arrange: mirror 0 holds wrong bytes in two places (one block, and
    // part of another), its entries say what should be there.
    let crashed = Crashed::new(Level::Raid1, mirrors);
    let data = pattern(2 << 20, 21);
    crashed.write(&data).await;
    crashed.corrupt(0, 8192, 4096).await;
    crashed.corrupt(0, (1 << 20) + 100, 300).await;

    // Act
    let read = crashed.resync_and_read(data.len()).await;

    // Assert: the client's data, on every mirror.
    assert!(read == data, "volume reads what was written");
    for (m, snap) in crashed.snapshots().iter().enumerate() {
        assert!(snap[..data.len()] == data[..], "mirror {m} repaired");
    }
}

#[tokio::test]
async fn raid1_resync_keeps_the_good_mirror_over_a_mirror_0_written_wrong_2_way() {
    mirror_written_wrong_is_not_copied_over_the_good_ones(2).await;
}

#[tokio::test]
async fn raid1_resync_keeps_the_good_mirrors_over_a_mirror_0_written_wrong_3_way() {
    mirror_written_wrong_is_not_copied_over_the_good_ones(3).await;
}

#[tokio::test]
async fn raid5_resync_restores_a_data_block_written_wrong_from_parity() {
    // Arrange: stripe 0's data chunk on member 0 written wrong in one
    // block, and stripe 5's parity block too (stripe 5: parity on 1).
    let crashed = Crashed::new(Level::Raid5, 3);
    let g = *crashed.array.volume.geometry();
    let data = pattern(2 << 20, 22);
    crashed.write(&data).await;
    crashed.corrupt(0, 4096, 4096).await;
    let p5 = g.parity_member(StripeIndex(5)).unwrap();
    crashed.corrupt(p5.0, 5 * C + 8192, 10).await;

    // Act
    let read = crashed.resync_and_read(data.len()).await;

    // Assert: the data the client wrote, and every stripe consistent.
    assert!(read == data, "volume reads what was written");
    let snaps = crashed.snapshots();
    for s in 0..16 {
        let mut x = vec![0u8; C as usize];
        for snap in &snaps {
            xor_into(&mut x, &snap[(s * C) as usize..((s + 1) * C) as usize]);
        }
        assert!(x.iter().all(|&b| b == 0), "stripe {s} consistent");
    }
}

#[tokio::test]
async fn raid5_replay_keeps_the_parity_of_a_row_whose_data_was_written_wrong() {
    // Arrange: journaled writes, then a data block of member 1 (stripe 0)
    // found written wrong after the crash.
    let log = Arc::new(MemParityLog::default());
    let mut crashed = Crashed::new(Level::Raid5, 4);
    crashed.array.volume = crashed.array.volume.with_parity_log(log.clone());
    let data = pattern(1 << 20, 25);
    crashed.write(&data).await;
    crashed.corrupt(1, 8192, 4096).await;
    let g = *crashed.array.volume.geometry();
    let p = g.parity_member(StripeIndex(0)).unwrap();
    let parity_before = crashed.snapshots()[p.0][..C as usize].to_vec();

    // Act: the replay, then the resync.
    crashed.settled.store(false, Ordering::SeqCst);
    let records = log.records.lock().unwrap().clone();
    let stats = replay(&crashed.array.volume, &records).await.unwrap();
    let parity_replayed = crashed.snapshots()[p.0][..C as usize].to_vec();
    let read = crashed.resync_and_read(data.len()).await;

    // Assert: the replay left stripe 0's parity alone; the data is right.
    assert!(stats.replayed > 0);
    assert!(parity_replayed == parity_before);
    assert!(read == data);
}

#[tokio::test]
async fn raid5_resync_recomputes_parity_of_a_torn_row_whose_blocks_pass() {
    // Arrange: a data block changed under the checksum layer together with
    // its entry (a write that landed; its parity did not).
    let crashed = Crashed::new(Level::Raid5, 3);
    let data = pattern(1 << 20, 23);
    crashed.write(&data).await;
    let torn = vec![0x5a; 4096];
    let hook = crashed.array.volume.checksums().unwrap().clone();
    crashed.array.devices[0]
        .mem
        .write(ByteOffset(0), &torn, Durability::Normal)
        .await
        .unwrap();
    hook.reseal(MemberIndex(0), ByteOffset(0), &torn)
        .await
        .unwrap();

    // Act
    let read = crashed.resync_and_read(data.len()).await;

    // Assert: the landed write stays (stripe 0's data chunk 0 is member 0).
    assert!(read[..4096] == torn[..]);
    assert!(read[4096..] == data[4096..]);
}

/// Fails reads of its inner device that overlap `bad` while `on` is set.
struct ErrorAt {
    inner: Arc<dyn BlockDevice>,
    bad: (u64, u64),
    on: Arc<AtomicBool>,
}

impl BlockDevice for ErrorAt {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read<'a>(&'a self, offset: ByteOffset, buf: &'a mut [u8]) -> BoxFuture<'a, BlockResult> {
        let end = offset.get() + buf.len() as u64;
        if self.on.load(Ordering::SeqCst) && offset.get() < self.bad.1 && self.bad.0 < end {
            let e = std::io::Error::from_raw_os_error(libc::EIO);
            return crate::block::BoxFuture::new(async move { Err(BlockError::io("m0", e)) });
        }
        self.inner.read(offset, buf)
    }
    fn write<'a>(
        &'a self,
        offset: ByteOffset,
        buf: &'a [u8],
        durability: Durability,
    ) -> BoxFuture<'a, BlockResult> {
        self.inner.write(offset, buf, durability)
    }
    fn flush(&self) -> BoxFuture<'_, BlockResult> {
        self.inner.flush()
    }
    fn discard(&self, offset: ByteOffset, len: u64) -> BoxFuture<'_, BlockResult> {
        self.inner.discard(offset, len)
    }
    fn write_zeroes(
        &self,
        offset: ByteOffset,
        len: u64,
        may_unmap: bool,
    ) -> BoxFuture<'_, BlockResult> {
        self.inner.write_zeroes(offset, len, may_unmap)
    }
}

struct NoSink;

impl RebuildSink for NoSink {
    fn checkpoint(&self, _m: MemberIndex, _up_to: u64) -> BoxFuture<'_, Result<(), String>> {
        crate::block::BoxFuture::new(async { Ok(()) })
    }
    fn finished(&self, _m: MemberIndex) -> BoxFuture<'_, Result<(), String>> {
        crate::block::BoxFuture::new(async { Ok(()) })
    }
}

/// What [`rebuild_over_a_read_error`] leaves.
struct Rebuilt {
    array: Array,
    data: Vec<u8>,
    target: Arc<dyn BlockDevice>,
    result: Result<u64, super::RebuildError>,
    fault: Arc<AtomicBool>,
}

/// A checksummed `level` array of `members` with 2 MiB written, its last
/// member failed, member 0 failing reads of 8 KiB at member offset `at`:
/// rebuilds a fresh member into the last slot.
async fn rebuild_over_a_read_error(level: Level, members: usize, at: u64) -> Rebuilt {
    let csums = Checksums::new();
    let errors = Arc::new(AtomicU64::new(0));
    let fault = Arc::new(AtomicBool::new(false));
    let mut array = Array::new_wrapped(level, members, C, MEMBER, &[], |i, d| {
        let d: Arc<dyn BlockDevice> = if i == 0 {
            Arc::new(ErrorAt {
                inner: d,
                bad: (at, at + 8192),
                on: fault.clone(),
            })
        } else {
            d
        };
        csums.wrap_in_memory(i, d, false, errors.clone())
    });
    array.volume = array.volume.with_checksums(csums.clone());
    let data = pattern(2 << 20, 24);
    array
        .volume
        .write(ByteOffset(0), &data, Durability::Normal)
        .await
        .unwrap();
    let last = MemberIndex(members - 1);
    array.volume.fail_member_by_request(last, "test").await;
    fault.store(true, Ordering::SeqCst);
    let target = csums.wrap_in_memory(last.0, TestDevice::new("new", MEMBER), true, errors);
    array
        .volume
        .attach_rebuild_target(last, target.clone(), 0)
        .unwrap();
    let result = array
        .volume
        .rebuild(last, None, &RebuildControl::new(0), &NoSink)
        .await;
    Rebuilt {
        array,
        data,
        target,
        result,
        fault,
    }
}

#[tokio::test]
async fn raid5_rebuild_over_a_source_read_error_loses_that_block_only() {
    // Arrange + act: RAID-5 of 3, member 2 rebuilt while member 0 cannot
    // read 8 KiB at member offset 64 KiB + 8 KiB.
    let at = C + 8192;
    let r = rebuild_over_a_read_error(Level::Raid5, 3, at).await;

    // Assert: finished, the source stays, the two blocks are lost on the
    // new member (never zeroes served as data), the rest is rebuilt.
    assert!(r.result.is_ok(), "{:?}", r.result);
    assert_eq!(r.array.volume.state(MemberIndex(0)), MemberState::Active);
    assert_eq!(r.array.volume.state(MemberIndex(2)), MemberState::Active);
    let mut lost = vec![0u8; 8192];
    assert!(matches!(
        r.target.read(ByteOffset(at), &mut lost).await,
        Err(BlockError::Corrupt { blocks: 2, .. })
    ));
    let mut before = vec![0u8; at as usize];
    r.target.read(ByteOffset(0), &mut before).await.unwrap();
    // Once the source reads again, parity restores the lost blocks.
    r.fault.store(false, Ordering::SeqCst);
    let mut read = vec![0u8; r.data.len()];
    r.array.volume.read(ByteOffset(0), &mut read).await.unwrap();
    assert!(read == r.data);
}

#[tokio::test]
async fn raid1_rebuild_reads_a_block_a_source_cannot_read_from_the_third_mirror() {
    // Arrange + act: 3-way RAID-1, mirror 2 rebuilt while mirror 0 cannot
    // read 8 KiB at 1 MiB.
    let at = 1 << 20;
    let r = rebuild_over_a_read_error(Level::Raid1, 3, at).await;

    // Assert: nothing lost, mirror 0 still in the array.
    assert!(r.result.is_ok(), "{:?}", r.result);
    assert_eq!(r.array.volume.state(MemberIndex(0)), MemberState::Active);
    let mut copy = vec![0u8; r.data.len()];
    r.target.read(ByteOffset(0), &mut copy).await.unwrap();
    assert!(copy == r.data);
}

#[tokio::test]
async fn raid5_rebuild_fails_a_source_that_keeps_failing_reads() {
    // Arrange + act: member 0 cannot read anything.
    let csums = Checksums::new();
    let errors = Arc::new(AtomicU64::new(0));
    let fault = Arc::new(AtomicBool::new(false));
    let mut array = Array::new_wrapped(Level::Raid5, 3, C, MEMBER, &[], |i, d| {
        let d: Arc<dyn BlockDevice> = if i == 0 {
            Arc::new(ErrorAt {
                inner: d,
                bad: (0, MEMBER),
                on: fault.clone(),
            })
        } else {
            d
        };
        csums.wrap_in_memory(i, d, false, errors.clone())
    });
    array.volume = array.volume.with_checksums(csums.clone());
    array
        .volume
        .fail_member_by_request(MemberIndex(2), "test")
        .await;
    fault.store(true, Ordering::SeqCst);
    let target = csums.wrap_in_memory(2, TestDevice::new("new", MEMBER), true, errors);
    array
        .volume
        .attach_rebuild_target(MemberIndex(2), target, 0)
        .unwrap();
    let result = array
        .volume
        .rebuild(MemberIndex(2), None, &RebuildControl::new(0), &NoSink)
        .await;

    // Assert: a dead source still stops the rebuild (no array of zeroes).
    assert!(result.is_err());
    assert_eq!(array.volume.state(MemberIndex(0)), MemberState::Failed);
}

proptest! {
    #[test]
    fn pick_copy_never_takes_a_copy_failing_its_checksum_over_one_passing(
        copies in proptest::collection::vec(
            proptest::option::of((0u8..3, 0u8..3)), 2..5),
    ) {
        let blocks: Vec<[u8; 4]> = copies.iter().map(|c| [c.map_or(0, |c| c.0); 4]).collect();
        let verdict = |v: u8| [Verdict::Good, Verdict::Unknown, Verdict::Bad][v as usize];
        let input: Vec<Option<(&[u8], Verdict)>> = copies
            .iter()
            .zip(&blocks)
            .map(|(c, b)| c.map(|(_, v)| (&b[..], verdict(v))))
            .collect();
        let pick = pick_copy(&input);
        let readable: Vec<usize> = (0..input.len()).filter(|&i| input[i].is_some()).collect();
        prop_assert_eq!(pick.is_some(), !readable.is_empty());
        if let Some(p) = pick {
            let (bytes, v) = input[p].unwrap();
            prop_assert!(readable.contains(&p));
            if input.iter().flatten().any(|(_, v)| *v == Verdict::Good) {
                prop_assert_eq!(v, Verdict::Good);
            } else {
                let votes = |b: &[u8]| input.iter().flatten().filter(|(x, _)| *x == b).count();
                prop_assert!(input.iter().flatten().all(|(b, _)| votes(b) <= votes(bytes)));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn a_resync_restores_blocks_written_wrong_while_redundancy_holds_them(
        raid5 in any::<bool>(),
        members in 2usize..5,
        hits in proptest::collection::vec((0usize..4, 0u64..256, 1usize..3), 1..4),
        seed in any::<u64>(),
    ) {
        // RAID-5 needs 3 members; every hit lies in its own 4 KiB row group
        // (rows 0..256, 8 KiB apart) on one member, so each row keeps its
        // redundancy: RAID-1 keeps mirror `members - 1` clean.
        let (level, n) = if raid5 { (Level::Raid5, members.max(3)) } else { (Level::Raid1, members) };
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let crashed = Crashed::new(level, n);
            let data = pattern(2 << 20, seed);
            crashed.write(&data).await;
            let mut rows = std::collections::HashSet::new();
            for &(m, row, blocks) in &hits {
                let victim = if raid5 { m % n } else { m % (n - 1) };
                if rows.insert(row) {
                    crashed.corrupt(victim, row * 8192, blocks.min(2) * 4096 - 7).await;
                }
            }
            let read = crashed.resync_and_read(data.len()).await;
            prop_assert!(read == data, "volume data after the resync");
            let snaps = crashed.snapshots();
            if raid5 {
                for s in 0..(2 << 20) / C as usize {
                    let mut x = vec![0u8; C as usize];
                    for snap in &snaps {
                        xor_into(&mut x, &snap[s * C as usize..(s + 1) * C as usize]);
                    }
                    prop_assert!(x.iter().all(|&b| b == 0), "stripe {} consistent", s);
                }
            } else {
                for snap in &snaps {
                    prop_assert!(snap[..data.len()] == data[..], "mirror equals the data");
                }
            }
            Ok(())
        })?;
    }
}

/// RAID-6: P and Q of every stripe of `snaps` match their data.
fn assert_syndromes(g: &super::Geometry, snaps: &[Vec<u8>]) {
    let c = g.chunk().get() as usize;
    for s in 0..g.stripe_count() {
        let at = |m: MemberIndex| &snaps[m.0][s as usize * c..(s as usize + 1) * c];
        let stripe = StripeIndex(s);
        let data: Vec<&[u8]> = (0..g.data_members())
            .map(|d| at(g.data_member(stripe, d)))
            .collect();
        let (p, q) = super::syndrome::reference::syndrome(&data, c);
        assert!(at(g.parity_member(stripe).unwrap()) == p, "stripe {s}: P");
        assert!(at(g.q_member(stripe).unwrap()) == q, "stripe {s}: Q");
    }
}

#[tokio::test]
async fn raid6_resync_restores_a_data_block_written_wrong_from_p() {
    // Arrange: a data block of stripe 0 written wrong (its entry says
    // what should be there), and stripe 3's P and Q blocks torn.
    let crashed = Crashed::new(Level::Raid6, 5);
    let g = *crashed.array.volume.geometry();
    let data = pattern(2 << 20, 31);
    crashed.write(&data).await;
    let d1 = g.data_member(StripeIndex(0), 1);
    crashed.corrupt(d1.0, 4096, 4096).await;
    let (p3, q3) = (
        g.parity_member(StripeIndex(3)).unwrap(),
        g.q_member(StripeIndex(3)).unwrap(),
    );
    crashed.corrupt(p3.0, 3 * C + 100, 10).await;
    crashed.corrupt(q3.0, 3 * C + 8192, 10).await;

    // Act
    let read = crashed.resync_and_read(data.len()).await;

    // Assert: the data the client wrote; every stripe's P and Q right.
    assert!(read == data, "volume reads what was written");
    assert_syndromes(&g, &crashed.snapshots());
}

#[tokio::test]
async fn raid6_resync_recomputes_p_and_q_of_a_torn_row_whose_blocks_pass() {
    // Arrange: a data block changed together with its entry (a write that
    // landed; its P and Q did not).
    let crashed = Crashed::new(Level::Raid6, 4);
    let g = *crashed.array.volume.geometry();
    let data = pattern(1 << 20, 32);
    crashed.write(&data).await;
    let torn = vec![0x5a; 4096];
    let hook = crashed.array.volume.checksums().unwrap().clone();
    let d0 = g.data_member(StripeIndex(0), 0);
    crashed.array.devices[d0.0]
        .mem
        .write(ByteOffset(0), &torn, Durability::Normal)
        .await
        .unwrap();
    hook.reseal(d0, ByteOffset(0), &torn).await.unwrap();

    // Act
    let read = crashed.resync_and_read(data.len()).await;

    // Assert: the landed write stays, P and Q now match it.
    assert!(read[..4096] == torn[..]);
    assert!(read[4096..] == data[4096..]);
    assert_syndromes(&g, &crashed.snapshots());
}
