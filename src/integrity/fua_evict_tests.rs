//! Deterministic tests (separate layout) that a FUA write's checksum entry
//! is durable when the write completes even though an eviction wrote its
//! page meanwhile with a plain (volatile) write: over a member that models
//! a volatile write cache and loses everything not flushed at a "crash".

use std::sync::{Arc, Mutex};

use super::cache::{CacheBudget, MIN_BUDGET};
use super::page::{block_entry, decode_page, PAGE_BYTES, PAGE_ENTRIES};
use super::{ChecksumDevice, CsumStore, Trusted};
use crate::block::{BlockDevice, BlockResult, Durability, IoFuture};
use crate::raid::test_support::pattern;
use crate::units::ByteOffset;

/// A member with a volatile write cache: plain writes reach the durable
/// image at the next flush, FUA writes at once; [`CrashDevice::crashed`]
/// is what a power loss would leave.
#[derive(Debug)]
struct CrashDevice {
    size: u64,
    state: Mutex<CrashState>,
}

#[derive(Debug)]
struct CrashState {
    current: Vec<u8>,
    durable: Vec<u8>,
    /// Writes not yet flushed, in order.
    pending: Vec<(usize, Vec<u8>)>,
}

impl CrashDevice {
    fn new(size: u64) -> Arc<CrashDevice> {
        Arc::new(CrashDevice {
            size,
            state: Mutex::new(CrashState {
                current: vec![0; size as usize],
                durable: vec![0; size as usize],
                pending: Vec::new(),
            }),
        })
    }

    /// The durable image (what a crash now leaves).
    fn crashed(&self) -> Vec<u8> {
        self.state.lock().unwrap().durable.clone()
    }

    fn apply(&self, at: usize, data: &[u8], durability: Durability) {
        let mut s = self.state.lock().unwrap();
        s.current[at..at + data.len()].copy_from_slice(data);
        s.pending.push((at, data.to_vec()));
        if durability == Durability::Fua {
            s.durable[at..at + data.len()].copy_from_slice(data);
        }
    }
}

impl BlockDevice for CrashDevice {
    fn name(&self) -> &str {
        "crash"
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn read<'a>(&'a self, offset: ByteOffset, buf: &'a mut [u8]) -> IoFuture<'a> {
        crate::block::BoxFuture::new(async move {
            crate::block::check_range(offset, buf.len() as u64, self.size)?;
            let s = self.state.lock().unwrap();
            let at = offset.get() as usize;
            buf.copy_from_slice(&s.current[at..at + buf.len()]);
            Ok(())
        })
    }

    fn write<'a>(
        &'a self,
        offset: ByteOffset,
        buf: &'a [u8],
        durability: Durability,
    ) -> IoFuture<'a> {
        crate::block::BoxFuture::new(async move {
            crate::block::check_range(offset, buf.len() as u64, self.size)?;
            self.apply(offset.get() as usize, buf, durability);
            Ok(())
        })
    }

    fn flush(&self) -> IoFuture<'_> {
        crate::block::BoxFuture::new(async move {
            let mut s = self.state.lock().unwrap();
            let pending = std::mem::take(&mut s.pending);
            for (at, data) in pending {
                s.durable[at..at + data.len()].copy_from_slice(&data);
            }
            Ok(())
        })
    }

    fn discard(&self, offset: ByteOffset, len: u64) -> IoFuture<'_> {
        self.write_zeroes(offset, len, true)
    }

    fn write_zeroes(&self, offset: ByteOffset, len: u64, _may_unmap: bool) -> IoFuture<'_> {
        crate::block::BoxFuture::new(async move {
            crate::block::check_range(offset, len, self.size)?;
            self.apply(
                offset.get() as usize,
                &vec![0; len as usize],
                Durability::Normal,
            );
            Ok(())
        })
    }
}

