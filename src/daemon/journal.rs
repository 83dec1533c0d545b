//! RAID-5/RAID-6 write-hole protection at bring-up (docs/FORMAT.md §9): replays
//! the partial-parity journal of a run that crashed, decides whether this
//! run keeps one, and starts it once the volume that owns it exists.
//!
//! ```text
//!  replay_and_plan(assembly, &volume) ─► replay the rings of the last epoch
//!      ─► Some(JournalPlan) (windows, encoder) unless off or too small
//!  RingLog::for_volume(plan, weak volume)   (bringup, inside Arc::new_cyclic)
//!  start(log, plan) ─► barriers ─► journal_state valid ─► JoinHook
//! ```

use std::sync::{Arc, Weak};

use tracing::{info, warn};

use super::array::JoinHook;
use super::DaemonError;
use crate::block::{BlockDevice, Window};
use crate::meta::{self, Assembly};
use crate::raid::{Level, MemberIndex, PplRecord, RingLog, Volume};

/// What this run's journal is built from.
pub(super) struct JournalPlan {
    /// Each role's journal window (`None`: no member, or no room).
    pub(super) journals: Vec<Option<Arc<dyn BlockDevice>>>,
    /// The encoder of this run, told about members that join.
    pub(super) encoder: Arc<LiveEncoder>,
}

/// Replays the partial-parity journal of a run that crashed (a RAID-5 or
/// RAID-6 whose last run kept one), then decides this run's: `None` when
/// the array has no parity, protection is off or the journal area is too
/// small (recorded as `journal_state` for the next superblock update).
pub(super) async fn replay_and_plan(
    assembly: &Assembly,
    volume: &Volume,
    enabled: bool,
) -> Result<Option<JournalPlan>, DaemonError> {
    if !matches!(assembly.level, Level::Raid5 | Level::Raid6) {
        return Ok(None);
    }
    let name = &assembly.name;
    // Members that join at assembly (an interrupted rebuild, a re-added
    // member) get a ring too: once in sync they hold parity like the others.
    let joining = joining_members(assembly);
    let journals = journal_windows(assembly, &joining);
    replay(assembly, volume, &journals).await?;
    if !enabled {
        assembly.metadata.set_journal_valid(false).await;
        info!("{name}: write-hole protection is off");
        return Ok(None);
    }
    let encoder = Arc::new(LiveEncoder(std::sync::RwLock::new(
        meta::journal::JournalEncoder {
            array_uuid: assembly.array_uuid,
            members: joining
                .iter()
                .map(|m| m.as_ref().map(|m| m.member_uuid))
                .collect(),
            epoch: assembly.metadata.events().await,
        },
    )));
    let usable = journals
        .iter()
        .all(|j| j.as_ref().is_none_or(|j| j.size() >= 16 << 10));
    if !usable {
        warn!("{name}: journal area too small; write-hole protection is off");
        assembly.metadata.set_journal_valid(false).await;
        return Ok(None);
    }
    Ok(Some(JournalPlan { journals, encoder }))
}

/// Starts this run's journal, attached to its volume: a barrier in every
/// member's ring, then `journal_state` valid. Returns what gives members
/// that join later a ring of their own.
pub(super) async fn start(
    assembly: &Assembly,
    log: &Arc<RingLog>,
    encoder: Arc<LiveEncoder>,
) -> Result<JoinHook, DaemonError> {
    let name = &assembly.name;
    log.write_barriers()
        .await
        .map_err(|e| DaemonError::Usage(format!("{name}: {}", super::error_chain(&e))))?;
    assembly.metadata.set_journal_valid(true).await;
    Ok(join_hook(
        name.clone(),
        assembly.layout,
        encoder,
        Arc::downgrade(log),
    ))
}

/// The journal window of each role's member.
fn journal_windows(
    assembly: &Assembly,
    joining: &[Option<meta::AssembledMember>],
) -> Vec<Option<Arc<dyn BlockDevice>>> {
    let layout = &assembly.layout;
    joining
        .iter()
        .map(|m| {
            let m = m.as_ref()?;
            let w = Window::new(m.device.clone(), layout.journal_offset, layout.journal_len);
            w.ok().map(|w| Arc::new(w) as Arc<dyn BlockDevice>)
        })
        .collect()
}

