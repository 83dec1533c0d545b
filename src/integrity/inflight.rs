//! [`Inflight`]: which blocks of a member have a write (or discard, zeroes,
//! lost mark) in flight or just ended, so a read that met a checksum
//! mismatch can tell a racing write from a corrupt block (§8 "Reads").
//!
//! ```text
//!  write ─► begin(b0..b1): writing += 1 ─► data, entries ─► ended += 1, writing -= 1
//!  read mismatch ─► quiet(b0..b1)? (no writing; ended = s) ─► read again
//!                   ─► still bad and quiet(b0..b1) = s ─► corrupt
//!                   └► a write began or ended meanwhile ─► again (bounded)
//! ```
//!
//! Readers take no lock, and a write changes the data before its entries:
//! a read between the two sees new bytes and an old entry. One more read
//! was not enough with several writers of one 4 KiB block (sub-block
//! writes of different clients, each 512 bytes of its own; session 18 red
//! team): both reads could fall between some write's data and entries,
//! and a good block failed with EIO. A read now counts as proof of
//! corruption only if no write of the bad blocks was in flight or ended
//! while it ran. Blocks map to a fixed table of slots by 64 KiB group
//! (no memory per block): blocks sharing a slot only cost a read more.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use tokio::sync::Notify;

/// Slots of the table.
const SLOTS: usize = 256;
/// Blocks (4 KiB) per slot group: a 1 MiB write touches 16 slots.
const GROUP: u64 = 16;

/// Writes in flight and ended, per slot of blocks.
#[derive(Debug)]
pub(crate) struct Inflight {
    writing: [AtomicU32; SLOTS],
    ended: [AtomicU64; SLOTS],
    /// Readers waiting in [`Inflight::wait_quiet`]; writes only touch
    /// `ended_notify` while one waits.
    waiters: AtomicU32,
    /// Woken when a write ends while a reader waits.
    ended_notify: Notify,
}

impl Default for Inflight {
    fn default() -> Self {
        Inflight {
            writing: std::array::from_fn(|_| AtomicU32::new(0)),
            ended: std::array::from_fn(|_| AtomicU64::new(0)),
            waiters: AtomicU32::new(0),
            ended_notify: Notify::new(),
        }
    }
}

/// The slots of blocks `b0..b1`, each once.
fn slots(b0: u64, b1: u64) -> impl Iterator<Item = usize> {
    let (g0, g1) = (b0 / GROUP, b1.div_ceil(GROUP));
    let n = (g1 - g0).min(SLOTS as u64);
    (g0..g0 + n).map(|g| (g % SLOTS as u64) as usize)
}

impl Inflight {
    /// Marks blocks `b0..b1` written until the guard is dropped.
    pub(crate) fn begin(&self, b0: u64, b1: u64) -> Writing<'_> {
        for s in slots(b0, b1) {
            self.writing[s].fetch_add(1, SeqCst);
        }
        Writing {
            table: self,
            b0,
            b1,
        }
    }

    /// `None` while a write of blocks `b0..b1` is in flight; else a stamp
    /// that changes when one ends.
    pub(crate) fn quiet(&self, b0: u64, b1: u64) -> Option<u64> {
        let mut stamp = 0u64;
        for s in slots(b0, b1) {
            if self.writing[s].load(SeqCst) != 0 {
                return None;
            }
            stamp = stamp.wrapping_add(self.ended[s].load(SeqCst));
        }
        Some(stamp)
    }

    /// Waits until no write of blocks `b0..b1` is in flight and returns
    /// [`Inflight::quiet`]'s stamp. Each call counts one of `tries` (one
    /// re-read); `None` once `tries` passes `max`, or when the blocks'
    /// writes did not all end within `stuck` (a member that stopped
    /// answering): the caller's mismatch then stands.
    pub(crate) async fn wait_quiet(
        &self,
        b0: u64,
        b1: u64,
        tries: &mut u32,
        max: u32,
        stuck: Duration,
    ) -> Option<u64> {
        *tries += 1;
        if *tries > max {
            return None;
        }
        self.waiters.fetch_add(1, SeqCst);
        let _waiting = Waiter(self);
        let deadline = tokio::time::Instant::now() + stuck;
        loop {
            // Registered before the check: an end between the two wakes it.
            let ended = self.ended_notify.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if let Some(stamp) = self.quiet(b0, b1) {
                return Some(stamp);
            }
            tokio::time::timeout_at(deadline, ended).await.ok()?;
        }
    }
}

