//! Unit tests of the inline layout's device over in-memory members: a
//! property test against a byte model, corruption of data or tags,
//! misdirected writes, partial writes over bad blocks, fault-rule mapping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use proptest::prelude::*;

use super::inline::InlineDevice;
use super::page::BLOCK;
use super::tag::{decode_tag, Tag, STRIDE, TAG};
use super::Trusted;
use crate::block::{BlockDevice, BlockError, Durability};
use crate::member::fault::{FaultDevice, FaultKind, FaultOp, FaultRule, FaultSet, FaultSpec};
use crate::raid::checksum::Verdict;
use crate::raid::test_support::{pattern, xor_byte, TestDevice};
use crate::units::ByteOffset;

const BLOCKS: u64 = 16;
const SIZE: u64 = BLOCKS * BLOCK;

struct Rig {
    raw: Arc<TestDevice>,
    dev: InlineDevice,
    errors: Arc<AtomicU64>,
}

fn rig_trusting(trusted: Trusted) -> Rig {
    let raw = TestDevice::new("raw", BLOCKS * STRIDE);
    let errors = Arc::new(AtomicU64::new(0));
    let dev = InlineDevice::new(raw.clone(), trusted, errors.clone());
    Rig { raw, dev, errors }
}

fn rig() -> Rig {
    rig_trusting(Arc::new(|_| true))
}

/// A rig whose whole device holds `pattern(SIZE, seed)`, written through
/// it (tags known).
async fn written_rig(seed: u64) -> Rig {
    let r = rig();
    r.dev
        .write(
            ByteOffset(0),
            &pattern(SIZE as usize, seed),
            Durability::Normal,
        )
        .await
        .unwrap();
    r
}

async fn flip(dev: &TestDevice, at: u64) {
    xor_byte(&dev.mem, at, 0x5a).await.unwrap();
}

async fn read(dev: &InlineDevice, offset: u64, len: usize) -> Result<Vec<u8>, BlockError> {
    let mut buf = vec![0u8; len];
    dev.read(ByteOffset(offset), &mut buf).await.map(|_| buf)
}

fn is_corrupt(r: &Result<Vec<u8>, BlockError>) -> bool {
    matches!(r, Err(BlockError::Corrupt { .. }))
}

#[tokio::test]
async fn a_write_of_n_blocks_is_one_member_write_and_a_read_one_member_read() {
    let r = rig();
    assert_eq!(r.dev.size(), SIZE);
    let data = pattern(3 * BLOCK as usize, 1);
    r.dev
        .write(ByteOffset(BLOCK), &data, Durability::Normal)
        .await
        .unwrap();
    assert_eq!(r.raw.writes.load(Ordering::SeqCst), 1);
    assert_eq!(r.raw.reads.load(Ordering::SeqCst), 0);
    assert_eq!(read(&r.dev, BLOCK, data.len()).await.unwrap(), data);
    assert_eq!(r.raw.reads.load(Ordering::SeqCst), 1);
    // Block 2's tag on the member names block 2.
    let mut tag = vec![0u8; TAG as usize];
    r.raw
        .mem
        .read(ByteOffset(2 * STRIDE + BLOCK), &mut tag)
        .await
        .unwrap();
    assert!(matches!(decode_tag(&tag, 2), Tag::Entry(_)));
}

#[tokio::test]
async fn corrupt_data_or_tag_is_detected_and_counted_once() {
    let r = written_rig(2).await;
    flip(&r.raw, 3 * STRIDE + 100).await; // data of block 3
    flip(&r.raw, 5 * STRIDE + BLOCK + 9).await; // tag of block 5
    assert!(is_corrupt(&read(&r.dev, 3 * BLOCK, 10).await));
    assert!(is_corrupt(&read(&r.dev, 0, SIZE as usize).await));
    assert!(is_corrupt(&read(&r.dev, 5 * BLOCK, BLOCK as usize).await));
    assert_eq!(r.errors.load(Ordering::SeqCst), 2);
    // A rewrite heals and forgets.
    r.dev
        .write(
            ByteOffset(3 * BLOCK),
            &[7u8; BLOCK as usize],
            Durability::Normal,
        )
        .await
        .unwrap();
    assert_eq!(read(&r.dev, 3 * BLOCK, 4).await.unwrap(), vec![7u8; 4]);
}

