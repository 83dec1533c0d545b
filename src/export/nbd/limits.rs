//! What a client may take from the server: how long it may sit in the
//! handshake, how many connections it and everyone together may hold, and
//! how many request/reply bytes may be buffered for it.
//!
//! ```text
//!  accept ─► Admission::admit(peer) ─ over a limit ─► close at once, log (LogGate: ≤ 1/s)
//!                 │ ok: Admitted (counts until dropped)
//!                 ▼
//!  handshake within `handshake_timeout` ─► transmission: every READ/WRITE
//!  holds `request bytes` from its connection's pool (`connection_memory`)
//!  and from the server's (`memory`) until its reply left the writer;
//!  a reply not written within `write_timeout` ends the connection, and so
//!  does one drained slower than `min_drain_rate` over a `write_timeout`
//!  window with reply bytes pending all along; with `idle_timeout` set, a
//!  connection with nothing in flight, nothing pending and no bytes from
//!  the client for that long ends too (counted in [`Drops`])
//! ```
//!
//! What a request really holds in memory is its payload (a WRITE's data,
//! a READ's reply) plus, while the volume serves it, whatever copies the
//! layers below make of the bytes in flight. The payload is charged to the
//! two pools above; the copies to a third, fixed server-wide budget
//! ([`DEVICE_BUDGET`]): a request calls the volume in pieces of at most
//! [`DEVICE_PIECE`] bytes, each holding its size of that budget. So the
//! NBD data in memory is at most `memory` + [`DEVICE_BUDGET`], however
//! many clients stop reading their replies.
//!
//! Payloads are aligned buffers, so a request aligned to the members'
//! block size is read and written by the members in place (no copy,
//! `member::file`); what the budget still bounds is the copies of the rest:
//! the members' bounce buffers of unaligned requests (counted in
//! `vraid_member_bounce_bytes_total`), RAID-5's stripe buffers, the
//! checksum layer's edge blocks. It stays at 16 MiB: it costs one
//! uncontended semaphore acquire per piece, and those copies are still
//! there for unaligned I/O and RAID-5 writes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Default time a client has to finish the handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default limit of open connections, all clients together.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Default limit of open connections from one IP address.
pub const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: usize = 64;
/// Default time a reply may wait to be written before the connection is
/// dropped as not reading.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default slowest drain of pending replies (bytes/s over a write-timeout
/// window) before the connection is dropped as trickling: 64 KiB/s, ~2 MiB
/// per 30 s window, far below any real client's link.
pub const DEFAULT_MIN_DRAIN_RATE: u64 = 64 * 1024;
/// Default bytes of requests and replies buffered per connection.
pub const DEFAULT_CONNECTION_MEMORY: u64 = 256 * 1024 * 1024;
/// Default bytes of requests and replies buffered over all connections.
pub const DEFAULT_MEMORY: u64 = 1024 * 1024 * 1024;
/// Largest piece of a READ or WRITE handed to the volume at once.
pub const DEVICE_PIECE: usize = 4 * 1024 * 1024;
/// Bytes of pieces in the volume at once, all NBD requests together: the
/// bound on the copies the layers below make of NBD data (unaligned
/// requests, RAID-5 stripes).
pub const DEVICE_BUDGET: usize = 16 * 1024 * 1024;
/// Descriptors kept free for members, sockets and the control plane when
/// the connection limit is fitted under `RLIMIT_NOFILE`.
pub const FD_RESERVE: u64 = 64;

