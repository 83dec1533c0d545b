//! The per-request data path (read, write) of each level, picked by a
//! `match` on the level: the request runs inside the volume's one future,
//! with no boxed future per level call. The rest of a level's contract
//! (clears, sync steps, scrub) is [`super::level::LevelIo`].

use super::volume::Volume;
use super::{raid0, raid1, raid5, raid6, Level};
use crate::block::{BlockResult, Durability};
use crate::units::ByteOffset;

/// Reads `buf.len()` volume bytes at `at` (checked, non-empty, counted busy).
pub(super) async fn read(vol: &Volume, at: ByteOffset, buf: &mut [u8]) -> BlockResult {
    match vol.geometry().level() {
        Level::Raid0 => raid0::read(vol, at, buf).await,
        Level::Raid1 => raid1::read(vol, at, buf).await,
        Level::Raid5 => raid5::read(vol, at, buf).await,
        Level::Raid6 => raid6::read(vol, at, buf).await,
    }
}

/// Writes `buf` at volume offset `at` (checked, non-empty, counted busy,
/// write intent recorded).
pub(super) async fn write(vol: &Volume, at: ByteOffset, buf: &[u8], d: Durability) -> BlockResult {
    match vol.geometry().level() {
        Level::Raid0 => raid0::write(vol, at, buf, d).await,
        Level::Raid1 => raid1::write(vol, at, buf, d).await,
        Level::Raid5 => raid5::write(vol, at, buf, d).await,
        Level::Raid6 => raid6::write(vol, at, buf, d).await,
    }
}
