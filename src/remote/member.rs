//! [`RemoteMember`]: an NBD export as a [`BlockDevice`], surviving network
//! faults.
//!
//! ```text
//!  request ─► current connection ─ timeout(request_timeout) ─► reply
//!     │ connection lost / timed out: drop it, reconnect with backoff
//!     │ (100 ms doubling to 2 s) and send the request again
//!     └ unreachable, or no answer on live connections, for member_timeout
//!       since the request began: EIO ─► the RAID layer fails the member
//!       (degraded, bitmap records)
//! ```
//!
//! A request in flight at a cut is sent again on the new connection (block
//! writes are idempotent: the same bytes at the same offset; the levels
//! never overlap two writes in flight) or failed after `member_timeout`,
//! never dropped. FLUSH and FUA go to the server as they are: a write with
//! `Durability::Fua` completes only once the server has it on stable
//! storage (FUA, or FLUSH when the server offers no FUA).

use std::io;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::conn::{CallError, Conn};
use super::handshake::Negotiated;
use super::link::{self, LinkError};
use super::stats::{self, RemoteStats};
use super::uri::NbdUri;
use crate::block::{check_range, BlockDevice, BlockError, BlockResult, Durability, IoFuture};
use crate::export::nbd::proto::{self, Command};
use crate::member::DeviceId;
use crate::units::ByteOffset;

/// Timeouts of remote members (`[server] member_timeout`,
/// `VRAID_MEMBER_TIMEOUT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteOptions {
    /// How long a member may stay unreachable before it is failed.
    pub member_timeout: Duration,
}

impl RemoteOptions {
    /// Environment variable overriding the default `member_timeout`.
    pub const ENV: &'static str = "VRAID_MEMBER_TIMEOUT";
    /// The default `member_timeout`.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

    /// `VRAID_MEMBER_TIMEOUT` (a duration such as `5s`), else 30 s.
    pub fn from_env() -> RemoteOptions {
        let member_timeout = std::env::var(Self::ENV)
            .ok()
            .and_then(|v| crate::duration::parse_positive(&v).ok())
            .unwrap_or(Self::DEFAULT_TIMEOUT);
        RemoteOptions { member_timeout }
    }

    /// How long one request may wait for its reply before the connection
    /// is given up (and the request sent again on a new one).
    pub fn request_timeout(&self) -> Duration {
        (self.member_timeout / 2).clamp(Duration::from_millis(500), Duration::from_secs(10))
    }
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions::from_env()
    }
}

/// Largest zero buffer written when the server has no WRITE_ZEROES.
const ZERO_CHUNK: usize = 1 << 20;

/// An NBD export used as a member.
pub struct RemoteMember {
    uri: NbdUri,
    /// [`NbdUri::identity`], resolved at open.
    identity: String,
    name: String,
    info: Negotiated,
    opts: RemoteOptions,
    read_only: bool,
    current: Mutex<Option<Arc<Conn>>>,
    /// Held while reconnecting; the instant the member went unreachable.
    down: tokio::sync::Mutex<Option<Instant>>,
    /// Counters (also in the book `stats` keeps for `vraid status`).
    pub stats: Arc<RemoteStats>,
}

impl RemoteMember {
    /// Connects to the export named by `path` (an NBD URI).
    pub fn open(path: &Path, opts: RemoteOptions, read_only: bool) -> Result<Self, LinkError> {
        let uri = NbdUri::from_path(path)?;
        let conn = link::connect_now(&uri, opts.request_timeout())?;
        let name = path.display().to_string();
        let counters = Arc::new(RemoteStats::default());
        stats::enter(&name, &counters);
        Ok(RemoteMember {
            identity: uri.identity(),
            name,
            info: conn.info,
            uri,
            opts,
            read_only: read_only || conn.info.has(proto::TFLAG_READ_ONLY),
            current: Mutex::new(Some(Arc::new(conn))),
            down: tokio::sync::Mutex::new(None),
            stats: counters,
        })
    }

    /// What the handshake settled.
    pub fn negotiated(&self) -> Negotiated {
        self.info
    }

