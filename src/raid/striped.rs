//! What the striped levels (RAID-0, RAID-5, RAID-6) share: a read split
//! into per-chunk extents, a parity write split into per-stripe writes,
//! and locks of whole stripes.

use super::layout::{Extent, StripeIndex};
use super::stripe_lock::StripeGuards;
use super::volume::Volume;
use crate::block::{BlockResult, Durability};
use crate::units::ByteOffset;

/// Splits a striped read into per-chunk extents and reads them all
/// concurrently with `read_extent` (the levels differ only in how one
/// extent is recovered from an error).
pub(super) async fn read_extents<'a, F, Fut>(
    vol: &'a Volume,
    offset: ByteOffset,
    buf: &'a mut [u8],
    read_extent: F,
) -> BlockResult
where
    F: Fn(&'a Volume, Extent, &'a mut [u8]) -> Fut,
    Fut: std::future::Future<Output = BlockResult> + 'a,
{
    let mut extents = vol.geometry().extents(offset, buf.len() as u64);
    let (Some(first), second) = (extents.next(), extents.next()) else {
        return Ok(());
    };
    let Some(second) = second else {
        // One chunk (every small request): no list of futures.
        return read_extent(vol, first, buf).await;
    };
    let mut rest = buf;
    let mut reads = Vec::new();
    for e in [first, second].into_iter().chain(extents) {
        let (piece, tail) = std::mem::take(&mut rest).split_at_mut(e.len as usize);
        rest = tail;
        reads.push(read_extent(vol, e, piece));
    }
    futures::future::try_join_all(reads).await.map(drop)
}

/// Locks the stripes holding member data `a..b` (`a < b`).
pub(super) async fn lock_member_stripes(vol: &Volume, a: u64, b: u64) -> StripeGuards<'_> {
    let chunk = vol.geometry().chunk().get();
    vol.locks()
        .lock_range(StripeIndex(a / chunk), StripeIndex((b - 1) / chunk))
        .await
}

/// A parity level's write of `buf` at volume offset `offset`, split per
/// stripe: each stripe runs `write_stripe(vol, stripe, start in the
/// stripe's data, bytes, durability)` under its own stripe lock,
/// concurrently. Sequential writers that share a boundary stripe overlap
/// instead of queueing behind each other's whole request (one lock at a
/// time per future, so no lock-order deadlock is possible); every stripe
/// runs to completion and the first error is returned.
pub(super) async fn write_stripes<'a, F, Fut>(
    vol: &'a Volume,
    offset: ByteOffset,
    buf: &'a [u8],
    durability: Durability,
    write_stripe: F,
) -> BlockResult
where
    F: Fn(&'a Volume, StripeIndex, u64, &'a [u8], Durability) -> Fut,
    Fut: std::future::Future<Output = BlockResult> + 'a,
{
    let locked = |vol: &'a Volume, s: StripeIndex, start, data, d| {
        let write = write_stripe(vol, s, start, data, d);
        async move {
            let _guard = vol.locks().lock(s).await;
            write.await
        }
    };
    each_stripe(vol, offset, buf, durability, locked).await
}

/// [`write_stripes`] with `write_stripe` taking the stripe's lock itself.
pub(super) async fn each_stripe<'a, F, Fut>(
    vol: &'a Volume,
    offset: ByteOffset,
    buf: &'a [u8],
    durability: Durability,
    write_stripe: F,
) -> BlockResult
where
    F: Fn(&'a Volume, StripeIndex, u64, &'a [u8], Durability) -> Fut,
    Fut: std::future::Future<Output = BlockResult> + 'a,
{
    let sds = vol.geometry().stripe_data_size();
    let end = offset.get() + buf.len() as u64;
    let (first, last) = (offset.get() / sds, (end - 1) / sds);
    if first == last {
        // One stripe (every small write): no list of stripe futures.
        let start = offset.get() - first * sds;
        return write_stripe(vol, StripeIndex(first), start, buf, durability).await;
    }
    let mut stripes = Vec::new();
    for s in first..=last {
        let base = s * sds;
        let a = offset.get().max(base);
        let b = end.min(base + sds);
        let data = &buf[(a - offset.get()) as usize..(b - offset.get()) as usize];
        stripes.push(write_stripe(
            vol,
            StripeIndex(s),
            a - base,
            data,
            durability,
        ));
    }
    futures::future::join_all(stripes)
        .await
        .into_iter()
        .collect()
}
