//! The member `volatile` fault (docs/FAULTS.md "Power cuts under vraid
//! itself"): a member that behaves like a disk with a volatile write
//! cache. Writes land in the member file at once, but the rule keeps the
//! *old* contents of every 4 KiB block written since the member's last
//! FLUSH (the first capture of a block wins), so that a power cut can put
//! them back; a FLUSH that completes forgets them, a FUA write makes its
//! own bytes durable. After a cut the member is frozen: every later I/O
//! of the process hangs, as on a machine without power, until the
//! process is killed and started again.
//!
//! Writes hold `order` shared from the capture to the write's completion
//! and a FLUSH holds it exclusively, so no write straddles the moment a
//! FLUSH forgets the captures.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::fault::Rng;
use crate::block::{BlockDevice, BlockResult, Durability};
use crate::units::ByteOffset;
use crate::volfault::KeepPolicy;

/// Unit of capture and restore.
pub const BLOCK: u64 = 4096;

/// Blocks captured by one read at most (1 MiB).
const SPAN: u64 = 256;

/// What a member power cut did, per rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberCut {
    /// The rule's id.
    pub rule: u64,
    /// Member role (filled by the control plane).
    pub member: usize,
    /// Blocks written since the last FLUSH whose old contents came back.
    pub restored_blocks: u64,
    /// Such blocks kept (the cache had written them).
    pub kept_blocks: u64,
}

struct Captured {
    seq: u64,
    old: Vec<u8>,
}

#[derive(Default)]
struct UndoState {
    blocks: BTreeMap<u64, Captured>,
    seq: u64,
    target: Option<Arc<dyn BlockDevice>>,
}

/// The undo state of one `volatile` rule.
#[derive(Default)]
pub struct Undo {
    order: tokio::sync::RwLock<()>,
    state: Mutex<UndoState>,
    frozen: AtomicBool,
}

impl std::fmt::Debug for Undo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Undo")
            .field("blocks", &self.state().blocks.len())
            .field("frozen", &self.frozen())
            .finish()
    }
}

impl Undo {
    fn state(&self) -> MutexGuard<'_, UndoState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True once a power cut froze the member.
    pub fn frozen(&self) -> bool {
        self.frozen.load(Ordering::Acquire)
    }

    /// Blocks whose old contents are held now.
    pub fn dirty_blocks(&self) -> u64 {
        self.state().blocks.len() as u64
    }

    /// Hangs forever once frozen (the power is off).
    async fn hang_if_frozen(&self) {
        if self.frozen() {
            std::future::pending::<()>().await;
        }
    }

    /// Runs `op`, a write (`data` given when it is FUA: its bytes are
    /// durable after it) or a trim or zeroing of `at..+len` on `inner`,
    /// with the old contents of its blocks captured first.
    pub async fn write(
        &self,
        inner: &Arc<dyn BlockDevice>,
        (at, len): (u64, u64),
        fua: Option<&[u8]>,
        op: impl Future<Output = BlockResult>,
    ) -> BlockResult {
        self.hang_if_frozen().await;
        let order = self.order.read().await;
        if self.frozen() {
            // Not holding the lock: the cut waits for it.
            drop(order);
            return std::future::pending().await;
        }
        if len > 0 {
            self.capture(inner, at, len).await?;
        }
        op.await?;
        if let Some(data) = fua.filter(|d| !d.is_empty()) {
            self.make_durable(at, data);
        }
        Ok(())
    }

    /// Captures the old contents of the blocks of `at..+len` not captured
    /// yet, reading up to [`SPAN`] blocks at a time.
    async fn capture(&self, inner: &Arc<dyn BlockDevice>, at: u64, len: u64) -> BlockResult {
        let size = inner.size();
        crate::block::check_range(ByteOffset(at), len, size)?;
        let (first, last) = (at / BLOCK, (at + len - 1) / BLOCK);
        let mut from = first;
        while from <= last {
            let to = last.min(from + SPAN - 1);
            self.capture_span(inner, from, to).await?;
            from = to + 1;
        }
        Ok(())
    }

    /// Blocks `first..=last` (one read, when any is not captured yet).
    async fn capture_span(
        &self,
        inner: &Arc<dyn BlockDevice>,
        first: u64,
        last: u64,
    ) -> BlockResult {
        let missing = {
            let st = self.state();
            (first..=last).any(|b| !st.blocks.contains_key(&b))
        };
        if !missing {
            return Ok(());
        }
        let start = first * BLOCK;
        let end = ((last + 1) * BLOCK).min(inner.size());
        let mut old = vec![0u8; (end - start) as usize];
        inner.read(ByteOffset(start), &mut old).await?;
        let mut st = self.state();
        for (i, b) in (first..=last).enumerate() {
            if st.blocks.contains_key(&b) {
                continue;
            }
            st.seq += 1;
            let seq = st.seq;
            let from = i * BLOCK as usize;
            let to = (from + BLOCK as usize).min(old.len());
            let old = old[from..to].to_vec();
            st.blocks.insert(b, Captured { seq, old });
        }
        st.target.get_or_insert_with(|| inner.clone());
        Ok(())
    }

