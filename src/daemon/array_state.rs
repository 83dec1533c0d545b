//! What one running array is doing, behind one lock: the crash resync, the
//! pass that copies onto a member (rebuild, bitmap recovery or replace),
//! the scrub, and shutdown. Each transition is a method that says what it
//! refuses, so every check-then-change happens under the same lock.
//!
//! ```text
//!  resync: Clean | Running ─► Clean (finished) | Unfinished (stopped)
//!  pass:   Idle ─claim─► Rebuild ─replacing─► Replace{role, path} ─end─► Idle
//!  scrub:  None ─start (refused while stopping, resyncing, a pass)─► Some(cancel) ─end─► None
//!  stopping: false ─stop─► true (no new pass or scrub starts)
//! ```

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// The crash resync of this run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resync {
    /// None needed, or finished: the array may be marked clean.
    Clean,
    /// Running now.
    Running,
    /// Stopped unfinished (e.g. out of space): the array stays dirty.
    Unfinished,
}

/// The pass copying data onto a member (only one at a time: the
/// superblock has one checkpoint).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Pass {
    /// None runs.
    Idle,
    /// A rebuild or a bitmap recovery.
    Rebuild,
    /// A replace: its role and the new member's path (shown by `status`
    /// until the role has moved).
    Replace {
        /// The role being replaced.
        role: usize,
        /// The new member's path.
        path: String,
    },
}

/// The state of an [`super::ArrayHandle`].
#[derive(Debug)]
pub(super) struct ArrayState {
    resync: Resync,
    pass: Pass,
    /// Cancel flag of the running scrub.
    scrub: Option<Arc<AtomicBool>>,
    stopping: bool,
}

impl ArrayState {
    /// At start-up: with a crash resync to run or not, and the pass
    /// bring-up planned.
    pub(super) fn new(resync: bool, pass: Pass) -> ArrayState {
        ArrayState {
            resync: if resync {
                Resync::Running
            } else {
                Resync::Clean
            },
            pass,
            scrub: None,
            stopping: false,
        }
    }

    /// Takes the pass slot for a rebuild; false when a pass runs or once
    /// shutdown began (shutdown waits only for the passes it found: one
    /// started after would be cut off mid-step).
    pub(super) fn claim_pass(&mut self) -> bool {
        if self.pass != Pass::Idle || self.stopping {
            return false;
        }
        self.pass = Pass::Rebuild;
        true
    }

    /// The claimed pass is the replace of `role` onto `path`.
    pub(super) fn replacing(&mut self, role: usize, path: String) {
        self.pass = Pass::Replace { role, path };
    }

    /// The pass ended (or never started): the slot is free.
    pub(super) fn end_pass(&mut self) {
        self.pass = Pass::Idle;
    }

    /// A rebuild, recovery or replace runs.
    pub(super) fn pass_running(&self) -> bool {
        self.pass != Pass::Idle
    }

    /// The replace running: its role and the new member's path.
    pub(super) fn replace(&self) -> Option<(usize, &str)> {
        match &self.pass {
            Pass::Replace { role, path } => Some((*role, path)),
            _ => None,
        }
    }

    /// The crash resync ended, `finished` or stopped unfinished.
    pub(super) fn resync_ended(&mut self, finished: bool) {
        self.resync = if finished {
            Resync::Clean
        } else {
            Resync::Unfinished
        };
    }

    /// The crash resync runs now.
    pub(super) fn resync_running(&self) -> bool {
        self.resync == Resync::Running
    }

    /// A crash resync has not finished: the array must stay dirty.
    pub(super) fn resync_pending(&self) -> bool {
        self.resync != Resync::Clean
    }

    /// Shutting down: no new pass or scrub starts.
    pub(super) fn stop(&mut self) {
        self.stopping = true;
    }

    /// True once shutting down.
    pub(super) fn stopping(&self) -> bool {
        self.stopping
    }

    /// Starts a scrub: its cancel flag, or why not.
    pub(super) fn start_scrub(&mut self) -> Result<Arc<AtomicBool>, &'static str> {
        if self.stopping {
            return Err("shutting down");
        }
        if self.resync_running() {
            return Err("a crash resync is running; scrub after it finishes");
        }
        if self.pass_running() {
            return Err("a rebuild is running; scrub after it finishes");
        }
        if self.scrub.is_some() {
            return Err("a scrub is already running (vraid scrub --cancel stops it)");
        }
        let cancel = Arc::new(AtomicBool::new(false));
        self.scrub = Some(cancel.clone());
        Ok(cancel)
    }

    /// The scrub ended.
    pub(super) fn scrub_ended(&mut self) {
        self.scrub = None;
    }

    /// The cancel flag of the running scrub.
    pub(super) fn scrub(&self) -> Option<&Arc<AtomicBool>> {
        self.scrub.as_ref()
    }
}
