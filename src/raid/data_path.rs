//! The per-request data path (read, write) of each level, picked by a
//! `match` on the level: the request runs inside the volume's one future,
//! with no boxed future per level call, but for the writes of the levels
//! with redundancy: their futures (3.6-7.3 KiB) live in a pooled box of
//! their own, so a RAID-0 write's future is not as large as a RAID-5
//! one's (the volume's future is moved into the future pool per request,
//! every byte of it). The rest of a level's contract (clears, sync steps,
//! scrub) is [`super::level::LevelIo`].
//!
//! The `_segments` forms take a scatter-gather list of more than one
//! segment (`BlockDevice::read_vectored`): RAID-0 and RAID-1 pass sub-lists
//! to the members, RAID-5 reads so too (writes gather into one buffer for
//! the parity path); a level without its own goes through a copy.

use std::io::{IoSlice, IoSliceMut};

use super::volume::Volume;
use super::{raid0, raid1, raid10, raid5, raid6, Level};
use crate::block::{BlockResult, BoxFuture, Durability};
use crate::units::ByteOffset;

/// Reads `buf.len()` volume bytes at `at` (checked, non-empty, counted busy).
pub(super) async fn read(vol: &Volume, at: ByteOffset, buf: &mut [u8]) -> BlockResult {
    match vol.geometry().level() {
        Level::Raid0 => raid0::read(vol, at, buf).await,
        Level::Raid1 => raid1::read(vol, at, buf).await,
        Level::Raid5 => raid5::read(vol, at, buf).await,
        Level::Raid6 => raid6::read(vol, at, buf).await,
        Level::Raid10(_) => raid10::read(vol, at, buf).await,
    }
}

/// Writes `buf` at volume offset `at` (checked, non-empty, counted busy,
/// write intent recorded).
pub(super) async fn write(vol: &Volume, at: ByteOffset, buf: &[u8], d: Durability) -> BlockResult {
    match vol.geometry().level() {
        Level::Raid0 => raid0::write(vol, at, buf, d).await,
        Level::Raid1 => BoxFuture::new(raid1::write(vol, at, buf, d)).await,
        Level::Raid5 => BoxFuture::new(raid5::write(vol, at, buf, d)).await,
        Level::Raid6 => BoxFuture::new(raid6::write(vol, at, buf, d)).await,
        Level::Raid10(_) => BoxFuture::new(raid10::write(vol, at, buf, d)).await,
    }
}

/// Reads volume bytes at `at` into the segments of `bufs` (checked,
/// non-empty, counted busy).
pub(super) async fn read_segments(
    vol: &Volume,
    at: ByteOffset,
    bufs: &mut [IoSliceMut<'_>],
) -> BlockResult {
    #[allow(unreachable_patterns)]
    match vol.geometry().level() {
        Level::Raid0 => raid0::read_segments(vol, at, bufs).await,
        Level::Raid1 => raid1::read_segments(vol, at, bufs).await,
        Level::Raid5 => raid5::read_segments(vol, at, bufs).await,
        _ => {
            let mut data = vec![0u8; crate::iovec::len_mut(bufs)];
            read(vol, at, &mut data).await?;
            crate::iovec::scatter(&data, bufs);
            Ok(())
        }
    }
}

/// Writes the segments of `bufs` at volume offset `at` (checked,
/// non-empty, counted busy, write intent recorded).
pub(super) async fn write_segments(
    vol: &Volume,
    at: ByteOffset,
    bufs: &[IoSlice<'_>],
    d: Durability,
) -> BlockResult {
    match vol.geometry().level() {
        Level::Raid0 => raid0::write_segments(vol, at, bufs, d).await,
        Level::Raid1 => BoxFuture::new(raid1::write_segments(vol, at, bufs, d)).await,
        // RAID-5 computes parity from the bytes: a stable copy first.
        _ => {
            let mut data = vec![0u8; crate::iovec::len(bufs)];
            crate::iovec::gather(bufs, &mut data);
            write(vol, at, &data, d).await
        }
    }
}
