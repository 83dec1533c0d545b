//! The control plane's side of volume faults and the write cache
//! (`fault.add_volume`, `fault.powercut`, `cache.set`; `fault.list` and
//! `fault.clear` take volume rules too): checks the parameters, acts on
//! the volume's [`crate::volfault::ClientStack`], records events.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::handle::{describe, VolumeHandle, NEXT_FAULT_ID};
use super::params::{CacheSetParams, PowercutParams, VolumeFaultAddParams};
use super::replies::{PowercutReply, VolumeFaultAddReply};
use super::status::VolumeFaultStatus;
use super::EventLog;
use super::{ControlError, Registry};
use crate::member::fault::{FaultKind, FaultOp, FaultRule, FaultSpec};
use crate::member::volatile::MemberCut;
use crate::volfault::{CacheStatus, ClientStack, WriteCache};

/// The spec of a `fault.add_volume`, checked.
pub fn volume_spec(p: &VolumeFaultAddParams) -> Result<FaultSpec, ControlError> {
    let spec = FaultSpec {
        kind: p.kind,
        op: p.op,
        offset: p.offset,
        length: p.length,
        probability: p.probability.unwrap_or(1.0),
        delay_us: p.delay_us.unwrap_or(0),
        count: p.count,
    };
    check_volume_spec(&spec).map_err(ControlError::InvalidParams)?;
    Ok(spec)
}

/// Why `spec` cannot be a volume rule, in words (also for the config).
pub fn check_volume_spec(spec: &FaultSpec) -> Result<(), String> {
    spec.validate().map_err(|e| e.to_string())?;
    if spec.kind != FaultKind::Delay && spec.delay_us != 0 {
        return Err("delay_us only applies to kind \"delay\"".into());
    }
    let writes_only = matches!(spec.kind, FaultKind::Readonly | FaultKind::Torn);
    if writes_only && spec.op == FaultOp::Read {
        return Err(
            format!("kind {:?} acts on writes: op read never fires", spec.kind).to_lowercase(),
        );
    }
    if spec.kind == FaultKind::BadSector && spec.op == FaultOp::Write {
        return Err("kind \"bad-sector\" fails reads: op write never fires".into());
    }
    if spec.kind == FaultKind::Offline {
        return Err("kind \"offline\" is a member fault: use \"error\" on a volume".into());
    }
    if spec.kind == FaultKind::Volatile {
        return Err(
            "kind \"volatile\" is a member fault: a volume's volatile cache is `vraid set VOL --cache volatile`".into(),
        );
    }
    Ok(())
}

impl VolumeHandle {
    /// Installs a volume rule (checked with [`check_volume_spec`]); returns its id.
    pub fn add_volume_fault(&self, spec: FaultSpec) -> Result<u64, ControlError> {
        check_volume_spec(&spec).map_err(ControlError::InvalidParams)?;
        let size = self.client.device.size();
        if spec.offset.is_some_and(|o| o >= size) {
            return Err(ControlError::InvalidParams(format!(
                "offset {} is beyond the end of {} ({size} bytes): the rule never fires",
                spec.offset.unwrap_or(0),
                self.name
            )));
        }
        let id = NEXT_FAULT_ID.fetch_add(1, Ordering::Relaxed);
        let text = describe(&spec);
        self.client.faults.add(Arc::new(FaultRule::new(id, spec)));
        self.events.push(
            &self.name,
            "fault_added",
            None,
            format!("{}: volume fault {id} added: {text}", self.name),
        );
        Ok(id)
    }

    /// Every volume rule of this volume.
    pub fn volume_faults(&self) -> Vec<VolumeFaultStatus> {
        self.client
            .faults
            .rules()
            .rules()
            .iter()
            .map(|r| VolumeFaultStatus {
                id: r.id,
                volume: self.name.clone(),
                spec: r.spec.clone(),
                hits: r.hits(),
                remaining: r.remaining(),
                active: !r.expired(),
            })
            .collect()
    }

    /// `vraid fault powercut`. With `volatile` member rules the cut is the
    /// members' (the volume cache's unflushed writes die with the process,
    /// which must be killed and restarted: the members stay frozen);
    /// else the volume cache's.
    pub async fn power_cut(&self, p: &PowercutParams) -> Result<PowercutReply, ControlError> {
        let seed = p.seed.unwrap_or_else(clock_seed);
        if self.has_volatile_members() {
            let members = self.member_power_cut(p.keep, seed).await?;
            return Ok(PowercutReply {
                volume: self.name.clone(),
                report: crate::volfault::PowerCutReport {
                    keep: p.keep,
                    seed,
                    ..Default::default()
                },
                members,
            });
        }
        cache_power_cut(&self.name, &self.client, Some(&self.events), p.keep, seed).await
    }

