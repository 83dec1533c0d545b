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
//! joins a role ([`PowerGate::attach`]); before that (assembly's first
//! superblock updates) every write is durable at once.

use std::sync::{Arc, RwLock};

use super::fault::{DeviceTag, FaultKind, FaultRule, FaultSet};
use crate::block::{BlockDevice, Durability, IoFuture};
use crate::units::ByteOffset;

/// A member device behind its slot's `volatile` rule, if any.
pub struct PowerGate {
    inner: Arc<dyn BlockDevice>,
    attached: RwLock<Option<(Arc<FaultSet>, DeviceTag)>>,
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
            attached: RwLock::new(None),
        })
    }

    /// From now on the gate obeys the `volatile` rules of `faults` that
    /// apply to the device tagged `tag` (the slot it joined).
    pub fn attach(&self, faults: Arc<FaultSet>, tag: DeviceTag) {
        let mut a = self.attached.write().unwrap_or_else(|e| e.into_inner());
        *a = Some((faults, tag));
    }

    /// The `volatile` rule of this device, if it has one.
    fn volatile(&self) -> Option<Arc<FaultRule>> {
        let a = self.attached.read().unwrap_or_else(|e| e.into_inner());
        let (set, tag) = a.as_ref()?;
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
    crate::block::forward_to!(inner => name, size, device_id, mark_lost, reserve, allocation, admit);

    fn power_gate(&self) -> Option<&PowerGate> {
        Some(self)
    }

    fn read<'a>(&'a self, offset: ByteOffset, buf: &'a mut [u8]) -> IoFuture<'a> {
        match self.volatile() {
            None => self.inner.read(offset, buf),
            Some(r) => Box::pin(async move { r.undo.read(self.inner.read(offset, buf)).await }),
        }
    }

    fn write<'a>(&'a self, at: ByteOffset, buf: &'a [u8], d: Durability) -> IoFuture<'a> {
        let Some(r) = self.volatile() else {
            return self.inner.write(at, buf, d);
        };
        let fua = (d == Durability::Fua).then_some(buf);
        let range = (at.get(), buf.len() as u64);
        Box::pin(async move {
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
            Some(r) => Box::pin(async move { r.undo.flush(self.inner.flush()).await }),
        }
    }

    fn discard(&self, offset: ByteOffset, len: u64) -> IoFuture<'_> {
        let Some(r) = self.volatile() else {
            return self.inner.discard(offset, len);
        };
        Box::pin(async move {
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
        Box::pin(async move {
            let op = self.inner.write_zeroes(offset, len, may_unmap);
            r.undo
                .write(&self.inner, (offset.get(), len), None, op)
                .await
        })
    }
}
