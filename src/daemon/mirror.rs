//! Automatic re-join of remote mirror members (issue 13; the mirror
//! policies are in `mirror_policy`): a remote member failed by
//! `member_timeout`, or unreachable at start-up.
//!
//! ```text
//!  member failed (supervisor) ─► spawn_rejoin(role) when auto_rejoin, the
//!     member is remote and it timed out ─► every 1..10 s: server answers?
//!     ─► add_member(path) (bitmap re-add: dirty regions only) ─► active
//!  remote member unreachable at start-up (array started degraded) ─►
//!     spawn_join_absent(path) ─► the same tries until added into the role
//!     its superblock names (or the operator added it, or the array stops);
//!     given up at once, logged once, when the pre-write check refuses
//!     what the path holds now (another array's member...): the role stays
//!     down with the reason in `status`, `vraid add` still works
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::array::{AddOutcome, ArrayHandle};
use super::error_chain;
use crate::raid::{MemberIndex, MemberState};

/// Longest wait between two tries of a re-join.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

impl ArrayHandle {
    /// Starts re-joining role `role` in the background when it qualifies:
    /// `auto_rejoin` on, a remote member, failed by timing out (not an I/O
    /// error or `vraid fail`), not already being re-joined.
    pub(super) fn spawn_rejoin(self: &Arc<Self>, role: usize) {
        if !self.auto_rejoin() {
            return;
        }
        let Some(path) = self
            .role_path(role)
            .filter(|p| crate::remote::is_nbd_uri(Path::new(p)))
        else {
            return;
        };
        if !self.volume().failed_by_timeout(MemberIndex(role)) {
            info!(
                "{}: member {role} ({path}) failed by an error, not by member_timeout: \
                 no automatic re-join (`vraid add` brings it back)",
                self.name()
            );
            return;
        }
        if !self.begin_rejoin(role) {
            return;
        }
        let h = self.clone();
        self.track(tokio::spawn(async move {
            h.rejoin(role, &path).await;
            h.end_rejoin(role);
        }));
    }