    /// A FUA write's bytes are on the medium: they become the blocks'
    /// "old" (durable) contents.
    fn make_durable(&self, at: u64, data: &[u8]) {
        let end = at + data.len() as u64;
        let mut st = self.state();
        for b in at / BLOCK..=(end - 1) / BLOCK {
            let start = b * BLOCK;
            if at <= start && end >= start + BLOCK {
                st.blocks.remove(&b);
                continue;
            }
            if let Some(c) = st.blocks.get_mut(&b) {
                let from = at.max(start);
                let to = end.min(start + c.old.len() as u64);
                let src = &data[(from - at) as usize..(to - at) as usize];
                c.old[(from - start) as usize..(to - start) as usize].copy_from_slice(src);
            }
        }
    }

    /// A FLUSH: `op` runs with no write in flight; when it succeeds the
    /// captures are forgotten.
    pub async fn flush(&self, op: impl Future<Output = BlockResult>) -> BlockResult {
        self.hang_if_frozen().await;
        let order = self.order.write().await;
        if self.frozen() {
            drop(order);
            return std::future::pending().await;
        }
        op.await?;
        self.state().blocks.clear();
        drop(order);
        Ok(())
    }

    /// Hangs a read once frozen.
    pub async fn read(&self, op: impl Future<Output = BlockResult>) -> BlockResult {
        self.hang_if_frozen().await;
        op.await
    }

