//! [`RemoteMember`]: an NBD export as a [`BlockDevice`], surviving network
//! faults.
//!
//! ```text
//!  request ─► pool: least-loaded live connection ─ timeout(request_timeout) ─► reply
//!     │ connection lost / timed out: close it, send the request again on
//!     │ another one, or reconnect with backoff (see `pool`)
//!     └ unreachable, or no answer on live connections, for member_timeout
//!       since the request began: EIO ─► the RAID layer fails the member
//!       (degraded, bitmap records)
//!  write to a server with a minimum block > 1 ─► align::plan ─ hold the
//!     blocks (range_lock) ─ partial head/tail block: read, patch, write ─
//!     whole blocks between: written as they are
//! ```
//!
//! A request in flight at a cut is sent again on another connection (block
//! writes are idempotent: the same bytes at the same offset; the levels
//! never overlap two writes in flight, and read-modify-writes of one block
//! are serialised here) or failed after `member_timeout`, never dropped.
//! FLUSH and FUA go to the server as they are: a write with
//! `Durability::Fua` completes only once the server has it on stable
//! storage (FUA, or FLUSH when the server offers no FUA). The usable size
//! is the export's rounded down to the minimum block.

use std::io;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::align::{self, Fill, Plan};
use super::conn::{CallError, Reply};
use super::handshake::Negotiated;
use super::link::{self, LinkError};
use super::pool::{Dial, Pool};
use super::range_lock::{RangeGuard, RangeLocks};
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
    /// [`NbdUri::identity`], resolved at open.
    identity: String,
    pool: Pool,
    read_only: bool,
    /// Bytes usable: the export's size rounded down to its minimum block.
    size: u64,
    /// The server's minimum block size (1: no read-modify-write).
    block: u64,
    /// Blocks being read-modified-written (only when `block` > 1).
    locks: RangeLocks,
    /// Counters (also in the book `stats` keeps for `vraid status`).
    pub stats: Arc<RemoteStats>,
}

impl RemoteMember {
    /// Connects to the export named by `path` (an NBD URI); more
    /// connections follow in the background when the server allows them.
    pub fn open(path: &Path, opts: RemoteOptions, read_only: bool) -> Result<Self, LinkError> {
        let uri = NbdUri::from_path(path)?;
        let conn = link::connect_patiently(&uri, opts.request_timeout())?;
        let name = path.display().to_string();
        let info = conn.info;
        let block = u64::from(info.sizes.min.max(1));
        let (identity, count) = (uri.identity(), uri.connections());
        let dial = Dial::new(uri, opts, name.clone(), info);
        let stats = dial.stats.clone();
        stats::enter(&name, &stats);
        Ok(RemoteMember {
            identity,
            pool: Pool::new(conn, dial, count),
            read_only: read_only || info.has(proto::TFLAG_READ_ONLY),
            size: info.size & !(block - 1),
            block,
            locks: RangeLocks::default(),
            stats,
        })
    }

    /// What the handshake settled.
    pub fn negotiated(&self) -> Negotiated {
        self.pool.dial.info
    }

    /// Connections live now.
    pub fn connections(&self) -> usize {
        self.pool.live()
    }

    fn info(&self) -> &Negotiated {
        &self.pool.dial.info
    }

    fn opts(&self) -> RemoteOptions {
        self.pool.dial.opts
    }

    fn name_str(&self) -> &str {
        &self.pool.dial.name
    }

