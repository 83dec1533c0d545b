//! Recording: [`WriteLog`] (the log file being written, started and
//! stopped by the control plane) and [`LogDevice`] (the layer of the
//! client stack that feeds it).
//!
//! An operation is recorded when the layer below acknowledged it, so the
//! log's order is the order of acknowledgements. Records gather in memory
//! and go to the file (O_APPEND, one writer at a time) when 8 MiB are
//! pending, and at every FLUSH and mark, which also `fdatasync` the log
//! before the client's FLUSH is answered: every flush point in the log is
//! on stable storage before the client learns it completed. A log that
//! cannot be written stops recording (the client's I/O goes on) and says
//! why in `status` and at `vraid log stop`.

use std::fs::File;
use std::io::{IoSlice, IoSliceMut, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::format::{LogHeader, RecordHead, RecordKind, FLAG_FUA, FLAG_UNMAP, MAX_NAME};
use super::format::{HEADER_LEN, MAX_PAYLOAD, RECORD_LEN};
use super::LogError;
use crate::block::{BlockDevice, Durability, IoFuture};
use crate::units::ByteOffset;

/// Pending record bytes that make a writer flush them to the file.
const WRITE_OUT_AT: usize = 8 << 20;

/// A log in `status` and in `vraid log stop`'s reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogStatus {
    /// The log file.
    pub path: PathBuf,
    /// Entries recorded.
    pub entries: u64,
    /// Bytes of the file (header and records).
    pub bytes: u64,
    /// Why recording stopped early, if it did.
    pub failed: Option<String>,
    /// True while records are taken (false once a write-out failed).
    #[serde(default)]
    pub active: bool,
}

#[derive(Debug)]
struct Active {
    file: Arc<File>,
    path: PathBuf,
    pending: Vec<u8>,
    next: u64,
    bytes: u64,
    size: u64,
    failed: Option<String>,
}

impl Active {
    fn status(&self) -> LogStatus {
        LogStatus {
            path: self.path.clone(),
            entries: self.next,
            bytes: self.bytes,
            failed: self.failed.clone(),
            active: self.failed.is_none(),
        }
    }

    fn push(&mut self, kind: RecordKind, flags: u8, offset: u64, len: u64, data: &[u8]) {
        let head = RecordHead {
            kind,
            flags,
            index: self.next,
            offset,
            len,
            payload: data.len() as u32,
            crc: 0,
        };
        self.pending.extend_from_slice(&head.encode(data));
        self.pending.extend_from_slice(data);
        self.bytes += (RECORD_LEN + data.len()) as u64;
        self.next += 1;
    }
}

/// One volume's write log: idle, or recording to a file.
#[derive(Debug, Default)]
pub struct WriteLog {
    recording: AtomicBool,
    state: Mutex<Option<Active>>,
    /// Held by the one task writing records out, so they land in order.
    writer: tokio::sync::Mutex<()>,
}

impl WriteLog {
    /// An idle log.
    pub fn new() -> WriteLog {
        WriteLog::default()
    }

