//! Metrics: per-device I/O counters ([`stats`]) and their Prometheus text
//! exposition ([`prometheus`], encoded by `prometheus-client` from the typed
//! status and the counters) over a tiny HTTP endpoint ([`http`]). The
//! Grafana dashboard `dashboards/vraid.json` queries these series.
//!
//! ```text
//!  NBD ─► StatsDevice(volume) ─► Volume ─► StatsDevice(member) ─► FaultDevice ─► window
//!              │ IoStats                         │ IoStats
//!              └──────────► render(Registry) ◄───┘ + VolumeStatus + fault hits ─► GET /metrics
//! ```

pub mod http;
pub mod prometheus;
pub mod stats;