/// The limits of one NBD server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NbdLimits {
    /// A client that has not finished the handshake by then is dropped.
    pub handshake_timeout: Duration,
    /// Open connections, all clients together (Unix-socket ones included).
    pub max_connections: usize,
    /// Open connections from one IP address.
    pub max_connections_per_client: usize,
    /// READ/WRITE bytes buffered per connection (requests being served and
    /// replies not yet written to the socket).
    pub connection_memory: u64,
    /// The same over all connections.
    pub memory: u64,
    /// A reply that cannot be written for this long (the client does not
    /// read), or a WRITE payload not received within it, ends the
    /// connection and gives its bytes back.
    pub write_timeout: Duration,
    /// Replies pending for a whole `write_timeout` window while fewer than
    /// this many bytes per second of them reached the client end the
    /// connection (a client reading at a trickle); 0: no minimum.
    pub min_drain_rate: u64,
    /// A connection in transmission with no request in flight, no reply
    /// pending and no byte from the client for this long is closed;
    /// `None` (the default): never (QEMU and the kernel client keep idle
    /// connections for hours; the connection limits bound them).
    pub idle_timeout: Option<Duration>,
}

impl Default for NbdLimits {
    fn default() -> Self {
        NbdLimits {
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_client: DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
            connection_memory: DEFAULT_CONNECTION_MEMORY,
            memory: DEFAULT_MEMORY,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            min_drain_rate: DEFAULT_MIN_DRAIN_RATE,
            idle_timeout: None,
        }
    }
}

impl NbdLimits {
    /// The connection limit fitted under a descriptor budget of `fd_limit`
    /// with `fds_open` already in use: each connection costs one
    /// descriptor, and [`FD_RESERVE`] stay free. `None` if it already fits.
    pub fn fit_fd_limit(&self, fd_limit: u64, fds_open: u64) -> Option<usize> {
        let budget = fd_limit.saturating_sub(fds_open + FD_RESERVE).max(1);
        let budget = usize::try_from(budget).unwrap_or(usize::MAX);
        (self.max_connections > budget).then_some(budget)
    }

    /// Bytes one READ or WRITE of `length` holds: a connection's whole pool
    /// at most, so no single request can wait forever.
    pub fn request_bytes(&self, length: u32) -> u32 {
        let cap = self
            .connection_memory
            .min(self.memory)
            .min(u64::from(u32::MAX));
        u32::try_from(u64::from(length).min(cap)).unwrap_or(u32::MAX)
    }
}

/// Why a connection in transmission was dropped by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Idle for the idle timeout.
    Idle,
    /// Replies drained slower than the minimum rate.
    SlowDrain,
    /// A reply not written at all within the write timeout.
    StalledReply,
    /// A WRITE payload not received within the write timeout.
    StalledPayload,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 4] = [
        DropReason::Idle,
        DropReason::SlowDrain,
        DropReason::StalledReply,
        DropReason::StalledPayload,
    ];

    /// The metric label and status key.
    pub const fn label(self) -> &'static str {
        match self {
            DropReason::Idle => "idle",
            DropReason::SlowDrain => "slow_drain",
            DropReason::StalledReply => "stalled_reply",
            DropReason::StalledPayload => "stalled_payload",
        }
    }
}

/// Connections dropped by the server, per [`DropReason`].
#[derive(Debug, Default)]
pub struct Drops([AtomicU64; 4]);

/// The drops of every NBD server of this process (metrics, `status`).
static PROCESS_DROPS: Drops = Drops([
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
]);

