//! The methods of the control socket: typed parameters, dispatch to the
//! [`Registry`], JSON results.
//!
//! | method        | params                                              |
//! |---------------|-----------------------------------------------------|
//! | `status`      | `volume?`                                           |
//! | `fail`        | `volume`, `member`                                  |
//! | `remove`      | `volume`, `member`                                  |
//! | `fault.add`   | `volume`, `member`, `kind`, `op?`, `offset?`, `length?`, `probability?`, `delay_us?`, `count?` |
//! | `fault.list`  | `volume?`                                           |
//! | `fault.clear` | `id?` (member or volume rule)                       |
//! | `fault.add_volume` | `volume`, `kind`, `op?`, `offset?`, `length?`, `probability?`, `delay_us?`, `count?` |
//! | `fault.powercut` | `volume`, `keep?` (`none`, `ordered-prefix`, `random-subset`), `seed?` |
//! | `log.start`, `log.mark`, `log.stop` | see `log_methods` |
//! | `cache.set`   | `volume`, `mode?` (`writethrough`, `volatile`), `size?` |
//! | `qos.set`     | `volume`, `iops?`, `read_iops?`, `write_iops?`, `bps?`, `read_bps?`, `write_bps?`, `burst_ms?` (0: no limit) |
//! | `add`         | `volume`, `path`, `force?` (rebuild engine)         |
//! | `replace`     | `volume`, `member`, `path`, `force?` (rebuild engine) |
//! | `set`         | `volume`, `rebuild_max_mbps` (rebuild engine)       |
//! | `scrub`       | `volume`, `repair?`, `cancel?`, `wait?` (rebuild engine) |
//!
//! | `pool.create` `pool.list` `pool.check` `volume.*` | see `pool_methods` |
//!
//! `member` is a role number or the member path given at start-up.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::handle::{Registry, ScrubRequest, VolumeHandle};
use super::params::{
    AddParams, CacheSetParams, FaultAddParams, FaultClearParams, MemberArg, MemberParams,
    PowercutParams, ReplaceParams, ScrubParams, SetParams, VolumeFilter,
};
use super::replies::{FailReply, FaultAddReply, FaultClearReply, FaultListReply, RemoveReply};
use super::status::StatusReply;
use super::ControlError;
use crate::member::fault::{FaultKind, FaultSpec};

impl MemberArg {
    /// The role named. A path names the device that holds the role now:
    /// the start-up path of a role another device took since (a spare, a
    /// replace) is refused, or `fail` and `remove` would hit the newcomer.
    pub(super) fn resolve(&self, vol: &VolumeHandle) -> Result<usize, ControlError> {
        let text = match self {
            MemberArg::Role(r) => r.to_string(),
            MemberArg::Path(p) => p.clone(),
        };
        let role = vol.find_member(&text)?.role;
        if text.parse::<usize>().is_err() && !vol.holds_role(role, &text) {
            return Err(ControlError::Refused(format!(
                "{text} no longer holds member {role} of {} (now {}): no I/O reaches it",
                vol.name,
                vol.current_path(role).unwrap_or_else(|| "nobody".into())
            )));
        }
        Ok(role)
    }
}

fn params<T: DeserializeOwned>(v: Value) -> Result<T, ControlError> {
    serde_json::from_value(v).map_err(|e| ControlError::InvalidParams(e.to_string()))
}

/// A typed result as the JSON the envelope carries.
fn result<T: Serialize>(r: Result<T, ControlError>) -> Result<Value, ControlError> {
    // Serializing the reply types (plain structs, string-keyed) cannot fail.
    r.map(|t| serde_json::to_value(t).unwrap_or(Value::Null))
}

