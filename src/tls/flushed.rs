//! A writer that reports bytes written only once they are on the socket.
//!
//! A TLS stream (tokio-rustls) accepts plaintext into its buffer and
//! answers `Ready(n)` even when the socket would block, leaving ciphertext
//! behind until the next write or flush. A caller that writes only when it
//! has bytes (the NBD transmission loop) would then leave the last replies
//! of a burst in that buffer, and its client would wait for them.
//!
//! [`Flushed`] holds the count of bytes accepted but not yet flushed and
//! returns it only after the flush completes. The caller must therefore
//! pass the same leading bytes again after a `Pending` (as a queue that
//! advances only on `Ready(n)` does; more bytes may follow them).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::AsyncWrite;

/// See the module documentation.
#[derive(Debug)]
pub struct Flushed<W> {
    inner: W,
    /// Bytes the inner writer accepted and still buffers.
    accepted: usize,
}

impl<W> Flushed<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Flushed { inner, accepted: 0 }
    }
}

impl<W: AsyncWrite + Unpin> Flushed<W> {
    fn finish(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        Poll::Ready(Ok(std::mem::take(&mut self.accepted)))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Flushed<W> {
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
        if this.accepted == 0 {
            this.accepted = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        }
        this.finish(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Accepts everything, flushes only after `stalls` Pending answers.
    #[derive(Default)]
    struct Lazy {
        buffered: Vec<u8>,
        sent: Vec<u8>,
        stalls: usize,
    }

    impl AsyncWrite for Lazy {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.get_mut().buffered.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            if this.stalls > 0 {
                this.stalls -= 1;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let b = std::mem::take(&mut this.buffered);
            this.sent.extend(b);
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.poll_flush(cx)
        }
    }

    #[tokio::test]
    async fn a_write_completes_only_once_flushed_and_counts_once() {
        let mut w = Flushed::new(Lazy {
            stalls: 3,
            ..Lazy::default()
        });

        let n = w.write(b"reply").await.unwrap();

        assert_eq!(n, 5);
        assert_eq!(w.inner.sent, b"reply");
        assert!(w.inner.buffered.is_empty());
        assert_eq!(w.accepted, 0);
    }
}