impl Drops {
    /// Counts one drop here and in the process-wide counters.
    pub fn record(&self, why: DropReason) {
        self.0[why as usize].fetch_add(1, Ordering::Relaxed);
        PROCESS_DROPS.0[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// How many were dropped for `why`.
    pub fn get(&self, why: DropReason) -> u64 {
        self.0[why as usize].load(Ordering::Relaxed)
    }

    /// The process-wide counters.
    pub fn process() -> &'static Drops {
        &PROCESS_DROPS
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The server-wide limit is reached.
    #[error("{0} connections open, the server limit")]
    Server(usize),
    /// The per-address limit is reached.
    #[error("{0} connections open from this address, the per-client limit")]
    Client(usize),
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Lets a repeated warning through at most once a second.
#[derive(Debug, Default)]
pub struct LogGate(Mutex<GateState>);

#[derive(Debug, Default)]
struct GateState {
    last: Option<Instant>,
    held_back: u64,
}

impl LogGate {
    /// `Some(n)` if the warning should be logged now, `n` being how many
    /// were held back since the last one; `None` to stay quiet.
    pub fn pass(&self) -> Option<u64> {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if g.last.is_some_and(|t| now - t < Duration::from_secs(1)) {
            g.held_back += 1;
            return None;
        }
        g.last = Some(now);
        Some(std::mem::take(&mut g.held_back))
    }
}

/// Counts open connections against the limits.
#[derive(Debug)]
pub struct Admission {
    max: usize,
    max_per_client: usize,
    counts: Arc<Mutex<Counts>>,
}

/// One admitted connection; gives its place back when dropped.
#[derive(Debug)]
pub struct Admitted {
    ip: Option<IpAddr>,
    counts: Arc<Mutex<Counts>>,
}

impl Admission {
    /// Admission under `max` connections, `max_per_client` per address.
    pub fn new(max: usize, max_per_client: usize) -> Self {
        Admission {
            max,
            max_per_client,
            counts: Arc::default(),
        }
    }

    /// Admits a connection from `ip` (`None`: a Unix socket, only the
    /// server-wide limit applies) or says which limit refuses it.
    pub fn admit(&self, ip: Option<IpAddr>) -> Result<Admitted, Refusal> {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if c.total >= self.max {
            return Err(Refusal::Server(c.total));
        }
        if let Some(ip) = ip {
            let n = c.per_ip.entry(ip).or_insert(0);
            if *n >= self.max_per_client {
                return Err(Refusal::Client(*n));
            }
            *n += 1;
        }
        c.total += 1;
        Ok(Admitted {
            ip,
            counts: self.counts.clone(),
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.total -= 1;
        if let Some(ip) = self.ip {
            if let Some(n) = c.per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    c.per_ip.remove(&ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, last]))
    }

    #[test]
    fn per_client_limit_refuses_only_that_client() {
        let a = Admission::new(10, 2);
        let _x = (a.admit(ip(1)).unwrap(), a.admit(ip(1)).unwrap());
        assert_eq!(a.admit(ip(1)).unwrap_err(), Refusal::Client(2));
        assert!(a.admit(ip(2)).is_ok());
    }

    #[test]
    fn server_limit_counts_unix_and_tcp_and_frees_on_drop() {
        let a = Admission::new(2, 2);
        let first = a.admit(None).unwrap();
        let _second = a.admit(ip(1)).unwrap();
        assert_eq!(a.admit(ip(2)).unwrap_err(), Refusal::Server(2));
        drop(first);
        assert!(a.admit(ip(2)).is_ok());
    }

    #[test]
    fn dropped_connections_give_back_their_per_client_place() {
        let a = Admission::new(10, 1);
        drop(a.admit(ip(1)).unwrap());
        assert!(a.admit(ip(1)).is_ok());
    }

    #[test]
    fn log_gate_passes_once_a_second_and_counts_the_rest() {
        let gate = LogGate::default();
        assert_eq!(gate.pass(), Some(0));
        assert_eq!(gate.pass(), None);
        assert_eq!(gate.pass(), None);
        gate.0.lock().unwrap().last = Some(Instant::now() - Duration::from_secs(2));
        assert_eq!(gate.pass(), Some(2));
    }

    #[test]
    fn connection_limit_fits_under_the_descriptor_limit() {
        let l = NbdLimits {
            max_connections: 1000,
            ..NbdLimits::default()
        };
        assert_eq!(
            l.fit_fd_limit(256, 40),
            Some(256 - 40 - FD_RESERVE as usize)
        );
        assert_eq!(l.fit_fd_limit(100_000, 40), None);
        assert_eq!(l.fit_fd_limit(10, 40), Some(1));
    }

    #[test]
    fn one_request_never_needs_more_than_a_whole_pool() {
        let l = NbdLimits {
            connection_memory: 1 << 20,
            ..NbdLimits::default()
        };
        assert_eq!(l.request_bytes(32 << 20), 1 << 20);
        assert_eq!(l.request_bytes(4096), 4096);
    }
}
