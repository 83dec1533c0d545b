//! Bringing arrays up and down: creating members and superblocks, assembling
//! a volume from member paths, and persisting member failures the RAID layer
//! reports (the [`MetaEvents`] bridge from `raid` back to `meta`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, Weak};

use tracing::{info, warn};

use super::{show_path, DaemonError};
use crate::block::{BlockDevice, BlockError, BoxFuture};
use crate::cli::EngineArg;
use crate::control::{EventLog, MemberHandle, VolumeHandle};
use crate::member::fault::FaultDevice;
use crate::member::{self, EngineKind, MemberOptions};
use crate::meta::{self, ArrayMetadata, Assembly, CreateSpec};
use crate::metrics::stats::{IoStats, StatsDevice};
use crate::raid::{ChunkSize, Geometry, Level, MemberIndex, RaidError, Volume, VolumeEvents};

/// What `vraid create` (or a config's `create` table, or the demo) asks for.
#[derive(Clone, Debug)]
pub struct CreateRequest {
    /// Array name.
    pub name: String,
    /// RAID level.
    pub level: Level,
    /// Chunk size in bytes.
    pub chunk_size: u64,
    /// Size of member files created because they are missing.
    pub member_size: u64,
    /// Overwrite existing vraid members.
    pub force: bool,
}

/// Member options from the CLI flag, else `VRAID_IO_ENGINE`, else auto.
pub fn member_options(engine: Option<EngineArg>) -> MemberOptions {
    let engine = match engine {
        Some(EngineArg::Auto) => EngineKind::Auto,
        Some(EngineArg::Uring) => EngineKind::Uring,
        Some(EngineArg::Sync) => EngineKind::Sync,
        None => EngineKind::from_env(),
    };
    engine_options(engine)
}

/// Member options for an engine choice.
pub fn engine_options(engine: EngineKind) -> MemberOptions {
    MemberOptions {
        engine,
        ..MemberOptions::default()
    }
}

/// Creates missing member files (sparse) and writes a new array's superblocks.
pub async fn create_array(
    paths: &[PathBuf],
    req: &CreateRequest,
    opts: &MemberOptions,
) -> Result<meta::ArrayInfo, DaemonError> {
    if paths.len() < req.level.min_members() {
        return Err(DaemonError::Usage(format!(
            "{} needs at least {} members, got {}",
            req.level,
            req.level.min_members(),
            paths.len()
        )));
    }
    for (i, p) in paths.iter().enumerate() {
        if paths[..i].contains(p) {
            return Err(DaemonError::Usage(format!(
                "member {} is given twice",
                show_path(p)
            )));
        }
    }
    validate_create(req)?;
    let mut created = Vec::new();
    let result = create_members(paths, req, opts, &mut created).await;
    if result.is_err() {
        // Leave nothing behind from a create that failed.
        for p in created {
            let _ = std::fs::remove_file(p);
        }
    }
    result
}

/// Checks what can be checked before any file is touched.
fn validate_create(req: &CreateRequest) -> Result<(), DaemonError> {
    if !meta::layout::valid_name(&req.name) {
        return Err(DaemonError::Usage(format!(
            "invalid array name {:?}: use 1-64 of A-Z a-z 0-9 . _ -",
            req.name
        )));
    }
    if !meta::layout::valid_chunk_size(req.chunk_size) {
        return Err(DaemonError::Usage(format!(
            "invalid chunk size {}: must be a power of two from 4K to 16M",
            crate::units::format_size(req.chunk_size)
        )));
    }
    let fits =
        meta::metadata_layout(req.member_size).is_some_and(|l| l.data_size >= req.chunk_size);
    if !fits {
        return Err(DaemonError::Usage(format!(
            "member size {} is too small: it must hold the metadata area and at least one chunk",
            crate::units::format_size(req.member_size)
        )));
    }
    Ok(())
}

async fn create_members(
    paths: &[PathBuf],
    req: &CreateRequest,
    opts: &MemberOptions,
    created: &mut Vec<PathBuf>,
) -> Result<meta::ArrayInfo, DaemonError> {
    let mut devices: Vec<Arc<dyn BlockDevice>> = Vec::with_capacity(paths.len());
    for p in paths {
        if !p.exists() {
            if let Some(parent) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| {
                    DaemonError::Usage(format!(
                        "cannot create directory {} for member {}: {e}",
                        show_path(parent),
                        show_path(p)
                    ))
                })?;
            }
            member::create_sparse(p, req.member_size)?;
            created.push(p.clone());
        }
        devices.push(member::open_member(p, opts)?);
    }
    let spec = CreateSpec {
        name: req.name.clone(),
        level: req.level,
        chunk_size: req.chunk_size,
        force: req.force,
    };
    Ok(meta::create_array(&devices, &spec).await?)
}

/// `vraid examine` of one member.
pub async fn examine_member(path: &Path) -> Result<meta::ExamineReport, DaemonError> {
    let opts = MemberOptions {
        exclusive: false,
        ..MemberOptions::default()
    };
    let dev = member::open_member(path, &opts)?;
    Ok(meta::examine(&*dev).await?)
}

/// One assembled, running array.
pub struct Assembled {
    /// The RAID volume.
    pub volume: Arc<Volume>,
    /// Its on-disk metadata.
    pub assembly: Arc<Assembly>,
    /// Its control-plane handle (fault rules, counters, events).
    pub handle: Arc<VolumeHandle>,
}

impl std::fmt::Debug for Assembled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assembled")
            .field("name", &self.assembly.name)
            .finish()
    }
}

