//! Write-intent bitmap against in-memory members.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::member::memory::MemDevice;
use crate::meta::{assemble, create_array, CreateSpec};
use crate::raid::Level;

const MEMBER_SIZE: u64 = 300 << 20;

async fn setup(n: usize) -> (Vec<Arc<MemDevice>>, Arc<DiskBitmap>, crate::meta::Assembly) {
    let devs: Vec<Arc<MemDevice>> = (0..n)
        .map(|i| Arc::new(MemDevice::new(format!("m{i}"), MEMBER_SIZE)))
        .collect();
    let dyns: Vec<Arc<dyn crate::block::BlockDevice>> = devs
        .iter()
        .map(|d| d.clone() as Arc<dyn crate::block::BlockDevice>)
        .collect();
    let spec = CreateSpec {
        name: "bm".into(),
        level: Level::Raid1,
        chunk_size: 64 << 10,
        force: false,
    };
    create_array(&dyns, &spec).await.unwrap();
    let named = dyns
        .iter()
        .enumerate()
        .map(|(i, d)| (format!("/m{i}"), d.clone()))
        .collect();
    let asm = assemble(named).await.unwrap();
    let bm = DiskBitmap::load(asm.metadata.clone(), &asm.layout, asm.data_size, true)
        .await
        .with_idle(Duration::ZERO);
    (devs, Arc::new(bm), asm)
}

async fn disk_bits(dev: &MemDevice, layout: &MetaLayout) -> u8 {
    let mut b = [0u8; 1];
    dev.read(ByteOffset(layout.bitmap_offset), &mut b)
        .await
        .unwrap();
    b[0]
}

use crate::block::BlockDevice;