/// Replays the rings of the members assembled in sync when the last run
/// crashed with a valid journal (not when served read-only).
async fn replay(
    assembly: &Assembly,
    volume: &Volume,
    journals: &[Option<Arc<dyn BlockDevice>>],
) -> Result<(), DaemonError> {
    let name = &assembly.name;
    let replay_journals: Vec<Option<Arc<dyn BlockDevice>>> = journals
        .iter()
        .zip(&assembly.members)
        .map(|(j, m)| m.as_ref().and(j.clone()))
        .collect();
    let read_only = assembly.metadata.is_read_only().await;
    if assembly.was_dirty && assembly.journal_valid && read_only {
        warn!("{name}: read-only: the partial-parity journal is not replayed");
    } else if assembly.was_dirty && assembly.journal_valid {
        let records = read_journals(assembly, &replay_journals).await;
        info!(
            "{name}: replaying the write-hole journal: {} records",
            records.len()
        );
        let stats = crate::raid::ppl::replay(volume, &records)
            .await
            .map_err(|source| DaemonError::Block {
                context: format!("{name}: replaying the partial-parity journal"),
                source,
            })?;
        info!(
            "{name}: replayed {} partial-parity records ({} skipped: a chunk they wrote is missing)",
            stats.replayed, stats.skipped
        );
        if stats.replayed > 0 {
            let what = format!("write hole: {} journal records replayed", stats.replayed);
            super::sync_plan::crash_case(name, 29, &what);
        } else {
            super::sync_plan::crash_case(name, 28, "no durable journal batch to replay");
        }
    } else if assembly.was_dirty && assembly.journal_unvouched {
        warn!(
            "{name}: the RAID-6 journal is not replayed: the last superblock update was by a \
             build without the live-journal flag (the rings may predate its unlogged writes; \
             FORMAT.md §9 case 84)"
        );
        super::sync_plan::crash_case(name, 84, "RAID-6 rings not vouched for: not replayed");
    } else if assembly.was_dirty {
        warn!("{name}: the partial-parity journal was off in the last run; nothing to replay");
    }
    Ok(())
}

/// The journal encoder of this run, told about members that join it.
pub(super) struct LiveEncoder(std::sync::RwLock<meta::journal::JournalEncoder>);

impl crate::raid::ppl::BatchEncoder for LiveEncoder {
    fn encode(
        &self,
        member: MemberIndex,
        seq: u64,
        durable_below: u64,
        records: &[&PplRecord],
    ) -> Vec<u8> {
        let enc = self.0.read().unwrap_or_else(|e| e.into_inner());
        enc.encode(member, seq, durable_below, records)
    }
}

/// Gives a member that takes a role during the run a journal ring of its
/// own, as the members assembled at start-up have (a member re-added with
/// the UUID its ring already has keeps that ring).
fn join_hook(
    name: String,
    layout: meta::MetaLayout,
    encoder: Arc<LiveEncoder>,
    log: Weak<RingLog>,
) -> JoinHook {
    Arc::new(move |role, device, member_uuid| {
        let (name, encoder, log) = (name.clone(), encoder.clone(), log.clone());
        crate::block::BoxFuture::new(async move {
            let Some(log) = log.upgrade() else { return };
            let known = {
                let enc = encoder.0.read().unwrap_or_else(|e| e.into_inner());
                enc.members.get(role).copied().flatten()
            };
            if known == Some(member_uuid) && log.has_ring(MemberIndex(role)) {
                return;
            }
            let window = match Window::new(device, layout.journal_offset, layout.journal_len) {
                Ok(w) => Arc::new(w) as Arc<dyn BlockDevice>,
                Err(e) => {
                    warn!("{name}: member {role} has no room for a journal: {e}");
                    return;
                }
            };
            if let Some(slot) = encoder
                .0
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .members
                .get_mut(role)
            {
                *slot = Some(member_uuid);
            }
            match log.attach_ring(MemberIndex(role), window).await {
                Ok(()) => info!("{name}: member {role} has a journal ring"),
                Err(e) => warn!(
                    "{name}: cannot start the journal of member {role}: {}",
                    super::error_chain(&e)
                ),
            }
        })
    })
}

/// Every role's member in this run: the accepted ones, and the rebuild
/// target or the re-added member that `plan_sync` attaches.
fn joining_members(assembly: &Assembly) -> Vec<Option<meta::AssembledMember>> {
    let mut members = assembly.members.clone();
    let joining = assembly
        .rebuild
        .as_ref()
        .map(|t| (t.role, &t.member))
        .or_else(|| {
            let (role, m) = assembly.readd.first()?;
            assembly.bitmap_valid.then_some((*role, m))
        });
    let also = assembly.rebuild_also.as_ref().map(|t| (t.role, &t.member));
    for (role, m) in joining.into_iter().chain(also) {
        if members[role].is_none() {
            members[role] = Some(m.clone());
        }
    }
    members
}

/// The entries to replay from every accepted member's ring, in log order:
/// only rings of the newest epoch, each the run of consecutive batches
/// ending at its newest (docs/FORMAT.md §9).
async fn read_journals(
    assembly: &Assembly,
    journals: &[Option<Arc<dyn BlockDevice>>],
) -> Vec<(MemberIndex, PplRecord)> {
    let mut rings = Vec::new();
    for (role, (m, j)) in assembly.members.iter().zip(journals).enumerate() {
        let (Some(m), Some(j)) = (m, j) else { continue };
        let mut buf = vec![0u8; j.size() as usize];
        if let Err(e) = j.read(crate::units::ByteOffset(0), &mut buf).await {
            warn!(
                "{}: cannot read the journal of member {role}: {}",
                assembly.name,
                super::error_chain(&e)
            );
            continue;
        }
        let batches = meta::journal::scan_ring(&buf, assembly.array_uuid, m.member_uuid);
        rings.push((role, batches));
    }
    let Some(epoch) = meta::journal::newest_epoch(rings.iter().flat_map(|(_, b)| b)) else {
        return Vec::new();
    };
    let mut records = Vec::new();
    for (role, batches) in &rings {
        for b in meta::journal::replay_set(batches, epoch) {
            records.extend(b.records.iter().map(|r| (MemberIndex(*role), r.clone())));
        }
    }
    records
}
