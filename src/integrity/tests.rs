//! Unit tests of the checksum store and device over in-memory members.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::page::{block_entry, decode_page, encode_page, zero_entry, BLOCK, UNKNOWN};
use super::{ChecksumDevice, CsumStore, Trusted};
use crate::block::{BlockDevice, BlockError, Durability};
use crate::raid::test_support::{pattern, xor_byte, TestDevice};
use crate::units::ByteOffset;

const B: usize = BLOCK as usize;

fn all_trusted() -> Trusted {
    Arc::new(|_| true)
}

struct Rig {
    data: Arc<TestDevice>,
    area: Arc<TestDevice>,
    store: Arc<CsumStore>,
    dev: ChecksumDevice,
    errors: Arc<AtomicU64>,
}

fn rig(blocks: u64, trusted: Trusted) -> Rig {
    let data = TestDevice::new("data", blocks * BLOCK);
    let area = TestDevice::new("area", 4 * 4096);
    let store = Arc::new(CsumStore::new(area.clone(), 4096, blocks, false));
    let errors = Arc::new(AtomicU64::new(0));
    let dev = ChecksumDevice::new(data.clone(), store.clone(), trusted, errors.clone());
    Rig {
        data,
        area,
        store,
        dev,
        errors,
    }
}

/// A rig whose `blocks` blocks hold `pattern(.., seed)`, written through
/// the device (entries known).
async fn written_rig(blocks: u64, trusted: Trusted, seed: u64) -> (Rig, Vec<u8>) {
    let r = rig(blocks, trusted);
    let data = pattern(blocks as usize * B, seed);
    r.dev
        .write(ByteOffset(0), &data, Durability::Normal)
        .await
        .unwrap();
    (r, data)
}

async fn flip(dev: &TestDevice, at: u64) {
    xor_byte(&dev.mem, at, 0x5a).await.unwrap();
}

