//! The connection's two byte queues: requests read in batches, replies
//! written in batches.
//!
//! ```text
//!  socket ─ read (≤ 64 KiB) ─► Inbox ─ next_header() ─► 28-byte headers
//!                                   └ take_into() ─► WRITE payloads
//!  Outbox: Reply, Reply, ... ─ slices() ─► writev(head, body, head, body, ...) ─► socket
//!                            └ advance(n): written replies dropped (their bytes go back)
//! ```
//!
//! One read syscall brings as many request headers (and small WRITE
//! payloads) as the client sent; one `writev` sends every finished reply,
//! READ data from where the volume put it.

use std::collections::VecDeque;
use std::io::IoSlice;
use tokio::time::Instant;

use super::proto;
use super::request::Reply;
use crate::tls::Piece;

/// Bytes read from the socket at once.
pub(super) const INBOX_LEN: usize = 64 * 1024;
/// Most slices given to one `writev`.
pub(super) const MAX_IOV: usize = 64;

/// Bytes read from the client and not yet taken.
pub(super) struct Inbox {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Inbox {
    pub(super) fn new() -> Inbox {
        Inbox {
            buf: vec![0u8; INBOX_LEN].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// Bytes held.
    pub(super) fn len(&self) -> usize {
        self.end - self.start
    }

    /// Where the next read goes: the free tail, after moving a partial
    /// request to the front when the tail is short.
    pub(super) fn space(&mut self) -> &mut [u8] {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.buf.len() - self.end < proto::REQUEST_LEN {
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        &mut self.buf[self.end..]
    }

    /// Counts `n` bytes just read into [`Inbox::space`].
    pub(super) fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// The next request header, if all of it is here.
    pub(super) fn next_header(&mut self) -> Option<[u8; proto::REQUEST_LEN]> {
        let bytes = self.buf.get(self.start..self.start + proto::REQUEST_LEN)?;
        if self.len() < proto::REQUEST_LEN {
            return None;
        }
        let head = bytes.try_into().ok()?;
        self.start += proto::REQUEST_LEN;
        Some(head)
    }

    /// Moves as many held bytes as fit into `out`; returns how many.
    pub(super) fn take_into(&mut self, out: &mut [u8]) -> usize {
        let n = self.len().min(out.len());
        out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        n
    }
}

/// Finished replies in the order they finished, the first maybe partly
/// written.
#[derive(Default)]
pub(super) struct Outbox {
    queue: VecDeque<Reply>,
    /// Bytes of the first reply already written.
    written: usize,
    /// Since when the first reply waits to be written whole.
    since: Option<Instant>,
}

impl Outbox {
    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Queues a finished reply.
    pub(super) fn push(&mut self, reply: Reply) {
        if self.queue.is_empty() {
            self.since = Some(Instant::now());
        }
        self.queue.push_back(reply);
    }

    /// Since when the first reply waits, if any does.
    pub(super) fn waiting_since(&self) -> Option<Instant> {
        self.since
    }

    /// Fills `iov` with what is left to write; returns how many slices.
    pub(super) fn slices<'a>(&'a self, iov: &mut [IoSlice<'a>; MAX_IOV]) -> usize {
        let mut n = 0;
        let mut skip = self.written;
        for reply in &self.queue {
            for part in [reply.head(), reply.body()] {
                if skip >= part.len() {
                    skip -= part.len();
                    continue;
                }
                iov[n] = IoSlice::new(&part[skip..]);
                skip = 0;
                n += 1;
                if n == MAX_IOV {
                    return n;
                }
            }
        }
        n
    }

    /// Fills `out` with what is left to write, READ data mutable (for
    /// sealing in place); returns how many pieces. The same pieces come
    /// back until [`Outbox::advance`].
    pub(super) fn pieces<'a>(&'a mut self, out: &mut [Piece<'a>; MAX_IOV]) -> usize {
        let mut n = 0;
        let mut skip = self.written;
        for reply in &mut self.queue {
            let (head, body) = reply.parts_mut();
            for part in [Piece::Copy(head), body] {
                let len = match &part {
                    Piece::Copy(b) => b.len(),
                    Piece::InPlace(b) => b.len(),
                };
                if skip >= len {
                    skip -= len;
                    continue;
                }
                out[n] = match part {
                    Piece::Copy(b) => Piece::Copy(&b[skip..]),
                    Piece::InPlace(b) => Piece::InPlace(&mut b[skip..]),
                };
                skip = 0;
                n += 1;
                if n == MAX_IOV {
                    return n;
                }
            }
        }
        n
    }

    /// Counts `n` bytes written; drops the replies written whole and
    /// returns the connection-pool bytes they held.
    pub(super) fn advance(&mut self, mut n: usize) -> u64 {
        let mut released = 0;
        let mut popped = false;
        while let Some(front) = self.queue.front() {
            let left = front.len() - self.written;
            if n < left {
                self.written += n;
                break;
            }
            n -= left;
            self.written = 0;
            if let Some(reply) = self.queue.pop_front() {
                released += reply.charge.connection;
            }
            popped = true;
        }
        if popped {
            self.since = (!self.queue.is_empty()).then(Instant::now);
        }
        released
    }

    /// Drops every queued reply (the client is gone); returns the
    /// connection-pool bytes they held.
    pub(super) fn clear(&mut self) -> u64 {
        let released = self.queue.iter().map(|r| r.charge.connection).sum();
        self.queue.clear();
        self.written = 0;
        self.since = None;
        released
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbox_gives_whole_headers_and_keeps_a_partial_one() {
        let mut inbox = Inbox::new();
        let n = 2 * proto::REQUEST_LEN + 5;
        inbox.space()[..n].fill(7);
        inbox.filled(n);

        assert!(inbox.next_header().is_some());
        assert!(inbox.next_header().is_some());
        assert!(inbox.next_header().is_none());
        assert_eq!(inbox.len(), 5);
    }

    #[test]
    fn inbox_moves_a_partial_header_to_the_front_when_the_tail_is_short() {
        let mut inbox = Inbox::new();
        let whole = INBOX_LEN / proto::REQUEST_LEN;
        let n = whole * proto::REQUEST_LEN + 3;
        let tail = INBOX_LEN - n;
        for (i, b) in inbox.space()[..n].iter_mut().enumerate() {
            *b = i as u8;
        }
        inbox.filled(n);
        for _ in 0..whole {
            assert!(inbox.next_header().is_some());
        }
        assert!(tail < proto::REQUEST_LEN);

        let room = inbox.space().len();

        assert_eq!(room, INBOX_LEN - 3);
        let mut first = [0u8; 3];
        assert_eq!(inbox.take_into(&mut first), 3);
        let at = whole * proto::REQUEST_LEN;
        assert_eq!(first, [at as u8, (at + 1) as u8, (at + 2) as u8]);
    }
}