    /// One request, sent again on another (or a new) connection until it
    /// is answered or the member is unreachable for `member_timeout`.
    async fn request(
        &self,
        command: Command,
        flags: u16,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) -> BlockResult<Reply> {
        let since = Instant::now();
        loop {
            let conn = self.pool.get(since).await?;
            let call = conn.call(command, flags, offset, length, payload);
            let sent = Instant::now();
            match tokio::time::timeout(self.opts().request_timeout(), call).await {
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
                    self.pool.lost(&conn);
                    // A server that connects but never answers in time is
                    // as unreachable as one that refuses connections.
                    if since.elapsed() >= self.opts().member_timeout {
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
            self.opts().member_timeout
        );
        tracing::warn!(member = %self.name_str(), "{why}");
        self.stats.unreachable.store(true, Ordering::Release);
        BlockError::io(
            self.name_str().to_string(),
            io::Error::new(io::ErrorKind::TimedOut, why),
        )
    }

    fn server_error(&self, e: u32) -> BlockError {
        let errno = i32::try_from(e).unwrap_or(libc::EIO);
        BlockError::io(
            self.name_str().to_string(),
            io::Error::from_raw_os_error(errno),
        )
    }

    /// Largest payload of one request: the server's maximum (a multiple
    /// of its minimum block), however small, capped at 32 MiB.
    fn max_io(&self) -> usize {
        self.info().sizes.max.clamp(1, proto::MAX_PAYLOAD) as usize
    }

    fn check_write(&self, offset: ByteOffset, len: u64) -> BlockResult {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        check_range(offset, len, self.size)
    }

    /// The blocks of `p` held against other writes, when the server has a
    /// minimum block size.
    async fn hold(&self, p: &Plan) -> Option<RangeGuard<'_>> {
        match self.block {
            1 => None,
            _ => Some(self.locks.lock(p.outer.clone()).await),
        }
    }

    async fn read_at(&self, offset: ByteOffset, buf: &mut [u8]) -> BlockResult {
        check_range(offset, buf.len() as u64, self.size)?;
        if buf.is_empty() {
            return Ok(());
        }
        let p = align::plan(self.block, offset.get(), buf.len() as u64);
        if p.aligned() {
            return self.read_pieces(offset.get(), buf).await;
        }
        let mut outer = vec![0u8; (p.outer.end - p.outer.start) as usize];
        self.read_pieces(p.outer.start, &mut outer).await?;
        let at = (offset.get() - p.outer.start) as usize;
        buf.copy_from_slice(&outer[at..at + buf.len()]);
        Ok(())
    }

    /// Reads `buf` at `at` (aligned to the minimum block) in requests of
    /// at most the server's maximum, all in flight at once.
    async fn read_pieces(&self, at: u64, buf: &mut [u8]) -> BlockResult {
        let max = self.max_io();
        let reads = buf
            .chunks_mut(max)
            .enumerate()
            .map(|(i, piece)| async move {
                let from = at + (i * max) as u64;
                let data = self
                    .request(Command::Read, 0, from, piece.len() as u32, &[])
                    .await?;
                piece.copy_from_slice(&data);
                Ok::<_, BlockError>(())
            });
        futures::future::try_join_all(reads).await.map(drop)
    }

    /// Writes `buf` at `at` (aligned) in requests of at most the maximum.
    async fn write_pieces(&self, at: u64, buf: &[u8], flags: u16) -> BlockResult {
        let max = self.max_io();
        let writes = buf.chunks(max).enumerate().map(|(i, piece)| {
            let from = at + (i * max) as u64;
            self.request(Command::Write, flags, from, piece.len() as u32, piece)
        });
        futures::future::try_join_all(writes).await.map(drop)
    }

    /// Reads the block at `start`, puts the request's part of it in, and
    /// writes it back (the caller holds it).
    async fn patch_block(
        &self,
        start: u64,
        offset: u64,
        len: u64,
        fill: Fill<'_>,
        flags: u16,
    ) -> BlockResult {
        let mut block = vec![0u8; self.block as usize];
        self.read_pieces(start, &mut block).await?;
        align::patch(start, &mut block, offset, len, fill);
        self.write_pieces(start, &block, flags).await
    }

    /// The partial blocks of `p`, read-modified-written.
    async fn edges(
        &self,
        p: &Plan,
        offset: u64,
        len: u64,
        fill: Fill<'_>,
        flags: u16,
    ) -> BlockResult {
        for start in p.head.into_iter().chain(p.tail) {
            self.patch_block(start, offset, len, fill, flags).await?;
        }
        Ok(())
    }

    /// FUA when the server offers it; otherwise [`Self::after_write`]
    /// flushes.
    fn fua_flags(&self, d: Durability) -> u16 {
        if d == Durability::Fua && self.info().has(proto::TFLAG_SEND_FUA) {
            proto::CMD_FLAG_FUA
        } else {
            0
        }
    }

    async fn after_write(&self, d: Durability) -> BlockResult {
        if d == Durability::Fua && !self.info().has(proto::TFLAG_SEND_FUA) {
            return self.flush_now().await;
        }
        Ok(())
    }

    async fn write_at(&self, offset: ByteOffset, buf: &[u8], d: Durability) -> BlockResult {
        self.check_write(offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        let (at, len, flags) = (offset.get(), buf.len() as u64, self.fua_flags(d));
        let p = align::plan(self.block, at, len);
        {
            let _held = self.hold(&p).await;
            self.edges(&p, at, len, Fill::Bytes(buf), flags).await?;
            let mid = (p.middle.start - at) as usize..(p.middle.end - at) as usize;
            if !mid.is_empty() {
                self.write_pieces(p.middle.start, &buf[mid], flags).await?;
            }
        }
        self.after_write(d).await
    }

    async fn flush_now(&self) -> BlockResult {
        if self.read_only || !self.info().has(proto::TFLAG_SEND_FLUSH) {
            // No flush offered: the server has no volatile cache to flush.
            return Ok(());
        }
        // One connection is enough: with several, the server promised
        // (CAN_MULTI_CONN) that a flush covers writes completed on all.
        self.request(Command::Flush, 0, 0, 0, &[]).await.map(drop)
    }

    async fn zero_at(&self, offset: ByteOffset, len: u64, may_unmap: bool) -> BlockResult {
        self.check_write(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let p = align::plan(self.block, offset.get(), len);
        let _held = self.hold(&p).await;
        self.edges(&p, offset.get(), len, Fill::Zero, 0).await?;
        let middle = p.middle.end - p.middle.start;
        if middle == 0 {
            return Ok(());
        }
        if !self.info().has(proto::TFLAG_SEND_WRITE_ZEROES) {
            return self.write_zero_buffers(p.middle.start, middle).await;
        }
        let flags = if may_unmap {
            0
        } else {
            proto::CMD_FLAG_NO_HOLE
        };
        let step = 1u64 << 30;
        let (mut at, end) = (p.middle.start, p.middle.end);
        while at < end {
            let n = (end - at).min(step);
            self.request(Command::WriteZeroes, flags, at, n as u32, &[])
                .await?;
            at += n;
        }
        Ok(())
    }

    /// Zero buffers over `len` bytes at `at` (aligned; the caller holds
    /// the range).
    async fn write_zero_buffers(&self, mut at: u64, len: u64) -> BlockResult {
        let zeroes = vec![0u8; ZERO_CHUNK.min(len as usize)];
        let end = at + len;
        while at < end {
            let n = (end - at).min(ZERO_CHUNK as u64) as usize;
            self.write_pieces(at, &zeroes[..n], 0).await?;
            at += n as u64;
        }
        Ok(())
    }
}

impl std::fmt::Debug for RemoteMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteMember")
            .field("uri", &self.pool.dial.uri)
            .field("info", self.info())
            .finish_non_exhaustive()
    }
}

impl Drop for RemoteMember {
    fn drop(&mut self) {
        self.pool.disconnect_all();
    }
}

impl BlockDevice for RemoteMember {
    fn name(&self) -> &str {
        self.name_str()
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn device_id(&self) -> Option<DeviceId> {
        Some(DeviceId::remote(&self.identity))
    }

    fn read<'a>(&'a self, offset: ByteOffset, buf: &'a mut [u8]) -> IoFuture<'a> {
        crate::block::BoxFuture::new(self.read_at(offset, buf))
    }

    fn write<'a>(&'a self, offset: ByteOffset, buf: &'a [u8], d: Durability) -> IoFuture<'a> {
        crate::block::BoxFuture::new(self.write_at(offset, buf, d))
    }

    fn flush(&self) -> IoFuture<'_> {
        crate::block::BoxFuture::new(self.flush_now())
    }

    fn discard(&self, offset: ByteOffset, len: u64) -> IoFuture<'_> {
        // TRIM need not zero; the trait's discard must read back zeroes.
        crate::block::BoxFuture::new(self.zero_at(offset, len, true))
    }

    fn write_zeroes(&self, offset: ByteOffset, len: u64, may_unmap: bool) -> IoFuture<'_> {
        crate::block::BoxFuture::new(self.zero_at(offset, len, may_unmap))
    }
}
