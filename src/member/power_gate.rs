//! The power gate of a member device: where the member `volatile` fault
//! (docs/FAULTS.md "Power cuts under vraid itself") acts. Every member
//! an array opens is wrapped in one, so that a `volatile` rule covers
//! *every* write to the member — superblocks, the write-intent bitmap,
//! the partial-parity journal, checksum pages and data alike — as a real
//! disk's cache does, not knowing what is metadata.
//!
//! ```text
//!  metadata (superblock, bitmap, journal, checksums) ─┐
//!  data window ─► FaultDevice (other rules) ──────────┴─► PowerGate ─► member file
//!                                                          │ no rule: straight through
//!                                                          ▼ `volatile` rule: Undo (volatile.rs)
//! ```
//!
//! The gate learns its member's rule set and device tag when the device
//! joins a role ([`PowerGate::attach`]). A `volatile` rule from the
//! config is armed on the gate when the member is opened
//! ([`PowerGate::arm`]), so that it covers every write from the first
//! one (assembly's superblock updates included) and moves into the
//! slot's rule set, undo state and all, when the device joins. Without
//! an armed rule, writes before the join are durable at once.

use std::sync::{Arc, RwLock};

use super::fault::{DeviceTag, FaultKind, FaultRule, FaultSet, FaultSpec};
use crate::block::{BlockDevice, Durability, IoFuture};
use crate::units::ByteOffset;

/// A member device behind its slot's `volatile` rule, if any.
pub struct PowerGate {
    inner: Arc<dyn BlockDevice>,
    /// The tag the device joins its slot with (the armed rule's).
    tag: DeviceTag,
    binding: RwLock<Binding>,
}

/// Where the gate looks for its rule: the slot's set once joined, the
/// armed rule before.
#[derive(Default)]
struct Binding {
    slot: Option<(Arc<FaultSet>, DeviceTag)>,
    armed: Option<Arc<FaultRule>>,
}

impl std::fmt::Debug for PowerGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PowerGate")
            .field("inner", &self.inner.name())
            .finish_non_exhaustive()
    }
}

impl PowerGate {
    /// Wraps a member device (not attached to any rule set yet).
    pub fn wrap(inner: Arc<dyn BlockDevice>) -> Arc<dyn BlockDevice> {
        Arc::new(PowerGate {
            inner,
            tag: DeviceTag::fresh(),
            binding: RwLock::new(Binding::default()),
        })
    }

    /// The tag an armed rule names: the device must join its slot with
    /// it. `None` when no rule is armed (the slot picks a fresh tag).
    pub fn armed_tag(&self) -> Option<DeviceTag> {
        let b = self.binding.read().unwrap_or_else(|e| e.into_inner());
        b.armed.as_ref().map(|_| self.tag)
    }

    /// Arms a `volatile` rule (`spec`, id `id`) before the device joins a
    /// slot: it covers every write from now on. Refused (false) once
    /// joined or when one is armed already.
    pub fn arm(&self, id: u64, spec: FaultSpec) -> bool {
        let mut b = self.binding.write().unwrap_or_else(|e| e.into_inner());
        if b.slot.is_some() || b.armed.is_some() || spec.kind != FaultKind::Volatile {
            return false;
        }
        b.armed = Some(Arc::new(FaultRule::new(id, spec).on_device(self.tag)));
        true
    }

    /// From now on the gate obeys the `volatile` rules of `faults` that
    /// apply to the device tagged `tag` (the slot it joined). An armed
    /// rule joins `faults` first (when `tag` is the gate's own), so no
    /// write falls between the two.
    pub fn attach(&self, faults: Arc<FaultSet>, tag: DeviceTag) {
        let mut b = self.binding.write().unwrap_or_else(|e| e.into_inner());
        if let Some(rule) = b.armed.take() {
            if tag == self.tag {
                faults.add(rule);
            }
        }
        b.slot = Some((faults, tag));
    }

    /// The `volatile` rule of this device, if it has one.
    fn volatile(&self) -> Option<Arc<FaultRule>> {
        let b = self.binding.read().unwrap_or_else(|e| e.into_inner());
        let Some((set, tag)) = b.slot.as_ref() else {
            return b.armed.clone();
        };
        if set.is_empty() {
            return None;
        }
        let rules = set.rules();
        rules
            .iter()
            .find(|r| r.spec.kind == FaultKind::Volatile && r.applies_to(Some(*tag)))
            .cloned()
    }
}

/// With a `volatile` rule, writes capture the old contents of their
/// blocks first and a FLUSH forgets them (`member::volatile`); after a
/// power cut every operation hangs. Without one, every call goes straight
/// to the member.
impl BlockDevice for PowerGate {
    crate::block::forward_to!(inner => name, size, device_id, merge_limit, mark_lost, reserve, allocation, admit);

    fn power_gate(&self) -> Option<&PowerGate> {
        Some(self)
    }

    fn read<'a>(&'a self, offset: ByteOffset, buf: &'a mut [u8]) -> IoFuture<'a> {
        match self.volatile() {
            None => self.inner.read(offset, buf),
            Some(r) => crate::block::BoxFuture::new(async move {
                r.undo.read(self.inner.read(offset, buf)).await
            }),
        }
    }

    fn write<'a>(&'a self, at: ByteOffset, buf: &'a [u8], d: Durability) -> IoFuture<'a> {
        let Some(r) = self.volatile() else {
            return self.inner.write(at, buf, d);
        };
        r.count_hit();
        let fua = (d == Durability::Fua).then_some(buf);
        let range = (at.get(), buf.len() as u64);
        crate::block::BoxFuture::new(async move {
            let op = self.inner.write(at, buf, d);
            r.undo.write(&self.inner, range, fua, op).await
        })
    }

    fn read_vectored<'a>(
        &'a self,
        offset: ByteOffset,
        bufs: &'a mut [std::io::IoSliceMut<'_>],
    ) -> IoFuture<'a> {
        match self.volatile() {
            None => self.inner.read_vectored(offset, bufs),
            Some(_) => crate::block::read_through_copy(self, offset, bufs),
        }
    }

    fn write_vectored<'a>(
        &'a self,
        at: ByteOffset,
        bufs: &'a [std::io::IoSlice<'a>],
        d: Durability,
    ) -> IoFuture<'a> {
        match self.volatile() {
            None => self.inner.write_vectored(at, bufs, d),
            Some(_) => crate::block::write_through_copy(self, at, bufs, d),
        }
    }

    fn flush(&self) -> IoFuture<'_> {
        match self.volatile() {
            None => self.inner.flush(),
            Some(r) => {
                crate::block::BoxFuture::new(async move { r.undo.flush(self.inner.flush()).await })
            }
        }
    }

    fn discard(&self, offset: ByteOffset, len: u64) -> IoFuture<'_> {
        let Some(r) = self.volatile() else {
            return self.inner.discard(offset, len);
        };
        r.count_hit();
        crate::block::BoxFuture::new(async move {
            let op = self.inner.discard(offset, len);
            r.undo
                .write(&self.inner, (offset.get(), len), None, op)
                .await
        })
    }

    fn write_zeroes(&self, offset: ByteOffset, len: u64, may_unmap: bool) -> IoFuture<'_> {
        let Some(r) = self.volatile() else {
            return self.inner.write_zeroes(offset, len, may_unmap);
        };
        r.count_hit();
        crate::block::BoxFuture::new(async move {
            let op = self.inner.write_zeroes(offset, len, may_unmap);
            r.undo
                .write(&self.inner, (offset.get(), len), None, op)
                .await
        })
    }
}
