//! The [`QosDevice`]: a block device that asks its volume's [`Limiter`]
//! before each read and write, and hands everything else through.

use std::io::{IoSlice, IoSliceMut};
use std::sync::Arc;

use super::limiter::{Direction, Limiter};
use crate::block::{BlockDevice, Durability, IoFuture};
use crate::units::ByteOffset;

/// A device whose reads and writes wait for the limiter.
pub struct QosDevice {
    inner: Arc<dyn BlockDevice>,
    limiter: Arc<Limiter>,
}

impl std::fmt::Debug for QosDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QosDevice")
            .field("inner", &self.inner.name())
            .field("limits", &self.limiter.limits())
            .finish()
    }
}

impl QosDevice {
    /// Wraps `inner` under `limiter`.
    pub fn new(inner: Arc<dyn BlockDevice>, limiter: Arc<Limiter>) -> QosDevice {
        QosDevice { inner, limiter }
    }

    /// `op` once the limiter lets a request of `bytes` in `dir` go; `op`
    /// as it is while no limit is set.
    fn limited<'a>(&'a self, dir: Direction, bytes: u64, op: IoFuture<'a>) -> IoFuture<'a> {
        if !self.limiter.enabled() || super::is_prepaid() {
            return op;
        }
        crate::block::BoxFuture::new(async move {
            let _in_flight = self.limiter.admit(dir, bytes).await;
            op.await
        })
    }
}

impl BlockDevice for QosDevice {
    crate::block::forward_to!(inner => name, size, device_id, flush, mark_lost, reserve, allocation);

    fn admit(
        &self,
        dir: Direction,
        bytes: u64,
    ) -> Option<crate::block::BoxFuture<'_, crate::qos::Admission<'_>>> {
        if !self.limiter.enabled() {
            return None;
        }
        Some(crate::block::BoxFuture::new(self.limiter.admit(dir, bytes)))
    }

    fn read<'a>(&'a self, offset: ByteOffset, buf: &'a mut [u8]) -> IoFuture<'a> {
        let len = buf.len() as u64;
        self.limited(Direction::Read, len, self.inner.read(offset, buf))
    }

    fn write<'a>(&'a self, at: ByteOffset, buf: &'a [u8], durability: Durability) -> IoFuture<'a> {
        let len = buf.len() as u64;
        self.limited(Direction::Write, len, self.inner.write(at, buf, durability))
    }

    fn read_vectored<'a>(
        &'a self,
        offset: ByteOffset,
        bufs: &'a mut [IoSliceMut<'_>],
    ) -> IoFuture<'a> {
        let len = crate::iovec::len_mut(bufs) as u64;
        self.limited(Direction::Read, len, self.inner.read_vectored(offset, bufs))
    }

    fn write_vectored<'a>(
        &'a self,
        at: ByteOffset,
        bufs: &'a [IoSlice<'a>],
        durability: Durability,
    ) -> IoFuture<'a> {
        let len = crate::iovec::len(bufs) as u64;
        let op = self.inner.write_vectored(at, bufs, durability);
        self.limited(Direction::Write, len, op)
    }

    fn discard(&self, offset: ByteOffset, len: u64) -> IoFuture<'_> {
        self.limited(Direction::Write, 0, self.inner.discard(offset, len))
    }

    fn write_zeroes(&self, offset: ByteOffset, len: u64, may_unmap: bool) -> IoFuture<'_> {
        let op = self.inner.write_zeroes(offset, len, may_unmap);
        self.limited(Direction::Write, 0, op)
    }
}
