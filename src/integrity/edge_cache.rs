//! [`EdgeCache`]: the last 4 KiB blocks that writes smaller than a block
//! merged, as the member now holds them, so the next small write of the
//! same block needs no read of it.
//!
//! ```text
//!  small write ─► edge block cached? ─► yes: its bytes (sealed by us, good)
//!                                    └► no:  read + verify (ChecksumDevice::edge)
//!              ─► forget the range ─► inner write ─► ok: keep the merged block
//!  any other change of the member (write, discard, zeroes, lost) ─► forget
//! ```
//!
//! Sequential sub-block writes (a guest's 512-byte or 1 KiB writes) then
//! read each block once instead of once per write. A block is kept only
//! after its write succeeded, and forgotten before any write of it starts,
//! so a failed or cancelled write leaves nothing stale. Writers of one
//! block are serialized by the RAID layer's locks (as the entries require);
//! readers do not use the cache. Slots are picked by block number (direct
//! mapped), so neighbouring blocks of a sequential run do not evict each
//! other; a slot's buffer is allocated on its first use and then reused.

use std::sync::Mutex;

use super::page::BLOCK;

/// Blocks kept per member.
const SLOTS: usize = 16;

/// Slot content: no block.
const EMPTY: u64 = u64::MAX;

#[derive(Debug)]
struct Slot {
    block: u64,
    data: Vec<u8>,
}

/// A few merged blocks of one member's data area.
#[derive(Debug)]
pub struct EdgeCache {
    slots: Mutex<Vec<Slot>>,
}

impl Default for EdgeCache {
    fn default() -> Self {
        let slots = (0..SLOTS)
            .map(|_| Slot {
                block: EMPTY,
                data: Vec::new(),
            })
            .collect();
        EdgeCache {
            slots: Mutex::new(slots),
        }
    }
}

impl EdgeCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Copies the kept bytes of `block` into `out` (its full length); false
    /// when the block is not kept.
    pub fn get(&self, block: u64, out: &mut [u8]) -> bool {
        let slots = self.lock();
        let slot = &slots[block as usize % SLOTS];
        if slot.block != block || slot.data.len() != out.len() {
            return false;
        }
        out.copy_from_slice(&slot.data);
        true
    }

    /// Keeps `data` (at most one block) as the member's bytes of `block`.
    pub fn keep(&self, block: u64, data: &[u8]) {
        debug_assert!(data.len() as u64 <= BLOCK);
        let mut slots = self.lock();
        let slot = &mut slots[block as usize % SLOTS];
        slot.data.clear();
        slot.data.extend_from_slice(data);
        slot.block = block;
    }

    /// Forgets blocks `b0..b1`.
    pub fn forget(&self, b0: u64, b1: u64) {
        let mut slots = self.lock();
        for slot in slots.iter_mut().filter(|s| (b0..b1).contains(&s.block)) {
            slot.block = EMPTY;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_gets_and_forgets_blocks_by_number() {
        let cache = EdgeCache::default();
        let mut out = vec![0u8; 4096];
        assert!(!cache.get(7, &mut out));

        cache.keep(7, &[5u8; 4096]);
        assert!(cache.get(7, &mut out));
        assert_eq!(out, vec![5u8; 4096]);
        // Same slot, other block: not served.
        assert!(!cache.get(7 + SLOTS as u64, &mut out));
        // A short last block is served only to a buffer of its length.
        cache.keep(9, &[1u8; 512]);
        assert!(!cache.get(9, &mut out));
        assert!(cache.get(9, &mut out[..512]));

        cache.forget(8, 9);
        assert!(cache.get(7, &mut out));
        cache.forget(0, 8);
        assert!(!cache.get(7, &mut out));
        assert!(cache.get(9, &mut out[..512]));
        // A block evicted by its slot's next block is gone.
        cache.keep(9 + SLOTS as u64, &[2u8; 4096]);
        assert!(!cache.get(9, &mut out[..512]));
    }
}