    fn state(&self) -> MutexGuard<'_, Option<Active>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True while recording (the data path's fast check).
    pub fn recording(&self) -> bool {
        self.recording.load(Ordering::Acquire)
    }

    /// Starts recording volume `volume` of `size` bytes to a new file.
    pub fn start(&self, path: &Path, volume: &str, size: u64) -> Result<(), LogError> {
        let mut state = self.state();
        if let Some(a) = state.as_ref() {
            return Err(LogError::NoSuchPoint(format!(
                "volume {volume} is already being logged to {}",
                a.path.display()
            )));
        }
        let header = LogHeader {
            volume_size: size,
            uuid: *uuid::Uuid::new_v4().as_bytes(),
            started_ns: now_ns(),
            volume: volume.chars().take(MAX_NAME).collect(),
        };
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o644)
            .open(path)
            .map_err(|e| LogError::file(path, e))?;
        file.write_all(&header.encode())
            .and_then(|()| file.sync_all())
            .map_err(|e| LogError::file(path, e))?;
        *state = Some(Active {
            file: Arc::new(file),
            path: path.to_path_buf(),
            pending: Vec::new(),
            next: 0,
            bytes: HEADER_LEN as u64,
            size,
            failed: None,
        });
        self.recording.store(true, Ordering::Release);
        Ok(())
    }

    /// The log's status; None when idle.
    pub fn status(&self) -> Option<LogStatus> {
        self.state().as_ref().map(Active::status)
    }

    /// The number the next entry gets (what a FLUSH arriving now covers).
    fn next_entry(&self) -> u64 {
        self.state().as_ref().map_or(0, |a| a.next)
    }

    /// Appends one operation (a write longer than the largest payload as
    /// several records); true when the pending bytes should go out now.
    fn record(&self, kind: RecordKind, flags: u8, offset: u64, len: u64, data: &[u8]) -> bool {
        let mut state = self.state();
        let Some(a) = state.as_mut().filter(|a| a.failed.is_none()) else {
            return false;
        };
        let empty = kind.changes_data() && len == 0;
        if empty || offset.checked_add(len).is_none_or(|end| end > a.size) {
            return false;
        }
        if kind != RecordKind::Write {
            a.push(kind, flags, offset, len, data);
        }
        for (i, chunk) in data.chunks(MAX_PAYLOAD as usize).enumerate() {
            if kind == RecordKind::Write {
                let at = offset + i as u64 * u64::from(MAX_PAYLOAD);
                a.push(kind, flags, at, chunk.len() as u64, chunk);
            }
        }
        a.pending.len() >= WRITE_OUT_AT
    }

    /// Writes the pending records to the file, and syncs it with `sync`.
    async fn write_out(&self, sync: bool) {
        let _writer = self.writer.lock().await;
        let Some((file, data)) = self
            .state()
            .as_mut()
            .filter(|a| a.failed.is_none())
            .map(|a| (a.file.clone(), std::mem::take(&mut a.pending)))
        else {
            return;
        };
        let done = tokio::task::spawn_blocking(move || {
            (&*file).write_all(&data)?;
            if sync {
                file.sync_data()?;
            }
            Ok::<(), std::io::Error>(())
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        if let Err(e) = done {
            self.fail(format!("writing the log failed: {e}"));
        }
    }

    fn fail(&self, why: String) {
        tracing::warn!("write log stopped recording: {why}");
        if let Some(a) = self.state().as_mut() {
            a.failed = Some(why);
        }
        self.recording.store(false, Ordering::Release);
    }

    /// Inserts a named mark, on stable storage when this returns.
    pub async fn mark(&self, name: &str) -> Result<u64, LogError> {
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(LogError::NoSuchPoint(
                "a mark name is 1 to 255 bytes".into(),
            ));
        }
        let entry = {
            let mut state = self.state();
            let a = state
                .as_mut()
                .ok_or_else(|| LogError::NoSuchPoint("the volume is not being logged".into()))?;
            a.push(RecordKind::Mark, 0, 0, 0, name.as_bytes());
            a.next - 1
        };
        self.write_out(true).await;
        match self.status().and_then(|s| s.failed) {
            Some(why) => Err(LogError::NoSuchPoint(why)),
            None => Ok(entry),
        }
    }

    /// Stops recording: the `End` record, everything written and synced.
    pub async fn stop(&self) -> Result<LogStatus, LogError> {
        self.recording.store(false, Ordering::Release);
        if let Some(a) = self.state().as_mut().filter(|a| a.failed.is_none()) {
            a.push(RecordKind::End, 0, 0, 0, &[]);
            a.next -= 1;
        }
        self.write_out(true).await;
        let _writer = self.writer.lock().await;
        self.state()
            .take()
            .map(|a| a.status())
            .ok_or_else(|| LogError::NoSuchPoint("the volume is not being logged".into()))
    }

    /// Records a completed operation; writes out when enough is pending.
    async fn note(&self, kind: RecordKind, flags: u8, offset: u64, len: u64, data: &[u8]) {
        if self.record(kind, flags, offset, len, data) {
            self.write_out(false).await;
        }
    }
}

fn now_ns() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.map_or(0, |d| d.as_nanos() as u64)
}

