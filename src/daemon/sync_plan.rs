//! What an array does first after assembly, decided from its superblocks
//! and bitmap: the crash resync (dirty ranges) and the pass to resume or
//! start: an interrupted rebuild or replace from its checkpoint, else a
//! re-added member's recovery from the bitmap.
//!
//! ```text
//!  was dirty? ─► resync the bitmap's dirty ranges (all when it is not trusted)
//!  rebuild record? ─► resume_rebuild   (from min(checkpoint, first dirty range))
//!  replace record? ─► resume_replace   (same)
//!  re-added member + trusted bitmap? ─► recover_readded (dirty ranges only)
//! ```

use std::sync::Arc;

use tracing::info;

use super::array::{JoinHook, MemberWrap, PlannedRebuild};
use super::DaemonError;
use crate::meta::{Assembly, DiskBitmap, RebuildTarget};
use crate::raid::{Level, MemberIndex, Volume};

/// Member ranges to resync, or `None`.
pub(super) type Ranges = Option<Vec<(u64, u64)>>;

/// Logs which docs/FORMAT.md crash case the recovery of an array takes,
/// in one fixed form (`recovery: FORMAT.md crash case N: ...`) that the
/// power-cut tests collect.
pub(super) fn crash_case(name: &str, case: u32, what: &str) {
    info!("{name}: recovery: FORMAT.md crash case {case}: {what}");
}

/// Names the crash case of the resync `plan_sync` decided.
fn name_resync_case(assembly: &Assembly, bitmap: Option<&DiskBitmap>, resync: &Ranges) {
    let (name, Some(ranges)) = (&assembly.name, resync) else {
        return;
    };
    let bytes: u64 = ranges.iter().map(|(a, b)| b - a).sum();
    match bitmap {
        Some(_) if !assembly.bitmap_valid => crash_case(name, 15, "bitmap not kept: whole resync"),
        None => crash_case(name, 15, "no bitmap: resync of the whole array"),
        Some(_) if ranges.is_empty() => {
            crash_case(name, 11, "dirty, no bitmap bit set: nothing to resync")
        }
        Some(_) => crash_case(
            name,
            12,
            &format!(
                "bitmap bits durable: resync of {} ranges, {bytes} bytes",
                ranges.len()
            ),
        ),
    }
}

/// Decides the crash resync (dirty ranges) and the rebuild to run: an
/// interrupted one resumes from its checkpoint (from the first dirty range
/// below it after a crash), else a re-added member recovers from the bitmap.
/// Attaches the rebuild target to `volume`.
pub(super) async fn plan_sync(
    assembly: &Assembly,
    volume: &Volume,
    bitmap: Option<&DiskBitmap>,
    wrap: &MemberWrap,
    checksums: bool,
    joined: Option<&JoinHook>,
) -> Result<(Ranges, Option<PlannedRebuild>), DaemonError> {
    let resync = crash_resync(assembly, bitmap, checksums);
    name_resync_case(assembly, bitmap, &resync);
    if checksums && resync.as_ref().is_some_and(|r| !r.is_empty()) {
        crash_case(
            &assembly.name,
            22,
            "dirty regions pinned, resealed by the resync",
        );
    }
    let rebuild = if let Some(t) = &assembly.rebuild {
        let mut planned = resume_rebuild(assembly, t, volume, bitmap, wrap, &resync)?;
        if let Some(t) = &assembly.rebuild_also {
            planned.also = Some(resume_rebuild(assembly, t, volume, bitmap, wrap, &resync)?.role);
        }
        Some(planned)
    } else if let Some(t) = &assembly.replace {
        Some(resume_replace(assembly, t, volume, wrap, &resync)?)
    } else {
        recover_readded(assembly, volume, bitmap, wrap, joined).await?
    };
    Ok((resync, rebuild))
}

/// The ranges a crash resync rewrites: the bitmap's dirty ranges (all of
/// them when it is not trusted), the whole array without a bitmap; none
/// after a clean shutdown, nor for RAID-0 without block checksums.
fn crash_resync(assembly: &Assembly, bitmap: Option<&DiskBitmap>, checksums: bool) -> Ranges {
    // RAID-0 has nothing to resync, except its block checksums.
    let resyncs = assembly.level != Level::Raid0 || checksums;
    (assembly.was_dirty && resyncs).then(|| {
        if let Some(b) = bitmap {
            if !assembly.bitmap_valid {
                b.set_all();
            }
        }
        bitmap.map_or(vec![(0, assembly.data_size)], |b| b.dirty_ranges())
    })
}

