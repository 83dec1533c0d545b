//! Partial-parity log: torn RAID-5 stripes after a crash, replayed with a
//! member missing; the ring committer (group commit, wrap, checkpoint).

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::layout::{MemberIndex, StripeIndex};
use super::ppl::{replay, BatchEncoder, MemParityLog, ParityLog, PplRecord, RingLog};
use super::test_support::{pattern, Array, TestDevice};
use super::volume::Volume;
use super::{ChunkSize, Geometry, Level};
use crate::block::{BlockDevice, Durability};
use crate::member::memory::MemDevice;
use crate::units::ByteOffset;

const CHUNK: u64 = 4096;
const STRIPES: u64 = 4;

fn geometry(members: usize) -> Geometry {
    Geometry::new(
        Level::Raid5,
        members,
        ChunkSize::new(CHUNK).unwrap(),
        STRIPES * CHUNK,
    )
    .unwrap()
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

/// One stripe's chunk on every member, to undo part of a write (a crash
/// that kept some member writes and lost others).
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

fn records(log: &MemParityLog) -> Vec<(MemberIndex, PplRecord)> {
    log.records.lock().unwrap().clone()
}

#[tokio::test]
async fn torn_partial_write_with_a_missing_member_is_repaired_by_replay() {
    // Arrange: a known pattern, then a small write to chunk 0 of stripe 1
    // whose data landed but whose parity did not (the write hole).
    let g = geometry(4);
    let devices: Vec<_> = (0..4)
        .map(|i| TestDevice::new(&format!("m{i}"), STRIPES * CHUNK))
        .collect();
    let log = Arc::new(MemParityLog::default());
    let vol = logged(devices.clone(), log.clone());
    let before = pattern(vol.size() as usize, 1);
    vol.write(ByteOffset(0), &before, Durability::Normal)
        .await
        .unwrap();
    let stripe = 1;
    let pm = g.parity_member(StripeIndex(stripe)).unwrap();
    let old = snapshot(&devices, stripe).await;
    let sds = g.stripe_data_size();
    vol.write(
        ByteOffset(stripe * sds + 100),
        &[0xEE; 1000],
        Durability::Normal,
    )
    .await
    .unwrap();
    restore(&devices[pm.0], stripe, &old[pm.0]).await;
    // The untouched chunk 1 of that stripe lives on this member; it is lost.
    let lost = g.data_member(StripeIndex(stripe), 1);
    let range = (stripe * sds + CHUNK) as usize..(stripe * sds + 2 * CHUNK) as usize;

    // Act + Assert: without replay the untouched chunk comes back wrong ...
    let crashed = Array::over(g, devices.clone(), &[lost.0]).volume;
    assert_ne!(
        read_all(&crashed).await[range.clone()],
        before[range.clone()]
    );
    // ... with replay it is intact.
    let stats = replay(&crashed, &records(&log)).await.unwrap();
    assert!(stats.replayed >= 1);
    assert_eq!(read_all(&crashed).await[range.clone()], before[range]);
}

#[tokio::test]
async fn replay_leaves_rows_decided_by_an_unreplayable_newer_entry_alone() {
    // Arrange: W1 writes chunk 0, W2 (complete) writes chunk 1 on the member
    // that goes missing. Replaying W1 alone would base the parity on chunk 1
    // before W2 and corrupt it.
    let g = geometry(3);
    let devices: Vec<_> = (0..3)
        .map(|i| TestDevice::new(&format!("m{i}"), STRIPES * CHUNK))
        .collect();
    let log = Arc::new(MemParityLog::default());
    let vol = logged(devices.clone(), log.clone());
    vol.write(
        ByteOffset(0),
        &pattern(vol.size() as usize, 2),
        Durability::Normal,
    )
    .await
    .unwrap();
    vol.write(ByteOffset(0), &[1; 512], Durability::Normal)
        .await
        .unwrap();
    vol.write(ByteOffset(CHUNK), &[2; 512], Durability::Normal)
        .await
        .unwrap();
    let want = read_all(&vol).await;
    let missing = g.data_member(StripeIndex(0), 1);

    // Act
    let crashed = Array::over(g, devices, &[missing.0]).volume;
    replay(&crashed, &records(&log)).await.unwrap();

    // Assert
    assert_eq!(read_all(&crashed).await, want);
}

#[derive(Clone, Debug)]
struct Op {
    stripe: u64,
    start: u64,
    len: u64,
    seed: u64,
}

fn ops(members: usize) -> impl Strategy<Value = Vec<Op>> {
    let sds = (members as u64 - 1) * CHUNK;
    proptest::collection::vec(
        (0..STRIPES, 0..sds, 1..=sds, any::<u64>()).prop_map(move |(stripe, start, len, seed)| {
            Op {
                stripe,
                start,
                len: len.min(sds - start).max(1),
                seed,
            }
        }),
        1..10,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Random partial (and full) writes; the last write of each stripe may
    /// be torn (each member's write kept or lost at random); then a random
    /// member is missing. After replay every byte outside the torn writes
    /// equals the model.
    #[test]
    fn replay_after_torn_writes_and_a_missing_member_keeps_untouched_bytes(
        members in 3usize..=5,
        ops in (3usize..=5).prop_flat_map(ops),
        torn in proptest::collection::vec(any::<bool>(), STRIPES as usize),
        kept in proptest::collection::vec(any::<bool>(), 5 * STRIPES as usize),
        missing in 0usize..5,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async move {
            let g = geometry(members);
            let sds = g.stripe_data_size();
            let ops: Vec<Op> = ops.into_iter().map(|mut o| {
                o.start %= sds;
                o.len = o.len.min(sds - o.start).max(1);
                o
            }).collect();
            let devices: Vec<_> = (0..members).map(|i| TestDevice::new(&format!("m{i}"), STRIPES * CHUNK)).collect();
            let log = Arc::new(MemParityLog::default());
            let vol = logged(devices.clone(), log.clone());
            let mut model = pattern(vol.size() as usize, 3);
            vol.write(ByteOffset(0), &model, Durability::Normal).await.unwrap();
            let mut unknown = vec![false; model.len()];
            for (i, op) in ops.iter().enumerate() {
                let last = ops[i + 1..].iter().all(|o| o.stripe != op.stripe);
                let tear = last && torn[op.stripe as usize];
                let before = if tear { snapshot(&devices, op.stripe).await } else { Vec::new() };
                let at = (op.stripe * sds + op.start) as usize;
                let data = pattern(op.len as usize, op.seed);
                vol.write(ByteOffset(at as u64), &data, Durability::Normal).await.unwrap();
                if tear {
                    for (m, d) in devices.iter().enumerate() {
                        if !kept[op.stripe as usize * 5 + m] {
                            restore(d, op.stripe, &before[m]).await;
                        }
                    }
                    unknown[at..at + data.len()].fill(true);
                } else {
                    model[at..at + data.len()].copy_from_slice(&data);
                }
            }
            let crashed = Array::over(g, devices, &[missing % members]).volume;
            replay(&crashed, &records(&log)).await.unwrap();
            let got = read_all(&crashed).await;
            for i in 0..model.len() {
                assert!(unknown[i] || got[i] == model[i], "byte {i} of the volume is wrong");
            }
        });
    }
}

/// Encodes with the real format (meta::journal) for ring tests.
fn encoder() -> Arc<dyn BatchEncoder> {
    Arc::new(crate::meta::journal::JournalEncoder {
        array_uuid: uuid::Uuid::from_u128(1),
        members: vec![Some(uuid::Uuid::from_u128(2))],
        epoch: 5,
    })
}

fn rec(stripe: u64, pp: usize) -> PplRecord {
    PplRecord {
        stripe,
        start: 0,
        len: pp as u32,
        rlo: 0,
        rhi: pp as u32,
        full: false,
        pp: vec![stripe as u8; pp],
    }
}

async fn replayable(ring: &MemDevice) -> Vec<u64> {
    let mut buf = vec![0u8; ring.size() as usize];
    ring.read(ByteOffset(0), &mut buf).await.unwrap();
    let batches =
        crate::meta::journal::scan_ring(&buf, uuid::Uuid::from_u128(1), uuid::Uuid::from_u128(2));
    crate::meta::journal::replay_set(&batches, 5)
        .iter()
        .flat_map(|b| b.records.iter().map(|r| r.stripe))
        .collect()
}

#[tokio::test]
async fn ring_wraps_and_replays_a_suffix_of_what_was_logged() {
    // Arrange: a 64K ring (16 KiB batches at most), many records.
    let ring = Arc::new(MemDevice::new("journal", 64 << 10));
    let log = one_ring_log(ring.clone()).await;

    // Act: one at a time, so the log order is known; tickets dropped at once.
    for s in 0..200u64 {
        drop(
            log.log(MemberIndex(0), vec![rec(s, 512 + (s as usize * 97) % 6000)])
                .await
                .unwrap(),
        );
    }

    // Assert
    let set = replayable(&ring).await;
    assert!(!set.is_empty());
    let first = set[0];
    assert_eq!(set, (first..200).collect::<Vec<_>>(), "a suffix, in order");
    assert!(checkpoints(&log) > 0);
}

#[tokio::test]
async fn concurrent_records_share_batches() {
    // Arrange: a journal whose writes yield, like real I/O.
    let ring = TestDevice::new("journal", 1 << 20);
    let log = one_ring_log(ring.clone()).await;
    ring.yield_first
        .store(true, std::sync::atomic::Ordering::SeqCst);

    // Act
    let logs = (0..64u64).map(|s| log.log(MemberIndex(0), vec![rec(s, 512)]));
    let tickets = futures::future::join_all(logs).await;

    // Assert
    assert!(tickets.iter().all(Result::is_ok));
    let batches = log.stats.batches.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        batches < 64,
        "{batches} batches for 64 records: no group commit"
    );
    let mut set = replayable(&ring.mem).await;
    set.sort_unstable();
    assert_eq!(set, (0..64).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_second_commit_is_written_while_the_first_is_in_flight() {
    // Arrange: journal writes held at a gate.
    let ring = TestDevice::new("journal", 1 << 20);
    let log = one_ring_log(ring.clone()).await;
    ring.gate_closed
        .store(true, std::sync::atomic::Ordering::SeqCst);

    // Act: two records, the second logged while the first's batch waits.
    let first = tokio::spawn({
        let log = log.clone();
        async move { log.log(MemberIndex(0), vec![rec(1, 512)]).await.map(drop) }
    });
    while log.stats.batches.load(std::sync::atomic::Ordering::SeqCst) < 1 {
        tokio::task::yield_now().await;
    }
    let second = tokio::spawn({
        let log = log.clone();
        async move { log.log(MemberIndex(0), vec![rec(2, 512)]).await.map(drop) }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while log.stats.batches.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "second commit not placed"
        );
        tokio::task::yield_now().await;
    }
    ring.gate_closed
        .store(false, std::sync::atomic::Ordering::SeqCst);
    ring.gate_open.notify_waiters();
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();

    // Assert: batch 3 says batch 2 was not durable when it was placed, so
    // a crash that tore batch 2 (zeroed here) still replays batch 3; the
    // barrier (seq 1) below the gap is kept too.
    let mut buf = vec![0u8; ring.size() as usize];
    ring.mem.read(ByteOffset(0), &mut buf).await.unwrap();
    let batches =
        crate::meta::journal::scan_ring(&buf, uuid::Uuid::from_u128(1), uuid::Uuid::from_u128(2));
    let third = batches.iter().find(|b| b.seq == 3).expect("batch 3");
    assert_eq!(third.durable_below, 2);
    let second_pos = batches.iter().find(|b| b.seq == 2).expect("batch 2").pos as usize;
    buf[second_pos..second_pos + 4096].fill(0);
    let torn =
        crate::meta::journal::scan_ring(&buf, uuid::Uuid::from_u128(1), uuid::Uuid::from_u128(2));
    let set: Vec<u64> = crate::meta::journal::replay_set(&torn, 5)
        .iter()
        .map(|b| b.seq)
        .collect();
    assert_eq!(set, vec![1, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_commits_through_many_checkpoints_do_not_deadlock() {
    // Arrange: a small ring (a checkpoint every few batches) on a device
    // whose writes yield, and many writers holding tickets for a while.
    let ring = TestDevice::new("journal", 64 << 10);
    ring.yield_first
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let log = one_ring_log(ring.clone()).await;

    // Act
    let writers = (0..32u64).map(|w| {
        let log = log.clone();
        tokio::spawn(async move {
            for i in 0..40u64 {
                let ticket = log.log(MemberIndex(0), vec![rec(w * 100 + i, 4096)]).await;
                tokio::task::yield_now().await;
                drop(ticket.unwrap());
            }
        })
    });
    let all = futures::future::join_all(writers);

    // Assert
    let done = tokio::time::timeout(Duration::from_secs(30), all).await;
    assert!(done.is_ok(), "journal commits deadlocked");
    assert!(checkpoints(&log) > 10);
}

/// A log over the one ring `ring`, its barriers written.
async fn one_ring_log(ring: Arc<dyn BlockDevice>) -> Arc<RingLog> {
    let log = Arc::new(RingLog::new(vec![Some(ring)], encoder()).unwrap());
    log.write_barriers().await.unwrap();
    log
}

/// Checkpoints `log` has taken.
fn checkpoints(log: &RingLog) -> usize {
    log.stats
        .checkpoints
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// Returns once every task of the test's runtime (current-thread, clock
/// paused) waits for something: a paused clock advances only then, so the
/// sleep ends exactly when nothing else can run.
async fn until_idle() {
    tokio::time::sleep(Duration::from_secs(3600)).await;
}

#[tokio::test(start_paused = true)]
async fn checkpoint_waits_for_writes_holding_tickets() {
    // Arrange: a 64K ring; a ticket held, then records past half the ring.
    let ring = Arc::new(MemDevice::new("journal", 64 << 10));
    let log = one_ring_log(ring).await;
    let held = log.log(MemberIndex(0), vec![rec(1, 8192)]).await.unwrap();
    drop(log.log(MemberIndex(0), vec![rec(2, 8192)]).await.unwrap());

    // Act: the next batch needs a checkpoint, which waits for `held`.
    let l2 = log.clone();
    let next =
        tokio::spawn(async move { l2.log(MemberIndex(0), vec![rec(9, 8192)]).await.map(drop) });
    let before = checkpoints(&log);
    until_idle().await;
    let waited = !next.is_finished() && checkpoints(&log) == before;
    drop(held);

    // Assert
    assert!(
        waited,
        "the checkpoint did not wait for the write in flight"
    );
    tokio::time::timeout(Duration::from_secs(10), next)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// A 4-member RAID-5 over devices that yield like real I/O, logging to
/// small rings (many checkpoints).
async fn stress_volume() -> (Arc<Volume>, Arc<RingLog>) {
    stress_volume_of(geometry(4)).await
}

/// [`stress_volume`] of any parity geometry (RAID-6: two rings per write).
async fn stress_volume_of(g: Geometry) -> (Arc<Volume>, Arc<RingLog>) {
    let (vol, log, _) = ring_volume(g).await;
    (vol, log)
}

/// [`stress_volume_of`], with the journal rings (one per member).
async fn ring_volume(g: Geometry) -> (Arc<Volume>, Arc<RingLog>, Vec<Arc<TestDevice>>) {
    let n = g.members();
    let data: Vec<_> = (0..n)
        .map(|i| TestDevice::new(&format!("m{i}"), STRIPES * CHUNK))
        .collect();
    let rings: Vec<Arc<TestDevice>> = (0..n)
        .map(|i| TestDevice::new(&format!("j{i}"), 32 << 10))
        .collect();
    for d in data.iter().chain(&rings) {
        d.yield_first
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
    let encoder = Arc::new(crate::meta::journal::JournalEncoder {
        array_uuid: uuid::Uuid::from_u128(1),
        members: (0..n as u128)
            .map(|i| Some(uuid::Uuid::from_u128(10 + i)))
            .collect(),
        epoch: 1,
    });
    let journals = rings
        .iter()
        .map(|r| Some(r.clone() as Arc<dyn BlockDevice>))
        .collect();
    let mut log = None;
    let vol = Arc::new_cyclic(|weak| {
        let l = Arc::new(RingLog::for_volume(journals, encoder, weak.clone()).unwrap());
        log = Some(l.clone());
        Array::over(g, data, &[]).volume.with_parity_log(l)
    });
    let log = log.unwrap();
    log.write_barriers().await.unwrap();
    (vol, log, rings)
}

/// Runs 100 rounds of `ops` concurrent requests, `op(round, i)` each, on
/// `vol`; panics (`what` deadlocked) unless all are done within 30 s.
async fn run_rounds<F, Fut>(vol: &Arc<Volume>, ops: u64, what: &str, op: F)
where
    F: Fn(Arc<Volume>, u64, u64) -> Fut,
    Fut: std::future::Future<Output = crate::block::BlockResult> + Send + 'static,
{
    let run = async {
        for round in 0..100u64 {
            let tasks = (0..ops).map(|i| tokio::spawn(op(vol.clone(), round, i)));
            for t in futures::future::join_all(tasks).await {
                t.unwrap().unwrap();
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .unwrap_or_else(|_| panic!("{what} deadlocked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_multi_stripe_writes_through_checkpoints_do_not_deadlock() {
    // Arrange: small rings (many checkpoints), devices that yield like real
    // I/O, and requests spanning several stripes with the same parity member.
    let g = geometry(4);
    let (vol, log) = stress_volume().await;
    let size = vol.size();

    // Act: rounds of concurrent writes of 1..=2 stripes each.
    run_rounds(&vol, 32, "writes", |vol, round, i| async move {
        let len = (round * 7 + i * 5) % (2 * g.stripe_data_size()) + 512;
        let at = ((round + i) * 3 * 4096) % (size - len);
        let buf = pattern(len as usize, round * 32 + i);
        vol.write(ByteOffset(at), &buf, Durability::Normal).await
    })
    .await;

    // Assert
    assert!(checkpoints(&log) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clears_and_writes_through_checkpoints_do_not_deadlock() {
    // Arrange: clears of whole stripes log FULL entries to several parity
    // members' rings at once, mixed with partial writes.
    let g = geometry(4);
    let (vol, log) = stress_volume().await;
    let stripe = g.stripe_data_size();
    let stripes = vol.size() / stripe;

    // Act
    run_rounds(&vol, 16, "clears and writes", |vol, round, i| async move {
        if i % 2 == 0 {
            let n = 2 + (round + i) % (stripes - 1);
            let first = (round * 3 + i) % (stripes - n + 1);
            vol.write_zeroes(ByteOffset(first * stripe), n * stripe, false)
                .await
        } else {
            let len = (round * 11 + i * 5) % stripe + 512;
            let at = ((round + i) * 4096) % (vol.size() - len);
            let buf = pattern(len as usize, round * 16 + i);
            vol.write(ByteOffset(at), &buf, Durability::Normal).await
        }
    })
    .await;

    // Assert
    assert!(checkpoints(&log) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raid6_writes_and_clears_through_full_rings_do_not_deadlock() {
    // Arrange: RAID-6 over 5 members, every partial write logged to its P
    // and its Q ring (lower member first), rings of 32 KiB (full often:
    // checkpoints on both rings of one write).
    let g = Geometry::new(
        Level::Raid6,
        5,
        ChunkSize::new(CHUNK).unwrap(),
        STRIPES * CHUNK,
    )
    .unwrap();
    let (vol, log) = stress_volume_of(g).await;
    let stripe = g.stripe_data_size();
    let stripes = vol.size() / stripe;

    // Act
    run_rounds(&vol, 24, "RAID-6 writes", |vol, round, i| async move {
        if i % 4 == 0 {
            let n = 1 + (round + i) % stripes;
            let first = (round * 3 + i) % (stripes - n + 1);
            vol.write_zeroes(ByteOffset(first * stripe), n * stripe, false)
                .await
        } else {
            let len = (round * 11 + i * 5) % (2 * stripe) + 512;
            let at = ((round + i) * 4096) % (vol.size() - len);
            let buf = pattern(len as usize, round * 24 + i);
            vol.write(ByteOffset(at), &buf, Durability::Normal).await
        }
    })
    .await;

    // Assert: checkpoints ran, and the entries went to P and Q rings.
    assert!(checkpoints(&log) > 0);
    let counters = log.counters().unwrap();
    assert!(counters.entries > 0, "{counters:?}");
}

#[tokio::test(start_paused = true)]
async fn a_checkpoint_invalidates_a_claim_and_does_not_wait_for_it() {
    // Arrange: a 64K ring; a claim held (its writes not started) and a
    // ticket taken from another claim.
    let ring = Arc::new(MemDevice::new("journal", 64 << 10));
    let log = one_ring_log(ring).await;
    let claim = log.claim(MemberIndex(0), vec![rec(1, 8192)]).await.unwrap();
    let early = log.claim(MemberIndex(0), vec![rec(2, 8192)]).await.unwrap();
    let held = early.ticket().expect("no checkpoint yet");

    // Act: the next batch needs a checkpoint; it waits for the ticket taken
    // from a claim, never for the bare claim.
    let l2 = log.clone();
    let next =
        tokio::spawn(async move { l2.log(MemberIndex(0), vec![rec(9, 8192)]).await.map(drop) });
    until_idle().await;
    let waited_for_ticket = !next.is_finished();
    drop(held);
    tokio::time::timeout(Duration::from_secs(10), next)
        .await
        .expect("the checkpoint waited for a claim")
        .unwrap()
        .unwrap();

    // Assert: both claims are invalid now (log again); a new one is valid.
    assert!(
        waited_for_ticket,
        "a ticket from a claim was not waited for"
    );
    assert!(checkpoints(&log) > 0);
    assert!(claim.ticket().is_none() && early.ticket().is_none());
    let fresh = log.claim(MemberIndex(0), vec![rec(4, 512)]).await.unwrap();
    assert!(fresh.ticket().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raid6_partial_write_logs_to_both_rings_at_once() {
    // Arrange: RAID-6 over 5 members; the journal of stripe 0's lower
    // syndrome member holds its writes at a gate.
    let g = Geometry::new(
        Level::Raid6,
        5,
        ChunkSize::new(CHUNK).unwrap(),
        STRIPES * CHUNK,
    )
    .unwrap();
    let (vol, _log, rings) = ring_volume(g).await;
    let (p, q) = (
        g.parity_member(StripeIndex(0)).unwrap(),
        g.q_member(StripeIndex(0)).unwrap(),
    );
    let (low, high) = (p.min(q), p.max(q));
    let fua = |m: MemberIndex| {
        rings[m.0]
            .fua_writes
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    let high_before = fua(high);
    rings[low.0]
        .gate_closed
        .store(true, std::sync::atomic::Ordering::SeqCst);

    // Act: a partial write of stripe 0.
    let v = vol.clone();
    let write = tokio::spawn(async move {
        v.write(ByteOffset(100), &[7; 1000], Durability::Normal)
            .await
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while fua(high) == high_before && std::time::Instant::now() < deadline {
        tokio::task::yield_now().await;
    }
    let high_written = fua(high) > high_before;
    rings[low.0]
        .gate_closed
        .store(false, std::sync::atomic::Ordering::SeqCst);
    rings[low.0].gate_open.notify_waiters();
    tokio::time::timeout(Duration::from_secs(10), write)
        .await
        .expect("write did not finish")
        .unwrap()
        .unwrap();

    // Assert: the higher ring's entry was written while the lower's waited.
    assert!(high_written, "the second ring waited for the first");
    assert!(fua(low) > 0);
    let mut back = vec![0u8; 1000];
    vol.read(ByteOffset(100), &mut back).await.unwrap();
    assert_eq!(back, vec![7; 1000]);
}

#[tokio::test]
async fn a_dropped_writer_neither_wedges_the_ring_nor_leaves_its_entry_queued() {
    // Arrange: journal writes held at a gate; two commits in flight (the
    // first writer is aborted while its batch is being written), and a
    // third writer aborted while its request waits in the queue.
    let ring = TestDevice::new("journal", 64 << 10);
    let log = one_ring_log(ring.clone()).await;
    ring.gate_closed
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let spawn_log = |stripe: u64| {
        let log = log.clone();
        tokio::spawn(async move {
            log.log(MemberIndex(0), vec![rec(stripe, 4096)])
                .await
                .map(drop)
        })
    };
    let placed = |n: usize| {
        let log = log.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while log.stats.batches.load(std::sync::atomic::Ordering::SeqCst) < n {
                assert!(std::time::Instant::now() < deadline, "batch {n} not placed");
                tokio::task::yield_now().await;
            }
        }
    };
    let first = spawn_log(1);
    placed(1).await;
    let second = spawn_log(2);
    placed(2).await;
    let third = spawn_log(3);
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }

    // Act
    first.abort();
    third.abort();
    let _ = first.await;
    let _ = third.await;
    ring.gate_closed
        .store(false, std::sync::atomic::Ordering::SeqCst);
    ring.gate_open.notify_waiters();
    second.await.unwrap().unwrap();
    drop(log.log(MemberIndex(0), vec![rec(10, 4096)]).await.unwrap());
    let mut buf = vec![0u8; ring.size() as usize];
    ring.mem.read(ByteOffset(0), &mut buf).await.unwrap();
    // Enough records afterwards to force checkpoints (64K ring).
    for s in 11..40u64 {
        tokio::time::timeout(
            Duration::from_secs(10),
            log.log(MemberIndex(0), vec![rec(s, 4096)]),
        )
        .await
        .expect("ring wedged")
        .unwrap();
    }

    // Assert: the aborted first writer's batch was still written (its
    // commit runs on its own); the third, aborted while queued, never was.
    let stripes: Vec<u64> =
        crate::meta::journal::scan_ring(&buf, uuid::Uuid::from_u128(1), uuid::Uuid::from_u128(2))
            .iter()
            .flat_map(|b| b.records.iter().map(|r| r.stripe))
            .collect();
    assert!(stripes.contains(&1) && stripes.contains(&10), "{stripes:?}");
    assert!(!stripes.contains(&3), "{stripes:?}");
    assert!(checkpoints(&log) > 0);
}

#[tokio::test]
async fn a_ring_attached_during_the_run_takes_entries_after_its_barrier() {
    // Arrange: no ring for member 0 (absent at start-up); a member joins,
    // its journal area holding garbage of an earlier life.
    let log = RingLog::new(vec![None], encoder()).unwrap();
    log.write_barriers().await.unwrap();
    assert!(log.log(MemberIndex(0), vec![rec(1, 512)]).await.is_err());
    let ring = Arc::new(MemDevice::new("journal", 64 << 10));
    ring.write(ByteOffset(0), &[0xee; 8192], Durability::Normal)
        .await
        .unwrap();

    // Act
    log.attach_ring(MemberIndex(0), ring.clone() as Arc<dyn BlockDevice>)
        .await
        .unwrap();
    drop(log.log(MemberIndex(0), vec![rec(7, 512)]).await.unwrap());

    // Assert: the entry is in the ring and replayable.
    assert!(log.has_ring(MemberIndex(0)));
    assert_eq!(replayable(&ring).await, vec![7]);
}
