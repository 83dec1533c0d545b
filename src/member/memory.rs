//! In-memory block device for unit tests (never used by the binary).
//!
//! It can be told to fail, so RAID tests can exercise degraded paths.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::block::{check_range, BlockDevice, BlockError, BlockResult, Durability, IoFuture};
use crate::units::ByteOffset;

/// A RAM-backed device.
#[derive(Debug)]
pub struct MemDevice {
    name: String,
    data: Mutex<Vec<u8>>,
    failing: AtomicBool,
    flushes: AtomicU64,
}

impl MemDevice {
    /// A zero-filled device of `size` bytes.
    pub fn new(name: impl Into<String>, size: u64) -> Self {
        MemDevice {
            name: name.into(),
            data: Mutex::new(vec![0; size as usize]),
            failing: AtomicBool::new(false),
            flushes: AtomicU64::new(0),
        }
    }

    /// From now on every operation returns an I/O error (or succeeds again).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// Number of flushes seen.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::SeqCst)
    }

    /// A copy of the whole contents.
    pub fn snapshot(&self) -> Vec<u8> {
        self.data.lock().unwrap().clone()
    }

    fn check(&self) -> BlockResult {
        if self.failing.load(Ordering::SeqCst) {
            Err(BlockError::io(
                self.name.clone(),
                std::io::Error::from_raw_os_error(libc::EIO),
            ))
        } else {
            Ok(())
        }
    }

    fn fill(&self, offset: ByteOffset, len: u64) -> BlockResult {
        self.check()?;
        let mut data = self.data.lock().unwrap();
        check_range(offset, len, data.len() as u64)?;
        let start = offset.get() as usize;
        data[start..start + len as usize].fill(0);
        Ok(())
    }
}

impl BlockDevice for MemDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn size(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }

    fn read<'a>(&'a self, offset: ByteOffset, buf: &'a mut [u8]) -> IoFuture<'a> {
        crate::block::BoxFuture::new(async move {
            self.check()?;
            let data = self.data.lock().unwrap();
            check_range(offset, buf.len() as u64, data.len() as u64)?;
            let start = offset.get() as usize;
            buf.copy_from_slice(&data[start..start + buf.len()]);
            Ok(())
        })
    }

    fn write<'a>(&'a self, at: ByteOffset, buf: &'a [u8], _durability: Durability) -> IoFuture<'a> {
        crate::block::BoxFuture::new(async move {
            self.check()?;
            let mut data = self.data.lock().unwrap();
            check_range(at, buf.len() as u64, data.len() as u64)?;
            let start = at.get() as usize;
            data[start..start + buf.len()].copy_from_slice(buf);
            Ok(())
        })
    }

    fn flush(&self) -> IoFuture<'_> {
        crate::block::BoxFuture::new(async move {
            self.check()?;
            self.flushes.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }

    fn discard(&self, offset: ByteOffset, len: u64) -> IoFuture<'_> {
        crate::block::BoxFuture::new(async move { self.fill(offset, len) })
    }

    fn write_zeroes(&self, offset: ByteOffset, len: u64, _may_unmap: bool) -> IoFuture<'_> {
        crate::block::BoxFuture::new(async move { self.fill(offset, len) })
    }
}
