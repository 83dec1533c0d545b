//! [`UnitWriter`]: the inline layout's member writes (docs/FORMAT.md §8
//! "Inline layout", "Writes into holes"). A 4608-byte unit never starts and
//! ends on a 4 KiB filesystem block; a filesystem that must fill a hole for
//! such a direct write serializes it on the file (ext4 drains every direct
//! I/O of the inode and waits). When the filesystem blocks the unit
//! touches are all holes, the write is widened to them, padded with the
//! zeroes the holes read as: an aligned write, taken concurrently.
//!
//! ```text
//!  write(at, units) ─► lock the 36 KiB groups it touches (8 units = 9 fs blocks)
//!     ─► envelope [floor4k, ceil4k) all holes on the member file? (SEEK_DATA)
//!          yes ─► one aligned write: zeroes | units | zeroes
//!          no  ─► the units as they are
//!  clear(at, len) ─► same locks ─► discard / write zeroes
//! ```
//!
//! Every write of the device takes the locks, so no write lands between a
//! probe that saw a hole and the padded write that fills it with zeroes.
//! Readers need none: the padding rewrites zeroes with zeroes.

use std::sync::Arc;

use super::tag::STRIDE;
use crate::block::{BlockDevice, BlockResult, Durability};
use crate::units::ByteOffset;

/// Filesystem block the envelope is aligned to.
const FS_BLOCK: u64 = 4096;
/// Bytes of 8 units: the smallest run of units that is 4 KiB aligned.
const GROUP: u64 = 8 * STRIDE;
/// Lock slots (groups hash onto them).
const SLOTS: usize = 64;

/// Where to ask about holes: the member device and the offset of the
/// physical data area on it (4 KiB aligned).
pub struct Probe {
    /// The whole member (a file answers `allocation` from `SEEK_DATA`).
    pub member: Arc<dyn BlockDevice>,
    /// Offset of the data area on `member`.
    pub base: u64,
}

/// How [`UnitWriter::clear`] clears a range.
#[derive(Clone, Copy, Debug)]
pub enum Clear {
    /// Deallocate (`BlockDevice::discard`).
    Discard,
    /// `BlockDevice::write_zeroes`.
    Zeroes {
        /// The device may deallocate the range.
        may_unmap: bool,
    },
}

/// Writes units to the physical data area `inner`.
pub struct UnitWriter {
    inner: Arc<dyn BlockDevice>,
    probe: Option<Probe>,
    locks: Vec<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe")
            .field("member", &self.member.name())
            .field("base", &self.base)
            .finish()
    }
}

impl std::fmt::Debug for UnitWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnitWriter")
            .field("inner", &self.inner.name())
            .field("probe", &self.probe)
            .finish_non_exhaustive()
    }
}

/// The 4 KiB-aligned byte range holding `at..at + len`.
pub fn envelope(at: u64, len: u64) -> (u64, u64) {
    (
        at / FS_BLOCK * FS_BLOCK,
        (at + len).div_ceil(FS_BLOCK) * FS_BLOCK,
    )
}

impl UnitWriter {
    /// Writes to `inner` as they are (no probe: never widened).
    pub fn new(inner: Arc<dyn BlockDevice>) -> UnitWriter {
        UnitWriter {
            inner,
            probe: None,
            locks: (0..SLOTS).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }

    /// Widens writes into holes that `probe` reports; a probe whose base
    /// is not 4 KiB aligned is not used.
    pub fn with_probe(mut self, probe: Probe) -> UnitWriter {
        self.probe = probe.base.is_multiple_of(FS_BLOCK).then_some(probe);
        self
    }

    /// Locks the groups of `a..b` (slots in ascending order, each once).
    async fn lock(&self, a: u64, b: u64) -> Vec<tokio::sync::MutexGuard<'_, ()>> {
        let (g0, g1) = (a / GROUP, b.saturating_sub(1).max(a) / GROUP);
        let mut slots: Vec<usize> = if g1 - g0 >= SLOTS as u64 {
            (0..SLOTS).collect()
        } else {
            (g0..=g1).map(|g| (g % SLOTS as u64) as usize).collect()
        };
        slots.sort_unstable();
        slots.dedup();
        let mut guards = Vec::with_capacity(slots.len());
        for s in slots {
            guards.push(self.locks[s].lock().await);
        }
        guards
    }

    /// True when every byte of `e0..e1` of the area is a hole of the member.
    async fn all_hole(&self, e0: u64, e1: u64) -> bool {
        let Some(p) = &self.probe else {
            return false;
        };
        match p.member.allocation(ByteOffset(p.base + e0), e1 - e0).await {
            Ok(map) => {
                map.iter().all(|x| x.state.zero)
                    && map.iter().map(|x| x.len).sum::<u64>() == e1 - e0
            }
            Err(_) => false,
        }
    }

    /// Writes `raw` (whole units) at `at` of the area.
    pub async fn write(&self, at: u64, raw: &[u8], dur: Durability) -> BlockResult {
        let (e0, e1) = envelope(at, raw.len() as u64);
        let _g = self.lock(e0, e1).await;
        let aligned = (e0, e1) == (at, at + raw.len() as u64);
        if !aligned && e1 <= self.inner.size() && self.all_hole(e0, e1).await {
            let mut wide = vec![0u8; (e1 - e0) as usize];
            let head = (at - e0) as usize;
            wide[head..head + raw.len()].copy_from_slice(raw);
            return self.inner.write(ByteOffset(e0), &wide, dur).await;
        }
        self.inner.write(ByteOffset(at), raw, dur).await
    }

    /// Clears `len` bytes at `at` as `how` says, under the same locks as
    /// the writes.
    pub async fn clear(&self, at: u64, len: u64, how: Clear) -> BlockResult {
        let (e0, e1) = envelope(at, len);
        let _g = self.lock(e0, e1).await;
        match how {
            Clear::Discard => self.inner.discard(ByteOffset(at), len).await,
            Clear::Zeroes { may_unmap } => {
                self.inner
                    .write_zeroes(ByteOffset(at), len, may_unmap)
                    .await
            }
        }
    }
}
