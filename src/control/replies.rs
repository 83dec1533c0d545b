//! The results of the control methods other than `status` (see
//! [`super::status`]), typed on both sides of the socket: the server
//! serializes them, the CLI reads them back.
//!
//! A key some replies carry and others not is an `Option` skipped when
//! `None`, so the JSON stays as documented.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::status::{FaultStatus, MemberStatusState, ScrubStatus, VolumeState};

/// `fail`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FailReply {
    /// Volume.
    pub volume: String,
    /// The role failed.
    pub member: usize,
    /// Its state now.
    pub state: MemberStatusState,
    /// The volume's state now.
    pub volume_state: VolumeState,
    /// The new member of a replace of `member` that was failed: the
    /// replace stopped, `member` keeps its old member (`null`: a member
    /// was failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_stopped: Option<String>,
}

/// `remove`: a member out of its slot, or an idle hot spare out of the
/// spare list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemoveReply {
    /// Volume.
    pub volume: String,
    /// The spare removed (its path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spare: Option<String>,
    /// True for a spare.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed: Option<bool>,
    /// The role removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<usize>,
    /// Its state now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<MemberStatusState>,
}

/// `fault.add`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultAddReply {
    /// Id for `fault.clear`.
    pub id: u64,
    /// Volume.
    pub volume: String,
    /// Member role.
    pub member: usize,
}

/// `fault.list`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultListReply {
    /// Every member rule.
    pub faults: Vec<FaultStatus>,
    /// Every volume rule.
    #[serde(default)]
    pub volume_faults: Vec<super::status::VolumeFaultStatus>,
}

/// `fault.add_volume`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeFaultAddReply {
    /// Id for `fault.clear`.
    pub id: u64,
    /// Volume.
    pub volume: String,
}

/// `fault.powercut`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowercutReply {
    /// Volume.
    pub volume: String,
    /// What was dropped and kept.
    #[serde(flatten)]
    pub report: crate::volfault::PowerCutReport,
    /// Members with a `volatile` rule: what each lost (then frozen).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<crate::member::volatile::MemberCut>,
}

/// `fault.clear`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultClearReply {
    /// Rules removed.
    pub cleared: usize,
}

/// How `add` used the new member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AddedAs {
    /// Kept as a hot spare.
    Spare,
    /// Rebuilding into a failed or missing role.
    Member,
}

/// `add`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddReply {
    /// The new member.
    pub path: PathBuf,
    /// Spare or member.
    pub added_as: AddedAs,
    /// The role it rebuilds into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<usize>,
    /// True when it rebuilds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuilding: Option<bool>,
}

/// `replace`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplaceReply {
    /// The new member.
    pub path: PathBuf,
    /// The role it replaces.
    pub replacing: usize,
}

/// `set`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetReply {
    /// The rate limit now, MB/s (0: unlimited).
    pub rebuild_max_mbps: u64,
}

/// `mirror.set`: the policies now (as written to the superblocks).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorReply {
    /// Write-mostly roles.
    pub write_mostly: Vec<usize>,
    /// Write-behind lag bound in bytes (absent: off).
    pub write_behind: Option<u64>,
    /// Write-behind lag bound in requests (absent: off).
    pub write_behind_requests: Option<u64>,
}

/// `scrub`: cancelled, started, or (with `wait`) its result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScrubReply {
    /// Volume.
    pub volume: String,
    /// True after `--cancel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled: Option<bool>,
    /// True when started without waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<bool>,
    /// Whether the started scrub repairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair: Option<bool>,
    /// The result of a waited-for scrub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scrub: Option<ScrubStatus>,
}

impl ScrubReply {
    fn base(volume: String) -> ScrubReply {
        ScrubReply {
            volume,
            cancelled: None,
            started: None,
            repair: None,
            scrub: None,
        }
    }

    /// The reply to `--cancel`.
    pub fn cancelled(volume: String) -> ScrubReply {
        ScrubReply {
            cancelled: Some(true),
            ..ScrubReply::base(volume)
        }
    }

    /// The reply to a scrub started without waiting.
    pub fn started(volume: String, repair: bool) -> ScrubReply {
        ScrubReply {
            started: Some(true),
            repair: Some(repair),
            ..ScrubReply::base(volume)
        }
    }

    /// The reply to a waited-for scrub.
    pub fn finished(volume: String, scrub: ScrubStatus) -> ScrubReply {
        ScrubReply {
            scrub: Some(scrub),
            ..ScrubReply::base(volume)
        }
    }
}
