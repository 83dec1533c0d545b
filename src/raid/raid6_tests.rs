//! RAID-6 against in-memory members: reads with any two members gone,
//! which writes read what, and a rebuild of two members in one pass.

use std::sync::atomic::Ordering;
use std::sync::Mutex;

use super::layout::{ChunkSize, Geometry, MemberIndex, StripeIndex};
use super::rebuild::{RebuildControl, RebuildSink};
use super::test_support::{pattern, Array, TestDevice};
use super::{Level, MemberState};
use crate::block::{BlockDevice, BoxFuture, Durability};
use crate::units::ByteOffset;

const C: u64 = 16 << 10;
const MEMBER: u64 = 1 << 20;

/// P and Q of every stripe of the members' snapshots match their data.
pub(super) fn assert_syndromes(g: &Geometry, devices: &[std::sync::Arc<TestDevice>]) {
    let snaps: Vec<Vec<u8>> = devices.iter().map(|d| d.mem.snapshot()).collect();
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
async fn raid6_reads_every_byte_with_any_two_members_missing() {
    // Arrange: a full array written; over 5 members P and Q rotate, so
    // each pair gone is two data, data+P, data+Q and P+Q in some stripe.
    let full = Array::new(Level::Raid6, 5, C, MEMBER, &[]);
    let data = pattern(full.volume.size() as usize, 61);
    full.volume
        .write(ByteOffset(0), &data, Durability::Normal)
        .await
        .unwrap();
    let g = *full.volume.geometry();
    for a in 0..5 {
        for b in a + 1..5 {
            // Act
            let degraded = Array::over(g, full.devices.clone(), &[a, b]);
            let mut out = vec![0u8; data.len()];
            degraded.volume.read(ByteOffset(0), &mut out).await.unwrap();

            // Assert
            assert!(out == data, "members {a} and {b} missing");
        }
    }
}

#[tokio::test]
async fn raid6_small_write_reads_old_data_p_and_q_only() {
    // Arrange: 6 members (4 data chunks a stripe).
    let array = Array::new(Level::Raid6, 6, C, MEMBER, &[]);
    let data = pattern(array.volume.size() as usize, 62);
    array
        .volume
        .write(ByteOffset(0), &data, Durability::Normal)
        .await
        .unwrap();
    array.reset_counters();

    // Act: 4 KiB inside one chunk.
    let small = pattern(4096, 63);
    array
        .volume
        .write(ByteOffset(C + 4096), &small, Durability::Normal)
        .await
        .unwrap();

    // Assert: read-modify-write, the delta syndrome.
    assert_eq!(array.read_bytes(), 3 * 4096);
    assert_syndromes(array.volume.geometry(), &array.devices);
}

#[tokio::test]
async fn raid6_full_stripe_write_reads_nothing_and_wide_write_reconstructs() {
    // Arrange
    let array = Array::new(Level::Raid6, 6, C, MEMBER, &[]);
    let sds = array.volume.geometry().stripe_data_size();

    // Act: a whole stripe, then three of its four chunks.
    let whole = pattern(sds as usize, 64);
    array
        .volume
        .write(ByteOffset(sds), &whole, Durability::Normal)
        .await
        .unwrap();
    let full_reads = array.read_bytes();
    let three = pattern(3 * C as usize, 65);
    array
        .volume
        .write(ByteOffset(sds), &three, Durability::Normal)
        .await
        .unwrap();

    // Assert: nothing read; then only the untouched chunk (reconstruct-write).
    assert_eq!(full_reads, 0);
    assert_eq!(array.read_bytes(), C);
    assert_syndromes(array.volume.geometry(), &array.devices);
}

#[derive(Default)]
struct Sink(Mutex<Vec<MemberIndex>>);

impl RebuildSink for Sink {
    fn checkpoint(&self, _: MemberIndex, _: u64) -> BoxFuture<'_, Result<(), String>> {
        crate::block::BoxFuture::new(async { Ok(()) })
    }
    fn finished(&self, member: MemberIndex) -> BoxFuture<'_, Result<(), String>> {
        self.0.lock().unwrap().push(member);
        crate::block::BoxFuture::new(async { Ok(()) })
    }
}

#[tokio::test]
async fn raid6_rebuild_of_two_members_in_one_pass_reads_each_source_once() {
    // Arrange: members 0 and 2 missing, data written degraded.
    let mut array = Array::new(Level::Raid6, 5, C, MEMBER, &[0, 2]);
    let vol = &array.volume;
    let data = pattern(vol.size() as usize, 67);
    vol.write(ByteOffset(0), &data, Durability::Normal)
        .await
        .unwrap();
    let fresh = [0, 2].map(|m| TestDevice::new(&format!("new{m}"), MEMBER));
    for (m, dev) in [0, 2].into_iter().zip(&fresh) {
        vol.attach_rebuild_target(MemberIndex(m), dev.clone(), 0)
            .unwrap();
    }
    array.reset_counters();

    // Act
    let members = [MemberIndex(0), MemberIndex(2)];
    let sink = Sink::default();
    vol.rebuild_together(&members, None, &RebuildControl::new(0), &sink)
        .await
        .unwrap();

    // Assert: the three others read once in all; both finished and right.
    assert_eq!(array.read_bytes(), 3 * MEMBER);
    assert_eq!(*sink.0.lock().unwrap(), members.to_vec());
    let [f0, f2] = fresh;
    array.devices[0] = f0;
    array.devices[2] = f2;
    assert_syndromes(array.volume.geometry(), &array.devices);
    let mut out = vec![0u8; data.len()];
    array.volume.read(ByteOffset(0), &mut out).await.unwrap();
    assert!(out == data);
}

