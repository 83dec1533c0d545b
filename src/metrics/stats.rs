//! Per-device I/O counters: a [`BlockDevice`] wrapper that counts operations,
//! bytes and errors (`prometheus-client` counters: relaxed atomics) and
//! latency (its histogram: a short uncontended lock per operation, ~10 ns
//! more than atomics).

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::block::{BlockDevice, BlockResult, BoxFuture, Durability, IoFuture};
use crate::units::ByteOffset;

/// Latency histogram bucket upper bounds, in seconds (`+Inf` implied).
pub const LATENCY_BUCKETS: [f64; 12] = [
    50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 0.1, 0.5, 2.0,
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
#[derive(Debug)]
pub struct OpCounters {
    /// Completed operations (successful or not).
    pub ops: Counter,
    /// Bytes of successful operations.
    pub bytes: Counter,
    /// Failed operations.
    pub errors: Counter,
    /// Latencies in seconds.
    pub latency: Histogram,
}

impl Default for OpCounters {
    fn default() -> Self {
        OpCounters {
            ops: Counter::default(),
            bytes: Counter::default(),
            errors: Counter::default(),
            latency: Histogram::new(LATENCY_BUCKETS),
        }
    }
}

impl OpCounters {
    fn record(&self, bytes: u64, ok: bool, elapsed_seconds: f64) {
        self.ops.inc();
        if ok {
            self.bytes.inc_by(bytes);
        } else {
            self.errors.inc();
        }
        self.latency.observe(elapsed_seconds);
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
        let get = |op: OpType, f: fn(&OpCounters) -> &Counter| f(self.op(op)).get();
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

    /// Runs `fut` and records it; from the start of its QoS wait when the
    /// NBD server admitted it ahead ([`crate::qos::prepaid_since`]).
    async fn timed(&self, op: OpType, bytes: u64, fut: BoxFuture<'_, BlockResult>) -> BlockResult {
        let start = crate::qos::take_admitted_since().unwrap_or_else(Instant::now);
        let result = fut.await;
        let seconds = start.elapsed().as_secs_f64();
        self.stats.op(op).record(bytes, result.is_ok(), seconds);
        result
    }
}

impl BlockDevice for StatsDevice {
    crate::block::forward_to!(inner => name, size, merge_limit, mark_lost, allocation, admit, hold, retire);

    fn read<'a>(&'a self, offset: ByteOffset, buf: &'a mut [u8]) -> IoFuture<'a> {
        let len = buf.len() as u64;
        crate::block::BoxFuture::new(self.timed(OpType::Read, len, self.inner.read(offset, buf)))
    }

    fn write<'a>(&'a self, at: ByteOffset, buf: &'a [u8], durability: Durability) -> IoFuture<'a> {
        let len = buf.len() as u64;
        crate::block::BoxFuture::new(self.timed(
            OpType::Write,
            len,
            self.inner.write(at, buf, durability),
        ))
    }

    fn read_vectored<'a>(
        &'a self,
        offset: ByteOffset,
        bufs: &'a mut [std::io::IoSliceMut<'_>],
    ) -> IoFuture<'a> {
        let len = crate::iovec::len_mut(bufs) as u64;
        crate::block::BoxFuture::new(self.timed(
            OpType::Read,
            len,
            self.inner.read_vectored(offset, bufs),
        ))
    }

    fn write_vectored<'a>(
        &'a self,
        at: ByteOffset,
        bufs: &'a [std::io::IoSlice<'a>],
        durability: Durability,
    ) -> IoFuture<'a> {
        let len = crate::iovec::len(bufs) as u64;
        let inner = self.inner.write_vectored(at, bufs, durability);
        crate::block::BoxFuture::new(self.timed(OpType::Write, len, inner))
    }

    fn flush(&self) -> IoFuture<'_> {
        crate::block::BoxFuture::new(self.timed(OpType::Flush, 0, self.inner.flush()))
    }

    fn discard(&self, offset: ByteOffset, len: u64) -> IoFuture<'_> {
        crate::block::BoxFuture::new(self.timed(OpType::Trim, len, self.inner.discard(offset, len)))
    }

    fn write_zeroes(&self, offset: ByteOffset, len: u64, may_unmap: bool) -> IoFuture<'_> {
        crate::block::BoxFuture::new(self.timed(
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
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("read", "", stats.op(OpType::Read).latency.clone());
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("\nread_count 3\n"), "{text}");
    }
}
