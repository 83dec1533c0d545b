//! The NBD transmission phase over our own TLS 1.3 record layer
//! (docs/FORMAT.md §14): a reader that opens records in its own buffer and
//! a writer that seals records in one reused buffer, for the two halves of
//! a socket once rustls has done the handshake and the options.
//!
//! ```text
//!  socket ─ read ─► buf: [record][record][part] ─ open in place ─► content ─ copy ─► caller
//!  caller ─ iov ─ copy ─► out: [hdr|content|type|tag]... ─ seal in place ─ one write ─► socket
//!  reader ─ KeyUpdate(update_requested) ─► Shared.owed ─► writer sends its KeyUpdate first
//! ```
//!
//! A write reports its bytes only once their records are on the socket
//! (as `Flushed` does over rustls): the caller passes the same leading
//! bytes again after `Pending`.

use std::io::{self, IoSlice};
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::record::{
    self, Direction, RecordError, ALERT, APPLICATION_DATA, HANDSHAKE, HEADER, KEY_UPDATE,
    MAX_CIPHERTEXT, MAX_CONTENT, NEW_SESSION_TICKET, TAG,
};

/// Plaintext bytes sealed per socket write (four full records).
pub const WRITE_BATCH: usize = 4 * MAX_CONTENT;
/// The reader's buffer: several records per `read` call.
const READ_BUFFER: usize = 64 << 10;
/// Records without application data (KeyUpdate, NewSessionTicket, empty
/// application data) accepted in a row, as BoringSSL bounds empty records
/// and KeyUpdates: a peer sending nothing else makes no progress.
const MAX_EMPTY_RECORDS: u8 = 32;

/// What the two halves share.
#[derive(Debug, Default)]
pub struct Shared {
    /// The peer asked for our KeyUpdate (update_requested).
    owed: AtomicBool,
    /// The fatal alert a refused record calls for (0: none): sent by the
    /// writer at shutdown instead of close_notify.
    alert: AtomicU8,
}

/// Reading half: records in, NBD bytes out.
#[derive(Debug)]
pub struct FastReader<R> {
    inner: R,
    rx: Direction,
    shared: Arc<Shared>,
    buf: Vec<u8>,
    /// Unparsed bytes: `buf[start..end]`.
    start: usize,
    end: usize,
    /// Opened content not yet handed on.
    plain: Range<usize>,
    eof: bool,
    /// A refused record: every later read fails the same way.
    broken: Option<RecordError>,
    /// The stream ended inside a record: every later read fails.
    cut: bool,
    /// Records without data still accepted before the next data.
    empty_left: u8,
    /// The client side: NewSessionTicket is ignored, not refused.
    client: bool,
}

impl<R> FastReader<R> {
    /// Reads records from `inner` with `carried` (bytes already read from
    /// the socket under rustls) in front.
    pub fn new(inner: R, rx: Direction, shared: Arc<Shared>, carried: &[u8]) -> Self {
        let mut buf = vec![0; READ_BUFFER.max(carried.len() + HEADER + MAX_CIPHERTEXT)];
        buf[..carried.len()].copy_from_slice(carried);
        FastReader {
            inner,
            rx,
            shared,
            buf,
            start: 0,
            end: carried.len(),
            plain: 0..0,
            eof: false,
            broken: None,
            cut: false,
            empty_left: MAX_EMPTY_RECORDS,
            client: false,
        }
    }

    /// As the client of the connection (`true`) or its server.
    pub fn client(mut self, client: bool) -> Self {
        self.client = client;
        self
    }

    /// The next whole record in the buffer, opened; `None`: need bytes.
    fn next_record(&mut self) -> Result<Option<(u8, Range<usize>)>, RecordError> {
        let have = self.end - self.start;
        if have < HEADER {
            return Ok(None);
        }
        let h: [u8; HEADER] = self.buf[self.start..self.start + HEADER]
            .try_into()
            .expect("header length");
        let len = record::body_len(&h)?;
        if have < HEADER + len {
            return Ok(None);
        }
        let at = self.start;
        self.start += HEADER + len;
        let (t, r) = self.rx.open(&mut self.buf[at..at + HEADER + len])?;
        Ok(Some((t, at + r.start..at + r.end)))
    }

    /// Acts on an opened record; content of application data is kept.
    fn handle(&mut self, inner: u8, content: Range<usize>) -> Result<(), RecordError> {
        if inner == APPLICATION_DATA && !content.is_empty() {
            self.empty_left = MAX_EMPTY_RECORDS;
        } else if self.empty_left == 0 {
            return Err(RecordError::Unexpected);
        } else {
            self.empty_left -= 1;
        }
        let c = &self.buf[content.clone()];
        match inner {
            APPLICATION_DATA => self.plain = content,
            ALERT if c == [1, 0] || c == [2, 0] => self.eof = true,
            ALERT => return Err(RecordError::Alert(c.get(1).copied().unwrap_or(0))),
            HANDSHAKE => return self.handshake(content),
            _ => return Err(RecordError::Unexpected),
        }
        Ok(())
    }

