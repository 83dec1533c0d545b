//! Where the transmission loop writes its replies: a plain writer gets the
//! outbox's bytes as slices (`writev`); our TLS record layer gets them as
//! pieces, READ data mutable, and seals that data where it lies
//! (`tls::Piece`, docs/FORMAT.md §14).
//!
//! ```text
//!  Outbox ─ slices() ─► Plain<W>: writev(head, body, ...)
//!         └ pieces() ─► FastWriter: records sealed in the READ buffers
//! ```

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;

use super::wire::{Outbox, MAX_IOV};
use crate::tls::{FastWriter, Piece};

/// A writer of the outbox: plaintext bytes reported written, as
/// `AsyncWrite::poll_write` does.
pub(super) trait ReplySink: AsyncWrite + Unpin {
    /// Writes from the front of `outbox` (not advanced here).
    fn poll_replies(
        &mut self,
        cx: &mut Context<'_>,
        outbox: &mut Outbox,
    ) -> Poll<io::Result<usize>>;
}

/// A writer that takes the replies as they are.
pub(super) struct Plain<W>(pub W);

impl<W: AsyncWrite + Unpin> ReplySink for Plain<W> {
    fn poll_replies(
        &mut self,
        cx: &mut Context<'_>,
        outbox: &mut Outbox,
    ) -> Poll<io::Result<usize>> {
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        let n = outbox.slices(&mut iov);
        Pin::new(&mut self.0).poll_write_vectored(cx, &iov[..n])
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Plain<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<W: AsyncWrite + Unpin> ReplySink for FastWriter<W> {
    fn poll_replies(
        &mut self,
        cx: &mut Context<'_>,
        outbox: &mut Outbox,
    ) -> Poll<io::Result<usize>> {
        let mut pieces: [Piece<'_>; MAX_IOV] = std::array::from_fn(|_| Piece::Copy(&[]));
        let n = outbox.pieces(&mut pieces);
        self.poll_write_pieces(cx, &mut pieces[..n])
    }
}
