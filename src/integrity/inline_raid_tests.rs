//! RAID-1 and RAID-5 volumes over inline-layout members (the wrapper on
//! every member, the verdict/reseal hook on the volume): the volume behaves
//! like a byte array, keeps its redundancy, and a byte flipped under one
//! member (data or tag) never reaches the client.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use proptest::prelude::*;

use super::tag::{physical_len, STRIDE};
use super::Checksums;
use crate::block::{BlockDevice, Durability};
use crate::raid::test_support::{pattern, xor_byte, Array, TestDevice};
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
