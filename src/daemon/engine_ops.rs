//! The bridge from the control plane's engine methods (`add`, `replace`,
//! `set`, and the engine part of `status`) to an array's [`ArrayHandle`].
//!
//! ```text
//!  control socket ─► control::methods ─► EngineOps (this) ─► ArrayHandle ─► rebuild task
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use super::array::{AddOutcome, ArrayHandle};
use super::error_chain;
use crate::block::BoxFuture;
use crate::control::handle::{EngineOps, ScrubRequest};
use crate::control::replies::{AddReply, AddedAs, ReplaceReply, ScrubReply, SetReply};
use crate::control::status::{EngineStatus, PassKind, ReplaceStatus, SyncStatus};
use crate::control::ControlError;

/// [`EngineOps`] of one array.
#[derive(Debug)]
pub struct ArrayEngine(pub Arc<ArrayHandle>);

impl ArrayEngine {
    /// The pass running, as `status` shows it: a replace runs as a rebuild
    /// of its role and is named as such.
    fn sync(&self, replacing: Option<&ReplaceStatus>) -> Option<SyncStatus> {
        let Some(p) = self.0.progress() else {
            return self.pass_not_counting_yet(replacing);
        };
        let kind = match replacing {
            Some(r) if p.member == Some(r.member) => PassKind::Replace,
            _ => p.kind.into(),
        };
        Some(SyncStatus::from_progress(p, kind))
    }

    /// A pass that runs but has no progress counter (yet or any more): a
    /// replace from its acceptance until the role's path has moved, and a
    /// rebuild from `add` or a spare whose target is attached (the member
    /// shows `rebuilding`) before its task starts counting.
    fn pass_not_counting_yet(&self, replacing: Option<&ReplaceStatus>) -> Option<SyncStatus> {
        let volume = self.0.volume();
        let target = |role: usize| volume.rebuild_target(crate::raid::MemberIndex(role));
        let (role, done) = match replacing.map(|r| r.member) {
            // Attached and not started (0), or copied and detached (all).
            Some(role) => (role, target(role).map_or(self.0.data_size(), |(_, up)| up)),
            None => (0..volume.geometry().members())
                .find_map(|role| target(role).map(|(_, up)| (role, up)))?,
        };
        Some(SyncStatus {
            kind: if replacing.is_some() {
                PassKind::Replace
            } else {
                PassKind::Rebuild
            },
            member: Some(role),
            done_bytes: done,
            total_bytes: self.0.data_size(),
            bytes_per_sec: 0.0,
            eta_secs: None,
            skipped_bytes: 0,
        })
    }
}

impl ArrayEngine {
    /// Refuses `what` on an array served read-only (it would write).
    async fn writable(&self, what: &str) -> Result<(), ControlError> {
        if self.0.metadata().is_read_only().await {
            let name = crate::block::BlockDevice::name(&**self.0.volume()).to_string();
            return Err(ControlError::Refused(format!(
                "{name} is served read-only: {what} would write to its members"
            )));
        }
        Ok(())
    }
}

impl EngineOps for ArrayEngine {
    fn add(&self, path: PathBuf, force: bool) -> BoxFuture<'_, Result<AddReply, ControlError>> {
        crate::block::BoxFuture::new(async move {
            self.writable("add").await?;
            match self.0.add_member(&path, force).await {
                Ok(AddOutcome::Spare) => Ok(AddReply {
                    path,
                    added_as: AddedAs::Spare,
                    role: None,
                    rebuilding: None,
                }),
                Ok(AddOutcome::Rebuilding { role }) => Ok(AddReply {
                    path,
                    added_as: AddedAs::Member,
                    role: Some(role),
                    rebuilding: Some(true),
                }),
                Err(e) => Err(ControlError::Refused(error_chain(&e))),
            }
        })
    }

    fn replace(
        &self,
        member: usize,
        path: PathBuf,
        force: bool,
    ) -> BoxFuture<'_, Result<ReplaceReply, ControlError>> {
        crate::block::BoxFuture::new(async move {
            self.writable("replace").await?;
            self.0
                .replace_member(member, &path, force)
                .await
                .map_err(|e| ControlError::Refused(error_chain(&e)))?;
            Ok(ReplaceReply {
                path,
                replacing: member,
            })
        })
    }

    fn member_set(&self) -> Option<Arc<tokio::sync::Mutex<()>>> {
        Some(self.0.member_set())
    }

    fn remove_spare(&self, path: &str) -> Option<String> {
        self.0.remove_spare(std::path::Path::new(path))
    }

    fn set_rebuild_max_mbps(&self, mbps: u64) -> BoxFuture<'_, Result<SetReply, ControlError>> {
        crate::block::BoxFuture::new(async move {
            self.0.set_rebuild_max_mbps(mbps);
            Ok(SetReply {
                rebuild_max_mbps: mbps,
            })
        })
    }

    fn set_mirror(
        &self,
        member: Option<usize>,
        p: crate::control::params::MirrorSetParams,
    ) -> BoxFuture<'_, Result<crate::control::replies::MirrorReply, ControlError>> {
        crate::block::BoxFuture::new(async move {
            self.writable("a mirror policy change").await?;
            self.0
                .set_mirror(member, &p)
                .await
                .map_err(|e| ControlError::Refused(error_chain(&e)))
        })
    }

    fn status(&self) -> EngineStatus {
        let replace = self.0.replacing();
        EngineStatus {
            sync: self.sync(replace.as_ref()),
            spares: self.0.spares(),
            rebuild_max_mbps: self.0.rebuild_max_mbps(),
            last_scrub: self.0.last_scrub(),
            journal: self.0.volume().journal_counters().map(Into::into),
            checksum_cache: self.0.volume().checksum_cache(),
            replace,
            last_sync: self.0.volume().last_sync().map(|p| {
                let kind = p.kind.into();
                SyncStatus::from_progress(p, kind)
            }),
            written_bytes: self.0.volume().written().map(|w| w.written_bytes()),
        }
    }

    fn scrub(&self, req: ScrubRequest) -> BoxFuture<'_, Result<ScrubReply, ControlError>> {
        crate::block::BoxFuture::new(async move {
            let name = crate::block::BlockDevice::name(&**self.0.volume()).to_string();
            if req.cancel {
                return if self.0.cancel_scrub() {
                    Ok(ScrubReply::cancelled(name))
                } else {
                    Err(ControlError::Refused(format!(
                        "{name}: no scrub is running"
                    )))
                };
            }
            if req.repair {
                self.writable("a repairing scrub").await?;
            }
            let done = self
                .0
                .start_scrub(req.repair, crate::control::status::ScrubTrigger::Manual)
                .map_err(|e| ControlError::Refused(error_chain(&e)))?;
            if !req.wait {
                return Ok(ScrubReply::started(name, req.repair));
            }
            let last = done.await.map_err(|_| {
                ControlError::Refused(format!("{name}: the scrub stopped without a result"))
            })?;
            Ok(ScrubReply::finished(name, last))
        })
    }

    fn member_path(&self, role: usize) -> Option<String> {
        self.0.member_path(role)
    }

    fn join_refused(&self, role: usize) -> Option<String> {
        self.0.join_refused(role)
    }
}
