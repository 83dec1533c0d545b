//! Metrics: per-device I/O counters ([`stats`]) and their Prometheus text
//! exposition over a tiny HTTP endpoint ([`http`]).
//!
//! ```text
//!  NBD ─► StatsDevice(volume) ─► Volume ─► StatsDevice(member) ─► FaultDevice ─► window
//!              │ IoStats                         │ IoStats
//!              └──────────► render(Registry) ◄───┘ + states + fault hits ─► GET /metrics
//! ```

pub mod http;
pub mod prometheus;
pub mod stats;