/// Opens the members that exist, assembles them from their superblocks,
/// builds the volume and marks the array dirty (in use).
pub async fn assemble_volume(
    paths: &[PathBuf],
    opts: &MemberOptions,
) -> Result<Assembled, DaemonError> {
    let mut devices = Vec::with_capacity(paths.len());
    for p in paths {
        match member::open_member(p, opts) {
            Ok(dev) => devices.push((show_path(p), dev as Arc<dyn BlockDevice>)),
            Err(e) if !p.exists() => {
                warn!(
                    "member {} is missing: {}",
                    show_path(p),
                    super::error_chain(&e)
                );
            }
            Err(e) => return Err(e.into()),
        }
    }
    let assembly = Arc::new(meta::assemble(devices).await?);
    let handles = member_handles(&assembly);
    // Each member's data window sits behind its fault rules and counters:
    // Volume ─► StatsDevice ─► FaultDevice ─► Window.
    let members: Vec<Option<Arc<dyn BlockDevice>>> = assembly
        .members
        .iter()
        .zip(&handles)
        .map(|(m, h)| {
            m.as_ref().map(|m| {
                let window = Arc::new(m.data.clone()) as Arc<dyn BlockDevice>;
                let seed = 0x5eed_0000 + h.role as u64;
                let faulty = Arc::new(FaultDevice::new(window, h.faults.clone(), seed));
                Arc::new(StatsDevice::new(faulty, h.stats.clone())) as Arc<dyn BlockDevice>
            })
        })
        .collect();
    let name = assembly.name.clone();
    let raid_err = |source| DaemonError::Raid {
        name: name.clone(),
        source,
    };
    let chunk = ChunkSize::new(u64::from(assembly.chunk_size))
        .map_err(|e| raid_err(RaidError::Layout(e)))?;
    let geometry = Geometry::new(
        assembly.level,
        assembly.member_count as usize,
        chunk,
        assembly.data_size,
    )
    .map_err(|e| raid_err(RaidError::Layout(e)))?;
    let log = Arc::new(EventLog::new());
    let events = Arc::new(MetaEvents {
        name: name.clone(),
        metadata: assembly.metadata.clone(),
        log: log.clone(),
        volume: OnceLock::new(),
    });
    let volume =
        Arc::new(Volume::new(name.clone(), geometry, members, events.clone()).map_err(raid_err)?);
    let _ = events.volume.set(Arc::downgrade(&volume));
    let handle = Arc::new(VolumeHandle::new(
        volume.clone(),
        assembly.metadata.clone(),
        IoStats::new(),
        handles,
        log,
    ));
    for ex in &assembly.excluded {
        warn!("{name}: left out {}: {}", ex.path, ex.reason);
    }
    assembly.mark_dirty().await?;
    if assembly.was_dirty && assembly.level != Level::Raid0 {
        warn!(
            "{name} was not shut down cleanly; \
             redundancy of regions written at the crash is not resynced yet"
        );
    }
    let missing = volume
        .member_states()
        .iter()
        .filter(|s| !matches!(s, crate::raid::MemberState::Active))
        .count();
    if missing > 0 {
        warn!(
            "{name}: running degraded, {missing} of {} members missing",
            assembly.member_count
        );
    }
    info!(
        "assembled {name}: {}, {} members, chunk {}, {} bytes",
        assembly.level,
        assembly.member_count,
        crate::units::format_size(u64::from(assembly.chunk_size)),
        volume.size()
    );
    Ok(Assembled {
        volume,
        assembly,
        handle,
    })
}

/// Control-plane handles of every member slot, with the path given at
/// start-up (of a left-out member too, when its role is known).
fn member_handles(assembly: &Assembly) -> Vec<MemberHandle> {
    (0..assembly.member_count as usize)
        .map(|role| {
            let path = match assembly.members.get(role) {
                Some(Some(m)) => Some(m.path.clone()),
                _ => assembly
                    .excluded
                    .iter()
                    .find(|e| e.role == Some(role as u32))
                    .map(|e| e.path.clone()),
            };
            MemberHandle::new(role, path)
        })
        .collect()
}

/// Persists member failures the RAID layer reports into the other members'
/// superblocks (event counter bumped), so the failed member is not trusted
/// at the next assembly.
struct MetaEvents {
    name: String,
    metadata: Arc<ArrayMetadata>,
    /// Where operational events go (shown by `vraid status`).
    log: Arc<EventLog>,
    /// The volume, to tell degraded from failed (weak: it owns us).
    volume: OnceLock<Weak<Volume>>,
}

impl VolumeEvents for MetaEvents {
    fn member_failed(&self, member: MemberIndex, error: &BlockError) -> BoxFuture<'_, ()> {
        let reason = super::error_chain(error);
        Box::pin(async move {
            warn!(
                "{}: member {} failed ({reason}); continuing degraded",
                self.name, member.0
            );
            if let Err(e) = self.metadata.record_member_failed(member.0).await {
                warn!(
                    "{}: could not record the failure of member {} in the superblocks: {}",
                    self.name,
                    member.0,
                    super::error_chain(&e)
                );
            }
            self.log.push(
                &self.name,
                "member_failed",
                Some(member.0),
                format!("{}: member {} failed: {reason}", self.name, member.0),
            );
            if let Some(vol) = self.volume.get().and_then(Weak::upgrade) {
                let down = vol
                    .member_states()
                    .iter()
                    .filter(|s| !matches!(s, crate::raid::MemberState::Active))
                    .count();
                let level = vol.geometry().level();
                let members = vol.geometry().members();
                let (kind, what) = if down > level.redundancy(members) {
                    ("failed", "FAILED: some data is unavailable")
                } else {
                    ("degraded", "degraded")
                };
                self.log.push(
                    &self.name,
                    kind,
                    None,
                    format!("{}: {what} ({down} of {members} members down)", self.name),
                );
            }
        })
    }
}
