//! Per-device I/O counters: a [`BlockDevice`] wrapper that counts operations,
//! bytes, errors and latency with relaxed atomics (no locks on the data path).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::block::{BlockDevice, BlockResult, BoxFuture, Durability};
use crate::units::ByteOffset;

/// Latency histogram bucket upper bounds, in microseconds (`+Inf` implied).
pub const LATENCY_BUCKETS_US: [u64; 12] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 500_000, 2_000_000,
];

/// Operation types counted separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpType {
    /// Reads.
    Read,
    /// Writes.
    Write,
    /// Flushes.
    Flush,
    /// Discards and write-zeroes.
    Trim,
}

impl OpType {
    /// Every type, in index order.
    pub const ALL: [OpType; 4] = [OpType::Read, OpType::Write, OpType::Flush, OpType::Trim];

    /// Label value in metrics and JSON.
    pub const fn label(self) -> &'static str {
        match self {
            OpType::Read => "read",
            OpType::Write => "write",
            OpType::Flush => "flush",
            OpType::Trim => "trim",
        }
    }
}

/// Counters of one operation type.
#[derive(Debug, Default)]
pub struct OpCounters {
    /// Completed operations (successful or not).
    pub ops: AtomicU64,
    /// Bytes of successful operations.
    pub bytes: AtomicU64,
    /// Failed operations.
    pub errors: AtomicU64,
    /// Sum of latencies in microseconds.
    pub latency_sum_us: AtomicU64,
    /// Non-cumulative bucket counts; the last is `+Inf`.
    pub buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
}

impl OpCounters {
    fn record(&self, bytes: u64, ok: bool, elapsed_us: u64) {
        self.ops.fetch_add(1, Ordering::Relaxed);
        if ok {
            self.bytes.fetch_add(bytes, Ordering::Relaxed);
        } else {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.latency_sum_us.fetch_add(elapsed_us, Ordering::Relaxed);
        let i = LATENCY_BUCKETS_US
            .iter()
            .position(|&b| elapsed_us <= b)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// Counters of one device, by operation type.
#[derive(Debug, Default)]
pub struct IoStats {
    ops: [OpCounters; 4],
}

/// A point-in-time copy of the plain counters, for status output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoSummary {
    /// Reads completed.
    pub reads: u64,
    /// Writes completed.
    pub writes: u64,
    /// Flushes completed.
    pub flushes: u64,
    /// Discards and write-zeroes completed.
    pub trims: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Failed operations of any type.
    pub errors: u64,
}

impl IoStats {
    /// Fresh zeroed counters.
    pub fn new() -> Arc<IoStats> {
        Arc::new(IoStats::default())
    }

    /// Counters of one operation type.
    pub fn op(&self, op: OpType) -> &OpCounters {
        &self.ops[op as usize]
    }

    /// A copy of the plain counters.
    pub fn summary(&self) -> IoSummary {
        let get =
            |op: OpType, f: fn(&OpCounters) -> &AtomicU64| f(self.op(op)).load(Ordering::Relaxed);
        IoSummary {
            reads: get(OpType::Read, |c| &c.ops),
            writes: get(OpType::Write, |c| &c.ops),
            flushes: get(OpType::Flush, |c| &c.ops),
            trims: get(OpType::Trim, |c| &c.ops),
            read_bytes: get(OpType::Read, |c| &c.bytes),
            write_bytes: get(OpType::Write, |c| &c.bytes),
            errors: OpType::ALL.iter().map(|&op| get(op, |c| &c.errors)).sum(),
        }
    }
}

/// Wraps a device and records every operation into an [`IoStats`].
pub struct StatsDevice {
    inner: Arc<dyn BlockDevice>,
    stats: Arc<IoStats>,
}

impl std::fmt::Debug for StatsDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsDevice")
            .field("inner", &self.inner.name())
            .finish()
    }
}

impl StatsDevice {
    /// Wraps `inner`, counting into `stats`.
    pub fn new(inner: Arc<dyn BlockDevice>, stats: Arc<IoStats>) -> StatsDevice {
        StatsDevice { inner, stats }
    }

    async fn timed(&self, op: OpType, bytes: u64, fut: BoxFuture<'_, BlockResult>) -> BlockResult {
        let start = Instant::now();
        let result = fut.await;
        let us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.stats.op(op).record(bytes, result.is_ok(), us);
        result
    }
}

impl BlockDevice for StatsDevice {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read<'a>(&'a self, offset: ByteOffset, buf: &'a mut [u8]) -> BoxFuture<'a, BlockResult> {
        let len = buf.len() as u64;
        Box::pin(self.timed(OpType::Read, len, self.inner.read(offset, buf)))
    }

    fn write<'a>(
        &'a self,
        offset: ByteOffset,
        buf: &'a [u8],
        durability: Durability,
    ) -> BoxFuture<'a, BlockResult> {
        let len = buf.len() as u64;
        Box::pin(self.timed(
            OpType::Write,
            len,
            self.inner.write(offset, buf, durability),
        ))
    }

    fn flush(&self) -> BoxFuture<'_, BlockResult> {
        Box::pin(self.timed(OpType::Flush, 0, self.inner.flush()))
    }

    fn discard(&self, offset: ByteOffset, len: u64) -> BoxFuture<'_, BlockResult> {
        Box::pin(self.timed(OpType::Trim, len, self.inner.discard(offset, len)))
    }

    fn mark_lost(&self, offset: ByteOffset, len: u64) -> BoxFuture<'_, BlockResult> {
        self.inner.mark_lost(offset, len)
    }

    fn write_zeroes(
        &self,
        offset: ByteOffset,
        len: u64,
        may_unmap: bool,
    ) -> BoxFuture<'_, BlockResult> {
        Box::pin(self.timed(
            OpType::Trim,
            len,
            self.inner.write_zeroes(offset, len, may_unmap),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::member::memory::MemDevice;

    #[tokio::test]
    async fn stats_device_counts_ops_bytes_errors_and_latency() {
        // Arrange
        let mem = Arc::new(MemDevice::new("mem", 8192));
        let stats = IoStats::new();
        let dev = StatsDevice::new(mem.clone(), stats.clone());
        let mut buf = [0u8; 4096];
        // Act
        dev.write(ByteOffset(0), &buf, Durability::Normal)
            .await
            .unwrap();
        dev.read(ByteOffset(0), &mut buf).await.unwrap();
        dev.read(ByteOffset(4096), &mut buf).await.unwrap();
        mem.set_failing(true);
        assert!(dev.read(ByteOffset(0), &mut buf).await.is_err());
        dev.flush().await.unwrap_err();
        // Assert
        let s = stats.summary();
        assert_eq!((s.reads, s.writes, s.flushes), (3, 1, 1));
        assert_eq!((s.read_bytes, s.write_bytes), (8192, 4096));
        assert_eq!(s.errors, 2);
        let buckets: u64 = stats
            .op(OpType::Read)
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum();
        assert_eq!(buckets, 3);
    }
}
