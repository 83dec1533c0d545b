//! A RAID-5 read-modify-write holds the checksum pages its reads load
//! until its update (`BlockDevice::hold`): over a working set far larger
//! than the page cache, each 4 KiB write loads at most one page per member
//! it touches (data and parity), never the same page twice.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::StreamExt;

use super::cache::MIN_BUDGET;
use super::Checksums;
use crate::block::{BlockDevice, Durability};
use crate::raid::ppl::MemParityLog;
use crate::raid::test_support::{pattern, Array};
use crate::raid::Level;
use crate::units::ByteOffset;

const MEMBER: u64 = 1 << 30;
const WRITES: u64 = 2000;
const IN_FLIGHT: usize = 32;

/// Random 4 KiB-aligned offsets over the whole volume (xorshift).
fn offsets(size: u64) -> Vec<u64> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..WRITES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % (size / 4096) * 4096
        })
        .collect()
}

#[tokio::test]
async fn raid5_random_writes_load_each_page_once_per_write() {
    // Arrange: 4 x 1 GiB members = 1024 pages against a 64-page cache;
    // members yield once per I/O so 32 writes interleave, and a journal
    // record is written between each write's reads and its data writes.
    let csums = Checksums::with_cache(MIN_BUDGET);
    let errors = Arc::new(AtomicU64::new(0));
    let array = Array::new_wrapped(Level::Raid5, 4, 64 << 10, MEMBER, &[], |i, d| {
        csums.wrap_in_memory(i, d, false, errors.clone())
    });
    for d in &array.devices {
        d.yield_first.store(true, Ordering::SeqCst);
    }
    let vol = array
        .volume
        .with_checksums(csums.clone())
        .with_parity_log(Arc::new(MemParityLog::default()));
    let data = pattern(4096, 7);

    // Act
    let writes = offsets(vol.size()).into_iter().map(|off| {
        let (vol, data) = (&vol, &data);
        async move { vol.write(ByteOffset(off), data, Durability::Normal).await }
    });
    let results: Vec<_> = futures::stream::iter(writes)
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;

    // Assert
    assert!(results.iter().all(Result::is_ok), "a write failed");
    let stats = csums.cache_stats();
    assert!(
        stats.evictions > WRITES,
        "the cache was not under pressure: {stats:?}"
    );
    assert!(
        stats.loads <= 2 * WRITES,
        "{} page loads for {WRITES} writes (at most 2 each): {stats:?}",
        stats.loads
    );
    assert_eq!(errors.load(Ordering::SeqCst), 0);
}
