//! The writer sealing the caller's own buffers (docs/FORMAT.md §14,
//! "Records"): READ data is sealed where the volume put it, with no
//! plaintext copy; only record headers, inner types and tags (and small
//! pieces: NBD reply headers, a body's last record) go through `out`.
//!
//! ```text
//!  piece: [ c0 (16 KiB) | c1 (16 KiB) | ... | last ]     (mutable, in place)
//!  record i: c_i + the next piece byte, saved, set to type 23, sealed
//!            (ciphertext of the type lands there), copied out, restored
//!  wire:  out[hdr0] c0' out[type0' tag0 hdr1] c1' ... out[last record, copied]
//! ```
//!
//! The caller gives the same pieces again while a write is pending (the
//! NBD outbox does: it drops replies only once they are reported written);
//! the writer keeps only offsets into them.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::AsyncWrite;

use super::fast::{FastWriter, WRITE_BATCH};
use super::record::{APPLICATION_DATA, HEADER, MAX_CONTENT, TAG};

/// Plaintext sealed per call at most (whole pieces past it wait).
const PIECES_BATCH: usize = 1 << 20;
/// Most slices per `writev`.
const MAX_SLICES: usize = 256;

/// A part of what the caller writes.
#[derive(Debug)]
pub enum Piece<'a> {
    /// Bytes the writer copies (headers, small bodies).
    Copy(&'a [u8]),
    /// Bytes the writer may seal in place (they are ciphertext after).
    InPlace(&'a mut [u8]),
}

impl Piece<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Piece::Copy(b) => b,
            Piece::InPlace(b) => b,
        }
    }
}

/// One stretch of the wire.
#[derive(Clone, Copy, Debug)]
pub(super) enum Seg {
    /// `out[start..end]`.
    Out(usize, usize),
    /// `pieces[piece][start..end]`.
    Piece(usize, usize, usize),
}

impl Seg {
    fn len(self) -> usize {
        match self {
            Seg::Out(a, b) | Seg::Piece(_, a, b) => b - a,
        }
    }
}

/// The record `out` is being filled with: where its header starts.
type Open = Option<usize>;

impl<W> FastWriter<W> {
    /// `out` up to its end as a segment of the plan.
    fn plan_out(&mut self) {
        if self.planned < self.out.len() {
            self.plan.push(Seg::Out(self.planned, self.out.len()));
            self.planned = self.out.len();
        }
    }

    /// Seals the record being filled, if it holds content.
    fn close_record(&mut self, open: &mut Open) {
        let Some(at) = open.take() else { return };
        if self.out.len() == at + HEADER {
            self.out.truncate(at);
            return;
        }
        self.out.resize(self.out.len() + 1 + TAG, 0);
        self.tx.seal(&mut self.out[at..], APPLICATION_DATA);
    }

    /// Copies `bytes` into records in `out`.
    fn copy_in(&mut self, open: &mut Open, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let at = *open.get_or_insert_with(|| {
                let at = self.out.len();
                self.out.resize(at + HEADER, 0);
                at
            });
            let room = MAX_CONTENT - (self.out.len() - at - HEADER);
            let n = room.min(bytes.len());
            self.out.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if n == room {
                self.close_record(open);
            }
        }
    }

    /// Seals `body[..whole]` (a multiple of 2^14, `whole < body.len()`)
    /// as full records in place, piece `index` of the caller's.
    fn seal_body(&mut self, index: usize, body: &mut [u8], whole: usize) {
        for a in (0..whole).step_by(MAX_CONTENT) {
            let end = a + MAX_CONTENT;
            let saved = body[end];
            let (header, tag) = self.tx.seal_separate(&mut body[a..=end], APPLICATION_DATA);
            self.out.extend_from_slice(&header);
            self.plan_out();
            self.plan.push(Seg::Piece(index, a, end));
            self.out.push(body[end]);
            self.out.extend_from_slice(&tag);
            body[end] = saved;
        }
    }

    /// Seals `pieces` into the plan; returns the plaintext bytes taken.
    fn fill_pieces(&mut self, pieces: &mut [Piece<'_>]) -> usize {
        self.key_update_if_due();
        let (mut open, mut total, mut copied) = (None, 0, 0);
        for (i, piece) in pieces.iter_mut().enumerate() {
            if total >= PIECES_BATCH || copied >= WRITE_BATCH {
                break;
            }
            match piece {
                Piece::InPlace(body) if body.len() > MAX_CONTENT => {
                    self.close_record(&mut open);
                    let whole = (body.len() - 1) / MAX_CONTENT * MAX_CONTENT;
                    self.seal_body(i, body, whole);
                    self.copy_in(&mut open, &body[whole..]);
                    (total, copied) = (total + body.len(), copied + body.len() - whole);
                }
                other => {
                    let bytes = other.bytes();
                    let n = bytes.len().min(WRITE_BATCH - copied);
                    self.copy_in(&mut open, &bytes[..n]);
                    (total, copied) = (total + n, copied + n);
                }
            }
        }
        self.close_record(&mut open);
        self.plan_out();
        total
    }
}

impl<W: AsyncWrite + Unpin> FastWriter<W> {
    /// Writes `pieces` (see the module header): the plaintext bytes taken
    /// from their start, reported once their records are on the socket.
    /// After `Pending` the caller passes the same pieces again.
    pub fn poll_write_pieces(
        &mut self,
        cx: &mut Context<'_>,
        pieces: &mut [Piece<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.accepted == 0 && self.out.is_empty() {
            self.accepted = self.fill_pieces(pieces);
        }
        ready!(self.drain_plan(cx, pieces))?;
        Poll::Ready(Ok(std::mem::take(&mut self.accepted)))
    }

    /// Writes what the plan holds, then flushes the socket.
    fn drain_plan(&mut self, cx: &mut Context<'_>, pieces: &[Piece<'_>]) -> Poll<io::Result<()>> {
        let total: usize = self.plan.iter().map(|s| s.len()).sum();
        while self.sent < total {
            let mut iov = [IoSlice::new(&[]); MAX_SLICES];
            let mut n = 0;
            let mut skip = self.sent;
            for seg in &self.plan {
                if skip >= seg.len() {
                    skip -= seg.len();
                    continue;
                }
                let bytes = match *seg {
                    Seg::Out(a, b) => &self.out[a..b],
                    Seg::Piece(i, a, b) => &pieces[i].bytes()[a..b],
                };
                iov[n] = IoSlice::new(&bytes[skip..]);
                (skip, n) = (0, n + 1);
                if n == MAX_SLICES {
                    break;
                }
            }
            let w = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, &iov[..n]))?;
            if w == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += w;
        }
        self.plan.clear();
        self.out.clear();
        (self.sent, self.planned) = (0, 0);
        Pin::new(&mut self.inner).poll_flush(cx)
    }
}