#[tokio::test]
async fn a_misdirected_write_is_detected() {
    let r = written_rig(3).await;
    // The disk put block 1's 4608 bytes where block 6 lives.
    let mut unit = vec![0u8; STRIDE as usize];
    r.raw.mem.read(ByteOffset(STRIDE), &mut unit).await.unwrap();
    r.raw
        .mem
        .write(ByteOffset(6 * STRIDE), &unit, Durability::Normal)
        .await
        .unwrap();
    assert!(is_corrupt(&read(&r.dev, 6 * BLOCK, BLOCK as usize).await));
    let v = r
        .dev
        .verdicts(6 * BLOCK, &unit[..BLOCK as usize])
        .await
        .unwrap();
    assert_eq!(v, vec![Verdict::Bad]);
}

#[tokio::test]
async fn unwritten_and_cleared_blocks_are_unknown_not_bad() {
    let r = rig();
    assert_eq!(
        read(&r.dev, 0, SIZE as usize).await.unwrap(),
        vec![0u8; SIZE as usize]
    );
    r.dev
        .write(
            ByteOffset(0),
            &pattern(SIZE as usize, 4),
            Durability::Normal,
        )
        .await
        .unwrap();
    r.dev
        .discard(ByteOffset(BLOCK + 512), 3 * BLOCK)
        .await
        .unwrap();
    let got = read(&r.dev, 0, SIZE as usize).await.unwrap();
    let mut want = pattern(SIZE as usize, 4);
    want[(BLOCK + 512) as usize..(4 * BLOCK + 512) as usize].fill(0);
    assert_eq!(got, want);
    let v = r
        .dev
        .verdicts(2 * BLOCK, &[0u8; BLOCK as usize])
        .await
        .unwrap();
    assert_eq!(v, vec![Verdict::Unknown]);
}

#[tokio::test]
async fn a_partial_write_over_a_bad_block_keeps_it_bad_and_unverified_regions_read() {
    let trusted: Trusted = Arc::new(|off| off >= 8 * BLOCK);
    let r = rig_trusting(trusted);
    r.dev
        .write(
            ByteOffset(0),
            &pattern(SIZE as usize, 5),
            Durability::Normal,
        )
        .await
        .unwrap();
    flip(&r.raw, 2 * STRIDE + 7).await;
    flip(&r.raw, 9 * STRIDE + 7).await;
    // Block 2 is not trusted: it reads; block 9 is.
    assert!(read(&r.dev, 2 * BLOCK, 16).await.is_ok());
    assert!(is_corrupt(&read(&r.dev, 9 * BLOCK, 16).await));
    r.dev
        .write(ByteOffset(2 * BLOCK + 100), &[1u8; 50], Durability::Normal)
        .await
        .unwrap();
    r.dev
        .write(ByteOffset(9 * BLOCK + 100), &[1u8; 50], Durability::Normal)
        .await
        .unwrap();
    let mut block = vec![0u8; BLOCK as usize];
    r.raw
        .mem
        .read(ByteOffset(2 * STRIDE), &mut block)
        .await
        .unwrap();
    let v = r.dev.verdicts(2 * BLOCK, &block).await.unwrap();
    assert_eq!(v, vec![Verdict::Bad]);
    assert!(is_corrupt(&read(&r.dev, 9 * BLOCK, 16).await));
    // A reseal from known-good bytes makes them pass.
    r.dev
        .reseal(9 * BLOCK, &[3u8; BLOCK as usize])
        .await
        .unwrap();
    assert_eq!(read(&r.dev, 9 * BLOCK, 2).await.unwrap(), vec![3u8; 2]);
}

#[tokio::test]
async fn lost_blocks_never_read() {
    let r = rig();
    r.dev.mark_lost(ByteOffset(4 * BLOCK), 10).await.unwrap();
    assert!(is_corrupt(&read(&r.dev, 4 * BLOCK, 10).await));
}