    /// The connection if it is up.
    fn live(&self) -> Option<Arc<Conn>> {
        let g = self.current.lock().unwrap_or_else(|e| e.into_inner());
        g.as_ref().filter(|c| !c.is_closed()).cloned()
    }

    /// Drops `conn` if it is still the current connection.
    fn lost(&self, conn: &Arc<Conn>) {
        let mut g = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if g.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            *g = None;
        }
    }

    /// The live connection, reconnecting with backoff until
    /// `member_timeout` has passed since `since` (or since the member went
    /// down, if earlier).
    async fn connection(&self, since: Instant) -> BlockResult<Arc<Conn>> {
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let mut down = self.down.lock().await;
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let deadline = down.get_or_insert(since).to_owned() + self.opts.member_timeout;
        let mut backoff = Duration::from_millis(100);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let step = self
                .opts
                .request_timeout()
                .min(left.max(Duration::from_millis(100)));
            match link::connect(&self.uri, step)
                .await
                .and_then(|c| self.check(c))
            {
                Ok(conn) => {
                    let conn = Arc::new(conn);
                    *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
                    *down = None;
                    self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(member = %self.name, "NBD member reconnected");
                    return Ok(conn);
                }
                Err(e) if Instant::now() >= deadline => return Err(self.unreachable(e)),
                Err(_) => {
                    tokio::time::sleep(backoff.min(left)).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// A new connection must show the export as it was.
    fn check(&self, conn: Conn) -> Result<Conn, LinkError> {
        if conn.info.size != self.info.size {
            return Err(LinkError::SizeChanged {
                uri: self.uri.to_string(),
                was: self.info.size,
                now: conn.info.size,
            });
        }
        Ok(conn)
    }

    fn unreachable(&self, e: LinkError) -> BlockError {
        let why = format!(
            "unreachable for more than {:?} (member_timeout): {}",
            self.opts.member_timeout,
            crate::daemon::error_chain(&e)
        );
        tracing::warn!(member = %self.name, "{why}");
        BlockError::io(
            self.name.clone(),
            io::Error::new(io::ErrorKind::TimedOut, why),
        )
    }

    /// One request, sent again on a new connection until it is answered
    /// or the member is unreachable for `member_timeout`.
    async fn request(
        &self,
        command: Command,
        flags: u16,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) -> BlockResult<Vec<u8>> {
        let since = Instant::now();
        loop {
            let conn = self.connection(since).await?;
            let call = conn.call(command, flags, offset, length, payload);
            let sent = Instant::now();
            match tokio::time::timeout(self.opts.request_timeout(), call).await {
                Ok(Ok(data)) => {
                    self.stats.answered(sent.elapsed());
                    return Ok(data);
                }
                Ok(Err(CallError::Server(e))) if e != proto::errno::ESHUTDOWN => {
                    return Err(self.server_error(e))
                }
                lost => {
                    if lost.is_err() {
                        self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                    }
                    self.lost(&conn);
                    // A server that connects but never answers in time is
                    // as unreachable as one that refuses connections.
                    if since.elapsed() >= self.opts.member_timeout {
                        return Err(self.no_answer());
                    }
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn no_answer(&self) -> BlockError {
        let why = format!(
            "no answer for more than {:?} (member_timeout) over live connections",
            self.opts.member_timeout
        );
        tracing::warn!(member = %self.name, "{why}");
        BlockError::io(
            self.name.clone(),
            io::Error::new(io::ErrorKind::TimedOut, why),
        )
    }

    fn server_error(&self, e: u32) -> BlockError {
        let errno = i32::try_from(e).unwrap_or(libc::EIO);
        BlockError::io(self.name.clone(), io::Error::from_raw_os_error(errno))
    }

    /// Largest payload of one request: the server's maximum (a multiple
    /// of its minimum block), however small, capped at 32 MiB.
    fn max_io(&self) -> u64 {
        u64::from(self.info.sizes.max.min(proto::MAX_PAYLOAD)).max(1)
    }

    fn check_write(&self, offset: ByteOffset, len: u64) -> BlockResult {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        check_range(offset, len, self.info.size)
    }

    async fn read_at(&self, offset: ByteOffset, buf: &mut [u8]) -> BlockResult {
        check_range(offset, buf.len() as u64, self.info.size)?;
        let max = self.max_io() as usize;
        for (i, piece) in buf.chunks_mut(max).enumerate() {
            let at = offset.get() + (i * max) as u64;
            let data = self
                .request(Command::Read, 0, at, piece.len() as u32, &[])
                .await?;
            piece.copy_from_slice(&data);
        }
        Ok(())
    }

    async fn write_at(&self, offset: ByteOffset, buf: &[u8], d: Durability) -> BlockResult {
        self.check_write(offset, buf.len() as u64)?;
        let fua = d == Durability::Fua && self.info.has(proto::TFLAG_SEND_FUA);
        let flags = if fua { proto::CMD_FLAG_FUA } else { 0 };
        let max = self.max_io() as usize;
        for (i, piece) in buf.chunks(max).enumerate() {
            let at = offset.get() + (i * max) as u64;
            self.request(Command::Write, flags, at, piece.len() as u32, piece)
                .await?;
        }
        if d == Durability::Fua && !fua {
            self.flush_now().await?;
        }
        Ok(())
    }

    async fn flush_now(&self) -> BlockResult {
        if self.read_only || !self.info.has(proto::TFLAG_SEND_FLUSH) {
            // No flush offered: the server has no volatile cache to flush.
            return Ok(());
        }
        self.request(Command::Flush, 0, 0, 0, &[]).await.map(drop)
    }

    async fn zero_at(&self, offset: ByteOffset, len: u64, may_unmap: bool) -> BlockResult {
        self.check_write(offset, len)?;
        if !self.info.has(proto::TFLAG_SEND_WRITE_ZEROES) {
            return self.write_zero_buffers(offset, len).await;
        }
        let flags = if may_unmap {
            0
        } else {
            proto::CMD_FLAG_NO_HOLE
        };
        let step = 1u64 << 30;
        let mut at = offset.get();
        let end = at + len;
        while at < end {
            let n = (end - at).min(step);
            self.request(Command::WriteZeroes, flags, at, n as u32, &[])
                .await?;
            at += n;
        }
        Ok(())
    }

    async fn write_zero_buffers(&self, offset: ByteOffset, len: u64) -> BlockResult {
        let zeroes = vec![0u8; ZERO_CHUNK.min(len as usize)];
        let mut at = offset.get();
        let end = at + len;
        while at < end {
            let n = (end - at).min(ZERO_CHUNK as u64) as usize;
            self.write_at(ByteOffset(at), &zeroes[..n], Durability::Normal)
                .await?;
            at += n as u64;
        }
        Ok(())
    }
}

impl std::fmt::Debug for RemoteMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteMember")
            .field("uri", &self.uri)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl Drop for RemoteMember {
    fn drop(&mut self) {
        if let Some(c) = self.live() {
            c.disconnect();
        }
    }
}

impl BlockDevice for RemoteMember {
    fn name(&self) -> &str {
        &self.name
    }

    fn size(&self) -> u64 {
        self.info.size
    }

    fn device_id(&self) -> Option<DeviceId> {
        Some(DeviceId::remote(&self.identity))
    }

    fn read<'a>(&'a self, offset: ByteOffset, buf: &'a mut [u8]) -> IoFuture<'a> {
        Box::pin(self.read_at(offset, buf))
    }

    fn write<'a>(&'a self, offset: ByteOffset, buf: &'a [u8], d: Durability) -> IoFuture<'a> {
        Box::pin(self.write_at(offset, buf, d))
    }

    fn flush(&self) -> IoFuture<'_> {
        Box::pin(self.flush_now())
    }

    fn discard(&self, offset: ByteOffset, len: u64) -> IoFuture<'_> {
        // TRIM need not zero; the trait's discard must read back zeroes.
        Box::pin(self.zero_at(offset, len, true))
    }

    fn write_zeroes(&self, offset: ByteOffset, len: u64, may_unmap: bool) -> IoFuture<'_> {
        Box::pin(self.zero_at(offset, len, may_unmap))
    }
}
