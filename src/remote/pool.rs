//! The connections of one remote member: one, or up to `?connections=N`
//! when the server advertises `CAN_MULTI_CONN`, each lost and remade on
//! its own.
//!
//! ```text
//!  get() ─ live connections ─► the one with the fewest requests in flight
//!    │      a dead extra slot ─► one attempt in the background
//!    │      (then 100 ms, 200 ms ... 30 s before the next)
//!    └ none live: slot 0 reconnects in the foreground with backoff
//!      (100 ms doubling to 2 s) until member_timeout after the member
//!      went down ─► EIO, the RAID layer fails the member
//!  lost(conn) ─ closes it: its other requests go again elsewhere at once
//! ```
//!
//! FLUSH: a flush sent on one connection covers the writes completed on
//! every connection, because the server promised so with `CAN_MULTI_CONN`
//! (its cache is shared); without the flag only slot 0 is used. A new
//! connection must show the export as it was (size, block sizes); an extra
//! one must still carry `CAN_MULTI_CONN`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::conn::Conn;
use super::handshake::Negotiated;
use super::link::{self, LinkError};
use super::member::RemoteOptions;
use super::stats::RemoteStats;
use super::uri::NbdUri;
use crate::block::{BlockError, BlockResult};
use crate::export::nbd::proto;

/// How to reach the server, and what every connection to it must show.
pub(super) struct Dial {
    pub uri: NbdUri,
    pub opts: RemoteOptions,
    pub name: String,
    /// What the first connection settled.
    pub info: Negotiated,
    pub stats: Arc<RemoteStats>,
    /// `CAN_MULTI_CONN` on the last connection made in the foreground.
    multi: AtomicBool,
}

impl Dial {
    pub fn new(uri: NbdUri, opts: RemoteOptions, name: String, info: Negotiated) -> Dial {
        Dial {
            multi: AtomicBool::new(info.has(proto::TFLAG_CAN_MULTI_CONN)),
            uri,
            opts,
            name,
            info,
            stats: Arc::new(RemoteStats::default()),
        }
    }

    async fn connect(&self, timeout: Duration) -> Result<Conn, LinkError> {
        let conn = link::connect(&self.uri, timeout).await?;
        self.check(conn)
    }

    /// A new connection must show the export as it was at open.
    fn check(&self, conn: Conn) -> Result<Conn, LinkError> {
        let (was, now) = (self.info, conn.info);
        if now.size != was.size {
            return Err(LinkError::SizeChanged {
                uri: self.uri.to_string(),
                was: was.size,
                now: now.size,
            });
        }
        let max = |n: Negotiated| n.sizes.max.min(proto::MAX_PAYLOAD);
        if now.sizes.min > was.sizes.min || max(now) < max(was) {
            return Err(LinkError::BlockSizesChanged {
                uri: self.uri.to_string(),
                was_min: was.sizes.min,
                was_max: was.sizes.max,
                now_min: now.sizes.min,
                now_max: now.sizes.max,
            });
        }
        Ok(conn)
    }
}

/// One connection's place.
#[derive(Default)]
struct Slot {
    conn: Mutex<Option<Arc<Conn>>>,
    /// A background attempt is running.
    busy: AtomicBool,
    /// No background attempt before this; the wait after the next failure.
    retry: Mutex<(Option<Instant>, Duration)>,
}

impl Slot {
    fn live(&self) -> Option<Arc<Conn>> {
        let g = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        g.as_ref().filter(|c| !c.is_closed()).cloned()
    }

    /// Installs `conn` unless a live one is there; returns what is there.
    fn fill(&self, conn: Conn) -> Arc<Conn> {
        let mut g = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        match g.as_ref().filter(|c| !c.is_closed()) {
            Some(c) => {
                conn.disconnect();
                c.clone()
            }
            None => g.insert(Arc::new(conn)).clone(),
        }
    }

    fn clear(&self) {
        let old = self.conn.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(c) = old {
            c.disconnect();
        }
    }

    /// Whether a background attempt may start now (and claims it).
    fn claim(&self) -> bool {
        let due = {
            let r = self.retry.lock().unwrap_or_else(|e| e.into_inner());
            r.0.is_none_or(|t| Instant::now() >= t)
        };
        due && !self.busy.swap(true, Ordering::AcqRel)
    }

    /// Records how a background attempt ended.
    fn settle(&self, result: Result<Conn, LinkError>, name: &str) {
        let mut r = self.retry.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(conn) => {
                self.fill(conn);
                *r = (None, Duration::ZERO);
            }
            Err(e) => {
                let wait = (r.1 * 2).clamp(Duration::from_millis(100), Duration::from_secs(30));
                tracing::debug!(member = %name, error = %crate::daemon::error_chain(&e),
                    "extra NBD connection failed; next attempt in {wait:?}");
                *r = (Some(Instant::now() + wait), wait);
            }
        }
        self.busy.store(false, Ordering::Release);
    }
}

/// The connections of one member.
pub(super) struct Pool {
    slots: Box<[Arc<Slot>]>,
    pub dial: Arc<Dial>,
    /// Held while reconnecting in the foreground; when the member went down.
    down: tokio::sync::Mutex<Option<Instant>>,
}

