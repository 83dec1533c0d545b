//! RAID-6 write-hole journal: torn stripes after a crash, replayed with one
//! or two members missing (FORMAT.md §9, "RAID-6", cases 66-69).

use std::sync::Arc;

use proptest::prelude::*;

use super::layout::{MemberIndex, StripeIndex};
use super::ppl::{replay, MemParityLog, PplRecord};
use super::test_support::{pattern, Array, TestDevice};
use super::volume::Volume;
use super::{ChunkSize, Geometry, Level};
use crate::block::{BlockDevice, Durability};
use crate::units::ByteOffset;

const CHUNK: u64 = 4096;
const STRIPES: u64 = 6;

fn geometry(members: usize) -> Geometry {
    Geometry::new(
        Level::Raid6,
        members,
        ChunkSize::new(CHUNK).unwrap(),
        STRIPES * CHUNK,
    )
    .unwrap()
}

fn devices(n: usize) -> Vec<Arc<TestDevice>> {
    (0..n)
        .map(|i| TestDevice::new(&format!("m{i}"), STRIPES * CHUNK))
        .collect()
}

fn logged(devices: Vec<Arc<TestDevice>>, log: Arc<MemParityLog>) -> Volume {
    let n = devices.len();
    Array::over(geometry(n), devices, &[])
        .volume
        .with_parity_log(log)
}

async fn read_all(vol: &Volume) -> Vec<u8> {
    let mut buf = vec![0u8; vol.size() as usize];
    vol.read(ByteOffset(0), &mut buf).await.unwrap();
    buf
}

async fn snapshot(devices: &[Arc<TestDevice>], stripe: u64) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for d in devices {
        let mut b = vec![0u8; CHUNK as usize];
        d.read(ByteOffset(stripe * CHUNK), &mut b).await.unwrap();
        out.push(b);
    }
    out
}

async fn restore(device: &TestDevice, stripe: u64, bytes: &[u8]) {
    device
        .write(ByteOffset(stripe * CHUNK), bytes, Durability::Normal)
        .await
        .unwrap();
}

/// The records whose ring survives (a missing member's journal is gone).
fn surviving(log: &MemParityLog, missing: &[usize]) -> Vec<(MemberIndex, PplRecord)> {
    let all = log.records.lock().unwrap().clone();
    all.into_iter()
        .filter(|(m, _)| !missing.contains(&m.0))
        .collect()
}

#[tokio::test]
async fn every_partial_write_logs_partial_p_and_partial_q_to_both_rings() {
    let g = geometry(5);
    let log = Arc::new(MemParityLog::default());
    let vol = logged(devices(5), log.clone());
    vol.write(ByteOffset(100), &[7; 1000], Durability::Normal)
        .await
        .unwrap();
    let recs = log.records.lock().unwrap().clone();
    let p = g.parity_member(StripeIndex(0)).unwrap();
    let q = g.q_member(StripeIndex(0)).unwrap();
    let members: Vec<usize> = recs.iter().map(|(m, _)| m.0).collect();
    assert_eq!(members, vec![p.0.min(q.0), p.0.max(q.0)]);
    // Zero array: the untouched bytes' partial P and Q are zero.
    assert!(recs
        .iter()
        .all(|(_, r)| !r.full && r.pp.iter().all(|&b| b == 0)));
}

/// The volume's bytes before, after the replay, without it, and the range
/// written.
type Torn = (Vec<u8>, Vec<u8>, Vec<u8>, std::ops::Range<usize>);

/// Tears a small write to data chunk 0 of a stripe (its data lands, the
/// old P and, with `q_too`, the old Q stay), loses `lost` (data indices),
/// replays.
async fn tear_and_lose(lost: &[usize], q_too: bool) -> Torn {
    let g = geometry(6);
    let devs = devices(6);
    let log = Arc::new(MemParityLog::default());
    let vol = logged(devs.clone(), log.clone());
    let before = pattern(vol.size() as usize, 1);
    vol.write(ByteOffset(0), &before, Durability::Normal)
        .await
        .unwrap();
    let stripe = 2;
    let s = StripeIndex(stripe);
    let old = snapshot(&devs, stripe).await;
    let sds = g.stripe_data_size();
    vol.write(
        ByteOffset(stripe * sds + 100),
        &[0xEE; 1000],
        Durability::Normal,
    )
    .await
    .unwrap();
    let q = g.q_member(s).filter(|_| q_too);
    for m in [g.parity_member(s)].into_iter().chain([q]).flatten() {
        restore(&devs[m.0], stripe, &old[m.0]).await;
    }
    let missing: Vec<usize> = lost.iter().map(|&d| g.data_member(s, d).0).collect();
    let written = (stripe * sds + 100) as usize..(stripe * sds + 1100) as usize;
    let unreplayed = read_all(&Array::over(g, devs.clone(), &missing).volume).await;
    let crashed = Array::over(g, devs, &missing).volume;
    let stats = replay(&crashed, &surviving(&log, &missing)).await.unwrap();
    assert!(stats.replayed >= 1, "{stats:?}");
    (before, read_all(&crashed).await, unreplayed, written)
}

