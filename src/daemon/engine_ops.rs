//! The bridge from the control plane's engine methods (`add`, `replace`,
//! `set`, and the engine part of `status`) to an array's [`ArrayHandle`].
//!
//! ```text
//!  control socket ─► control::methods ─► EngineOps (this) ─► ArrayHandle ─► rebuild task
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::array::{AddOutcome, ArrayHandle};
use super::error_chain;
use crate::block::BoxFuture;
use crate::control::handle::{EngineOps, ScrubRequest};
use crate::control::ControlError;

/// [`EngineOps`] of one array.
#[derive(Debug)]
pub struct ArrayEngine(pub Arc<ArrayHandle>);

impl ArrayEngine {
    /// A pass that runs but has no progress counter (yet or any more): a
    /// replace from its acceptance until the role's path has moved, and a
    /// rebuild from `add` or a spare whose target is attached (the member
    /// shows `rebuilding`) before its task starts counting.
    fn pass_not_counting_yet(&self, replacing: &Option<Value>) -> Option<Value> {
        let volume = self.0.volume();
        let replace_role = replacing
            .as_ref()
            .and_then(|r| r["member"].as_u64())
            .map(|r| r as usize);
        let target = |role: usize| volume.rebuild_target(crate::raid::MemberIndex(role));
        let (role, done) = match replace_role {
            // Attached and not started (0), or copied and detached (all).
            Some(role) => (role, target(role).map_or(self.0.data_size(), |(_, up)| up)),
            None => (0..volume.geometry().members())
                .find_map(|role| target(role).map(|(_, up)| (role, up)))?,
        };
        Some(json!({
            "kind": if replace_role.is_some() { "replace" } else { "rebuild" },
            "member": role,
            "done_bytes": done,
            "total_bytes": self.0.data_size(),
            "bytes_per_sec": 0.0,
            "eta_secs": null,
        }))
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
    fn add(&self, path: PathBuf, force: bool) -> BoxFuture<'_, Result<Value, ControlError>> {
        Box::pin(async move {
            self.writable("add").await?;
            match self.0.add_member(&path, force).await {
                Ok(AddOutcome::Spare) => Ok(json!({"path": path, "added_as": "spare"})),
                Ok(AddOutcome::Rebuilding { role }) => Ok(
                    json!({"path": path, "added_as": "member", "role": role, "rebuilding": true}),
                ),
                Err(e) => Err(ControlError::Refused(error_chain(&e))),
            }
        })
    }

    fn replace(
        &self,
        member: usize,
        path: PathBuf,
        force: bool,
    ) -> BoxFuture<'_, Result<Value, ControlError>> {
        Box::pin(async move {
            self.writable("replace").await?;
            self.0
                .replace_member(member, &path, force)
                .await
                .map_err(|e| ControlError::Refused(error_chain(&e)))?;
            Ok(json!({"path": path, "replacing": member}))
        })
    }

    fn member_set(&self) -> Option<Arc<tokio::sync::Mutex<()>>> {
        Some(self.0.member_set())
    }

    fn remove_spare(&self, path: &str) -> Option<String> {
        self.0.remove_spare(std::path::Path::new(path))
    }

    fn set_rebuild_max_mbps(&self, mbps: u64) -> BoxFuture<'_, Result<Value, ControlError>> {
        Box::pin(async move {
            self.0.set_rebuild_max_mbps(mbps);
            Ok(json!({"rebuild_max_mbps": mbps}))
        })
    }

    fn status(&self) -> Map<String, Value> {
        let mut m = Map::new();
        let replacing = self.0.replacing();
        let sync = self.0.progress().map(|p| {
            // A replace runs as a rebuild of its role; name it as such.
            let kind = match &replacing {
                Some(r) if p.member.is_some() && r["member"] == json!(p.member) => {
                    "replace".to_string()
                }
                _ => format!("{:?}", p.kind).to_lowercase(),
            };
            json!({
                "kind": kind,
                "member": p.member,
                "done_bytes": p.done_bytes,
                "total_bytes": p.total_bytes,
                "bytes_per_sec": p.bytes_per_sec,
                "eta_secs": p.eta_secs,
            })
        });
        let sync = sync.or_else(|| self.pass_not_counting_yet(&replacing));
        m.insert("sync".into(), sync.unwrap_or(Value::Null));
        m.insert("spares".into(), json!(self.0.spares()));
        m.insert("rebuild_max_mbps".into(), json!(self.0.rebuild_max_mbps()));
        m.insert("last_scrub".into(), json!(self.0.last_scrub()));
        m.insert("journal".into(), json!(self.0.volume().journal_counters()));
        m.insert(
            "checksum_cache".into(),
            json!(self.0.volume().checksum_cache()),
        );
        m.insert("replace".into(), replacing.unwrap_or(Value::Null));
        m
    }

    fn scrub(&self, req: ScrubRequest) -> BoxFuture<'_, Result<Value, ControlError>> {
        Box::pin(async move {
            let name = crate::block::BlockDevice::name(&**self.0.volume()).to_string();
            if req.cancel {
                return if self.0.cancel_scrub() {
                    Ok(json!({"volume": name, "cancelled": true}))
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
                .start_scrub(req.repair, "manual")
                .map_err(|e| ControlError::Refused(error_chain(&e)))?;
            if !req.wait {
                return Ok(json!({"volume": name, "started": true, "repair": req.repair}));
            }
            let last = done.await.map_err(|_| {
                ControlError::Refused(format!("{name}: the scrub stopped without a result"))
            })?;
            Ok(json!({"volume": name, "scrub": last}))
        })
    }

    fn member_path(&self, role: usize) -> Option<String> {
        self.0.member_path(role)
    }
}