/// Runs one method.
pub async fn dispatch(reg: &Registry, method: &str, p: Value) -> Result<Value, ControlError> {
    match method {
        "status" => result(status(reg, params(p)?).await),
        "fail" => result(fail(reg, params(p)?).await),
        "remove" => result(remove(reg, params(p)?).await),
        "fault.add" => result(fault_add(reg, params(p)?)),
        "fault.list" => result(fault_list(reg, params(p)?)),
        "fault.add_volume" => result(super::volume_faults::add(reg, params(p)?)),
        "fault.powercut" => {
            let p: PowercutParams = params(p)?;
            result(super::volume_faults::power_cut(reg, &p).await)
        }
        "qos.set" => {
            let p: super::params::QosSetParams = params(p)?;
            result(super::volume_faults::set_qos(reg, &p))
        }
        "log.start" => result(super::log_methods::start(reg, params(p)?)),
        "log.mark" => result(super::log_methods::mark(reg, params(p)?).await),
        "log.stop" => result(super::log_methods::stop(reg, params(p)?).await),
        "cache.set" => {
            let p: CacheSetParams = params(p)?;
            result(super::volume_faults::cache_set(reg, &p).await)
        }
        "fault.clear" => {
            let p: FaultClearParams = params(p)?;
            result(
                reg.clear_faults(p.id)
                    .map(|cleared| FaultClearReply { cleared }),
            )
        }
        _ => engine_method(reg, method, p).await,
    }
}

async fn fail(reg: &Registry, p: MemberParams) -> Result<FailReply, ControlError> {
    let vol = reg.volume(&p.volume)?;
    // The new member of a replace, by its path: the replace stops, the
    // old member keeps the role.
    let replacement = match &p.member {
        MemberArg::Path(path) => vol.replacement_role(path).map(|r| (r, path.clone())),
        MemberArg::Role(_) => None,
    };
    let role = match &replacement {
        Some((role, _)) => *role,
        None => p.member.resolve(vol)?,
    };
    let _set = member_set_guard(vol).await;
    match &replacement {
        Some(_) => vol.stop_replace(role).await?,
        None => vol.fail(role).await?,
    }
    Ok(FailReply {
        volume: vol.name.clone(),
        member: role,
        state: vol.member_state(role),
        volume_state: vol.state(),
        replace_stopped: replacement.map(|(_, path)| path),
    })
}

async fn remove(reg: &Registry, p: MemberParams) -> Result<RemoveReply, ControlError> {
    let vol = reg.volume(&p.volume)?;
    let _set = member_set_guard(vol).await;
    let mut reply = RemoveReply {
        volume: vol.name.clone(),
        spare: None,
        removed: None,
        member: None,
        state: None,
    };
    // An idle hot spare named by its path leaves the spare list.
    if let MemberArg::Path(path) = &p.member {
        if vol.find_member(path).is_err() {
            if let Some(spare) = vol.engine("remove").ok().and_then(|e| e.remove_spare(path)) {
                reply.spare = Some(spare);
                reply.removed = Some(true);
                return Ok(reply);
            }
        }
    }
    let role = p.member.resolve(vol)?;
    vol.remove(role).await?;
    reply.member = Some(role);
    reply.state = Some(vol.member_state(role));
    Ok(reply)
}

fn fault_list(reg: &Registry, p: VolumeFilter) -> Result<FaultListReply, ControlError> {
    let volumes = match &p.volume {
        Some(name) => vec![reg.volume(name)?.clone()],
        None => reg.volumes().to_vec(),
    };
    Ok(FaultListReply {
        faults: volumes.iter().flat_map(|v| v.faults()).collect(),
        volume_faults: volumes.iter().flat_map(|v| v.volume_faults()).collect(),
    })
}