    /// Whole handshake messages in one record: KeyUpdate (the rest of the
    /// record must be empty: later records use the new key), and for a
    /// client NewSessionTicket, ignored. A message spanning records, or a
    /// record with no message (RFC 8446 §5.1), is refused.
    fn handshake(&mut self, content: Range<usize>) -> Result<(), RecordError> {
        if content.is_empty() {
            return Err(RecordError::Unexpected);
        }
        let mut c = &self.buf[content];
        while let [kind, a, b, d, rest @ ..] = c {
            let len = u32::from_be_bytes([0, *a, *b, *d]) as usize;
            if len > rest.len() {
                break;
            }
            match (*kind, &rest[..len]) {
                (KEY_UPDATE, [u @ (0 | 1)]) if rest.len() == 1 => {
                    let asked = *u == 1;
                    self.rx.update();
                    if asked {
                        self.shared.owed.store(true, Ordering::Release);
                    }
                    return Ok(());
                }
                (NEW_SESSION_TICKET, _) if self.client => {}
                _ => return Err(RecordError::Unexpected),
            }
            c = &rest[len..];
        }
        if c.is_empty() {
            Ok(())
        } else {
            Err(RecordError::Decode)
        }
    }

    /// Makes room to read into after `end`: the unparsed tail moved to the
    /// front when the buffer's end cannot hold a whole record.
    fn make_room(&mut self) {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.buf.len() - self.start < HEADER + MAX_CIPHERTEXT {
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for FastReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.plain.is_empty() {
                let n = this.plain.len().min(out.remaining());
                out.put_slice(&this.buf[this.plain.start..this.plain.start + n]);
                this.plain.start += n;
                return Poll::Ready(Ok(()));
            }
            if this.cut {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = this.broken {
                return Poll::Ready(Err(e.into()));
            }
            match this
                .next_record()
                .and_then(|r| r.map(|(t, c)| this.handle(t, c)).transpose())
            {
                Ok(Some(())) => continue,
                Ok(None) => {}
                Err(e) => {
                    this.broken = Some(e);
                    this.shared.alert.store(e.alert(), Ordering::Release);
                    continue;
                }
            }
            this.make_room();
            let mut rb = ReadBuf::new(&mut this.buf[this.end..]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                // A cut between records reads as the end of the stream
                // (NBD frames its own messages); inside one, an error.
                this.eof = true;
                this.cut = this.start != this.end;
            }
            this.end += n;
        }
    }
}

/// Writing half: NBD bytes in, records out.
#[derive(Debug)]
pub struct FastWriter<W> {
    pub(super) inner: W,
    pub(super) tx: Direction,
    shared: Arc<Shared>,
    pub(super) out: Vec<u8>,
    /// Bytes of `out` (or of `plan`) already written.
    pub(super) sent: usize,
    /// Caller bytes sealed in `out`, reported once `out` is written.
    pub(super) accepted: usize,
    closed: bool,
    /// KeyUpdates sent.
    updates: u64,
    /// Records sealed in the caller's pieces (`inplace`): the wire bytes
    /// as segments of `out` and of the pieces; empty on the copy path.
    pub(super) plan: Vec<super::inplace::Seg>,
    /// Bytes of `out` already in `plan`.
    pub(super) planned: usize,
}

impl<W> FastWriter<W> {
    /// Writes records to `inner`.
    pub fn new(inner: W, tx: Direction, shared: Arc<Shared>) -> Self {
        let records = WRITE_BATCH / MAX_CONTENT + 2;
        FastWriter {
            inner,
            tx,
            shared,
            out: Vec::with_capacity(WRITE_BATCH + records * (HEADER + 1 + TAG)),
            sent: 0,
            accepted: 0,
            closed: false,
            updates: 0,
            plan: Vec::new(),
            planned: 0,
        }
    }

    /// Appends one record of `content` (copied) under the current key.
    pub(super) fn push_record(&mut self, inner: u8, parts: &mut Parts<'_, '_>, content: usize) {
        let at = self.out.len();
        self.out.resize(at + HEADER + content + 1 + TAG, 0);
        parts.copy_to(&mut self.out[at + HEADER..at + HEADER + content]);
        self.tx.seal(&mut self.out[at..], inner);
    }

    /// A KeyUpdate we owe (asked for, or our key's record limit), sent
    /// under the old key; later records use the new one.
    pub(super) fn key_update_if_due(&mut self) {
        let asked = self.shared.owed.swap(false, Ordering::AcqRel);
        if asked || self.tx.send_due() {
            let msg = [KEY_UPDATE, 0, 0, 1, 0];
            self.push_record(HANDSHAKE, &mut Parts::new(&[IoSlice::new(&msg)]), msg.len());
            self.tx.update();
            self.updates += 1;
        }
    }