#[tokio::test]
async fn fault_rules_below_keep_logical_offsets_and_corrupt_only_data() {
    let raw = TestDevice::new("raw", BLOCKS * STRIDE);
    let faults = Arc::new(FaultSet::new());
    let spec = FaultSpec {
        offset: Some(3 * BLOCK + 10),
        length: Some(1),
        op: FaultOp::Write,
        ..FaultSpec::new(FaultKind::Corrupt)
    };
    faults.add(Arc::new(FaultRule::new(1, spec)));
    let faulty = FaultDevice::new(raw.clone(), faults, 1).with_inline_layout();
    let errors = Arc::new(AtomicU64::new(0));
    let dev = InlineDevice::new(Arc::new(faulty), Arc::new(|_| true), errors.clone());
    let data = pattern(SIZE as usize, 6);
    dev.write(ByteOffset(0), &data, Durability::Normal)
        .await
        .unwrap();
    // Landed altered: exactly logical byte 3 × 4096 + 10, tags intact.
    let mut unit = vec![0u8; STRIDE as usize];
    raw.mem
        .read(ByteOffset(3 * STRIDE), &mut unit)
        .await
        .unwrap();
    let diff: Vec<usize> = (0..BLOCK as usize)
        .filter(|&i| unit[i] != data[3 * BLOCK as usize + i])
        .collect();
    assert_eq!(diff, vec![10]);
    assert!(matches!(
        decode_tag(&unit[BLOCK as usize..], 3),
        Tag::Entry(_)
    ));
    assert!(is_corrupt(&read(&dev, 3 * BLOCK, 1).await));
    assert!(read(&dev, 4 * BLOCK, BLOCK as usize).await.is_ok());
}

#[derive(Clone, Debug)]
enum Op {
    Write(u64, usize, u64),
    Read(u64, usize),
    Discard(u64, u64),
    Zero(u64, u64),
}

fn op() -> impl Strategy<Value = Op> {
    let range = (0..SIZE - 1).prop_flat_map(|o| (Just(o), 1..=(SIZE - o).min(3 * BLOCK + 7)));
    prop_oneof![
        4 => (range.clone(), any::<u64>()).prop_map(|((o, l), s)| Op::Write(o, l as usize, s)),
        3 => range.clone().prop_map(|(o, l)| Op::Read(o, l as usize)),
        1 => range.clone().prop_map(|(o, l)| Op::Discard(o, l)),
        1 => range.prop_map(|(o, l)| Op::Zero(o, l)),
    ]
}

async fn run_model(ops: Vec<Op>, hit: u64, tag_hit: bool) -> Result<(), TestCaseError> {
    let r = rig();
    let mut model = vec![0u8; SIZE as usize];
    for op in ops {
        match op {
            Op::Write(o, l, s) => {
                let data = pattern(l, s);
                r.dev
                    .write(ByteOffset(o), &data, Durability::Normal)
                    .await
                    .unwrap();
                model[o as usize..o as usize + l].copy_from_slice(&data);
            }
            Op::Read(o, l) => {
                let got = read(&r.dev, o, l).await.unwrap();
                prop_assert_eq!(&got[..], &model[o as usize..o as usize + l]);
            }
            Op::Discard(o, l) | Op::Zero(o, l) => {
                if matches!(op, Op::Discard(..)) {
                    r.dev.discard(ByteOffset(o), l).await.unwrap();
                } else {
                    r.dev.write_zeroes(ByteOffset(o), l, true).await.unwrap();
                }
                model[o as usize..(o + l) as usize].fill(0);
            }
        }
    }
    prop_assert_eq!(read(&r.dev, 0, SIZE as usize).await.unwrap(), model);
    // Corrupt one byte of block `hit` (data or tag): detected iff the
    // block has a tag, or the tag itself was hit.
    let block = hit % BLOCKS;
    let mut tag = vec![0u8; TAG as usize];
    r.raw
        .mem
        .read(ByteOffset(block * STRIDE + BLOCK), &mut tag)
        .await
        .unwrap();
    let known = decode_tag(&tag, block) != Tag::Unknown;
    let at = if tag_hit {
        BLOCK + hit % TAG
    } else {
        hit % BLOCK
    };
    flip(&r.raw, block * STRIDE + at).await;
    let got = read(&r.dev, block * BLOCK, BLOCK as usize).await;
    prop_assert_eq!(is_corrupt(&got), known || tag_hit);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn inline_device_matches_a_byte_model_and_catches_corruption(
        ops in prop::collection::vec(op(), 1..40),
        hit in any::<u64>(),
        tag_hit in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(run_model(ops, hit, tag_hit))?;
    }
}