#[tokio::test]
async fn a_torn_write_then_two_untouched_members_lost_reads_back_intact() {
    let (before, got, unreplayed, written) = tear_and_lose(&[1, 3], true).await;
    let outside = |v: &[u8]| [v[..written.start].to_vec(), v[written.end..].to_vec()].concat();
    assert!(
        outside(&unreplayed) != outside(&before),
        "the crash tore nothing"
    );
    assert!(outside(&got) == outside(&before), "untouched bytes changed");
    assert!(
        got[written] == [0xEE; 1000][..],
        "the written bytes are lost"
    );
}

#[tokio::test]
async fn a_torn_write_then_its_own_member_and_an_untouched_one_lost_keeps_the_untouched() {
    // Only P stays old: P and Q disagree about the chunk being written.
    let (before, got, unreplayed, written) = tear_and_lose(&[0, 2], false).await;
    let outside = |v: &[u8]| [v[..written.start].to_vec(), v[written.end..].to_vec()].concat();
    assert!(
        outside(&unreplayed) != outside(&before),
        "the crash tore nothing"
    );
    assert!(outside(&got) == outside(&before), "untouched bytes changed");
}

#[derive(Clone, Debug)]
struct Op {
    stripe: u64,
    start: u64,
    len: u64,
    seed: u64,
}

fn op() -> impl Strategy<Value = Op> {
    (0..STRIPES, 0..6 * CHUNK, 1..=6 * CHUNK, any::<u64>()).prop_map(
        |(stripe, start, len, seed)| Op {
            stripe,
            start,
            len,
            seed,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random partial and full writes; the last write of each stripe may be
    /// torn (each member's write kept or lost at random); then up to two
    /// random members are missing (their rings too). After replay every
    /// byte outside the torn writes equals the model.
    #[test]
    fn replay_after_torn_writes_and_two_missing_members_keeps_untouched_bytes(
        members in 4usize..=7,
        ops in proptest::collection::vec(op(), 1..10),
        torn in proptest::collection::vec(any::<bool>(), STRIPES as usize),
        kept in proptest::collection::vec(any::<bool>(), 7 * STRIPES as usize),
        missing in proptest::collection::btree_set(0usize..7, 0..=2),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async move {
            let g = geometry(members);
            let sds = g.stripe_data_size();
            let devs = devices(members);
            let log = Arc::new(MemParityLog::default());
            let vol = logged(devs.clone(), log.clone());
            let mut model = pattern(vol.size() as usize, 3);
            vol.write(ByteOffset(0), &model, Durability::Normal).await.unwrap();
            let mut unknown = vec![false; model.len()];
            for (i, op) in ops.iter().enumerate() {
                let start = op.start % sds;
                let len = op.len.min(sds - start).max(1) as usize;
                let last = ops[i + 1..].iter().all(|o| o.stripe != op.stripe);
                let tear = last && torn[op.stripe as usize];
                let old = snapshot(&devs, op.stripe).await;
                let at = (op.stripe * sds + start) as usize;
                let data = pattern(len, op.seed);
                vol.write(ByteOffset(at as u64), &data, Durability::Normal).await.unwrap();
                if tear {
                    for (m, d) in devs.iter().enumerate() {
                        if !kept[op.stripe as usize * 7 + m] {
                            restore(d, op.stripe, &old[m]).await;
                        }
                    }
                    unknown[at..at + len].fill(true);
                } else {
                    model[at..at + len].copy_from_slice(&data);
                }
            }
            let missing: Vec<usize> = missing.into_iter().map(|m| m % members).collect();
            let crashed = Array::over(g, devs, &missing).volume;
            replay(&crashed, &surviving(&log, &missing)).await.unwrap();
            let got = read_all(&crashed).await;
            for i in 0..model.len() {
                assert!(unknown[i] || got[i] == model[i], "byte {i} of the volume is wrong (missing {missing:?})");
            }
        });
    }
}