/// The methods the rebuild engine answers (`add`, `replace`, `set`,
/// `scrub`), as their JSON results.
async fn engine_method(reg: &Registry, method: &str, p: Value) -> Result<Value, ControlError> {
    match method {
        "add" => {
            let p: AddParams = params(p)?;
            let vol = reg.volume(&p.volume)?;
            result(vol.engine("add")?.add(p.path, p.force).await)
        }
        "replace" => {
            let p: ReplaceParams = params(p)?;
            let vol = reg.volume(&p.volume)?;
            let role = p.member.resolve(vol)?;
            result(vol.engine("replace")?.replace(role, p.path, p.force).await)
        }
        "set" => {
            let p: SetParams = params(p)?;
            let vol = reg.volume(&p.volume)?;
            let engine = vol.engine("set")?;
            result(engine.set_rebuild_max_mbps(p.rebuild_max_mbps).await)
        }
        "mirror.set" => {
            let p: crate::control::params::MirrorSetParams = params(p)?;
            let vol = reg.volume(&p.volume)?;
            let role = p.member.as_ref().map(|m| m.resolve(vol)).transpose()?;
            result(vol.engine("mirror.set")?.set_mirror(role, p).await)
        }
        "scrub" => {
            let p: ScrubParams = params(p)?;
            let vol = reg.volume(&p.volume)?;
            let req = ScrubRequest {
                repair: p.repair,
                cancel: p.cancel,
                wait: p.wait,
            };
            result(vol.engine("scrub")?.scrub(req).await)
        }
        other if other.starts_with("pool.") || other.starts_with("volume.") => {
            super::pool_methods::dispatch(reg, other, p).await
        }
        other => Err(ControlError::MethodNotFound(other.to_string())),
    }
}

/// Holds the array's member-set lock (when it has a rebuild engine) so a
/// `fail` or `remove` does not interleave with `add`, `replace` or a
/// spare's activation.
async fn member_set_guard(
    vol: &crate::control::handle::VolumeHandle,
) -> Option<tokio::sync::OwnedMutexGuard<()>> {
    let lock = vol.engine("member set").ok()?.member_set()?;
    Some(lock.lock_owned().await)
}

async fn status(reg: &Registry, p: VolumeFilter) -> Result<StatusReply, ControlError> {
    let mut volumes = Vec::new();
    let listings = match reg.pools() {
        Ok(pools) => pools.list().await,
        Err(_) => Vec::new(),
    };
    let mut pool_volumes = super::status_pools::pool_volumes(reg, &listings);
    match &p.volume {
        Some(name) => match reg.volume(name) {
            Ok(v) => volumes.push(v.status().await),
            Err(e) if !pool_volumes.iter().any(|v| v.name == *name) => return Err(e),
            Err(_) => {}
        },
        None => {
            for v in reg.volumes() {
                volumes.push(v.status().await);
            }
        }
    }
    let events: Vec<_> = reg
        .events()
        .into_iter()
        .filter(|e| p.volume.as_ref().is_none_or(|n| *n == e.volume))
        .collect();
    let pools = match &p.volume {
        None => listings,
        Some(_) => Vec::new(),
    };
    if let Some(name) = &p.volume {
        pool_volumes.retain(|v| v.name == *name);
    }
    Ok(StatusReply {
        volumes,
        events,
        pools,
        pool_volumes,
        nbd_dropped: super::status::NbdDropStatus::now(),
        member_nowait: crate::member::nowait::counts(),
    })
}

fn fault_add(reg: &Registry, p: FaultAddParams) -> Result<FaultAddReply, ControlError> {
    let vol = reg.volume(&p.volume)?;
    let role = p.member.resolve(vol)?;
    let spec = FaultSpec {
        kind: p.kind,
        op: p.op,
        offset: p.offset,
        length: p.length,
        probability: p.probability.unwrap_or(1.0),
        delay_us: p.delay_us.unwrap_or(0),
        count: p.count,
    };
    if spec.kind != FaultKind::Delay && spec.delay_us != 0 {
        return Err(ControlError::InvalidParams(
            "delay_us only applies to kind \"delay\"".into(),
        ));
    }
    // A fault named by path belongs to that device: `resolve` refused the
    // path once another device took its role (the rule would land on the
    // newcomer).
    let id = vol.add_fault(role, spec)?;
    Ok(FaultAddReply {
        id,
        volume: vol.name.clone(),
        member: role,
    })
}