/// Where an interrupted pass resumes: its checkpoint, or the first range
/// the crash resync rewrites below it.
fn resume_point(checkpoint: u64, resync: &Ranges) -> u64 {
    resync
        .iter()
        .flatten()
        .map(|&(a, _)| a)
        .fold(checkpoint, u64::min)
}

fn rebuild_err(assembly: &Assembly) -> impl Fn(crate::raid::RebuildError) -> DaemonError + '_ {
    move |e| DaemonError::Usage(format!("{}: {e}", assembly.name))
}

/// Resumes the rebuild (or bitmap recovery) recorded in the superblocks.
fn resume_rebuild(
    assembly: &Assembly,
    t: &RebuildTarget,
    volume: &Volume,
    bitmap: Option<&DiskBitmap>,
    wrap: &MemberWrap,
    resync: &Ranges,
) -> Result<PlannedRebuild, DaemonError> {
    let up_to = resume_point(t.up_to, resync);
    let trusted = bitmap.filter(|_| assembly.bitmap_valid);
    let only = t
        .recovering
        .then(|| trusted.map_or(vec![(0, assembly.data_size)], |b| b.dirty_ranges()));
    let window = Arc::new(t.member.data.clone());
    let target = wrap(t.role, t.member.device.clone(), window, !t.recovering);
    volume
        .attach_rebuild_target(MemberIndex(t.role), target, up_to)
        .map_err(rebuild_err(assembly))?;
    info!(
        "{}: resuming the {} of member {} at {up_to}",
        assembly.name,
        if t.recovering { "recovery" } else { "rebuild" },
        t.role
    );
    let what = format!(
        "rebuild of member {} resumed at {up_to} (checkpoint {})",
        t.role, t.up_to
    );
    crash_case(&assembly.name, 16, &what);
    Ok(PlannedRebuild {
        role: t.role,
        also: None,
        only,
        replace: None,
    })
}

/// Resumes the replace recorded in the superblocks.
fn resume_replace(
    assembly: &Assembly,
    t: &RebuildTarget,
    volume: &Volume,
    wrap: &MemberWrap,
    resync: &Ranges,
) -> Result<PlannedRebuild, DaemonError> {
    let up_to = resume_point(t.up_to, resync);
    let window = Arc::new(t.member.data.clone());
    let target = wrap(t.role, t.member.device.clone(), window, true);
    volume
        .attach_rebuild_target(MemberIndex(t.role), target, up_to)
        .map_err(rebuild_err(assembly))?;
    info!(
        "{}: resuming the replace of member {} onto {} at {up_to}",
        assembly.name, t.role, t.member.path
    );
    crash_case(&assembly.name, 18, &format!("replace resumed at {up_to}"));
    Ok(PlannedRebuild {
        role: t.role,
        also: None,
        only: None,
        replace: Some(t.member.path.clone()),
    })
}

/// Starts the recovery of a re-added member from a trusted bitmap: only
/// its dirty ranges are copied.
async fn recover_readded(
    assembly: &Assembly,
    volume: &Volume,
    bitmap: Option<&DiskBitmap>,
    wrap: &MemberWrap,
    joined: Option<&JoinHook>,
) -> Result<Option<PlannedRebuild>, DaemonError> {
    let trusted = bitmap.filter(|_| assembly.bitmap_valid);
    let (Some(b), Some((role, m))) = (trusted, assembly.readd.first()) else {
        return Ok(None);
    };
    let ranges = b.dirty_ranges();
    let target = wrap(*role, m.device.clone(), Arc::new(m.data.clone()), false);
    volume
        .attach_rebuild_target(MemberIndex(*role), target, 0)
        .map_err(rebuild_err(assembly))?;
    if let Err(e) = assembly
        .metadata
        .begin_rebuild(
            *role,
            m.device.clone(),
            m.member_uuid,
            crate::meta::Joining::Recovery,
        )
        .await
    {
        volume.detach_rebuild_target(MemberIndex(*role));
        return Err(e.into());
    }
    if let Some(joined) = joined {
        joined(*role, m.device.clone(), m.member_uuid).await;
    }
    info!(
        "{}: re-adding {} as member {role}: catching up {} dirty bytes from the bitmap",
        assembly.name,
        m.path,
        ranges.iter().map(|(a, b)| b - a).sum::<u64>()
    );
    Ok(Some(PlannedRebuild {
        role: *role,
        also: None,
        only: Some(ranges),
        replace: None,
    }))
}