fn fua_flag(d: Durability) -> u8 {
    match d {
        Durability::Fua => FLAG_FUA,
        Durability::Normal => 0,
    }
}

/// The client-stack layer that records into a [`WriteLog`]; with the
/// log idle every call goes straight through.
pub struct LogDevice {
    inner: Arc<dyn BlockDevice>,
    log: Arc<WriteLog>,
}

impl std::fmt::Debug for LogDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogDevice")
            .field("inner", &self.inner.name())
            .finish_non_exhaustive()
    }
}

impl LogDevice {
    /// `inner`, recorded into `log` while it records.
    pub fn new(inner: Arc<dyn BlockDevice>, log: Arc<WriteLog>) -> LogDevice {
        LogDevice { inner, log }
    }
}

impl BlockDevice for LogDevice {
    crate::block::forward_to!(inner => name, size, merge_limit, mark_lost, reserve, allocation);

    fn read<'a>(&'a self, offset: ByteOffset, buf: &'a mut [u8]) -> IoFuture<'a> {
        self.inner.read(offset, buf)
    }

    fn read_vectored<'a>(
        &'a self,
        offset: ByteOffset,
        bufs: &'a mut [IoSliceMut<'_>],
    ) -> IoFuture<'a> {
        self.inner.read_vectored(offset, bufs)
    }

    fn write<'a>(&'a self, at: ByteOffset, buf: &'a [u8], d: Durability) -> IoFuture<'a> {
        if !self.log.recording() {
            return self.inner.write(at, buf, d);
        }
        crate::block::BoxFuture::new(async move {
            self.inner.write(at, buf, d).await?;
            let len = buf.len() as u64;
            let log = &self.log;
            log.note(RecordKind::Write, fua_flag(d), at.get(), len, buf)
                .await;
            Ok(())
        })
    }

    /// While recording, the list's bytes are copied before the write (a
    /// guest may change them during it): the log holds what was sent.
    fn write_vectored<'a>(
        &'a self,
        at: ByteOffset,
        bufs: &'a [IoSlice<'a>],
        d: Durability,
    ) -> IoFuture<'a> {
        if !self.log.recording() {
            return self.inner.write_vectored(at, bufs, d);
        }
        crate::block::BoxFuture::new(async move {
            let mut data = vec![0u8; crate::iovec::len(bufs)];
            crate::iovec::gather(bufs, &mut data);
            self.inner.write_vectored(at, bufs, d).await?;
            let len = data.len() as u64;
            let log = &self.log;
            log.note(RecordKind::Write, fua_flag(d), at.get(), len, &data)
                .await;
            Ok(())
        })
    }

    /// The flush record says how many entries were acknowledged when the
    /// FLUSH arrived (what it makes durable); the log is synced before
    /// the reply.
    fn flush(&self) -> IoFuture<'_> {
        if !self.log.recording() {
            return self.inner.flush();
        }
        crate::block::BoxFuture::new(async move {
            let covers = self.log.next_entry();
            self.inner.flush().await?;
            self.log.record(RecordKind::Flush, 0, covers, 0, &[]);
            self.log.write_out(true).await;
            Ok(())
        })
    }

    fn discard(&self, offset: ByteOffset, len: u64) -> IoFuture<'_> {
        if !self.log.recording() {
            return self.inner.discard(offset, len);
        }
        crate::block::BoxFuture::new(async move {
            self.inner.discard(offset, len).await?;
            self.log
                .note(RecordKind::Trim, 0, offset.get(), len, &[])
                .await;
            Ok(())
        })
    }

    fn write_zeroes(&self, offset: ByteOffset, len: u64, may_unmap: bool) -> IoFuture<'_> {
        if !self.log.recording() {
            return self.inner.write_zeroes(offset, len, may_unmap);
        }
        crate::block::BoxFuture::new(async move {
            self.inner.write_zeroes(offset, len, may_unmap).await?;
            let flags = if may_unmap { FLAG_UNMAP } else { 0 };
            let log = &self.log;
            log.note(RecordKind::Zero, flags, offset.get(), len, &[])
                .await;
            Ok(())
        })
    }
}