/// A reader counted in [`Inflight::waiters`] until dropped.
struct Waiter<'a>(&'a Inflight);

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, SeqCst);
    }
}

/// Blocks marked written ([`Inflight::begin`]).
pub(crate) struct Writing<'a> {
    table: &'a Inflight,
    b0: u64,
    b1: u64,
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        for s in slots(self.b0, self.b1) {
            // Ended first: a reader that sees no writer then sees the end.
            self.table.ended[s].fetch_add(1, SeqCst);
            self.table.writing[s].fetch_sub(1, SeqCst);
        }
        if self.table.waiters.load(SeqCst) != 0 {
            self.table.ended_notify.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_in_flight_or_ended_changes_what_a_reader_sees() {
        let t = Inflight::default();
        let quiet = t.quiet(100, 104).expect("no write yet");
        let w = t.begin(103, 104);
        assert_eq!(t.quiet(100, 104), None, "in flight");
        drop(w);
        assert_ne!(t.quiet(100, 104), Some(quiet), "ended");
        assert!(t.quiet(5000, 5001).is_some(), "another slot");
        let large = t.begin(0, 1 << 30);
        assert!(slots(0, 1 << 30).count() == SLOTS && t.quiet(5000, 5001).is_none());
        drop(large);
        assert!(t.writing.iter().all(|w| w.load(SeqCst) == 0));
    }

    #[tokio::test]
    async fn a_reader_waiting_for_quiet_is_woken_by_the_write_ending() {
        let t = std::sync::Arc::new(Inflight::default());
        let w = t.begin(7, 8);
        let reader = {
            let t = t.clone();
            tokio::spawn(async move {
                let mut tries = 0;
                let stamp = t.wait_quiet(7, 8, &mut tries, 10, Duration::from_secs(60));
                (stamp.await, tries)
            })
        };
        // The reader registers as a waiter before the write ends.
        while t.waiters.load(SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        drop(w);
        let (stamp, tries) = reader.await.unwrap();
        assert_eq!(stamp, t.quiet(7, 8));
        assert_eq!(tries, 1, "one re-read");
        assert_eq!(t.waiters.load(SeqCst), 0);
    }

    #[tokio::test]
    async fn a_write_that_never_ends_leaves_the_mismatch_standing() {
        let t = Inflight::default();
        let _w = t.begin(7, 8);
        let mut tries = 0;
        let got = t.wait_quiet(7, 8, &mut tries, 10, Duration::from_millis(20));
        assert_eq!(got.await, None);
        // Writes of other slots ending do not end the wait.
        let other = t.begin(5000, 5001);
        let waiting = t.wait_quiet(7, 8, &mut tries, 10, Duration::from_secs(60));
        tokio::pin!(waiting);
        tokio::select! {
            _ = &mut waiting => panic!("woken by another slot's write"),
            _ = async { while t.waiters.load(SeqCst) == 0 { tokio::task::yield_now().await } } => {}
        }
        drop(other);
        let timeout = tokio::time::timeout(Duration::from_millis(50), &mut waiting).await;
        assert!(timeout.is_err(), "still waiting for its own slot's write");
        let mut tries = 10;
        assert_eq!(
            t.wait_quiet(9, 10, &mut tries, 10, Duration::from_secs(60))
                .await,
            None
        );
    }
}