    /// The power goes: every later I/O of the member hangs (the writes in
    /// flight finish). [`Undo::cut`] then puts the old contents back.
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::Release);
    }

    /// The power cut: freezes the member, waits for the writes in flight,
    /// writes back the old contents of the blocks `keep` drops (FUA, then
    /// a flush of the member) and stays frozen.
    pub async fn cut(&self, rule: u64, keep: KeepPolicy, seed: u64) -> BlockResult<MemberCut> {
        let rng = Rng::new(seed);
        self.freeze();
        let _order = self.order.write().await;
        let (blocks, target) = {
            let mut st = self.state();
            (std::mem::take(&mut st.blocks), st.target.clone())
        };
        let mut by_seq: Vec<(u64, u64, Vec<u8>)> =
            blocks.into_iter().map(|(b, c)| (c.seq, b, c.old)).collect();
        by_seq.sort_unstable_by_key(|e| e.0);
        let n = by_seq.len();
        let kept_prefix = (rng.next_u64() % (n as u64 + 1)) as usize;
        let mut report = MemberCut {
            rule,
            ..MemberCut::default()
        };
        for (i, (_, b, old)) in by_seq.into_iter().enumerate() {
            let restore = match keep {
                KeepPolicy::None => true,
                KeepPolicy::OrderedPrefix => i >= kept_prefix,
                KeepPolicy::RandomSubset => rng.next_u64() & 1 == 0,
            };
            if !restore {
                report.kept_blocks += 1;
                continue;
            }
            if let Some(t) = &target {
                t.write(ByteOffset(b * BLOCK), &old, Durability::Fua)
                    .await?;
            }
            report.restored_blocks += 1;
        }
        if let Some(t) = &target {
            t.flush().await?;
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::member::fault::{DeviceTag, FaultKind, FaultRule, FaultSet, FaultSpec};
    use crate::member::memory::MemDevice;
    use crate::member::power_gate::PowerGate;

    fn volatile() -> (Arc<MemDevice>, Arc<dyn BlockDevice>, Arc<FaultRule>) {
        let mem = Arc::new(MemDevice::new("m", 64 << 10));
        let set = Arc::new(FaultSet::new());
        let tag = DeviceTag(3);
        let rule = Arc::new(FaultRule::new(1, FaultSpec::new(FaultKind::Volatile)).on_device(tag));
        set.add(rule.clone());
        let gate = PowerGate::wrap(mem.clone());
        gate.power_gate().unwrap().attach(set, tag);
        (mem, gate, rule)
    }

    #[tokio::test]
    async fn an_armed_rule_covers_writes_before_the_join_and_moves_into_the_slot() {
        // Arrange: a rule armed on the gate (as from the config at open).
        let mem = Arc::new(MemDevice::new("m", 64 << 10));
        let dev = PowerGate::wrap(mem.clone());
        let gate = dev.power_gate().unwrap();
        assert!(gate.arm(7, FaultSpec::new(FaultKind::Volatile)));
        // Act: a write before the device joins its slot, then the join.
        dev.write(ByteOffset(0), &[9; 4096], Durability::Normal)
            .await
            .unwrap();
        let set = Arc::new(FaultSet::new());
        let tag = gate.armed_tag().expect("armed");
        gate.attach(set.clone(), tag);
        // Assert: the slot holds the same rule, with the early write
        // captured and counted; a cut restores it.
        let rules = set.rules();
        assert_eq!(rules.len(), 1);
        let rule = rules[0].clone();
        assert_eq!((rule.id, rule.hits(), rule.undo.dirty_blocks()), (7, 1, 1));
        assert!(!gate.arm(8, FaultSpec::new(FaultKind::Volatile)), "joined");
        let cut = rule.undo.cut(7, KeepPolicy::None, 1).await.unwrap();
        assert_eq!(cut.restored_blocks, 1);
        assert!(mem.snapshot()[..4096].iter().all(|&b| b == 0));
    }

    #[tokio::test]
    async fn a_cut_restores_unflushed_blocks_and_keeps_flushed_and_fua_bytes() {
        // Arrange: flushed A, unflushed B over it and elsewhere, a FUA
        // write of half a block, a trim after the flush.
        let (mem, dev, rule) = volatile();
        dev.write(ByteOffset(0), &[0xa; 8192], Durability::Normal)
            .await
            .unwrap();
        dev.flush().await.unwrap();
        dev.write(ByteOffset(4096), &[0xb; 8192], Durability::Normal)
            .await
            .unwrap();
        dev.write(ByteOffset(16384), &[0xc; 2048], Durability::Fua)
            .await
            .unwrap();
        dev.discard(ByteOffset(0), 4096).await.unwrap();
        assert_eq!(mem.snapshot()[4096], 0xb, "writes land at once");
        assert_eq!(rule.undo.dirty_blocks(), 4);
        // Act
        let cut = rule.undo.cut(1, KeepPolicy::None, 5).await.unwrap();
        // Assert
        assert_eq!((cut.restored_blocks, cut.kept_blocks), (4, 0));
        let img = mem.snapshot();
        assert!(img[..8192].iter().all(|&b| b == 0xa), "flushed A is back");
        assert!(img[8192..16384].iter().all(|&b| b == 0));
        assert!(
            img[16384..18432].iter().all(|&b| b == 0xc),
            "FUA bytes stay"
        );
        let mut buf = [0u8; 512];
        let hung = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            dev.read(ByteOffset(0), &mut buf),
        );
        assert!(hung.await.is_err(), "a frozen member hangs");
    }

    #[tokio::test]
    async fn a_write_that_gets_the_lock_after_the_freeze_does_not_block_the_cut() {
        // Arrange: a write queued behind a FLUSH-like holder of the lock;
        // the power goes before it gets the lock.
        let (_mem, dev, rule) = volatile();
        let holder = rule.undo.order.write().await;
        let d = dev.clone();
        let write =
            tokio::spawn(
                async move { d.write(ByteOffset(0), &[1; 4096], Durability::Normal).await },
            );
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        rule.undo.freeze();
        drop(holder);
        // Act
        let cut = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            rule.undo.cut(1, KeepPolicy::None, 1),
        )
        .await;
        // Assert: the cut ran; the write hangs (the power is off).
        assert!(cut.expect("the cut waited forever").is_ok());
        assert!(!write.is_finished());
        write.abort();
    }

    #[tokio::test]
    async fn random_subset_and_ordered_prefix_restore_part_of_the_blocks() {
        for keep in [KeepPolicy::RandomSubset, KeepPolicy::OrderedPrefix] {
            let (mem, dev, rule) = volatile();
            for b in 0..16u64 {
                let data = [b as u8 + 1; 4096];
                dev.write(ByteOffset(b * 4096), &data, Durability::Normal)
                    .await
                    .unwrap();
            }
            let cut = rule.undo.cut(1, keep, 42).await.unwrap();
            assert_eq!(cut.restored_blocks + cut.kept_blocks, 16);
            let img = mem.snapshot();
            let kept: Vec<bool> = (0..16).map(|b| img[b * 4096] != 0).collect();
            assert_eq!(kept.iter().filter(|&&k| k).count() as u64, cut.kept_blocks);
            if keep == KeepPolicy::OrderedPrefix {
                let n = cut.kept_blocks as usize;
                assert!(kept[..n].iter().all(|&k| k) && kept[n..].iter().all(|&k| !k));
            }
        }
    }
}
