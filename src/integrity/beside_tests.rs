//! Sub-block writes whose edge read runs beside the data write (module
//! `beside`): the race's outcomes, a bad old block, a failing read.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

use super::beside;
use super::page::{block_entry, BLOCK, UNKNOWN};
use super::{ChecksumDevice, CsumStore};
use crate::block::{forward_to, BlockDevice, BlockError, Durability, IoFuture};
use crate::raid::test_support::{pattern, xor_byte, TestDevice};
use crate::units::ByteOffset;

const B: usize = BLOCK as usize;

/// A member whose reads can be held until a write has landed (the read
/// then sees the new bytes: the race's worst order) or made to fail.
#[derive(Debug)]
struct Late {
    inner: Arc<TestDevice>,
    hold_reads: AtomicBool,
    fail_reads: AtomicBool,
    written: Notify,
}

impl BlockDevice for Late {
    forward_to!(inner => name, size, flush, discard, write_zeroes, read_vectored, write_vectored);

    fn read<'a>(&'a self, offset: ByteOffset, buf: &'a mut [u8]) -> IoFuture<'a> {
        crate::block::BoxFuture::new(async move {
            if self.hold_reads.load(Ordering::SeqCst) {
                self.written.notified().await;
            }
            if self.fail_reads.load(Ordering::SeqCst) {
                let e = std::io::Error::other("read fails");
                return Err(BlockError::io("late", e));
            }
            self.inner.read(offset, buf).await
        })
    }

    fn write<'a>(&'a self, offset: ByteOffset, buf: &'a [u8], dur: Durability) -> IoFuture<'a> {
        crate::block::BoxFuture::new(async move {
            self.inner.write(offset, buf, dur).await?;
            if self.hold_reads.load(Ordering::SeqCst) {
                // Only then: a permit stored earlier would free a read early.
                self.written.notify_one();
            }
            Ok(())
        })
    }
}

struct Rig {
    late: Arc<Late>,
    store: Arc<CsumStore>,
    dev: ChecksumDevice,
    errors: Arc<AtomicU64>,
    data: Vec<u8>,
}

/// Two blocks holding `pattern(.., seed)`, written through the device.
async fn rig(seed: u64) -> Rig {
    beside::force_on();
    let inner = TestDevice::new("data", 2 * BLOCK);
    let late = Arc::new(Late {
        inner,
        hold_reads: AtomicBool::new(false),
        fail_reads: AtomicBool::new(false),
        written: Notify::new(),
    });
    let area = TestDevice::new("area", 4 * 4096);
    let store = Arc::new(CsumStore::new(area, 4096, 2, false));
    let errors = Arc::new(AtomicU64::new(0));
    let trusted: super::Trusted = Arc::new(|_| true);
    let dev = ChecksumDevice::new(late.clone(), store.clone(), trusted, errors.clone());
    let data = pattern(2 * B, seed);
    dev.write(ByteOffset(0), &data, Durability::Normal)
        .await
        .unwrap();
    Rig {
        late,
        store,
        dev,
        errors,
        data,
    }
}

#[tokio::test]
async fn a_read_that_saw_the_new_bytes_is_not_taken_for_corruption() {
    let r = rig(11).await;
    r.late.hold_reads.store(true, Ordering::SeqCst);
    let (beside0, raced0) = (beside::beside(), beside::raced());
    let patch = pattern(1024, 12);
    r.dev
        .write(ByteOffset(1024), &patch, Durability::Normal)
        .await
        .unwrap();
    r.late.hold_reads.store(false, Ordering::SeqCst);
    assert!(beside::beside() > beside0, "the edge read ran beside");
    assert!(beside::raced() > raced0, "the read saw the new bytes");
    let mut want = r.data[..B].to_vec();
    want[1024..2048].copy_from_slice(&patch);
    let mut buf = vec![0u8; B];
    r.dev.read(ByteOffset(0), &mut buf).await.unwrap();
    assert!(buf == want);
    assert_eq!(r.store.entries(0, 1).await.unwrap()[0], block_entry(&want));
    assert_eq!(r.errors.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_bad_old_block_read_beside_the_write_stays_detectably_bad() {
    let r = rig(13).await;
    xor_byte(&r.late.inner.mem, 4000, 0x5a).await.unwrap();
    let patch = pattern(1024, 14);
    r.dev
        .write(ByteOffset(1024), &patch, Durability::Normal)
        .await
        .unwrap();
    let entry = r.store.entries(0, 1).await.unwrap()[0];
    assert_ne!(entry, UNKNOWN, "not forgotten");
    let mut buf = vec![0u8; B];
    assert!(matches!(
        r.dev.read(ByteOffset(0), &mut buf).await,
        Err(BlockError::Corrupt { blocks: 1, .. })
    ));
    // The other block is untouched and good.
    r.dev.read(ByteOffset(BLOCK), &mut buf).await.unwrap();
}

#[tokio::test]
async fn an_edge_read_failing_beside_a_landed_write_leaves_the_entry_unknown() {
    let r = rig(15).await;
    r.late.fail_reads.store(true, Ordering::SeqCst);
    let patch = pattern(1024, 16);
    let res = r
        .dev
        .write(ByteOffset(BLOCK + 512), &patch, Durability::Normal)
        .await;
    r.late.fail_reads.store(false, Ordering::SeqCst);
    assert!(res.is_err(), "the read's error is the write's answer");
    let entries = r.store.entries(0, 2).await.unwrap();
    assert_eq!(entries[0], block_entry(&r.data[..B]), "other block kept");
    assert_eq!(entries[1], UNKNOWN, "landed bytes, unknown checksum");
    let mut buf = vec![0u8; B];
    r.dev.read(ByteOffset(BLOCK), &mut buf).await.unwrap();
    assert!(buf[512..1536] == patch[..], "the write landed");
}

#[tokio::test]
async fn a_small_write_with_a_read_and_a_flush_beside_leaves_data_and_entries_right() {
    let r = rig(17).await;
    let patch = pattern(1536, 18);
    let mut seen = vec![0u8; 2 * B];
    let (w, rd, fl) = tokio::join!(
        r.dev.write(ByteOffset(3584), &patch, Durability::Normal),
        r.dev.read(ByteOffset(0), &mut seen),
        r.dev.flush(),
    );
    w.unwrap();
    fl.unwrap();
    // The read saw the old or the new bytes of the written range, never a
    // checksum error (it re-reads once after a racing write).
    rd.unwrap();
    let mut want = r.data.clone();
    want[3584..5120].copy_from_slice(&patch);
    for (i, s) in seen.chunks(512).enumerate() {
        let (o, n) = (&r.data[i * 512..][..512], &want[i * 512..][..512]);
        assert!(s == o || s == n, "sector {i} is old or new");
    }
    let mut buf = vec![0u8; 2 * B];
    r.dev.read(ByteOffset(0), &mut buf).await.unwrap();
    assert!(buf == want);
    let entries = r.store.entries(0, 2).await.unwrap();
    assert_eq!(
        entries,
        vec![block_entry(&want[..B]), block_entry(&want[B..])]
    );
    assert_eq!(r.errors.load(Ordering::SeqCst), 0);
}