/// Pages the tests spread writes over: four times the smallest budget, so
/// writing one block in each evicts (and writes back) every earlier page.
const PAGES: u64 = 4 * MIN_BUDGET / PAGE_BYTES as u64;
const BLOCKS: u64 = PAGES * PAGE_ENTRIES as u64;
const AREA: u64 = 4096;

fn store_over(area: &Arc<CrashDevice>) -> Arc<CsumStore> {
    let budget = Arc::new(CacheBudget::new(MIN_BUDGET));
    let raw: Arc<dyn BlockDevice> = area.clone();
    Arc::new(CsumStore::with_budget(raw, AREA, BLOCKS, false, budget))
}

fn area_device() -> Arc<CrashDevice> {
    CrashDevice::new(AREA + PAGES * PAGE_BYTES as u64)
}

/// The entry of `block` in a crashed area image.
fn durable_entry(image: &[u8], block: u64) -> u32 {
    let page = block / PAGE_ENTRIES as u64;
    let at = (AREA + page * PAGE_BYTES as u64) as usize;
    decode_page(&image[at..at + PAGE_BYTES])[(block % PAGE_ENTRIES as u64) as usize]
}

/// Sets one entry in each page but `skip`'s, enough to evict every page.
async fn evict_everything(store: &CsumStore, skip: u64) -> BlockResult {
    for p in (0..PAGES).filter(|&p| p != skip) {
        store.set(p * PAGE_ENTRIES as u64 + 1, &[7]).await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_fua_update_whose_page_an_eviction_wrote_meanwhile_survives_a_crash() {
    // Arrange: the device's protocol for a FUA write (epoch before the
    // entry is set), and an eviction between the update and its FUA
    // write-back that takes the page with a plain write.
    let area = area_device();
    let store = store_over(&area);
    let block = 5;
    let epoch = store.eviction_writes();
    store.set(block, &[0xabcd_0001]).await.unwrap();
    evict_everything(&store, 0).await.unwrap();
    assert_ne!(store.eviction_writes(), epoch, "no eviction happened");

    // Act
    store.write_pages_fua(epoch).await.unwrap();

    // Assert: the crash image holds the entry.
    assert_eq!(durable_entry(&area.crashed(), block), 0xabcd_0001);
}

#[tokio::test]
async fn without_the_flush_an_evicted_fua_update_would_be_lost() {
    // The negative control of the test above: writing the dirty pages
    // FUA alone (no flush for the eviction) leaves the entry volatile,
    // so the crash model does tell the two apart.
    let area = area_device();
    let store = store_over(&area);
    let block = 5;
    store.set(block, &[0xabcd_0001]).await.unwrap();
    evict_everything(&store, 0).await.unwrap();

    store.write_pages(Durability::Fua).await.unwrap();

    assert_eq!(durable_entry(&area.crashed(), block), 0);
}

#[tokio::test]
async fn a_fua_data_write_after_evictions_has_a_durable_matching_entry() {
    // Arrange: a checksum device over crash-modelling data and area; a
    // plain write dirties page 0, evictions write it back plainly.
    let data = CrashDevice::new(BLOCKS * 4096);
    let area = area_device();
    let store = store_over(&area);
    let trusted: Trusted = Arc::new(|_| true);
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let dev = ChecksumDevice::new(data.clone(), store.clone(), trusted, errors);
    let plain = pattern(4096, 1);
    dev.write(ByteOffset(0), &plain, Durability::Normal)
        .await
        .unwrap();
    evict_everything(&store, 0).await.unwrap();

    // Act: a FUA write into the evicted page.
    let fua = pattern(4096, 2);
    dev.write(ByteOffset(3 * 4096), &fua, Durability::Fua)
        .await
        .unwrap();

    // Assert: after a crash, the FUA block and its entry match.
    let crashed = data.crashed();
    assert_eq!(&crashed[3 * 4096..4 * 4096], &fua[..]);
    assert_eq!(durable_entry(&area.crashed(), 3), block_entry(&fua));
}
