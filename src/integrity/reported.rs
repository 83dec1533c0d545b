//! [`Reported`]: the blocks a checksummed member data area has found bad
//! and not seen rewritten since, for both layouts ([`super::ChecksumDevice`]
//! and [`super::InlineDevice`]). A block is counted once however often it
//! is read (a scrub's step read and its block-by-block re-read, repeated
//! RAID-0 reads), and again only if it goes bad again after a rewrite.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::page::BLOCK;
use crate::block::{BlockError, BlockResult};

/// Logs an edge block of a partial write that fails its checksum where it
/// is verified (the merge keeps it mismatching).
pub(super) fn warn_bad_edge(device: &str, block: u64) {
    tracing::warn!(
        device,
        offset = block * BLOCK,
        "checksum mismatch under a partial write; the block stays marked bad"
    );
}

/// Blocks counted bad and not rewritten since; new ones are added to the
/// member's error counter.
pub(super) struct Reported {
    set: Mutex<HashSet<u64>>,
    /// `set.len()`, so writes skip the lock while nothing is reported.
    len: AtomicUsize,
    errors: Arc<AtomicU64>,
}

impl Reported {
    /// Nothing reported yet; new bad blocks go to `errors`.
    pub(super) fn new(errors: Arc<AtomicU64>) -> Self {
        Reported {
            set: Mutex::new(HashSet::new()),
            len: AtomicUsize::new(0),
            errors,
        }
    }

    /// Blocks `b0 + i` for each `i` of `bad` fail their checksum on
    /// `device`: counts the new ones, logs, and returns the error a read
    /// of them fails with. `Ok` when `bad` is empty.
    pub(super) fn check(&self, device: &str, b0: u64, bad: &[usize]) -> BlockResult {
        let Some(&first) = bad.first() else {
            return Ok(());
        };
        {
            let mut set = self.set.lock().unwrap_or_else(|e| e.into_inner());
            let new = bad.iter().filter(|&&i| set.insert(b0 + i as u64)).count();
            self.len.store(set.len(), Ordering::Release);
            self.errors.fetch_add(new as u64, Ordering::Relaxed);
        }
        let offset = (b0 + first as u64) * BLOCK;
        tracing::warn!(device, offset, blocks = bad.len(), "checksum mismatch");
        Err(BlockError::Corrupt {
            device: device.to_string(),
            offset,
            blocks: bad.len() as u64,
        })
    }

    /// Blocks `b0 + i` were rewritten whole and good for each `i` where
    /// `good[i]` (edge blocks that were bad keep a mismatching checksum).
    pub(super) fn forget_good(&self, b0: u64, good: &[bool]) {
        for (i, ok) in good.iter().enumerate() {
            if *ok {
                self.forget(b0 + i as u64, b0 + i as u64 + 1);
            }
        }
    }

    /// Blocks `b0..b1` were rewritten: they may be counted again.
    pub(super) fn forget(&self, b0: u64, b1: u64) {
        if self.len.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut set = self.set.lock().unwrap_or_else(|e| e.into_inner());
        set.retain(|&b| b < b0 || b >= b1);
        self.len.store(set.len(), Ordering::Release);
    }
}
