//! RAID-1 and RAID-5 volumes over inline-layout members (the wrapper on
//! every member, the verdict/reseal hook on the volume): the volume behaves
//! like a byte array, keeps its redundancy, and a byte flipped under one
//! member (data or tag) never reaches the client; a resync whose tag
//! reseal (or, separate layout, page reservation) runs out of space fails
//! with ENOSPC and leaves its range owed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use proptest::prelude::*;

use super::tag::{physical_len, STRIDE};
use super::Checksums;
use crate::block::{BlockDevice, BlockError, BlockResult, BoxFuture, Durability};
use crate::raid::rebuild::{RebuildControl, RebuildError};
use crate::raid::test_support::{pattern, xor_byte, Array, TestDevice};
use crate::raid::volume::MemberState;
use crate::raid::{ChunkSize, Geometry, Level};
use crate::units::ByteOffset;

const CHUNK: u64 = 16 << 10;
const MEMBER: u64 = 16 * CHUNK;

#[derive(Clone, Debug)]
enum Op {
    Write(u64, u64, u64),
    Read(u64, u64),
    Discard(u64, u64),
    /// Flip one physical byte of the bad member at this offset.
    Flip(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (any::<u64>(), 0u64..40_000, any::<u64>()).prop_map(|(a, l, s)| Op::Write(a, l, s)),
        4 => (any::<u64>(), 0u64..40_000).prop_map(|(a, l)| Op::Read(a, l)),
        1 => (any::<u64>(), 0u64..40_000).prop_map(|(a, l)| Op::Discard(a, l)),
        1 => any::<u64>().prop_map(Op::Flip),
    ]
}

fn range(size: u64, at: u64, len: u64) -> (u64, u64) {
    let at = at % (size + 1);
    (at, len.min(size - at))
}

/// A member's logical image (tags dropped).
fn logical(snap: &[u8]) -> Vec<u8> {
    snap.chunks(STRIDE as usize)
        .flat_map(|u| u[..4096].to_vec())
        .collect()
}

fn fail(what: &'static str) -> impl Fn(crate::block::BlockError) -> TestCaseError {
    move |e| TestCaseError::fail(format!("{what} failed: {e}"))
}

/// Flips a byte of `d` at `at`; in a block with no tag (never written or
/// cleared: not verified) the flip goes to its tag instead, so it is seen.
async fn flip(d: &TestDevice, at: u64) {
    let at = at % d.mem.size();
    let block = at / STRIDE;
    let mut tag = vec![0u8; 512];
    d.mem
        .read(ByteOffset(block * STRIDE + 4096), &mut tag)
        .await
        .unwrap();
    let at = if tag.iter().all(|&b| b == 0) {
        block * STRIDE + 4096 + at % 512
    } else {
        at
    };
    xor_byte(&d.mem, at, 0x81).await.unwrap();
}