    /// Tries to re-add `path` into `role` until it is active again, the
    /// role is taken otherwise, or the array stops.
    async fn rejoin(self: &Arc<Self>, role: usize, path: &str) {
        let mut backoff = Duration::from_secs(1);
        loop {
            if self.stopping() || !self.volume().failed_by_timeout(MemberIndex(role)) {
                return;
            }
            // While another pass runs, `add` would keep it as a spare
            // (a full rebuild later): wait for the pass to end.
            if !self.pass_running() && self.reachable(path).await {
                // (`reachable` logs why not.)
                match self.rejoin_member(Path::new(path), role).await {
                    Ok(Some(AddOutcome::Rebuilding { role: r })) if r == role => {
                        info!(
                            "{}: {path} reachable again: re-joining as member {role}",
                            self.name()
                        );
                        self.rejoin_event(role, path);
                        if self.wait_settled(role).await {
                            return;
                        }
                    }
                    Ok(Some(outcome)) => {
                        warn!(
                            "{}: {path} re-added as {outcome:?}, not into role {role}",
                            self.name()
                        );
                        return;
                    }
                    Ok(None) => info!(
                        "{}: re-join of {path}: the other members cannot rebuild role {role} \
                         now (too many down, or a lower role first): left untouched",
                        self.name()
                    ),
                    Err(e) => warn!("{}: re-join of {path}: {}", self.name(), error_chain(&e)),
                }
            }
            if !self.back_off(backoff).await {
                return;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Starts joining `path`, a remote member unreachable at start-up, in
    /// the background when `auto_rejoin` is on and the array is writable.
    pub(super) fn spawn_join_absent(self: &Arc<Self>, path: PathBuf) {
        if !self.auto_rejoin() || self.member_options().read_only {
            info!(
                "{}: {} is left out until `vraid add` (auto_rejoin off or read-only)",
                self.name(),
                path.display()
            );
            return;
        }
        info!(
            "{}: {} will join once its server answers",
            self.name(),
            path.display()
        );
        let h = self.clone();
        self.track(tokio::spawn(async move {
            h.join_absent(&path.display().to_string()).await;
        }));
    }

    /// Tries to add `path` until it is in a role (added here, into the
    /// role its superblock names, or by the operator) or the array stops.
    /// A failure of its recovery is then the run-time re-join's.
    async fn join_absent(self: &Arc<Self>, path: &str) {
        let mut backoff = Duration::from_secs(1);
        while !self.stopping() && !self.holds(path) {
            if !self.pass_running() && self.reachable(path).await && self.try_join(path).await {
                return;
            }
            if !self.back_off(backoff).await {
                return;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One try of `join_absent`; true when it is settled (joined, added
    /// otherwise, or given up: the pre-write check refused what the path
    /// holds, which no retry changes but an operator). A member whose path or own superblock names a
    /// down role goes back only into that role and only while the others
    /// can rebuild it (never as a spare rebuilt into another role: it may
    /// hold the only copy of its own).
    async fn try_join(self: &Arc<Self>, path: &str) -> bool {
        let named = match self.down_role_of(path) {
            Some(role) => Some(role),
            None => self.named_down_role(Path::new(path)).await,
        };
        let outcome = match named {
            Some(role) => self.rejoin_member(Path::new(path), role).await,
            None => self.add_member(Path::new(path), false).await.map(Some),
        };
        match outcome {
            Ok(Some(AddOutcome::Rebuilding { role })) => {
                info!(
                    "{}: {path}, unreachable at start-up, answers: joining as member {role}",
                    self.name()
                );
                self.rejoin_event(role, path);
                true
            }
            Ok(Some(outcome)) => {
                warn!("{}: {path} answers; added as {outcome:?}", self.name());
                true
            }
            Ok(None) => {
                info!(
                    "{}: join of {path}: the other members cannot rebuild its role now: \
                     left untouched",
                    self.name()
                );
                false
            }
            Err(super::DaemonError::Overwrite(why)) => {
                warn!(
                    "{}: join of {path} given up: {why}; the role stays down until \
                     `vraid add`",
                    self.name()
                );
                self.refuse_join(path, why);
                true
            }
            Err(e) => {
                warn!("{}: join of {path}: {}", self.name(), error_chain(&e));
                false
            }
        }
    }

    /// The down role (failed or missing) whose path is `path`, if any.
    fn down_role_of(&self, path: &str) -> Option<usize> {
        let vol = self.volume();
        (0..vol.geometry().members()).find(|&r| {
            self.role_path(r).as_deref() == Some(path)
                && matches!(
                    vol.state(MemberIndex(r)),
                    MemberState::Failed | MemberState::Missing
                )
        })
    }

    /// Whether `path` serves a role of the array (active or rebuilding;
    /// a missing role may still name the path it had).
    fn holds(&self, path: &str) -> bool {
        let vol = self.volume();
        (0..vol.geometry().members()).any(|r| {
            self.role_path(r).as_deref() == Some(path)
                && matches!(
                    vol.state(MemberIndex(r)),
                    MemberState::Active | MemberState::Rebuilding { .. }
                )
        })
    }

    /// Waits while `role` is rebuilding: true once active (or the array
    /// stops), false when the recovery failed and the role is down again.
    async fn wait_settled(&self, role: usize) -> bool {
        let vol = self.volume();
        let mut watch = [vol.changes().watch()];
        let settled = crate::raid::changes::wait_for(&mut watch, || {
            let state = vol.state(MemberIndex(role));
            async move {
                match state {
                    MemberState::Active => Some(true),
                    MemberState::Rebuilding { .. } => None,
                    _ => Some(false),
                }
            }
        });
        tokio::select! {
            settled = settled => settled,
            () = self.until_stopped() => true,
        }
    }

    /// Waits `backoff` before the next try (the server's reachability has
    /// no notification); false when the array stops meanwhile.
    async fn back_off(&self, backoff: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(backoff) => true,
            () = self.until_stopped() => false,
        }
    }

    /// True when a connection to `path`'s server and export succeeds now;
    /// logs why not otherwise (one line a try: the tries back off to 10 s).
    async fn reachable(&self, path: &str) -> bool {
        let p = Path::new(path).to_path_buf();
        let opts = self.member_options();
        let tried =
            tokio::task::spawn_blocking(move || crate::remote::open(&p, &opts).map(drop)).await;
        match tried {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                let why = error_chain(&e);
                info!(
                    "{}: re-join of {path}: not reachable yet: {why}",
                    self.name()
                );
                false
            }
            Err(e) => {
                warn!("{}: re-join of {path}: probe failed: {e}", self.name());
                false
            }
        }
    }
}
