//! Scrubs of a running array: started by `vraid scrub` or by the schedule
//! in the config (`scrub_interval`), one at a time, never while a rebuild,
//! recovery, replace or crash resync runs. A rebuild that starts during a
//! scrub cancels it: restoring redundancy comes first.
//!
//! ```text
//!  start_scrub ─► refuse if busy ─► event scrub_started ─► task:
//!      Volume::scrub ─► finished? record_scrub(now) in the superblocks
//!      ─► last_scrub (status) ─► event scrub_finished ─► reply to waiters
//!  supervisor tick ─► now - scrub_time >= scrub_interval ─► start_scrub
//! ```

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::{ArrayHandle, DaemonError};
use crate::control::status::ScrubTrigger;
use crate::daemon::error_chain;

/// The result of the last scrub of this run, for `vraid status`.
pub use crate::control::status::ScrubStatus as LastScrub;

/// The last scrub of an [`ArrayHandle`] (the running one is in its state).
#[derive(Debug, Default)]
pub(super) struct ScrubState {
    last: std::sync::Mutex<Option<LastScrub>>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl ArrayHandle {
    /// Starts a scrub in the background (`repair`: rewrite what is found).
    /// The receiver gets the result once it ends. Refused while another
    /// scrub, a rebuild or a crash resync runs, or during shutdown.
    pub fn start_scrub(
        self: &Arc<Self>,
        repair: bool,
        trigger: ScrubTrigger,
    ) -> Result<oneshot::Receiver<LastScrub>, DaemonError> {
        let cancel = self
            .state()
            .start_scrub()
            .map_err(|why| DaemonError::Usage(format!("{}: {why}", self.name)))?;
        let mode = if repair { "repair" } else { "check" };
        self.event(
            "scrub_started",
            None,
            format!("{}: scrub started ({mode}, {})", self.name, trigger.word()),
        );
        let (tx, rx) = oneshot::channel();
        let h = self.clone();
        let task = tokio::spawn(async move {
            let started = unix_now();
            let clock = Instant::now();
            let report = h.volume.scrub(repair, &h.control, &cancel).await;
            let last = LastScrub::new(
                trigger,
                &report,
                started,
                unix_now(),
                clock.elapsed().as_secs_f64(),
            );
            if !last.cancelled {
                if let Err(e) = h.metadata.record_scrub(last.finished).await {
                    warn!(
                        "{}: recording the scrub time failed: {}",
                        h.name,
                        error_chain(&e)
                    );
                }
            }
            h.event("scrub_finished", None, describe(&h.name, &last));
            *h.scrub.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(last.clone());
            h.state().scrub_ended();
            let _ = tx.send(last);
        });
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        // Scheduled scrubs come back forever: forget the finished ones.
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
        Ok(rx)
    }

    /// Stops the running scrub at its next step; false when none runs.
    pub fn cancel_scrub(&self) -> bool {
        match self.state().scrub() {
            Some(flag) => {
                flag.store(true, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// The result of the last scrub of this run.
    pub fn last_scrub(&self) -> Option<LastScrub> {
        self.scrub
            .last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How often the supervisor checks the schedule (at most every minute).
    pub(super) fn scrub_tick(&self) -> Option<tokio::time::Interval> {
        let every = self.scrub_interval?.min(Duration::from_secs(60));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Some(tick)
    }

    /// Starts the scheduled scrub when the last one finished at least
    /// `scrub_interval` ago (per the superblocks, so restarts keep the
    /// schedule) and nothing else runs.
    pub(super) async fn scheduled_scrub(self: &Arc<Self>) {
        let Some(interval) = self.scrub_interval else {
            return;
        };
        let last = self.metadata.scrub_time().await;
        if unix_now().saturating_sub(last) < interval.as_secs() {
            return;
        }
        if self.state().scrub().is_some() {
            return;
        }
        if let Err(e) = self.start_scrub(self.scrub_repair, ScrubTrigger::Scheduled) {
            debug!(
                "{}: scheduled scrub deferred: {}",
                self.name,
                error_chain(&e)
            );
        }
    }
}

/// Waits for the next schedule tick; never without a schedule.
pub(super) async fn tick(t: &mut Option<tokio::time::Interval>) {
    match t {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The `scrub_finished` event text.
fn describe(name: &str, s: &LastScrub) -> String {
    let r = s;
    let mut text = format!(
        "{name}: scrub {} ({}) in {:.1} s: checked {} bytes, skipped {} bytes per member never written, found {} bad blocks (mismatch {}, checksum {}, io {}), repaired {}",
        s.outcome,
        if r.repair { "repair" } else { "check" },
        s.secs,
        r.bytes_checked,
        r.skipped_bytes,
        s.found,
        s.mismatches,
        s.total().checksum,
        s.total().io,
        s.repaired,
    );
    for m in r.members.iter().filter(|m| m.found() > 0) {
        text.push_str(&format!(
            "; member {}: mismatch {} checksum {} io {} repaired {}",
            m.role, m.mismatch, m.checksum, m.io, m.repaired
        ));
    }
    if r.degraded {
        text.push_str("; degraded: parts with a member down were not fully checked");
    }
    text
}