    /// KeyUpdates sent so far.
    pub fn key_updates(&self) -> u64 {
        self.updates
    }

    /// Seals up to [`WRITE_BATCH`] bytes of `bufs` into `out`.
    fn fill(&mut self, bufs: &[IoSlice<'_>]) -> usize {
        self.key_update_if_due();
        let total: usize = bufs.iter().map(|b| b.len()).sum::<usize>().min(WRITE_BATCH);
        let mut parts = Parts::new(bufs);
        let mut left = total;
        while left > 0 {
            let n = left.min(MAX_CONTENT);
            self.push_record(APPLICATION_DATA, &mut parts, n);
            left -= n;
        }
        total
    }
}

impl<W: AsyncWrite + Unpin> FastWriter<W> {
    /// Writes what `out` holds, then flushes the socket.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.out.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.out.clear();
        self.sent = 0;
        Pin::new(&mut self.inner).poll_flush(cx)
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for FastWriter<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        assert!(this.plan.is_empty(), "a write between piece writes");
        if this.accepted == 0 && this.out.is_empty() {
            this.accepted = this.fill(bufs);
        }
        ready!(this.drain(cx))?;
        Poll::Ready(Ok(std::mem::take(&mut this.accepted)))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.plan.is_empty() {
            // Pending records of pieces: only `poll_write_pieces` ends them.
            return Pin::new(&mut this.inner).poll_flush(cx);
        }
        this.drain(cx)
    }

    /// close_notify, then the socket's shutdown.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.plan.is_empty() {
            // Records sealed in pieces no longer here: the stream cannot
            // go on, not even with close_notify.
            this.plan.clear();
            this.out.clear();
            this.closed = true;
        }
        if !this.closed {
            ready!(this.drain(cx))?;
            // close_notify, or the fatal alert for a record we refused.
            let alert = match this.shared.alert.load(Ordering::Acquire) {
                0 => [1, 0],
                fatal => [2, fatal],
            };
            this.push_record(ALERT, &mut Parts::new(&[IoSlice::new(&alert)]), 2);
            this.closed = true;
        }
        ready!(this.drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// A cursor over a caller's slices.
pub(super) struct Parts<'a, 'b> {
    bufs: &'a [IoSlice<'b>],
    at: usize,
}

impl<'a, 'b> Parts<'a, 'b> {
    pub(super) fn new(bufs: &'a [IoSlice<'b>]) -> Self {
        Parts { bufs, at: 0 }
    }

    /// Fills `dst` from the slices, advancing.
    fn copy_to(&mut self, mut dst: &mut [u8]) {
        while !dst.is_empty() {
            let (first, rest) = self.bufs.split_first().expect("enough bytes");
            let src = &first[self.at..];
            let n = src.len().min(dst.len());
            dst[..n].copy_from_slice(&src[..n]);
            dst = &mut dst[n..];
            self.at += n;
            if self.at == first.len() {
                (self.bufs, self.at) = (rest, 0);
            }
        }
    }
}

/// Fuzzing the receive side: `data[0]` picks raw bytes (0) or records
/// sealed from `data` (1: chunks of up to 255 bytes, each led by its inner
/// type byte and length, so padding, alerts and KeyUpdates are reached);
/// everything a [`FastReader`] with a fixed key hands on is returned.
pub fn fuzz_receive(data: &[u8]) -> io::Result<Vec<u8>> {
    let suite = record::Suite::Aes128Gcm;
    let secret = vec![3u8; 32];
    let Some((&mode, rest)) = data.split_first() else {
        return Ok(Vec::new());
    };
    let wire = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        sealed_chunks(Direction::new(suite, secret.clone(), 0), rest)
    };
    let shared = Arc::new(Shared::default());
    let mut reader = FastReader::new(&wire[..], Direction::new(suite, secret, 0), shared, &[]);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let mut rb = ReadBuf::new(&mut chunk);
        match Pin::new(&mut reader).poll_read(&mut cx, &mut rb) {
            Poll::Ready(Ok(())) if rb.filled().is_empty() => return Ok(out),
            Poll::Ready(Ok(())) => out.extend_from_slice(rb.filled()),
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => unreachable!("a slice never blocks"),
        }
    }
}

/// Records sealed by `tx` from `data`'s (type, length, bytes) chunks.
fn sealed_chunks(mut tx: Direction, mut data: &[u8]) -> Vec<u8> {
    let mut wire = Vec::new();
    while let [inner, len, rest @ ..] = data {
        let n = (*len as usize).min(rest.len());
        let at = wire.len();
        wire.resize(at + HEADER + n + 1 + TAG, 0);
        wire[at + HEADER..at + HEADER + n].copy_from_slice(&rest[..n]);
        tx.seal(&mut wire[at..], *inner);
        data = &rest[n..];
    }
    wire
}
