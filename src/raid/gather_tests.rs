//! Write gathering of RAID-6 partial stripes (gather.rs): two requests
//! that each end mid-stripe and together cover it are written as one full
//! stripe, with nothing read, every member present or not, journal or not.

use std::sync::Arc;

use super::layout::StripeIndex;
use super::ppl::MemParityLog;
use super::test_support::{pattern, Array};
use super::volume::Volume;
use super::Level;
use crate::block::{BlockDevice, Durability};
use crate::units::ByteOffset;

const C: u64 = 16 << 10;
const MEMBER: u64 = 1 << 20;

/// Writes `a` at `at_a` and `b` at `at_b` while stripe 1 is locked, so both
/// wait for its lock registered; then reads the volume back.
async fn race_on_stripe_1(
    vol: &Volume,
    (at_a, a): (u64, &[u8]),
    (at_b, b): (u64, &[u8]),
) -> Vec<u8> {
    let guard = vol.locks().lock(StripeIndex(1)).await;
    let first = vol.write(ByteOffset(at_a), a, Durability::Normal);
    let second = vol.write(ByteOffset(at_b), b, Durability::Fua);
    let release = async move {
        tokio::task::yield_now().await;
        drop(guard);
    };
    let (ra, rb, ()) = tokio::join!(first, second, release);
    ra.unwrap();
    rb.unwrap();
    let mut out = vec![0u8; vol.size() as usize];
    vol.read(ByteOffset(0), &mut out).await.unwrap();
    out
}

/// A 5-member array (3 data chunks a stripe) written with a base pattern.
async fn filled(missing: &[usize]) -> (Array, Vec<u8>) {
    let array = Array::new(Level::Raid6, 5, C, MEMBER, missing);
    let base = pattern(array.volume.size() as usize, 71);
    let vol = &array.volume;
    vol.write(ByteOffset(0), &base, Durability::Normal)
        .await
        .unwrap();
    array.reset_counters();
    (array, base)
}

/// Request A covers stripe 0 and the first 40 KiB of stripe 1, request B
/// the rest of stripe 1 and stripe 2 (a sequential stream).
fn stream(sds: u64) -> ((u64, Vec<u8>), (u64, Vec<u8>)) {
    let split = sds + 40 * 1024;
    let a = pattern(split as usize, 72);
    let b = pattern((2 * sds - split + sds) as usize, 73);
    ((0, a), (split, b))
}

fn expected(base: &[u8], writes: &[(u64, &[u8])]) -> Vec<u8> {
    let mut want = base.to_vec();
    for &(at, bytes) in writes {
        want[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
    }
    want
}

#[tokio::test]
async fn two_requests_ending_mid_stripe_write_it_as_one_full_stripe() {
    // Arrange
    let (array, base) = filled(&[]).await;
    let sds = array.volume.geometry().stripe_data_size();
    let ((at_a, a), (at_b, b)) = stream(sds);

    // Act
    let out = race_on_stripe_1(&array.volume, (at_a, &a), (at_b, &b)).await;

    // Assert: stripe 1 gathered (one piece taken); the writes read nothing
    // (without gathering, the two partial writes of stripe 1 read 32 KiB),
    // only the read back of the whole volume did.
    assert_eq!(array.volume.gather().gathered(), 1);
    let want = expected(&base, &[(at_a, &a), (at_b, &b)]);
    assert!(out == want, "bytes differ");
    let size = array.volume.size();
    assert_eq!(array.read_bytes(), size);
    super::raid6_tests::assert_syndromes(array.volume.geometry(), &array.devices);
}

#[tokio::test]
async fn pieces_that_leave_a_gap_are_written_each_on_its_own() {
    // Arrange: B starts 4 KiB after A's end.
    let (array, base) = filled(&[]).await;
    let sds = array.volume.geometry().stripe_data_size();
    let ((at_a, a), (at_b, b)) = stream(sds);
    let (at_b, b) = (at_b + 4096, &b[4096..]);

    // Act
    let out = race_on_stripe_1(&array.volume, (at_a, &a), (at_b, b)).await;

    // Assert
    assert_eq!(array.volume.gather().gathered(), 0);
    assert!(out == expected(&base, &[(at_a, &a), (at_b, b)]));
    super::raid6_tests::assert_syndromes(array.volume.geometry(), &array.devices);
}

#[tokio::test]
async fn gathering_with_two_members_missing_keeps_every_byte() {
    for missing in [[0, 1], [1, 4], [2, 3]] {
        // Arrange
        let (array, base) = filled(&missing).await;
        let sds = array.volume.geometry().stripe_data_size();
        let ((at_a, a), (at_b, b)) = stream(sds);

        // Act
        let out = race_on_stripe_1(&array.volume, (at_a, &a), (at_b, &b)).await;

        // Assert
        assert_eq!(array.volume.gather().gathered(), 1, "missing {missing:?}");
        let want = expected(&base, &[(at_a, &a), (at_b, &b)]);
        assert!(out == want, "missing {missing:?}");
    }
}

#[tokio::test]
async fn a_gathered_stripe_logs_one_full_entry_per_live_ring() {
    // Arrange
    let (array, base) = filled(&[]).await;
    let log = Arc::new(MemParityLog::default());
    let g = *array.volume.geometry();
    let vol = Array::over(g, array.devices.clone(), &[])
        .volume
        .with_parity_log(log.clone());
    let sds = g.stripe_data_size();
    let ((at_a, a), (at_b, b)) = stream(sds);

    // Act
    let out = race_on_stripe_1(&vol, (at_a, &a), (at_b, &b)).await;

    // Assert: stripe 1's entries are FULL ones, one on P's ring, one on Q's.
    assert_eq!(vol.gather().gathered(), 1);
    assert!(out == expected(&base, &[(at_a, &a), (at_b, &b)]));
    let recs = log.records.lock().unwrap().clone();
    let one: Vec<_> = recs.iter().filter(|(_, r)| r.stripe == 1).collect();
    assert_eq!(one.len(), 2);
    assert!(one
        .iter()
        .all(|(_, r)| r.full && r.start == 0 && r.len as u64 == sds));
    let rings = [g.parity_member(StripeIndex(1)), g.q_member(StripeIndex(1))];
    assert!(one.iter().all(|(m, _)| rings.contains(&Some(*m))));
}

#[test]
fn boundary_pieces_touch_exactly_one_end_of_their_stripe() {
    use super::gather::boundary;
    assert!(boundary(0, 10, 100));
    assert!(boundary(90, 10, 100));
    assert!(!boundary(0, 100, 100));
    assert!(!boundary(10, 10, 100));
}