    /// `vraid set VOL --iops N --bps SIZE ...`: replaces the limits the
    /// params name, keeps the others; logs an event.
    pub fn set_qos(
        &self,
        p: &super::params::QosSetParams,
    ) -> Result<crate::qos::QosStatus, ControlError> {
        let qos = &self.client.qos;
        let limits = qos.limits().updated(&p.update());
        qos.set(limits);
        self.events.push(
            &self.name,
            "qos",
            None,
            format!("QoS: {}", limits.describe()),
        );
        Ok(qos.status())
    }

    fn has_volatile_members(&self) -> bool {
        self.members.iter().any(|m| {
            m.faults
                .rules()
                .iter()
                .any(|r| r.spec.kind == FaultKind::Volatile)
        })
    }

    /// The power cut of every member with a `volatile` rule: their
    /// unflushed blocks dropped as `keep` says, then the members frozen.
    async fn member_power_cut(
        &self,
        keep: crate::volfault::KeepPolicy,
        seed: u64,
    ) -> Result<Vec<MemberCut>, ControlError> {
        // All members lose power at once: none takes a write after the
        // first is cut.
        for m in self.members.iter() {
            for rule in m.faults.rules().iter() {
                if rule.spec.kind == FaultKind::Volatile {
                    rule.undo.freeze();
                }
            }
        }
        let mut cuts = Vec::new();
        for m in self.members.iter() {
            for rule in m.faults.rules().iter() {
                if rule.spec.kind != FaultKind::Volatile {
                    continue;
                }
                let rule_seed = seed ^ (m.role as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let mut cut = rule.undo.cut(rule.id, keep, rule_seed).await.map_err(|e| {
                    ControlError::Refused(format!("power cut of member {}: {e}", m.role))
                })?;
                cut.member = m.role;
                cuts.push(cut);
            }
        }
        if !cuts.is_empty() {
            let restored: u64 = cuts.iter().map(|c| c.restored_blocks).sum();
            let text = format!(
                "{}: member power cut: {restored} unflushed member blocks restored to their old contents; members frozen until restart",
                self.name
            );
            self.events.push(&self.name, "member_power_cut", None, text);
        }
        Ok(cuts)
    }

    /// `vraid set VOL --cache MODE --cache-size SIZE`.
    pub async fn set_cache(&self, p: &CacheSetParams) -> Result<CacheStatus, ControlError> {
        set_cache(&self.name, &self.client, Some(&self.events), p).await
    }
}

/// The power cut of the write cache of volume `name` (an array or a pool
/// volume): its unflushed writes dropped as `keep` says; an event in
/// `events`.
async fn cache_power_cut(
    name: &str,
    client: &ClientStack,
    events: Option<&EventLog>,
    keep: crate::volfault::KeepPolicy,
    seed: u64,
) -> Result<PowercutReply, ControlError> {
    let report = client
        .cache
        .power_cut(keep, seed)
        .await
        .map_err(|e| ControlError::Refused(format!("power cut of {name}: {e}")))?;
    if let Some(events) = events {
        events.push(
            name,
            "power_cut",
            None,
            format!(
                "{name}: power cut ({}, seed {seed}): {} unflushed writes ({} bytes) dropped, {} kept",
                super::status::wire_name(&keep),
                report.dropped_writes,
                report.dropped_bytes,
                report.kept_writes
            ),
        );
    }
    Ok(PowercutReply {
        volume: name.to_string(),
        report,
        members: Vec::new(),
    })
}

/// `cache.set` on the client stack of volume `name`; an event in `events`.
async fn set_cache(
    name: &str,
    client: &ClientStack,
    events: Option<&EventLog>,
    p: &CacheSetParams,
) -> Result<CacheStatus, ControlError> {
    let cache = &client.cache;
    let failed = |e: crate::block::BlockError| {
        ControlError::Refused(format!("write-back of the cache of {name}: {e}"))
    };
    if let Some(size) = p.size {
        WriteCache::check_capacity(size).map_err(|e| ControlError::InvalidParams(e.to_string()))?;
        cache.set_capacity(size).await.map_err(failed)?;
    }
    if let Some(mode) = p.mode {
        cache.set_mode(mode).await.map_err(failed)?;
        if let Some(events) = events {
            events.push(
                name,
                "cache_mode",
                None,
                format!("{name}: write cache {}", super::status::wire_name(&mode)),
            );
        }
    }
    Ok(cache.status())
}

/// `cache.set` on an array or a pool volume.
pub async fn cache_set(reg: &Registry, p: &CacheSetParams) -> Result<CacheStatus, ControlError> {
    match reg.client(&p.volume)? {
        (_, Some(vol)) => vol.set_cache(p).await,
        (client, None) => {
            let events = reg.pool_events(&p.volume).await;
            set_cache(&p.volume, &client, events.as_deref(), p).await
        }
    }
}

/// `fault.powercut` on an array or a pool volume (a pool volume's cut is
/// its write cache's: the pool below keeps every write that reached it).
pub async fn power_cut(reg: &Registry, p: &PowercutParams) -> Result<PowercutReply, ControlError> {
    match reg.client(&p.volume)? {
        (_, Some(vol)) => vol.power_cut(p).await,
        (client, None) => {
            let events = reg.pool_events(&p.volume).await;
            let seed = p.seed.unwrap_or_else(clock_seed);
            cache_power_cut(&p.volume, &client, events.as_deref(), p.keep, seed).await
        }
    }
}

/// A seed from the clock, for a power cut given none.
fn clock_seed() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.map_or(1, |d| d.as_nanos() as u64)
}

