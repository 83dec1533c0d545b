//! The parameters of the control methods, typed on both sides of the
//! socket: the CLI serializes them, the server reads them (unknown keys
//! refused).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::member::fault::{FaultKind, FaultOp};

/// A member given by role number or path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MemberArg {
    /// Its role.
    Role(usize),
    /// Its path (or a role number as text).
    Path(String),
}

/// `status` and `fault.list`: every volume, or one.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeFilter {
    /// Only this volume.
    pub volume: Option<String>,
}

/// `fail` and `remove`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberParams {
    /// Volume.
    pub volume: String,
    /// The member.
    pub member: MemberArg,
}

/// `fault.add`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultAddParams {
    /// Volume.
    pub volume: String,
    /// The member.
    pub member: MemberArg,
    /// What happens.
    pub kind: FaultKind,
    /// Which operations.
    #[serde(default)]
    pub op: FaultOp,
    /// First member data byte affected.
    pub offset: Option<u64>,
    /// Bytes affected from `offset`.
    pub length: Option<u64>,
    /// Chance that a matching operation is hit (default 1).
    pub probability: Option<f64>,
    /// Delay of a `delay` rule, in microseconds.
    pub delay_us: Option<u64>,
    /// Hits after which the rule expires.
    pub count: Option<u64>,
}

/// `fault.clear`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultClearParams {
    /// The rule; `None`: every rule.
    pub id: Option<u64>,
}

/// `add`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddParams {
    /// Volume.
    pub volume: String,
    /// The new member (absolute: the daemon's working directory is not
    /// the CLI's).
    pub path: PathBuf,
    /// Overwrite what the pre-write check finds.
    #[serde(default)]
    pub force: bool,
}

/// `replace`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaceParams {
    /// Volume.
    pub volume: String,
    /// The member replaced.
    pub member: MemberArg,
    /// The new member.
    pub path: PathBuf,
    /// Overwrite what the pre-write check finds.
    #[serde(default)]
    pub force: bool,
}

/// `scrub`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScrubParams {
    /// Volume.
    pub volume: String,
    /// Rewrite bad blocks and mismatches.
    #[serde(default)]
    pub repair: bool,
    /// Stop the running scrub instead.
    #[serde(default)]
    pub cancel: bool,
    /// Reply once it ends, with its result.
    #[serde(default)]
    pub wait: bool,
}

/// `set`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetParams {
    /// Volume.
    pub volume: String,
    /// Rebuild/resync rate limit, MB/s (0: unlimited).
    pub rebuild_max_mbps: u64,
}

/// `mirror.set`: a RAID-1's mirror policies, kept in its superblocks
/// (FORMAT.md §6). Fields left out stay as they are.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorSetParams {
    /// Volume.
    pub volume: String,
    /// The member whose write-mostly policy changes.
    pub member: Option<MemberArg>,
    /// Write-mostly on or off (needs `member`).
    pub write_mostly: Option<bool>,
    /// Write-behind lag bound in bytes; 0 turns write-behind off.
    pub write_behind: Option<u64>,
    /// Write-behind lag bound in requests.
    pub write_behind_requests: Option<u64>,
}

/// `fault.add_volume`: a rule on what a volume's clients see.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeFaultAddParams {
    /// Volume.
    pub volume: String,
    /// What happens.
    pub kind: FaultKind,
    /// Which operations.
    #[serde(default)]
    pub op: FaultOp,
    /// First volume byte affected.
    pub offset: Option<u64>,
    /// Bytes affected from `offset`.
    pub length: Option<u64>,
    /// Chance that a matching operation is hit (default 1).
    pub probability: Option<f64>,
    /// Delay of a `delay` rule, in microseconds.
    pub delay_us: Option<u64>,
    /// Hits after which the rule expires.
    pub count: Option<u64>,
}

/// `fault.powercut`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PowercutParams {
    /// Volume.
    pub volume: String,
    /// Which unflushed writes survive (default: none).
    #[serde(default)]
    pub keep: crate::volfault::KeepPolicy,
    /// Seed of the choice (default: from the clock; the reply names it).
    pub seed: Option<u64>,
}

/// `qos.set`: the QoS limits of a volume, live (absent fields are kept,
/// 0 removes a limit).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QosSetParams {
    /// Volume.
    pub volume: String,
    /// Total IOPS.
    pub iops: Option<u64>,
    /// Read IOPS.
    pub read_iops: Option<u64>,
    /// Write IOPS.
    pub write_iops: Option<u64>,
    /// Total bytes per second.
    pub bps: Option<u64>,
    /// Read bytes per second.
    pub read_bps: Option<u64>,
    /// Write bytes per second.
    pub write_bps: Option<u64>,
    /// Burst, milliseconds of each rate.
    pub burst_ms: Option<u64>,
}

impl QosSetParams {
    /// The change asked for.
    pub fn update(&self) -> crate::qos::QosUpdate {
        crate::qos::QosUpdate {
            iops: self.iops,
            read_iops: self.read_iops,
            write_iops: self.write_iops,
            bps: self.bps,
            read_bps: self.read_bps,
            write_bps: self.write_bps,
            burst_ms: self.burst_ms,
        }
    }
}

/// `cache.set`: the write cache of a volume, live.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSetParams {
    /// Volume.
    pub volume: String,
    /// New mode.
    pub mode: Option<crate::volfault::CacheMode>,
    /// New budget, bytes.
    pub size: Option<u64>,
}
