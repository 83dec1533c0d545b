//! What the striped levels (RAID-0, RAID-5) share: a read split into
//! per-chunk extents, and locks of whole stripes.

use super::layout::{Extent, StripeIndex};
use super::stripe_lock::StripeGuards;
use super::volume::Volume;
use crate::block::BlockResult;
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