/// `fault.add_volume`.
pub fn add(reg: &Registry, p: VolumeFaultAddParams) -> Result<VolumeFaultAddReply, ControlError> {
    let spec = volume_spec(&p)?;
    let id = match reg.client(&p.volume)? {
        (_, Some(vol)) => vol.add_volume_fault(spec)?,
        (client, None) => add_to_stack(&p.volume, &client, spec)?,
    };
    Ok(VolumeFaultAddReply {
        id,
        volume: p.volume,
    })
}

/// Installs a volume rule on the client stack of pool volume `name`.
fn add_to_stack(
    name: &str,
    client: &crate::volfault::ClientStack,
    spec: FaultSpec,
) -> Result<u64, ControlError> {
    let size = client.device.size();
    if spec.offset.is_some_and(|o| o >= size) {
        return Err(ControlError::InvalidParams(format!(
            "offset {} is beyond the end of {name} ({size} bytes): the rule never fires",
            spec.offset.unwrap_or(0),
        )));
    }
    let id = NEXT_FAULT_ID.fetch_add(1, Ordering::Relaxed);
    client.faults.add(Arc::new(FaultRule::new(id, spec)));
    Ok(id)
}

/// `qos.set` on an array or a pool volume.
pub fn set_qos(
    reg: &Registry,
    p: &super::params::QosSetParams,
) -> Result<crate::qos::QosStatus, ControlError> {
    match reg.client(&p.volume)? {
        (_, Some(vol)) => vol.set_qos(p),
        (client, None) => {
            let limits = client.qos.limits().updated(&p.update());
            client.qos.set(limits);
            Ok(client.qos.status())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_specs_that_could_never_fire_or_belong_to_members_are_refused() {
        let spec = |kind, op| FaultSpec {
            op,
            ..FaultSpec::new(kind)
        };
        for bad in [
            spec(FaultKind::Offline, FaultOp::Any),
            spec(FaultKind::Torn, FaultOp::Read),
            spec(FaultKind::Readonly, FaultOp::Read),
            spec(FaultKind::BadSector, FaultOp::Write),
            FaultSpec {
                delay_us: 5,
                ..FaultSpec::new(FaultKind::Error)
            },
            FaultSpec {
                probability: -1.0,
                ..FaultSpec::new(FaultKind::Stall)
            },
        ] {
            assert!(check_volume_spec(&bad).is_err(), "{bad:?}");
        }
        for good in [
            spec(FaultKind::Stall, FaultOp::Write),
            spec(FaultKind::BadSector, FaultOp::Read),
            spec(FaultKind::Torn, FaultOp::Any),
            spec(FaultKind::Corrupt, FaultOp::Read),
        ] {
            assert!(check_volume_spec(&good).is_ok(), "{good:?}");
        }
    }
}
