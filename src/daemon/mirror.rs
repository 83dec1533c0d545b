//! Mirror policies of a running array (issue 13): write-mostly members and
//! write-behind set from the options at bring-up, and the automatic
//! re-join of a remote member failed by `member_timeout`.
//!
//! ```text
//!  bring-up ─► apply(): roles named by path or number ─► Volume::set_write_mostly
//!                        write_behind ─► Volume::start_write_behind
//!  member failed (supervisor) ─► spawn_rejoin(role) when auto_rejoin, the
//!     member is remote and it timed out ─► every 1..10 s: server answers?
//!     ─► add_member(path) (bitmap re-add: dirty regions only) ─► active
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::array::{AddOutcome, ArrayHandle};
use super::{error_chain, DaemonError};
use crate::config::MirrorConfig;
use crate::raid::{Level, MemberIndex, MemberState, Volume};

/// Sets the policies of `mirror` on `volume` (members by role in `paths`).
pub(super) fn apply(
    volume: &Arc<Volume>,
    paths: &[Option<String>],
    mirror: &MirrorConfig,
    bitmap: bool,
    read_only: bool,
) -> Result<(), DaemonError> {
    let name = volume.volume_name().to_string();
    if !mirror.write_mostly.is_empty() && volume.geometry().level() != Level::Raid1 {
        return Err(DaemonError::Usage(format!(
            "{name}: write-mostly members need a RAID-1"
        )));
    }
    for m in &mirror.write_mostly {
        match role_of(m, paths) {
            Some(role) => volume.set_write_mostly(MemberIndex(role), true),
            None => warn!("{name}: write-mostly member {m} is not present"),
        }
    }
    let Some(limits) = mirror.write_behind.filter(|_| !read_only) else {
        return Ok(());
    };
    if mirror.write_mostly.is_empty() {
        return Err(DaemonError::Usage(format!(
            "{name}: write-behind applies to write-mostly members: name one"
        )));
    }
    if !bitmap {
        return Err(DaemonError::Usage(format!(
            "{name}: write-behind needs the write-intent bitmap"
        )));
    }
    volume.start_write_behind(limits);
    Ok(())
}

/// The role a member is named by: a role number, or its path as given.
fn role_of(m: &str, paths: &[Option<String>]) -> Option<usize> {
    if let Ok(role) = m.parse::<usize>() {
        return (role < paths.len()).then_some(role);
    }
    paths
        .iter()
        .position(|p| p.as_deref().is_some_and(|p| Path::new(p) == Path::new(m)))
}

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
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Waits while `role` is rebuilding: true once active (or the array
    /// stops), false when the recovery failed and the role is down again.
    async fn wait_settled(&self, role: usize) -> bool {
        loop {
            match self.volume().state(MemberIndex(role)) {
                MemberState::Active => return true,
                MemberState::Rebuilding { .. } if !self.stopping() => {}
                MemberState::Rebuilding { .. } => return true,
                _ => return false,
            }
            // Member states have no change notification: look again soon.
            tokio::time::sleep(Duration::from_millis(500)).await;
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