#[tokio::test]
async fn store_loads_a_page_only_when_first_used() {
    let area = TestDevice::new("area", 3 * 4096);
    let mut entries = vec![0u32; 1024];
    entries[3] = 77;
    area.mem
        .write(ByteOffset(4096), &encode_page(&entries), Durability::Normal)
        .await
        .unwrap();
    let store = CsumStore::new(area.clone(), 4096, 2048, false);
    assert_eq!(area.reads.load(Ordering::SeqCst), 0);
    assert_eq!(store.entries(3, 1).await.unwrap(), vec![77]);
    assert_eq!(store.entries(0, 4).await.unwrap(), vec![0, 0, 0, 77]);
    assert_eq!(area.reads.load(Ordering::SeqCst), 1, "one page, read once");
    store.entries(1500, 1).await.unwrap();
    assert_eq!(area.reads.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn writeback_writes_only_dirty_pages_and_a_racing_update_redirties() {
    let area = TestDevice::new("area", 3 * 4096);
    let store = Arc::new(CsumStore::new(area.clone(), 0, 2048, false));
    store.set(5, &[11]).await.unwrap();
    store.entries(1500, 1).await.unwrap(); // loaded, clean
                                           // Hold the page write while another update lands.
    area.gate_closed.store(true, Ordering::SeqCst);
    let wb = tokio::spawn({
        let store = store.clone();
        async move { store.writeback().await }
    });
    while area.writes.load(Ordering::SeqCst) == 0 && store.dirty_pages() == 1 {
        tokio::task::yield_now().await;
    }
    store.set(6, &[12]).await.unwrap();
    area.gate_closed.store(false, Ordering::SeqCst);
    area.gate_open.notify_one();
    assert_eq!(wb.await.unwrap().unwrap(), 1);
    assert_eq!(
        store.dirty_pages(),
        1,
        "the racing update dirtied the page again"
    );
    assert_eq!(store.writeback().await.unwrap(), 1);
    assert_eq!(store.dirty_pages(), 0);
    let mut page = vec![0u8; 4096];
    area.mem.read(ByteOffset(0), &mut page).await.unwrap();
    let on_disk = decode_page(&page);
    assert_eq!((on_disk[5], on_disk[6]), (11, 12));
    assert_eq!(
        area.writes.load(Ordering::SeqCst),
        2,
        "the clean page was never written"
    );
}

#[tokio::test]
async fn fresh_store_reads_nothing_and_writes_back_every_touched_page() {
    let area = TestDevice::new("area", 2 * 4096);
    area.mem
        .write(ByteOffset(0), &[0xff; 8192], Durability::Normal)
        .await
        .unwrap();
    let store = CsumStore::new(area.clone(), 0, 2048, true);
    assert_eq!(store.entries(0, 2).await.unwrap(), vec![UNKNOWN, UNKNOWN]);
    assert_eq!(area.reads.load(Ordering::SeqCst), 0);
    assert_eq!(store.writeback().await.unwrap(), 1);
    let mut page = vec![0u8; 4096];
    area.mem.read(ByteOffset(0), &mut page).await.unwrap();
    assert!(
        decode_page(&page).iter().all(|&e| e == UNKNOWN),
        "garbage replaced"
    );
}

#[tokio::test]
async fn flipped_bytes_are_reported_with_the_exact_block_count() {
    let (r, data) = written_rig(8, all_trusted(), 1).await;
    flip(&r.data, 2 * BLOCK + 17).await;
    flip(&r.data, 5 * BLOCK).await;
    let mut buf = vec![0u8; 8 * B];
    let err = r.dev.read(ByteOffset(0), &mut buf).await.unwrap_err();
    match err {
        BlockError::Corrupt { offset, blocks, .. } => assert_eq!((offset, blocks), (2 * BLOCK, 2)),
        e => panic!("expected Corrupt, got {e}"),
    }
    assert_eq!(r.errors.load(Ordering::SeqCst), 2);
    // An unaligned read inside a good block is fine.
    let mut small = vec![0u8; 100];
    r.dev.read(ByteOffset(100), &mut small).await.unwrap();
    assert_eq!(small, data[100..200]);
}

#[tokio::test]
async fn a_bad_block_is_counted_once_until_it_is_rewritten() {
    let (r, data) = written_rig(4, all_trusted(), 5).await;
    flip(&r.data, BLOCK + 9).await;
    let mut buf = vec![0u8; 4 * B];
    let mut one = vec![0u8; B];

    for _ in 0..3 {
        assert!(r.dev.read(ByteOffset(0), &mut buf).await.is_err());
    }
    assert!(r.dev.read(ByteOffset(BLOCK), &mut one).await.is_err());
    let after_reads = r.errors.load(Ordering::SeqCst);
    r.dev
        .write(ByteOffset(BLOCK), &data[B..2 * B], Durability::Normal)
        .await
        .unwrap();
    r.dev.read(ByteOffset(0), &mut buf).await.unwrap();
    flip(&r.data, BLOCK + 10).await;
    assert!(r.dev.read(ByteOffset(0), &mut buf).await.is_err());

    assert_eq!(after_reads, 1, "four reads of one bad block count it once");
    assert_eq!(
        r.errors.load(Ordering::SeqCst),
        2,
        "bad again after a rewrite"
    );
}

#[tokio::test]
async fn unaligned_write_merges_the_edges_into_the_checksum() {
    let (r, data) = written_rig(4, all_trusted(), 2).await;
    let patch = pattern(5000, 3);
    r.dev
        .write(ByteOffset(3000), &patch, Durability::Normal)
        .await
        .unwrap();
    let mut want = data.clone();
    want[3000..8000].copy_from_slice(&patch);
    let mut buf = vec![0u8; 4 * B];
    r.dev.read(ByteOffset(0), &mut buf).await.unwrap();
    assert!(buf == want);
    let entries = r.store.entries(0, 2).await.unwrap();
    assert_eq!(entries[0], block_entry(&want[..B]));
    assert_eq!(entries[1], block_entry(&want[B..2 * B]));
    assert_eq!(r.errors.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn unaligned_write_over_a_bad_block_keeps_it_detectably_bad() {
    let (r, _) = written_rig(2, all_trusted(), 4).await;
    flip(&r.data, 4000).await;
    r.dev
        .write(ByteOffset(10), &[1, 2, 3], Durability::Normal)
        .await
        .unwrap();
    let entry = r.store.entries(0, 1).await.unwrap()[0];
    assert_ne!(entry, UNKNOWN, "not forgotten");
    let mut buf = vec![0u8; B];
    assert!(matches!(
        r.dev.read(ByteOffset(0), &mut buf).await,
        Err(BlockError::Corrupt { blocks: 1, .. })
    ));
    assert_eq!(
        r.errors.load(Ordering::SeqCst),
        1,
        "counted once, by the read"
    );
}

#[tokio::test]
async fn untrusted_blocks_are_not_verified() {
    let (r, _) = written_rig(2, Arc::new(|off| off >= BLOCK), 5).await;
    flip(&r.data, 10).await;
    let mut buf = vec![0u8; B];
    r.dev.read(ByteOffset(0), &mut buf).await.unwrap();
    flip(&r.data, BLOCK + 10).await;
    assert!(r.dev.read(ByteOffset(BLOCK), &mut buf).await.is_err());
    assert_eq!(r.errors.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn discard_and_zeroes_leave_matching_checksums() {
    let r = rig(4, all_trusted());
    r.dev
        .write(ByteOffset(0), &pattern(4 * B, 6), Durability::Normal)
        .await
        .unwrap();
    r.dev.discard(ByteOffset(100), 9000).await.unwrap();
    r.dev
        .write_zeroes(ByteOffset(3 * BLOCK), BLOCK, false)
        .await
        .unwrap();
    let mut buf = vec![0u8; 4 * B];
    r.dev.read(ByteOffset(0), &mut buf).await.unwrap();
    assert_eq!(r.store.entries(1, 1).await.unwrap(), vec![zero_entry()]);
    assert_eq!(r.store.entries(3, 1).await.unwrap(), vec![zero_entry()]);
    assert_eq!(r.errors.load(Ordering::SeqCst), 0);
    assert_eq!(
        r.area.writes.load(Ordering::SeqCst),
        0,
        "write-back, not write-through"
    );
}

#[tokio::test]
async fn a_flush_writes_back_the_pages_of_the_writes_before_it_and_only_then() {
    // Arrange
    let r = rig(8, all_trusted());
    let data = pattern(2 * B, 9);
    r.dev
        .write(ByteOffset(0), &data, Durability::Normal)
        .await
        .unwrap();
    r.area.reset_counters();

    // Act: a flush after a write, then one with nothing new, then a FUA
    // write.
    r.dev.flush().await.unwrap();
    let after_first = r.area.writes.load(Ordering::SeqCst);
    r.dev.flush().await.unwrap();
    let after_second = r.area.writes.load(Ordering::SeqCst);
    let fua = pattern(B, 10);
    r.dev
        .write(ByteOffset(BLOCK * 3), &fua, Durability::Fua)
        .await
        .unwrap();

    // Assert: the page was written once, then again FUA with the FUA write.
    assert_eq!((after_first, after_second), (1, 1));
    assert_eq!(r.area.fua_writes.load(Ordering::SeqCst), 1);
    let mut page = vec![0u8; 4096];
    r.area.read(ByteOffset(4096), &mut page).await.unwrap();
    let entries = decode_page(&page);
    assert_eq!(entries[0], block_entry(&data[..B]));
    assert_eq!(entries[3], block_entry(&fua));
}

#[tokio::test]
async fn unaligned_write_over_a_bad_block_of_an_unverified_region_is_not_sealed() {
    // Arrange: a region dirty at a crash (not verified) whose block was
    // written wrong before it: the entry names the good bytes.
    let (r, _) = written_rig(2, Arc::new(|_| false), 7).await;
    flip(&r.data, 4000).await;

    // Act: a client writes 3 bytes into it before the resync.
    r.dev
        .write(ByteOffset(10), &[1, 2, 3], Durability::Normal)
        .await
        .unwrap();

    // Assert: the merge of bad bytes is not sealed as good (the resync must
    // still see a block failing its checksum and take another copy), and
    // reads there are still not verified.
    let mut merged = vec![0u8; B];
    r.dev.read(ByteOffset(0), &mut merged).await.unwrap();
    let entry = r.store.entries(0, 1).await.unwrap()[0];
    assert_ne!(entry, UNKNOWN, "not forgotten");
    assert_ne!(entry, block_entry(&merged), "not sealed");
    assert_eq!(r.errors.load(Ordering::SeqCst), 0);
}

/// Whole-block segment lists are sealed and verified in place: the same
/// entries as a contiguous write, and a flipped byte is reported by a
/// vectored read.
#[tokio::test]
async fn vectored_whole_blocks_are_sealed_and_verified_in_place() {
    use std::io::{IoSlice, IoSliceMut};
    // Arrange
    let r = rig(8, all_trusted());
    let data = pattern(4 * B, 51);
    let (a, b) = data.split_at(B);
    r.dev
        .write_vectored(
            ByteOffset(B as u64),
            &[IoSlice::new(a), IoSlice::new(b)],
            Durability::Normal,
        )
        .await
        .unwrap();

    // Act
    let mut out = vec![0u8; 4 * B];
    let (x, y) = out.split_at_mut(3 * B);
    let list = &mut [IoSliceMut::new(x), IoSliceMut::new(y)];
    r.dev
        .read_vectored(ByteOffset(B as u64), list)
        .await
        .unwrap();
    flip(&r.data, 4 * B as u64 + 9).await;
    let mut again = vec![0u8; 4 * B];
    let (x, y) = again.split_at_mut(B);
    let list = &mut [IoSliceMut::new(x), IoSliceMut::new(y)];
    let bad = r.dev.read_vectored(ByteOffset(B as u64), list).await;

    // Assert
    assert!(out == data);
    let want: Vec<u32> = data.chunks(B).map(block_entry).collect();
    assert_eq!(r.store.entries(1, 4).await.unwrap(), want);
    assert!(
        matches!(bad, Err(BlockError::Corrupt { offset, blocks: 1, .. }) if offset == 4 * BLOCK),
        "{bad:?}"
    );
    assert_eq!(r.errors.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn sequential_small_writes_read_each_block_once() {
    let (r, mut want) = written_rig(3, all_trusted(), 11).await;
    r.data.reset_counters();
    // 1 KiB writes over blocks 0-1, then one write across blocks 1-2.
    for (i, at) in (0..2 * B).step_by(1024).enumerate() {
        let patch = pattern(1024, 20 + i as u64);
        r.dev
            .write(ByteOffset(at as u64), &patch, Durability::Normal)
            .await
            .unwrap();
        want[at..at + 1024].copy_from_slice(&patch);
    }
    assert_eq!(r.data.reads.load(Ordering::SeqCst), 2, "one read per block");
    let patch = pattern(2048, 40);
    r.dev
        .write(ByteOffset(2 * B as u64 - 1024), &patch, Durability::Normal)
        .await
        .unwrap();
    want[2 * B - 1024..2 * B + 1024].copy_from_slice(&patch);
    assert_eq!(
        r.data.reads.load(Ordering::SeqCst),
        3,
        "block 1 kept, 2 read"
    );
    let mut buf = vec![0u8; 3 * B];
    r.dev.read(ByteOffset(0), &mut buf).await.unwrap();
    assert!(buf == want);
    assert_eq!(r.errors.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_kept_block_is_forgotten_by_other_changes_of_it() {
    let (r, mut want) = written_rig(2, all_trusted(), 12).await;
    let small = |at: usize, seed: u64| (at, pattern(1000, seed));
    let write_small = |(at, patch): (usize, Vec<u8>)| {
        let dev = &r.dev;
        async move {
            dev.write(ByteOffset(at as u64), &patch, Durability::Normal)
                .await
                .unwrap();
            (at, patch)
        }
    };
    let (at, p) = write_small(small(100, 1)).await;
    want[at..at + 1000].copy_from_slice(&p);
    // A whole-block write, a discard and write-zeroes each change the
    // block: the next small write merges what the member holds now.
    let whole = pattern(B, 2);
    r.dev
        .write(ByteOffset(0), &whole, Durability::Normal)
        .await
        .unwrap();
    want[..B].copy_from_slice(&whole);
    let (at, p) = write_small(small(2000, 3)).await;
    want[at..at + 1000].copy_from_slice(&p);
    r.dev.discard(ByteOffset(0), BLOCK).await.unwrap();
    r.dev
        .write_zeroes(ByteOffset(B as u64), BLOCK, false)
        .await
        .unwrap();
    want.fill(0);
    let (at, p) = write_small(small(3000, 4)).await;
    want[at..at + 1000].copy_from_slice(&p);
    let (at, p) = write_small(small(B + 5, 5)).await;
    want[at..at + 1000].copy_from_slice(&p);
    let mut buf = vec![0u8; 2 * B];
    r.dev.read(ByteOffset(0), &mut buf).await.unwrap();
    assert!(buf == want);
    assert_eq!(r.errors.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_cancelled_small_write_that_landed_leaves_no_stale_block() {
    let (r, mut want) = written_rig(1, all_trusted(), 13).await;
    let first = pattern(1024, 1);
    r.dev
        .write(ByteOffset(0), &first, Durability::Normal)
        .await
        .unwrap();
    want[..1024].copy_from_slice(&first);
    // The next write is dropped at the member, but its bytes land anyway
    // (an io_uring write, once submitted, is not taken back).
    r.data.gate_closed.store(true, Ordering::SeqCst);
    let second = pattern(1024, 2);
    {
        let mut write = r.dev.write(ByteOffset(1024), &second, Durability::Normal);
        assert!(
            futures::poll!(&mut write).is_pending(),
            "waits at the member"
        );
    }
    r.data.gate_closed.store(false, Ordering::SeqCst);
    r.data.gate_open.notify_waiters();
    r.data
        .mem
        .write(ByteOffset(1024), &second, Durability::Normal)
        .await
        .unwrap();
    want[1024..2048].copy_from_slice(&second);
    let reads = r.data.reads.load(Ordering::SeqCst);
    let third = pattern(1024, 3);
    r.dev
        .write(ByteOffset(2048), &third, Durability::Normal)
        .await
        .unwrap();
    want[2048..3072].copy_from_slice(&third);
    assert_eq!(r.data.reads.load(Ordering::SeqCst), reads + 1, "read again");
    // The landed write never set its entry: the member's block fails it,
    // so the merge is kept detectably bad (as without the cache) until a
    // resync reseals it.
    assert!(r.data.mem.snapshot()[..B] == want[..]);
    let mut buf = vec![0u8; B];
    assert!(matches!(
        r.dev.read(ByteOffset(0), &mut buf).await,
        Err(BlockError::Corrupt { blocks: 1, .. })
    ));
}

#[tokio::test]
async fn a_kept_block_rotted_on_the_member_is_still_reported() {
    let (r, _) = written_rig(1, all_trusted(), 14).await;
    r.dev
        .write(ByteOffset(0), &[7u8; 1024], Durability::Normal)
        .await
        .unwrap();
    flip(&r.data, 3000).await;
    // Merged from the kept bytes: the entry is the block as written, so
    // the rot in the rest of the block is not blessed.
    r.dev
        .write(ByteOffset(1024), &[8u8; 1024], Durability::Normal)
        .await
        .unwrap();
    let mut buf = vec![0u8; B];
    assert!(matches!(
        r.dev.read(ByteOffset(0), &mut buf).await,
        Err(BlockError::Corrupt { blocks: 1, .. })
    ));
}
