//! A switch in front of an array's own exports: once a pool is laid on the
//! array (`vraid pool create --force`), clients still connected to the raw
//! array (NBD connections keep their export's device after it leaves the
//! table) must not write over the pool's metadata and volumes. Cutting the
//! fence fails every later request of theirs with EIO.
//!
//! ```text
//!  NBD / vhost of the array ─► FencedDevice ─(open)─► StatsDevice ─► client stack ─► array
//!                                   └─(cut)─► EIO
//! ```

use std::io::{IoSlice, IoSliceMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::block::{BlockDevice, BlockError, BlockResult, Durability, IoFuture};
use crate::units::ByteOffset;

/// The switch, shared by every export of one array.
#[derive(Debug, Default)]
pub struct Fence {
    cut: AtomicBool,
}

impl Fence {
    /// An open fence.
    pub fn new() -> Arc<Fence> {
        Arc::new(Fence::default())
    }

    /// Fails every later request through it.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Release);
    }

    /// True once cut.
    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Acquire)
    }
}

/// A device behind a [`Fence`].
pub struct FencedDevice {
    inner: Arc<dyn BlockDevice>,
    fence: Arc<Fence>,
}

impl std::fmt::Debug for FencedDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FencedDevice")
            .field("inner", &self.inner.name())
            .field("fence", &self.fence)
            .finish()
    }
}

impl FencedDevice {
    /// `inner` behind `fence`.
    pub fn new(inner: Arc<dyn BlockDevice>, fence: Arc<Fence>) -> FencedDevice {
        FencedDevice { inner, fence }
    }

    fn open(&self) -> BlockResult {
        if self.fence.is_cut() {
            return Err(BlockError::io(
                self.inner.name(),
                std::io::Error::other("the array now holds a pool: its own export was cut off"),
            ));
        }
        Ok(())
    }

    fn refused<'a>(&self) -> Option<IoFuture<'a>> {
        self.open()
            .err()
            .map(|e| crate::block::BoxFuture::new(std::future::ready(Err(e))) as IoFuture<'a>)
    }
}

impl BlockDevice for FencedDevice {
    crate::block::forward_to!(inner => name, size, device_id, allocation, admit);

    fn read<'a>(&'a self, offset: ByteOffset, buf: &'a mut [u8]) -> IoFuture<'a> {
        self.refused()
            .unwrap_or_else(|| self.inner.read(offset, buf))
    }

    fn write<'a>(&'a self, at: ByteOffset, buf: &'a [u8], durability: Durability) -> IoFuture<'a> {
        self.refused()
            .unwrap_or_else(|| self.inner.write(at, buf, durability))
    }

    fn read_vectored<'a>(
        &'a self,
        offset: ByteOffset,
        bufs: &'a mut [IoSliceMut<'_>],
    ) -> IoFuture<'a> {
        self.refused()
            .unwrap_or_else(|| self.inner.read_vectored(offset, bufs))
    }

    fn write_vectored<'a>(
        &'a self,
        at: ByteOffset,
        bufs: &'a [IoSlice<'a>],
        durability: Durability,
    ) -> IoFuture<'a> {
        self.refused()
            .unwrap_or_else(|| self.inner.write_vectored(at, bufs, durability))
    }

    fn flush(&self) -> IoFuture<'_> {
        self.refused().unwrap_or_else(|| self.inner.flush())
    }

    fn discard(&self, offset: ByteOffset, len: u64) -> IoFuture<'_> {
        self.refused()
            .unwrap_or_else(|| self.inner.discard(offset, len))
    }

    fn write_zeroes(&self, offset: ByteOffset, len: u64, may_unmap: bool) -> IoFuture<'_> {
        self.refused()
            .unwrap_or_else(|| self.inner.write_zeroes(offset, len, may_unmap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::member::memory::MemDevice;

    #[tokio::test]
    async fn a_cut_fence_fails_every_request_and_writes_nothing() {
        let mem = Arc::new(MemDevice::new("a", 1 << 20));
        let fence = Fence::new();
        let dev = FencedDevice::new(mem.clone(), fence.clone());
        dev.write(ByteOffset(0), &[7u8; 4096], Durability::Normal)
            .await
            .unwrap();

        fence.cut();

        let mut buf = vec![0u8; 4096];
        assert!(dev.read(ByteOffset(0), &mut buf).await.is_err());
        assert!(dev
            .write(ByteOffset(4096), &[9u8; 4096], Durability::Normal)
            .await
            .is_err());
        assert!(dev.discard(ByteOffset(0), 4096).await.is_err());
        assert!(dev.write_zeroes(ByteOffset(0), 4096, true).await.is_err());
        assert!(dev.flush().await.is_err());
        mem.read(ByteOffset(4096), &mut buf).await.unwrap();
        assert_eq!(buf, vec![0u8; 4096], "a write through a cut fence landed");
        mem.read(ByteOffset(0), &mut buf).await.unwrap();
        assert_eq!(buf, vec![7u8; 4096]);
    }
}
