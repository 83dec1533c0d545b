//! A dropped member's checksum store is retired (docs/FORMAT.md §8 crash
//! case 87): its old dirty pages are never written over what a later store
//! of the same device (a re-join) wrote, and the retiring follows the
//! device, not the role (a replace has two live stores for one role).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tokio::sync::watch;

use super::page::{block_entry, BLOCK};
use super::{Checksums, CsumStore};
use crate::block::{BlockDevice, Durability, IoFuture};
use crate::raid::test_support::{pattern, Array, TestDevice};
use crate::raid::{Level, MemberIndex};
use crate::units::ByteOffset;

const MEMBER: u64 = 1 << 20;
const BLOCKS: u64 = MEMBER / BLOCK;

/// A view of a checksum area whose writes can be ordered against another
/// view's: it waits for `after` before writing, and raises `done` after.
struct View {
    area: Arc<TestDevice>,
    after: Option<watch::Receiver<bool>>,
    done: Option<watch::Sender<bool>>,
}

impl BlockDevice for View {
    crate::block::forward_to!(area => name, size, read, flush, discard, write_zeroes);

    fn write<'a>(&'a self, at: ByteOffset, buf: &'a [u8], durability: Durability) -> IoFuture<'a> {
        crate::block::BoxFuture::new(async move {
            if let Some(mut after) = self.after.clone() {
                let _ = after.wait_for(|&up| up).await;
            }
            let r = self.area.write(at, buf, durability).await;
            if let Some(done) = &self.done {
                done.send_replace(true);
            }
            r
        })
    }
}

/// The entry of block 0 as a fresh start would read it from `area`.
async fn stored_entry(area: &Arc<TestDevice>) -> u32 {
    let store = CsumStore::new(area.clone(), 0, BLOCKS, false);
    store.entries(0, 1).await.unwrap()[0]
}

/// A checksummed two-way RAID-1 whose member 0 keeps its checksum pages
/// on `area0` through `view0`; member 1's are in memory. Block 0 holds
/// `first` (the pages not written back yet).
async fn mirror(csums: &Arc<Checksums>, view0: View, first: &[u8]) -> Array {
    let errors = Arc::new(AtomicU64::new(0));
    let view0: Arc<dyn BlockDevice> = Arc::new(view0);
    let mut array = Array::new_wrapped(Level::Raid1, 2, 64 << 10, MEMBER, &[], |i, d| match i {
        0 => csums.wrap(
            0,
            view0.clone(),
            0,
            d,
            false,
            Arc::new(|_| true),
            errors.clone(),
        ),
        _ => csums.wrap_in_memory(i, d, false, errors.clone()),
    });
    array.volume = array.volume.with_checksums(csums.clone());
    array
        .volume
        .write(ByteOffset(0), first, Durability::Normal)
        .await
        .unwrap();
    array
}

/// Attaches `target` (over member 0's data device) as the member rebuilt
/// into role 0, then writes `second` to block 0 (it reaches the target).
async fn attach_and_write(array: &Array, target: Arc<dyn BlockDevice>, second: &[u8]) {
    array
        .volume
        .attach_rebuild_target(MemberIndex(0), target, 0)
        .unwrap();
    array
        .volume
        .write(ByteOffset(0), second, Durability::Normal)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_failed_members_old_pages_never_land_over_its_rejoin() {
    // Arrange: member 0 fails with a dirty page (block 0 = first) and
    // re-joins on the same device; block 0 is rewritten (second) and so
    // caught up on the re-joined member. The old store's write of that page
    // is ordered after the new store's, as a race may land it.
    let area = TestDevice::new("m0", BLOCK);
    let (new_written, after_new) = watch::channel(false);
    let csums = Checksums::new();
    let old = View {
        area: area.clone(),
        after: Some(after_new),
        done: None,
    };
    let (first, second) = (pattern(BLOCK as usize, 1), pattern(BLOCK as usize, 2));
    let array = mirror(&csums, old, &first).await;
    array
        .volume
        .fail_member_by_request(MemberIndex(0), "test")
        .await;
    let new = View {
        area: area.clone(),
        after: None,
        done: Some(new_written),
    };
    let errors = Arc::new(AtomicU64::new(0));
    let trusted = Arc::new(|_| true);
    let data0 = array.devices[0].clone();
    let target = csums.wrap(0, Arc::new(new), 0, data0, false, trusted, errors);
    attach_and_write(&array, target, &second).await;

    // Act: a clean shutdown writes back every store.
    let errors = csums.writeback_roles().await;

    // Assert: the re-joined member's entry of block 0 is the one on disk.
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(stored_entry(&area).await, block_entry(&second));
}

#[tokio::test]
async fn failing_the_old_member_of_a_replace_retires_only_its_store() {
    // Arrange: a replace of member 0 onto another device; block 0 written
    // while both take writes, then the old member fails, then block 0 is
    // written again (reaching the new one only).
    let (old_area, new_area) = (TestDevice::new("old", BLOCK), TestDevice::new("new", BLOCK));
    let csums = Checksums::new();
    let old = View {
        area: old_area.clone(),
        after: None,
        done: None,
    };
    let (first, second) = (pattern(BLOCK as usize, 3), pattern(BLOCK as usize, 4));
    let array = mirror(&csums, old, &first).await;
    let never_before = stored_entry(&old_area).await;
    let errors = Arc::new(AtomicU64::new(0));
    let new_data = TestDevice::new("new-data", MEMBER);
    let target = csums.wrap(
        0,
        new_area.clone(),
        0,
        new_data,
        true,
        Arc::new(|_| true),
        errors,
    );
    attach_and_write(&array, target, &first).await;
    array
        .volume
        .fail_member_by_request(MemberIndex(0), "test")
        .await;
    array
        .volume
        .write(ByteOffset(0), &second, Durability::Normal)
        .await
        .unwrap();

    // Act
    let errors = csums.writeback_roles().await;

    // Assert: the new member's page is written, the failed one's is not.
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(stored_entry(&new_area).await, block_entry(&second));
    assert_eq!(stored_entry(&old_area).await, never_before);
    assert_ne!(never_before, block_entry(&first));
}
