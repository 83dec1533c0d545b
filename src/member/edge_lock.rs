//! [`EdgeLocks`]: locks on the filesystem blocks a direct write shares with
//! its neighbours (docs/FORMAT.md §8 "Inline layout", "Writes into holes").
//!
//! A direct write whose start or end is not on the write granule (a 4608-byte
//! inline unit on a 4 KiB filesystem) shares its first and last filesystem
//! block with other writes. Such a write takes its *edge* blocks shared; a
//! write *widened* to whole blocks (it reads the neighbours' bytes of its
//! edge blocks and writes them back unchanged) takes them exclusive, so no
//! neighbour's bytes change between that read and that write. Writers of the
//! same bytes never race (the RAID layer's locks), so blocks a write covers
//! whole need no lock.
//!
//! Blocks hash onto a fixed table of slots (no memory per block); a write
//! takes at most two slots, in ascending order.

use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Slots in the table.
const SLOTS: usize = 256;

/// The edge-block locks of one member file.
pub(crate) struct EdgeLocks {
    slots: Box<[RwLock<()>]>,
}

impl std::fmt::Debug for EdgeLocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeLocks").finish_non_exhaustive()
    }
}

/// Slots held shared; released on drop.
pub(crate) struct Shared<'a>(#[allow(dead_code)] [Option<RwLockReadGuard<'a, ()>>; 2]);

/// Slots held exclusive; released on drop.
pub(crate) struct Exclusive<'a>(#[allow(dead_code)] [Option<RwLockWriteGuard<'a, ()>>; 2]);

/// The blocks of granule `a` that `[offset, end)` covers only in part
/// (none, one, or two), as slots, ascending and distinct.
fn edge_slots(offset: u64, end: u64, a: u64) -> [Option<usize>; 2] {
    let head = (!offset.is_multiple_of(a)).then_some(offset / a);
    let tail = (!end.is_multiple_of(a)).then_some(end / a);
    let slot = |b: u64| (b % SLOTS as u64) as usize;
    match (head.map(slot), tail.map(slot)) {
        (Some(h), Some(t)) if h == t => [Some(h), None],
        (Some(h), Some(t)) => [Some(h.min(t)), Some(h.max(t))],
        (h, t) => [h.or(t), None],
    }
}

impl EdgeLocks {
    pub(crate) fn new() -> Self {
        EdgeLocks {
            slots: (0..SLOTS).map(|_| RwLock::new(())).collect(),
        }
    }

    /// Takes the edge blocks of `[offset, end)` (granule `a`) shared.
    pub(crate) async fn shared(&self, offset: u64, end: u64, a: u64) -> Shared<'_> {
        let [s0, s1] = edge_slots(offset, end, a);
        let g0 = match s0 {
            Some(s) => Some(self.slots[s].read().await),
            None => None,
        };
        let g1 = match s1 {
            Some(s) => Some(self.slots[s].read().await),
            None => None,
        };
        Shared([g0, g1])
    }

    /// Takes the edge blocks of `[offset, end)` (granule `a`) exclusive.
    pub(crate) async fn exclusive(&self, offset: u64, end: u64, a: u64) -> Exclusive<'_> {
        let [s0, s1] = edge_slots(offset, end, a);
        let g0 = match s0 {
            Some(s) => Some(self.slots[s].write().await),
            None => None,
        };
        let g1 = match s1 {
            Some(s) => Some(self.slots[s].write().await),
            None => None,
        };
        Exclusive([g0, g1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_are_the_partly_covered_blocks_in_ascending_distinct_slots() {
        let a = 4096;
        assert_eq!(edge_slots(0, 8192, a), [None, None]);
        assert_eq!(edge_slots(0, 4608, a), [Some(1), None]);
        assert_eq!(edge_slots(4608, 9216, a), [Some(1), Some(2)]);
        assert_eq!(edge_slots(512, 1024, a), [Some(0), None]);
        // Block 255 and block 256 (slot 0): ascending slots.
        let at = 255 * a + 512;
        assert_eq!(edge_slots(at, at + 4608, a), [Some(0), Some(255)]);
        // Head and tail 256 blocks apart share a slot: taken once.
        let end = at + 256 * a;
        assert_eq!(edge_slots(at, end, a), [Some(255), None]);
    }

    #[tokio::test]
    async fn exclusive_waits_for_shared_holders_of_a_shared_edge() {
        let locks = EdgeLocks::new();
        let a = 4096;
        let held = locks.shared(4608, 9216, a).await;
        // Shared holders of the same block do not wait for each other.
        let other = locks.shared(9216, 13824, a).await;
        // A widening of the unit sharing block 2 with both waits for both.
        let mut widen = Box::pin(locks.exclusive(9216, 13824, a));
        assert!(futures::poll!(&mut widen).is_pending());
        drop(held);
        assert!(futures::poll!(&mut widen).is_pending());
        drop(other);
        assert!(futures::poll!(&mut widen).is_ready());
    }
}
