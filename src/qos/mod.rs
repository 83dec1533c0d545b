//! Per-volume QoS: limits on read/write/total IOPS and bytes per second,
//! each a token bucket with a burst, as QEMU's throttle groups and SPDK's
//! bdev QoS have. A volume at its limit queues; nothing fails.
//!
//! ```text
//!  NBD / vhost-user-blk ─► StatsDevice ─► QosDevice ─► VolumeFaultDevice ─► WriteCache ─► volume
//!                                          │ Limiter: buckets (bucket.rs), a FIFO
//!                                          │ queue for reads and one for writes
//!                                          └ set live (`vraid set VOL --iops ..`),
//!                                            shown in status and the metrics
//! ```
//!
//! The client stack (`volfault::ClientStack`) puts the [`QosDevice`] on
//! top, so the time a request waits counts in the volume's latency, and
//! a held request holds nothing below it. The NBD server waits for
//! admission ([`crate::block::BlockDevice::admit`]) before it takes its
//! server-wide device budget and then runs the request [`prepaid`]: a
//! throttled volume's queue never holds the budget other volumes need.

pub mod bucket;
mod device;
pub mod limiter;

use std::cell::Cell;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use device::QosDevice;
pub use limiter::{Admission, Direction, Limiter};

tokio::task_local! {
    /// Set while a request already admitted by
    /// [`crate::block::BlockDevice::admit`] runs: when it began to wait
    /// for admission, until the volume's counters take it.
    static PREPAID: Cell<Option<std::time::Instant>>;
}

/// Runs `fut` as a request already admitted (`BlockDevice::admit`): the
/// QoS device lets the reads and writes it makes through uncharged. The
/// device calls must be made inside `fut` (an `async` block), not before.
pub async fn prepaid<F: std::future::Future>(fut: F) -> F::Output {
    PREPAID.scope(Cell::new(None), fut).await
}

/// [`prepaid`], for a request that began waiting for admission at
/// `since` (`None`: it did not wait): the first latency histogram it
/// meets (`metrics::stats::StatsDevice`, the volume's) counts from there,
/// so QoS waits show in the volume's latency.
pub async fn prepaid_since<F: std::future::Future>(
    since: Option<std::time::Instant>,
    fut: F,
) -> F::Output {
    PREPAID.scope(Cell::new(since), fut).await
}

/// When the running admitted request began to wait for admission, once
/// (the outermost counter takes it; those below count their own time).
pub fn take_admitted_since() -> Option<std::time::Instant> {
    PREPAID.try_with(Cell::take).ok().flatten()
}

/// True inside [`prepaid`].
fn is_prepaid() -> bool {
    PREPAID.try_with(|_| ()).is_ok()
}

/// Burst when none is set: a tenth of a second of each rate (QEMU's
/// default bucket size).
pub const DEFAULT_BURST: Duration = Duration::from_millis(100);

/// A volume's limits; 0 means no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct QosLimits {
    /// Reads and writes per second, together.
    pub iops: u64,
    /// Reads per second.
    pub read_iops: u64,
    /// Writes (TRIM, WRITE_ZEROES too) per second.
    pub write_iops: u64,
    /// Bytes read and written per second, together.
    pub bps: u64,
    /// Bytes read per second.
    pub read_bps: u64,
    /// Bytes written per second.
    pub write_bps: u64,
    /// How much an idle volume may save up, in milliseconds of each rate
    /// (0: [`DEFAULT_BURST`]).
    pub burst_ms: u64,
}

impl QosLimits {
    /// True when some limit is set.
    pub fn any(&self) -> bool {
        [
            self.iops,
            self.read_iops,
            self.write_iops,
            self.bps,
            self.read_bps,
            self.write_bps,
        ]
        .iter()
        .any(|&v| v > 0)
    }

    /// These limits with the fields `u` sets replaced.
    pub fn updated(mut self, u: &QosUpdate) -> QosLimits {
        let fields = [
            (&mut self.iops, u.iops),
            (&mut self.read_iops, u.read_iops),
            (&mut self.write_iops, u.write_iops),
            (&mut self.bps, u.bps),
            (&mut self.read_bps, u.read_bps),
            (&mut self.write_bps, u.write_bps),
            (&mut self.burst_ms, u.burst_ms),
        ];
        for (field, new) in fields {
            if let Some(v) = new {
                *field = v;
            }
        }
        self
    }

    /// One line for `vraid status` and the CLI.
    pub fn describe(&self) -> String {
        let size = crate::units::format_size;
        let parts: Vec<String> = [
            ("iops", self.iops, false),
            ("read iops", self.read_iops, false),
            ("write iops", self.write_iops, false),
            ("bps", self.bps, true),
            ("read bps", self.read_bps, true),
            ("write bps", self.write_bps, true),
        ]
        .into_iter()
        .filter(|(_, v, _)| *v > 0)
        .map(|(name, v, bytes)| match bytes {
            true => format!("{name} {}/s", size(v)),
            false => format!("{name} {v}"),
        })
        .collect();
        if parts.is_empty() {
            return "no limits".to_string();
        }
        let burst = match self.burst_ms {
            0 => DEFAULT_BURST.as_millis() as u64,
            ms => ms,
        };
        format!("{}, burst {burst} ms", parts.join(", "))
    }
}

/// A change of limits: `None` keeps a field, `Some(0)` removes a limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct QosUpdate {
    /// Total IOPS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iops: Option<u64>,
    /// Read IOPS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_iops: Option<u64>,
    /// Write IOPS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_iops: Option<u64>,
    /// Total bytes per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bps: Option<u64>,
    /// Read bytes per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_bps: Option<u64>,
    /// Write bytes per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_bps: Option<u64>,
    /// Burst in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst_ms: Option<u64>,
}

impl QosUpdate {
    /// True when it changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == QosUpdate::default()
    }
}

/// QoS in `vraid status` (`qos`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QosStatus {
    /// The limits now.
    pub limits: QosLimits,
    /// Requests that waited for a limit, since start.
    pub throttled_requests: u64,
    /// Microseconds they waited, together.
    pub throttled_us: u64,
    /// Requests waiting now.
    pub waiting: u64,
    /// Admitted requests in the volume now (limited directions only).
    #[serde(default)]
    pub in_flight: u64,
    /// Requests that waited for room under the in-flight cap, since start.
    #[serde(default)]
    pub capped_requests: u64,
}

#[cfg(test)]
mod tests;