#[tokio::test]
async fn concurrent_writers_of_a_clean_region_share_one_bitmap_write() {
    // Arrange
    let (devs, bm, asm) = setup(2).await;
    // Act: ten writers of region 1 (64M..128M) at once.
    let marks = (0..10).map(|i| {
        bm.mark(
            ByteOffset((64 << 20) + i * 4096),
            ByteOffset((64 << 20) + i * 4096 + 4096),
        )
    });
    for r in futures::future::join_all(marks).await {
        r.unwrap();
    }
    // Assert: one write, the bit durable on every member.
    assert_eq!(bm.writes.load(Ordering::SeqCst), 1);
    for d in &devs {
        assert_eq!(disk_bits(d, &asm.layout).await, 0b10);
    }
    // A later writer of the same region writes nothing.
    bm.mark(ByteOffset(70 << 20), ByteOffset(71 << 20))
        .await
        .unwrap();
    assert_eq!(bm.writes.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn bits_are_cleared_only_when_idle_and_not_in_flight() {
    let (devs, bm, asm) = setup(2).await;
    bm.mark(ByteOffset(0), ByteOffset(4096)).await.unwrap();
    bm.mark(ByteOffset(128 << 20), ByteOffset((128 << 20) + 1))
        .await
        .unwrap();
    assert_eq!(disk_bits(&devs[0], &asm.layout).await, 0b101);
    // Act: region 0 done, region 2 still in flight.
    bm.done(ByteOffset(0), ByteOffset(4096));
    let cleared = bm.clear_idle().await.unwrap();
    // Assert
    assert_eq!(cleared, 1);
    assert_eq!(disk_bits(&devs[1], &asm.layout).await, 0b100);
    // A new write to the cleared region sets the bit again.
    bm.mark(ByteOffset(8192), ByteOffset(12288)).await.unwrap();
    assert_eq!(disk_bits(&devs[1], &asm.layout).await, 0b101);
}

#[tokio::test]
async fn bits_survive_while_the_array_is_degraded() {
    let (_devs, bm, asm) = setup(2).await;
    bm.mark(ByteOffset(0), ByteOffset(4096)).await.unwrap();
    bm.done(ByteOffset(0), ByteOffset(4096));
    asm.metadata.record_member_failed(1).await.unwrap();
    assert_eq!(bm.clear_idle().await.unwrap(), 0);
    assert_eq!(bm.dirty_ranges(), vec![(0, 64 << 20)]);
}

#[tokio::test]
async fn loaded_dirty_regions_are_pinned_until_synced() {
    let (devs, bm, asm) = setup(2).await;
    bm.mark(ByteOffset(0), ByteOffset(4096)).await.unwrap();
    drop(bm);
    // Reload as after a crash.
    let bm = DiskBitmap::load(asm.metadata.clone(), &asm.layout, asm.data_size, true)
        .await
        .with_idle(Duration::ZERO);
    bm.pin_dirty();
    let bm = Arc::new(bm);
    let waiter = tokio::spawn({
        let bm = bm.clone();
        async move { bm.wait_unpinned().await }
    });
    assert_eq!(bm.clear_idle().await.unwrap(), 0);
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished(), "woken while a region is pinned");
    bm.synced(0, 64 << 20);
    tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("woken when the last pinned region is synced")
        .unwrap();
    assert_eq!(bm.clear_idle().await.unwrap(), 1);
    assert_eq!(disk_bits(&devs[0], &asm.layout).await, 0);
}

#[tokio::test]
async fn before_clear_hook_runs_first_and_its_failure_keeps_the_bits() {
    // Arrange: region 0 set on disk; a hook that records the on-disk bits
    // it sees and fails once.
    let (devs, bm, asm) = setup(2).await;
    bm.mark(ByteOffset(0), ByteOffset(4096)).await.unwrap();
    bm.done(ByteOffset(0), ByteOffset(4096));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (dev, layout) = (devs[0].clone(), asm.layout);
    let bm = Arc::into_inner(bm).unwrap().with_before_clear(Arc::new({
        let (seen, fail) = (seen.clone(), fail.clone());
        move || {
            let (seen, fail, dev) = (seen.clone(), fail.clone(), dev.clone());
            crate::block::BoxFuture::new(async move {
                let bits = disk_bits(&dev, &layout).await;
                seen.lock().unwrap().push(bits);
                if fail.swap(false, Ordering::SeqCst) {
                    return Err(BlockError::ReadOnly);
                }
                Ok(())
            })
        }
    }));

    // Act + Assert: the failed hook clears nothing, on disk or in memory.
    assert!(bm.clear_idle().await.is_err());
    assert_eq!(disk_bits(&devs[0], &asm.layout).await, 1);
    assert_eq!(bm.dirty_ranges().len(), 1);
    // The next round clears, and the hook ran while the bit was on disk.
    assert_eq!(bm.clear_idle().await.unwrap(), 1);
    assert_eq!(disk_bits(&devs[0], &asm.layout).await, 0);
    assert_eq!(*seen.lock().unwrap(), vec![1, 1]);
}

#[tokio::test]
async fn pinned_regions_are_not_settled_until_synced() {
    let (_devs, bm, _asm) = setup(2).await;
    bm.set_all();
    bm.pin_dirty();
    assert!(!bm.settled(5 << 20));
    bm.synced(0, 64 << 20);
    assert!(bm.settled(5 << 20));
    assert!(!bm.settled(64 << 20));
}

#[tokio::test]
async fn a_written_bit_is_on_every_member_before_mark_returns_and_is_never_cleared() {
    use crate::meta::written::{WrittenImage, WrittenMap, WRITTEN_OFFSET};
    // Arrange: a bitmap carrying the array's written-region map.
    let (devs, bm, asm) = setup(2).await;
    assert!(asm.written_map);
    let shift = asm.layout.bitmap_region_shift;
    let written = Arc::new(WrittenMap::load(&asm.metadata, shift, asm.data_size).await);
    assert_eq!(written.written_bytes(), 0);
    let bm = Arc::new(Arc::try_unwrap(bm).unwrap().with_written(written.clone()));
    let on_disk = |dev: &Arc<MemDevice>| {
        let raw = dev.snapshot()[WRITTEN_OFFSET as usize..][..4096].to_vec();
        WrittenImage::decode(&raw, shift, asm.data_size).unwrap()
    };

    // Act: a write to region 2, then its bit cleared once idle.
    let (a, b) = (
        ByteOffset((128 << 20) + 4096),
        ByteOffset((128 << 20) + 8192),
    );
    bm.mark(a, b).await.unwrap();
    let before_data: Vec<WrittenImage> = devs.iter().map(on_disk).collect();
    bm.done(a, b);
    bm.clear_all().await.unwrap();

    // Assert: durable on both members before the data write could start,
    // still there after the write-intent bit went, and loaded back.
    for image in &before_data {
        assert!(image.is_written(128 << 20, (128 << 20) + 1));
        assert_eq!(image.count(), 1);
    }
    assert_eq!(disk_bits(&devs[0], &asm.layout).await, 0);
    for dev in &devs {
        assert!(on_disk(dev).is_written(128 << 20, 192 << 20));
    }
    let reloaded = WrittenMap::load(&asm.metadata, shift, asm.data_size).await;
    assert_eq!(reloaded.written_bytes(), 64 << 20);
}

#[tokio::test]
async fn a_full_resync_sets_no_written_bit_and_a_write_after_it_still_records_its_own() {
    use crate::meta::written::{WrittenImage, WrittenMap, WRITTEN_OFFSET};
    // Arrange: a bitmap with the written map, every bit set as by a crash
    // resync of an untrusted bitmap, and written to disk.
    let (devs, bm, asm) = setup(2).await;
    let shift = asm.layout.bitmap_region_shift;
    let written = Arc::new(WrittenMap::load(&asm.metadata, shift, asm.data_size).await);
    let bm = Arc::new(Arc::try_unwrap(bm).unwrap().with_written(written.clone()));
    let on_disk = |dev: &Arc<MemDevice>| {
        let raw = dev.snapshot()[WRITTEN_OFFSET as usize..][..4096].to_vec();
        WrittenImage::decode(&raw, shift, asm.data_size).unwrap()
    };
    bm.set_all();
    bm.persist().await.unwrap();
    assert_eq!(
        written.written_bytes(),
        0,
        "the resync's bits are not writes"
    );
    assert_eq!(bm.dirty_ranges(), vec![(0, asm.data_size)]);
    assert_ne!(disk_bits(&devs[0], &asm.layout).await, 0);
    let writes = bm.writes.load(Ordering::Relaxed);

    // Act: a write into region 2, whose bitmap bit is already durable.
    let (a, b) = (ByteOffset(128 << 20), ByteOffset((128 << 20) + 4096));
    bm.mark(a, b).await.unwrap();

    // Assert: its written bit reached every member before mark returned
    // (one more metadata write), and no other region counts as written.
    assert_eq!(bm.writes.load(Ordering::Relaxed), writes + 1);
    for dev in &devs {
        let image = on_disk(dev);
        assert!(image.is_written(128 << 20, (128 << 20) + 1));
        assert_eq!(image.count(), 1);
    }
    // A second write there needs no metadata write at all.
    bm.mark(a, b).await.unwrap();
    assert_eq!(bm.writes.load(Ordering::Relaxed), writes + 1);
    bm.done(a, b);
    bm.done(a, b);
}

#[tokio::test]
async fn a_member_failing_while_bits_are_cleared_keeps_them() {
    // Arrange: region 0 written and idle on a whole RAID-1; the hook that
    // runs inside the clear fails member 1 (as a member timing out while
    // the clear waits for the writer or flushes would).
    let (devs, bm, asm) = setup(2).await;
    bm.mark(ByteOffset(0), ByteOffset(4096)).await.unwrap();
    bm.done(ByteOffset(0), ByteOffset(4096));
    let meta = asm.metadata.clone();
    let bm = Arc::into_inner(bm)
        .unwrap()
        .with_before_clear(Arc::new(move || {
            let meta = meta.clone();
            crate::block::BoxFuture::new(async move {
                meta.record_member_failed(1).await.unwrap();
                Ok(())
            })
        }));

    // Act: a clean shutdown's clear of every bit.
    let cleared = bm.clear_all().await.unwrap();

    // Assert: nothing cleared, on disk or in memory: the re-add of member
    // 1 catches region 0 up.
    assert_eq!(cleared, 0);
    assert_eq!(disk_bits(&devs[0], &asm.layout).await, 1);
    assert_eq!(bm.dirty_ranges(), vec![(0, 64 << 20)]);
}
