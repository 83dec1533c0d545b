//! `Changes`: the change notification of member and array state (a
//! generation counter on a `tokio::sync::watch`), so that whoever waits
//! for a member to settle awaits the change instead of polling.
//!
//! ```text
//!  Volume: member failed / rebuild target attached, detached, broken,
//!          promoted                           ─► volume.changes().bump()
//!  ArrayMetadata: any update of the table (member states, replace,
//!          rebuild checkpoint...)             ─► metadata.changes().bump()
//!  waiter: w = changes.watch(); loop { w.mark_seen(); check state?; w.changed().await }
//! ```
//!
//! A waiter cannot miss a change: `mark_seen` before the check, and any
//! bump after it makes `changed` resolve at once. A bump may be spurious
//! (nothing the waiter checks changed): waiters check again. Rebuild
//! progress (`up_to`) does not bump: it changes at every step.

use tokio::sync::watch;

/// The change counter of one state owner (a volume, its metadata).
#[derive(Debug)]
pub struct Changes {
    tx: watch::Sender<u64>,
}

impl Default for Changes {
    fn default() -> Self {
        Changes::new()
    }
}

impl Changes {
    /// A counter at generation 0.
    pub fn new() -> Changes {
        Changes {
            tx: watch::Sender::new(0),
        }
    }

    /// Records a change: wakes every waiter.
    pub fn bump(&self) {
        self.tx.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Changes recorded so far (wrapping).
    pub fn generation(&self) -> u64 {
        *self.tx.borrow()
    }

    /// A waiter that has seen every change so far.
    pub fn watch(&self) -> ChangeWatch {
        ChangeWatch {
            rx: self.tx.subscribe(),
        }
    }
}

/// One waiter on [`Changes`].
#[derive(Debug)]
pub struct ChangeWatch {
    rx: watch::Receiver<u64>,
}

impl ChangeWatch {
    /// Marks every change so far seen. Call it before checking the state.
    pub fn mark_seen(&mut self) {
        self.rx.borrow_and_update();
    }

    /// Resolves at the first change not yet seen (at once when one came
    /// since the last [`ChangeWatch::mark_seen`] or since this waiter was
    /// made). Never resolves once the owner is gone (nothing changes).
    pub async fn changed(&mut self) {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Waits for the first `Some` of `check`, looked at now and again after
/// every change of any of `watches` (race-free: each is marked seen before
/// the look). Unbounded: the caller bounds it (`tokio::time::timeout`).
pub async fn wait_for<T, F, Fut>(watches: &mut [ChangeWatch], mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    loop {
        for w in watches.iter_mut() {
            w.mark_seen();
        }
        if let Some(v) = check().await {
            return v;
        }
        let any = watches.iter_mut().map(|w| Box::pin(w.changed()));
        futures::future::select_all(any).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// A waiter made before a bump sees it, even if it awaits only after.
    #[tokio::test(start_paused = true)]
    async fn waiter_made_before_a_change_cannot_miss_it() {
        let c = Changes::new();
        let mut w = c.watch();
        c.bump();
        let start = tokio::time::Instant::now();
        w.changed().await;
        assert_eq!(start.elapsed(), std::time::Duration::ZERO);
        assert_eq!(c.generation(), 1);
    }

    /// Marked seen, a waiter waits for the next bump (it does not resolve
    /// on an old one).
    #[tokio::test(start_paused = true)]
    async fn seen_changes_do_not_wake_again() {
        let c = Changes::new();
        let mut w = c.watch();
        c.bump();
        w.mark_seen();
        let waited = tokio::time::timeout(std::time::Duration::from_secs(3600), w.changed()).await;
        assert!(waited.is_err(), "woke with no change");
    }

    /// `wait_for` rechecks at each bump from another task and returns the
    /// first `Some`, with the (paused) clock never advancing: no poll.
    #[tokio::test(start_paused = true)]
    async fn wait_for_wakes_on_each_bump_without_time_passing() {
        let a = Arc::new(Changes::new());
        let b = Arc::new(Changes::new());
        let value = Arc::new(AtomicU64::new(0));
        let mut watches = [a.watch(), b.watch()];
        let (a2, b2, v2) = (a.clone(), b.clone(), value.clone());
        let bumper = tokio::spawn(async move {
            for i in 1..=4u64 {
                tokio::task::yield_now().await;
                v2.store(i, Ordering::SeqCst);
                // Alternate owners: a change of either wakes the waiter.
                if i % 2 == 0 { &a2 } else { &b2 }.bump();
            }
        });
        let start = tokio::time::Instant::now();
        let got = wait_for(&mut watches, || {
            let v = value.load(Ordering::SeqCst);
            async move { (v == 4).then_some(v) }
        })
        .await;
        assert_eq!(got, 4);
        assert_eq!(start.elapsed(), std::time::Duration::ZERO);
        bumper.await.unwrap();
    }

    /// With the owner gone, `changed` never resolves (no busy loop).
    #[tokio::test(start_paused = true)]
    async fn dropped_owner_never_wakes() {
        let c = Changes::new();
        let mut w = c.watch();
        drop(c);
        let waited = tokio::time::timeout(std::time::Duration::from_secs(3600), w.changed()).await;
        assert!(waited.is_err());
    }
}