async fn run(level: Level, bad: usize, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let members = if level == Level::Raid1 { 2 } else { 3 };
    let g = Geometry::new(level, members, ChunkSize::new(CHUNK).unwrap(), MEMBER).unwrap();
    let devices: Vec<Arc<TestDevice>> = (0..members)
        .map(|i| TestDevice::new(&format!("m{i}"), physical_len(MEMBER)))
        .collect();
    let csums = Checksums::new();
    let errors = Arc::new(AtomicU64::new(0));
    let array = Array::over_wrapped(g, devices, &[], |i, d| {
        csums.wrap_inline(i, d, Arc::new(|_| true), errors.clone())
    });
    let vol = array.volume.with_checksums(csums.clone());
    let size = vol.size();
    let mut model = vec![0u8; size as usize];
    let mut flipped = false;
    for op in ops {
        match op {
            Op::Write(at, len, seed) => {
                let (at, len) = range(size, at, len);
                let data = pattern(len as usize, seed);
                vol.write(ByteOffset(at), &data, Durability::Normal)
                    .await
                    .map_err(fail("write"))?;
                model[at as usize..(at + len) as usize].copy_from_slice(&data);
            }
            Op::Read(at, len) => {
                let (at, len) = range(size, at, len);
                let mut buf = vec![0u8; len as usize];
                vol.read(ByteOffset(at), &mut buf)
                    .await
                    .map_err(fail("read"))?;
                prop_assert!(
                    buf == model[at as usize..(at + len) as usize],
                    "read {at}+{len}"
                );
            }
            Op::Discard(at, len) => {
                let (at, len) = range(size, at, len);
                vol.discard(ByteOffset(at), len)
                    .await
                    .map_err(fail("discard"))?;
                model[at as usize..(at + len) as usize].fill(0);
            }
            Op::Flip(at) => {
                flip(&array.devices[bad % members], at).await;
                flipped = true;
            }
        }
    }
    let mut all = vec![0u8; size as usize];
    vol.read(ByteOffset(0), &mut all)
        .await
        .map_err(fail("final read"))?;
    prop_assert!(all == model, "final read differs");
    if flipped {
        return Ok(());
    }
    let snaps: Vec<Vec<u8>> = array
        .devices
        .iter()
        .map(|d| logical(&d.mem.snapshot()))
        .collect();
    if level == Level::Raid1 {
        prop_assert!(snaps[0] == model && snaps[1] == model, "mirrors differ");
    } else {
        let mut x = vec![0u8; MEMBER as usize];
        for s in &snaps {
            for (a, b) in x.iter_mut().zip(s) {
                *a ^= b;
            }
        }
        prop_assert!(x.iter().all(|&b| b == 0), "parity is wrong");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]
    #[test]
    fn raid_over_inline_members_is_a_byte_array_and_hides_flips(
        raid5 in any::<bool>(),
        bad in 0usize..3,
        ops in prop::collection::vec(op(), 1..30),
    ) {
        let level = if raid5 { Level::Raid5 } else { Level::Raid1 };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(level, bad, ops))?;
    }
}

/// A member file whose filesystem fills once `full` is set: its writes then
/// fail with ENOSPC (reads keep working).
struct FillsUp(Arc<dyn BlockDevice>, Arc<AtomicBool>);

impl BlockDevice for FillsUp {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn size(&self) -> u64 {
        self.0.size()
    }

    fn read<'a>(&'a self, offset: ByteOffset, buf: &'a mut [u8]) -> BoxFuture<'a, BlockResult> {
        self.0.read(offset, buf)
    }

    fn write<'a>(
        &'a self,
        offset: ByteOffset,
        buf: &'a [u8],
        durability: Durability,
    ) -> BoxFuture<'a, BlockResult> {
        if !self.1.load(Ordering::Relaxed) {
            return self.0.write(offset, buf, durability);
        }
        let e = std::io::Error::from_raw_os_error(libc::ENOSPC);
        BoxFuture::new(async move { Err(BlockError::io(self.name(), e)) })
    }

    fn flush(&self) -> BoxFuture<'_, BlockResult> {
        self.0.flush()
    }

    fn discard(&self, offset: ByteOffset, len: u64) -> BoxFuture<'_, BlockResult> {
        self.0.discard(offset, len)
    }

    fn write_zeroes(
        &self,
        offset: ByteOffset,
        len: u64,
        unmap: bool,
    ) -> BoxFuture<'_, BlockResult> {
        self.0.write_zeroes(offset, len, unmap)
    }

    fn reserve(&self, offset: ByteOffset, len: u64) -> BoxFuture<'_, BlockResult> {
        if !self.1.load(Ordering::Relaxed) {
            return self.0.reserve(offset, len);
        }
        let e = std::io::Error::from_raw_os_error(libc::ENOSPC);
        BoxFuture::new(async move { Err(BlockError::io(self.name(), e)) })
    }
}