impl Pool {
    /// A pool of `count` slots, the first holding `first`.
    pub fn new(first: Conn, dial: Dial, count: usize) -> Pool {
        let slots: Box<[Arc<Slot>]> = (0..count.max(1)).map(|_| Arc::default()).collect();
        slots[0].fill(first);
        Pool {
            slots,
            dial: Arc::new(dial),
            down: tokio::sync::Mutex::new(None),
        }
    }

    /// The slots in use: all when the server allows several connections.
    fn active(&self) -> &[Arc<Slot>] {
        if self.dial.multi.load(Ordering::Relaxed) {
            &self.slots
        } else {
            &self.slots[..1]
        }
    }

    /// The live connection with the fewest requests in flight (and the
    /// count of live connections into the stats).
    fn least_loaded(&self) -> Option<Arc<Conn>> {
        let live: Vec<(usize, Arc<Conn>)> = self
            .active()
            .iter()
            .filter_map(|s| s.live())
            .filter_map(|c| Some((c.in_flight()?, c)))
            .collect();
        let stats = &self.dial.stats;
        stats
            .connections
            .store(live.len() as u64, Ordering::Relaxed);
        live.into_iter().min_by_key(|(n, _)| *n).map(|(_, c)| c)
    }

    /// Live connections now.
    pub fn live(&self) -> usize {
        self.slots.iter().filter(|s| s.live().is_some()).count()
    }

    /// A connection for a request that began at `since`.
    pub async fn get(&self, since: Instant) -> BlockResult<Arc<Conn>> {
        let conn = match self.least_loaded() {
            Some(c) => c,
            None => self.reconnect(since).await?,
        };
        self.refill();
        Ok(conn)
    }

    /// Closes `conn` (a request on it failed or timed out): its other
    /// requests end `Closed` now and go again on another connection.
    pub fn lost(&self, conn: &Arc<Conn>) {
        conn.close();
        for s in self.slots.iter() {
            let mut g = s.conn.lock().unwrap_or_else(|e| e.into_inner());
            if g.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
                *g = None;
            }
        }
    }

    /// Sends `NBD_CMD_DISC` on every live connection.
    pub fn disconnect_all(&self) {
        for s in self.slots.iter() {
            if let Some(c) = s.live() {
                c.disconnect();
            }
        }
    }

    /// Starts one background attempt for each dead slot in use that is due.
    fn refill(&self) {
        if !self.dial.multi.load(Ordering::Relaxed) {
            return;
        }
        for slot in self.slots.iter() {
            if slot.live().is_some() || !slot.claim() {
                continue;
            }
            let (weak, dial): (Weak<Slot>, _) = (Arc::downgrade(slot), self.dial.clone());
            tokio::spawn(async move {
                let result = dial
                    .connect(dial.opts.request_timeout())
                    .await
                    .and_then(|c| extra(&dial, c));
                match weak.upgrade() {
                    Some(slot) => slot.settle(result, &dial.name),
                    None => drop(result.map(|c| c.disconnect())),
                }
            });
        }
    }

    /// No connection is live: reconnect slot 0 with backoff until
    /// `member_timeout` has passed since `since` (or since the member went
    /// down, if earlier).
    async fn reconnect(&self, since: Instant) -> BlockResult<Arc<Conn>> {
        let mut down = self.down.lock().await;
        if let Some(c) = self.least_loaded() {
            return Ok(c);
        }
        let opts = self.dial.opts;
        let deadline = down.get_or_insert(since).to_owned() + opts.member_timeout;
        let mut backoff = Duration::from_millis(100);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let step = opts
                .request_timeout()
                .min(left.max(Duration::from_millis(100)));
            match self.dial.connect(step).await {
                Ok(conn) => {
                    *down = None;
                    return Ok(self.install(conn));
                }
                Err(e) if Instant::now() >= deadline => return Err(self.unreachable(e)),
                Err(_) => {
                    tokio::time::sleep(backoff.min(left)).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// A foreground connection into slot 0; the server's `CAN_MULTI_CONN`
    /// now decides whether the other slots are used.
    fn install(&self, conn: Conn) -> Arc<Conn> {
        let multi = conn.info.has(proto::TFLAG_CAN_MULTI_CONN);
        self.dial.multi.store(multi, Ordering::Relaxed);
        for s in &self.slots[1..] {
            // The server is back: the extra slots may try again at once.
            *s.retry.lock().unwrap_or_else(|e| e.into_inner()) = (None, Duration::ZERO);
            if !multi {
                s.clear();
            }
        }
        let conn = self.slots[0].fill(conn);
        self.dial.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        self.dial.stats.unreachable.store(false, Ordering::Release);
        tracing::info!(member = %self.dial.name, "NBD member reconnected");
        conn
    }

    fn unreachable(&self, e: LinkError) -> BlockError {
        let why = format!(
            "unreachable for more than {:?} (member_timeout): {}",
            self.dial.opts.member_timeout,
            crate::daemon::error_chain(&e)
        );
        tracing::warn!(member = %self.dial.name, "{why}");
        self.dial.stats.unreachable.store(true, Ordering::Release);
        BlockError::io(
            self.dial.name.clone(),
            std::io::Error::new(std::io::ErrorKind::TimedOut, why),
        )
    }
}

/// An extra connection must still be allowed by the server.
fn extra(dial: &Dial, conn: Conn) -> Result<Conn, LinkError> {
    if conn.info.has(proto::TFLAG_CAN_MULTI_CONN) {
        Ok(conn)
    } else {
        conn.disconnect();
        Err(LinkError::NotMultiConn(dial.uri.to_string()))
    }
}
