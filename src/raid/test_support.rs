//! Test doubles for RAID tests: a recording event sink and an instrumented
//! in-memory member (counts I/O, injects read errors, can hold writes).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::layout::{ChunkSize, Geometry, MemberIndex};
use super::volume::{Volume, VolumeEvents};
use super::Level;
use crate::block::{BlockDevice, BlockError, BoxFuture, Durability, IoFuture};
use crate::member::memory::MemDevice;
use crate::units::ByteOffset;

/// Records every member failure reported by a volume.
#[derive(Debug, Default)]
pub struct Events {
    pub failed: Mutex<Vec<MemberIndex>>,
}

impl VolumeEvents for Events {
    fn member_failed(
        &self,
        member: MemberIndex,
        _error: &BlockError,
        _states: &[super::MemberState],
    ) -> BoxFuture<'_, ()> {
        self.failed.lock().unwrap().push(member);
        crate::block::BoxFuture::new(async {})
    }
}

/// A [`MemDevice`] with counters, injectable read errors and a write gate.
#[derive(Debug)]
pub struct TestDevice {
    pub mem: MemDevice,
    pub reads: AtomicU64,
    pub read_bytes: AtomicU64,
    pub writes: AtomicU64,
    pub fua_writes: AtomicU64,
    pub clears: AtomicU64,
    /// The next this-many reads fail.
    pub fail_reads: AtomicU32,
    /// While set, every read and write yields to the scheduler first, so
    /// concurrent requests interleave at member I/O boundaries.
    pub yield_first: AtomicBool,
    /// While set, writes wait for `gate_open`.
    pub gate_closed: AtomicBool,
    pub gate_open: Notify,
    /// What [`BlockDevice::merge_limit`] answers (0: no merged runs).
    pub merge_limit: AtomicU64,
}

impl TestDevice {
    pub fn new(name: &str, size: u64) -> Arc<TestDevice> {
        Arc::new(TestDevice {
            mem: MemDevice::new(name, size),
            reads: AtomicU64::new(0),
            read_bytes: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            fua_writes: AtomicU64::new(0),
            clears: AtomicU64::new(0),
            fail_reads: AtomicU32::new(0),
            yield_first: AtomicBool::new(false),
            gate_closed: AtomicBool::new(false),
            gate_open: Notify::new(),
            merge_limit: AtomicU64::new(0),
        })
    }

    pub fn reset_counters(&self) {
        for c in [
            &self.reads,
            &self.read_bytes,
            &self.writes,
            &self.fua_writes,
            &self.clears,
        ] {
            c.store(0, Ordering::SeqCst);
        }
    }
}

impl BlockDevice for TestDevice {
    crate::block::forward_to!(mem => name, size, flush);

    fn merge_limit(&self) -> u64 {
        self.merge_limit.load(Ordering::SeqCst)
    }

    fn read<'a>(&'a self, offset: ByteOffset, buf: &'a mut [u8]) -> IoFuture<'a> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.read_bytes
            .fetch_add(buf.len() as u64, Ordering::SeqCst);
        let injected = self
            .fail_reads
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        crate::block::BoxFuture::new(async move {
            if self.yield_first.load(Ordering::SeqCst) {
                tokio::task::yield_now().await;
            }
            if injected {
                let e = std::io::Error::from_raw_os_error(libc::EIO);
                return Err(BlockError::io(self.name(), e));
            }
            self.mem.read(offset, buf).await
        })
    }

    fn write<'a>(&'a self, at: ByteOffset, buf: &'a [u8], durability: Durability) -> IoFuture<'a> {
        crate::block::BoxFuture::new(async move {
            if self.yield_first.load(Ordering::SeqCst) {
                tokio::task::yield_now().await;
            }
            loop {
                // Registered before the check: an opening in between is seen.
                let opened = self.gate_open.notified();
                if !self.gate_closed.load(Ordering::SeqCst) {
                    break;
                }
                opened.await;
            }
            self.writes.fetch_add(1, Ordering::SeqCst);
            if durability == Durability::Fua {
                self.fua_writes.fetch_add(1, Ordering::SeqCst);
            }
            self.mem.write(at, buf, durability).await
        })
    }

    fn discard(&self, offset: ByteOffset, len: u64) -> IoFuture<'_> {
        self.clears.fetch_add(1, Ordering::SeqCst);
        self.mem.discard(offset, len)
    }

    fn write_zeroes(&self, offset: ByteOffset, len: u64, may_unmap: bool) -> IoFuture<'_> {
        self.clears.fetch_add(1, Ordering::SeqCst);
        self.mem.write_zeroes(offset, len, may_unmap)
    }
}

/// An array over fresh test devices; `missing` slots get no device.
pub struct Array {
    pub devices: Vec<Arc<TestDevice>>,
    pub events: Arc<Events>,
    pub volume: Volume,
}

impl Array {
    pub fn new(
        level: Level,
        members: usize,
        chunk: u64,
        member_size: u64,
        missing: &[usize],
    ) -> Array {
        Self::new_wrapped(level, members, chunk, member_size, missing, |_, d| d)
    }

    /// Like [`Array::new`], every member seen through `wrap`.
    pub fn new_wrapped(
        level: Level,
        members: usize,
        chunk: u64,
        member_size: u64,
        missing: &[usize],
        wrap: impl Fn(usize, Arc<dyn BlockDevice>) -> Arc<dyn BlockDevice>,
    ) -> Array {
        let geometry =
            Geometry::new(level, members, ChunkSize::new(chunk).unwrap(), member_size).unwrap();
        let devices: Vec<Arc<TestDevice>> = (0..members)
            .map(|i| TestDevice::new(&format!("m{i}"), member_size))
            .collect();
        Self::over_wrapped(geometry, devices, missing, wrap)
    }

    /// A (new) volume over existing devices.
    pub fn over(geometry: Geometry, devices: Vec<Arc<TestDevice>>, missing: &[usize]) -> Array {
        Self::over_wrapped(geometry, devices, missing, |_, d| d)
    }

    /// A (new) volume over existing devices, each seen through `wrap`
    /// (e.g. a checksum device).
    pub fn over_wrapped(
        geometry: Geometry,
        devices: Vec<Arc<TestDevice>>,
        missing: &[usize],
        wrap: impl Fn(usize, Arc<dyn BlockDevice>) -> Arc<dyn BlockDevice>,
    ) -> Array {
        let events = Arc::new(Events::default());
        let members = devices
            .iter()
            .enumerate()
            .map(|(i, d)| {
                (!missing.contains(&i)).then(|| wrap(i, d.clone() as Arc<dyn BlockDevice>))
            })
            .collect();
        let volume = Volume::new("vol".into(), geometry, members, events.clone()).unwrap();
        Array {
            devices,
            events,
            volume,
        }
    }

    pub fn read_bytes(&self) -> u64 {
        self.devices
            .iter()
            .map(|d| d.read_bytes.load(Ordering::SeqCst))
            .sum()
    }

    pub fn reset_counters(&self) {
        self.devices.iter().for_each(|d| d.reset_counters());
    }
}

/// Flips the bits of `mask` in the byte at `at` of `dev`, behind the back
/// of whatever sits on it (corruption for checksum and scrub tests).
pub async fn xor_byte(dev: &MemDevice, at: u64, mask: u8) -> crate::block::BlockResult {
    let mut b = [0u8; 1];
    dev.read(ByteOffset(at), &mut b).await?;
    b[0] ^= mask;
    dev.write(ByteOffset(at), &b, Durability::Normal).await
}

/// Deterministic non-trivial fill.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