#[tokio::test]
async fn raid6_rebuilds_two_missing_members_at_once_under_writes() {
    // Arrange: members 1 and 3 missing, data written degraded, two blanks.
    let mut array = Array::new(Level::Raid6, 5, C, MEMBER, &[1, 3]);
    let vol = &array.volume;
    let size = vol.size();
    let mut model = pattern(size as usize, 66);
    vol.write(ByteOffset(0), &model, Durability::Normal)
        .await
        .unwrap();
    let fresh = [1, 3].map(|m| TestDevice::new(&format!("new{m}"), MEMBER));
    for (m, dev) in [1, 3].into_iter().zip(&fresh) {
        dev.yield_first.store(true, Ordering::SeqCst);
        vol.attach_rebuild_target(MemberIndex(m), dev.clone(), 0)
            .unwrap();
    }
    let (sink, ctl) = (Sink::default(), RebuildControl::new(0));

    // Act: both rebuilds and a stream of writes, concurrently.
    let writes = async {
        let mut done = Vec::new();
        for i in 0..40u64 {
            let at = (i * 7919 * 13) % (size - 40_000);
            let data = pattern(1 + (i as usize * 977) % 40_000, 100 + i);
            vol.write(ByteOffset(at), &data, Durability::Normal)
                .await
                .unwrap();
            done.push((at as usize, data));
            tokio::task::yield_now().await;
        }
        done
    };
    let both = [MemberIndex(1), MemberIndex(3)];
    let (rebuilt, done) = futures::join!(vol.rebuild_together(&both, None, &ctl, &sink), writes);
    for (at, data) in done {
        model[at..at + data.len()].copy_from_slice(&data);
    }

    // Assert
    rebuilt.unwrap();
    for m in [1, 3] {
        assert_eq!(vol.state(MemberIndex(m)), MemberState::Active);
    }
    let mut whole = vec![0u8; size as usize];
    vol.read(ByteOffset(0), &mut whole).await.unwrap();
    assert!(whole == model, "volume differs from the model");
    let [f1, f3] = fresh;
    array.devices[1] = f1;
    array.devices[3] = f3;
    assert_syndromes(vol.geometry(), &array.devices);
}

/// One member of a two-member pass abandoned (`vraid fail`): the pass
/// stops, that member is dropped, the other stays attached and a second
/// pass of it alone finishes it (it was dropped with the first before).
#[tokio::test]
async fn raid6_two_member_pass_with_one_abandoned_keeps_the_other() {
    let array = Array::new(Level::Raid6, 5, C, MEMBER, &[1, 3]);
    let vol = &array.volume;
    let data = pattern(vol.size() as usize, 68);
    vol.write(ByteOffset(0), &data, Durability::Normal)
        .await
        .unwrap();
    let fresh = [1, 3].map(|m| TestDevice::new(&format!("new{m}"), MEMBER));
    for (m, dev) in [1, 3].into_iter().zip(&fresh) {
        vol.attach_rebuild_target(MemberIndex(m), dev.clone(), 0)
            .unwrap();
    }
    let (sink, ctl) = (Sink::default(), RebuildControl::new(0));
    assert!(vol.abandon_rebuild_by_request(MemberIndex(3), "test"));

    let both = [MemberIndex(1), MemberIndex(3)];
    let first = vol.rebuild_together(&both, None, &ctl, &sink).await;
    let kept = vol.rebuild_target(MemberIndex(1)).is_some();
    let dropped = vol.rebuild_target(MemberIndex(3)).is_none();
    let second = vol
        .rebuild_together(&[MemberIndex(1)], None, &ctl, &sink)
        .await;

    assert!(first.is_err() && kept && dropped, "{first:?}");
    second.unwrap();
    assert_eq!(vol.state(MemberIndex(1)), MemberState::Active);
    assert_ne!(vol.state(MemberIndex(3)), MemberState::Active);
    let mut out = vec![0u8; data.len()];
    vol.read(ByteOffset(0), &mut out).await.unwrap();
    // Member 3 missing: the data on member 1 is read from it.
    assert!(out == data);
}

#[test]
fn raid6_geometry_needs_four_members() {
    let chunk = ChunkSize::new(C).unwrap();
    assert!(Geometry::new(Level::Raid6, 3, chunk, MEMBER).is_err());
    let g = Geometry::new(Level::Raid6, 4, chunk, MEMBER).unwrap();
    assert_eq!(g.volume_size(), 2 * MEMBER);
    assert_eq!(Level::Raid6.redundancy(4), 2);
    assert_eq!("raid6".parse::<Level>(), Ok(Level::Raid6));
}