/// STATUS gap of session 15: a crash resync's inline-tag reseal that ran
/// out of space was logged and the range reported synced (its bit cleared
/// over tags older than the data). It now fails the resync with ENOSPC like
/// a member op that runs out of space, the range stays owed, and no member
/// fails.
#[tokio::test]
async fn resync_whose_tag_reseal_runs_out_of_space_fails_with_enospc_and_stays_owed() {
    // Arrange: a RAID-1 of two inline members, written while there was
    // space; then member 1's filesystem fills. The mirrors agree, so the
    // resync writes nothing but the reseal of each member's tags.
    let g = Geometry::new(Level::Raid1, 2, ChunkSize::new(CHUNK).unwrap(), MEMBER).unwrap();
    let devices: Vec<Arc<TestDevice>> = (0..2)
        .map(|i| TestDevice::new(&format!("m{i}"), physical_len(MEMBER)))
        .collect();
    let full = Arc::new(AtomicBool::new(false));
    let csums = Checksums::new();
    let errors = Arc::new(AtomicU64::new(0));
    let array = Array::over_wrapped(g, devices, &[], |i, d| {
        let d = match i {
            1 => Arc::new(FillsUp(d, full.clone())) as Arc<dyn BlockDevice>,
            _ => d,
        };
        csums.wrap_inline(i, d, Arc::new(|_| true), errors.clone())
    });
    let vol = array.volume.with_checksums(csums.clone());
    let data = pattern(2 * CHUNK as usize, 5);
    vol.write(ByteOffset(0), &data, Durability::Normal)
        .await
        .unwrap();
    full.store(true, Ordering::Relaxed);
    // Act + Assert: ENOSPC, nothing reported synced, nobody failed.
    resync_whole_fails_with_enospc(&vol).await;
    assert!(array.events.failed.lock().unwrap().is_empty());
    assert_eq!(vol.member_states(), vec![MemberState::Active; 2]);
}

/// The same for the separate layout: a reseal whose checksum page cannot be
/// reserved (the member's filesystem is full) fails the resync with ENOSPC
/// (FORMAT §8 case 140; before, it was logged and the range reported
/// synced).
#[tokio::test]
async fn resync_whose_page_reservation_runs_out_of_space_fails_with_enospc() {
    // Arrange: a RAID-1 of two members, separate checksum areas, member 1's
    // area on a full filesystem; nothing written yet, so the reseal is the
    // first use of its page (to be reserved).
    let g = Geometry::new(Level::Raid1, 2, ChunkSize::new(CHUNK).unwrap(), MEMBER).unwrap();
    let devices: Vec<Arc<TestDevice>> = (0..2)
        .map(|i| TestDevice::new(&format!("m{i}"), MEMBER))
        .collect();
    let full = Arc::new(AtomicBool::new(true));
    let csums = Checksums::new();
    let errors = Arc::new(AtomicU64::new(0));
    let array = Array::over_wrapped(g, devices, &[], |i, d| {
        let area: Arc<dyn BlockDevice> = TestDevice::new(&format!("a{i}"), 1 << 20);
        let area = match i {
            1 => Arc::new(FillsUp(area, full.clone())) as Arc<dyn BlockDevice>,
            _ => area,
        };
        csums.wrap(i, area, 0, d, false, Arc::new(|_| true), errors.clone())
    });
    let vol = array.volume.with_checksums(csums.clone());
    // Act + Assert
    resync_whole_fails_with_enospc(&vol).await;
    assert!(array.events.failed.lock().unwrap().is_empty());
    assert_eq!(vol.member_states(), vec![MemberState::Active; 2]);
}

/// Resyncs the whole member range of `vol` and checks it fails with
/// ENOSPC with nothing reported synced.
async fn resync_whole_fails_with_enospc(vol: &crate::raid::volume::Volume) {
    let done = Mutex::new(Vec::new());
    let result = vol
        .resync(vec![(0, MEMBER)], &RebuildControl::new(0), &|a, b| {
            done.lock().unwrap().push((a, b))
        })
        .await;
    match result {
        Err(RebuildError::Target(e)) => assert!(e.is_no_space(), "{e}"),
        other => panic!("expected the resync to fail with ENOSPC, got {other:?}"),
    }
    assert!(done.lock().unwrap().is_empty());
}
