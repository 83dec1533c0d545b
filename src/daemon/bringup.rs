//! Bringing arrays up and down: creating members and superblocks, assembling
//! a volume from member paths, and persisting member failures the RAID layer
//! reports (the [`MetaEvents`] bridge from `raid` back to `meta`).
//!
//! An array is built in dependency order, each part given what it needs
//! when it is made (nothing is patched in afterwards):
//!
//! ```text
//!  members ─► meta::assemble ─► bitmap (+ checksum write-back before clears)
//!   ─► checksums ─► members wrapped (faults, checksums, counters) ─► Volume
//!   ─► journal replay ─► Arc<Volume> (its journal holds a Weak of it: new_cyclic)
//!   ─► journal barriers ─► sync plan ─► ArrayHandle ─► VolumeHandle (engine)
//!   ─► supervisor started
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tracing::{info, warn};

use super::array::{ArrayHandle, ArrayOptions, ArrayParts, PlannedRebuild, Spare, Startup};
use super::array::{JoinHook, MemberWrap};
use super::{journal, show_path, sync_plan, DaemonError};
use crate::block::{BlockDevice, BlockError, BoxFuture, Window};
use crate::control::{EventLog, MemberHandle, MemberSlots, VolumeHandle};
use crate::integrity::{Checksums, InlineDevice};
use crate::member::fault::{FaultDevice, FaultKind};
use crate::member::power_gate::PowerGate;
use crate::member::{self, EngineKind, MemberOptions};
use crate::meta::layout::ChecksumLayout;
use crate::meta::{self, ArrayMetadata, Assembly, CreateSpec, DiskBitmap, WrittenMap};
use crate::metrics::stats::{IoStats, StatsDevice};
use crate::raid::{
    ChunkSize, Geometry, Level, MemberIndex, RaidError, RingLog, Volume, VolumeEvents,
};

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
    /// Where the block checksums live (FORMAT.md §8).
    pub checksum_layout: ChecksumLayout,
}

/// Member options from the CLI flag, else `VRAID_IO_ENGINE`, else auto.
pub fn member_options(engine: Option<EngineKind>) -> MemberOptions {
    engine_options(engine.unwrap_or_else(EngineKind::from_env))
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
        if crate::remote::is_nbd_uri(p) {
            devices.push(crate::remote::open(p, opts)?);
            continue;
        }
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
        let device = member::open_member(p, opts)?;
        if req.checksum_layout == ChecksumLayout::Inline && device.is_direct() {
            inline_fits(p, device.block_size())?;
        }
        devices.push(device);
    }
    let spec = CreateSpec {
        name: req.name.clone(),
        level: req.level,
        chunk_size: req.chunk_size,
        force: req.force,
    };
    Ok(meta::create_array_with(&devices, &spec, req.checksum_layout).await?)
}

/// The inline layout writes 512-byte tag sectors: a member must take
/// 512-byte I/O (FORMAT.md §8 "Inline layout", "Alignment").
fn inline_fits(path: &Path, block_size: u64) -> Result<(), DaemonError> {
    if block_size <= crate::integrity::tag::TAG {
        return Ok(());
    }
    Err(DaemonError::Usage(format!(
        "member {} has {block_size}-byte logical sectors: the inline checksum layout needs \
         members with 512-byte logical sectors (it writes a 512-byte tag after each 4 KiB \
         block); use --checksum-layout separate",
        show_path(path)
    )))
}

/// `vraid examine` of one member.
pub async fn examine_member(path: &Path) -> Result<Examined, DaemonError> {
    let opts = MemberOptions {
        exclusive: false,
        read_only: true,
        ..MemberOptions::default()
    };
    if crate::remote::is_nbd_uri(path) {
        let dev = crate::remote::open(path, &opts)?;
        let report = meta::examine(&*dev).await?;
        return Ok(Examined::Member(Box::new(report)));
    }
    let dev = member::open_member(path, &opts)?;
    let busy = member::claim::in_use_elsewhere(path).ok();
    match meta::examine(&*dev).await {
        Ok(mut report) => {
            report.in_use_elsewhere = busy;
            Ok(Examined::Member(Box::new(report)))
        }
        Err(meta::MetaError::Superblock { .. }) => {
            let md_error = match super::md::examine(&*dev).await {
                Ok(Some(md)) => return Ok(Examined::Md(Box::new(md))),
                Ok(None) => None,
                Err(e) => Some(e),
            };
            let mut report = meta::ForeignReport::probe(&*dev).await?;
            report.md_error = md_error;
            report.in_use_elsewhere = busy;
            Ok(Examined::Foreign(report))
        }
        Err(e) => Err(e.into()),
    }
}

/// What `vraid examine` found on a device.
pub enum Examined {
    /// A vraid member (or spare).
    Member(Box<meta::ExamineReport>),
    /// No vraid superblock: what the pre-write check sees instead.
    Foreign(meta::ForeignReport),
    /// A Linux md member.
    Md(Box<crate::md::MdReport>),
}

/// One assembled, running array.
pub struct Assembled {
    /// The RAID volume.
    pub volume: Arc<Volume>,
    /// Its on-disk metadata.
    pub assembly: Arc<Assembly>,
    /// Its control-plane handle (fault rules, counters, events).
    pub handle: Arc<VolumeHandle>,
    /// Its operations (resync, rebuild, spares, rate limit).
    pub array: Arc<ArrayHandle>,
    /// Its members' block checksums, when on (written back at shutdown).
    pub checksums: Option<Arc<Checksums>>,
}

impl std::fmt::Debug for Assembled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assembled")
            .field("name", &self.assembly.name)
            .finish()
    }
}

/// Opens the members that exist, assembles them from their superblocks,
/// builds the volume and marks the array dirty (in use). With spares,
/// bitmap and rebuild settings; also plans
/// and starts the crash resync, an interrupted rebuild or a bitmap
/// recovery, and hot-spare activation.
///
/// Built in dependency order: members ─► metadata ─► bitmap ─► checksums
/// ─► volume (journal replay, then its journal) ─► sync plan ─► array
/// handle ─► control-plane handle ─► supervisor started.
pub async fn assemble_volume_with(
    paths: &[PathBuf],
    opts: &MemberOptions,
    aopts: &ArrayOptions,
) -> Result<Assembled, DaemonError> {
    let (opts, aopts) = effective_options(opts, aopts);
    let (mut devices, granules, absent) = open_present_members(paths, &opts)?;
    arm_volatile(paths, &devices, &aopts.armed_faults);
    let spares = open_spares(&aopts, &opts, &mut devices).await?;
    let force = meta::AssembleOptions {
        force: aopts.force_assemble,
    };
    let assembly = Arc::new(meta::assemble_with(devices, force).await?);
    if assembly.checksum_layout == ChecksumLayout::Inline {
        for (p, granule) in &granules {
            inline_fits(p, *granule)?;
        }
    }
    prepare_metadata(&assembly, &aopts).await?;
    let slots = MemberSlots::from(member_handles(&assembly));
    let log = Arc::new(EventLog::new());
    let (notify, failures) = tokio::sync::mpsc::unbounded_channel();
    let events = Arc::new(MetaEvents::new(&assembly, log.clone(), notify));
    let built = build_volume(&assembly, &aopts, &slots, events).await?;
    super::mirror_policy::apply(
        &built.volume,
        &assembly.metadata,
        &member_paths_by_role(&assembly),
        &aopts,
        built.bitmap.is_some(),
    )
    .await?;
    report_left_out(&assembly, &log);
    let plan = plan_startup(&assembly, &aopts, &built).await?;
    arm_bitmap(&assembly, built.bitmap.as_ref(), &plan).await?;
    assembly.mark_dirty().await?;
    warn_unclean(&assembly, &aopts, built.bitmap.is_some());
    let startup = Startup {
        resync: plan.resync,
        rebuild: plan.rebuild,
        failures,
        absent,
    };
    let parts = ArrayParts {
        volume: built.volume.clone(),
        metadata: assembly.metadata.clone(),
        bitmap: built.bitmap,
        data_offset: assembly.data_offset,
        data_size: assembly.data_size,
        spares,
        paths: member_paths_by_role(&assembly),
        max_mbps: aopts.rebuild_max_mbps,
        opts,
        scrub_interval: aopts.scrub_interval,
        scrub_repair: aopts.scrub_repair,
        events: log.clone(),
        wrap: built.wrap,
        joined: built.joined,
        auto_rejoin: aopts.mirror.auto_rejoin,
    };
    let array = ArrayHandle::new(parts, &startup);
    let engine = Arc::new(super::engine_ops::ArrayEngine(array.clone()));
    let handle = Arc::new(VolumeHandle::new(
        built.volume.clone(),
        assembly.metadata.clone(),
        IoStats::new(),
        slots,
        log,
        Some(engine),
    ));
    array.start(startup);
    report_assembled(&assembly, &built.volume);
    Ok(Assembled {
        volume: built.volume,
        assembly,
        handle,
        array,
        checksums: built.checksums.map(|c| c.set),
    })
}

/// The options a run actually uses: as asked, or with everything that
/// writes to members off when served read-only.
fn effective_options(opts: &MemberOptions, aopts: &ArrayOptions) -> (MemberOptions, ArrayOptions) {
    if !aopts.read_only {
        return (*opts, aopts.clone());
    }
    if !aopts.spares.is_empty() {
        warn!("read-only: hot spares are not used");
    }
    let member_opts = MemberOptions {
        read_only: true,
        ..*opts
    };
    (member_opts, super::read_only::options(aopts))
}

/// A member device with the path it was opened by.
type NamedDevice = (String, Arc<dyn BlockDevice>);

/// The O_DIRECT granule of each member opened for direct I/O (the inline
/// layout needs 512).
type Granules = Vec<(PathBuf, u64)>;

/// Opens the members given; a missing file or an unreachable remote member
/// is left out (assembly decides whether the array can run without it; the
/// remote ones are returned last, for `auto_rejoin`), any other failure is
/// an error.
fn open_present_members(
    paths: &[PathBuf],
    opts: &MemberOptions,
) -> Result<(Vec<NamedDevice>, Granules, Vec<PathBuf>), DaemonError> {
    let mut devices = Vec::with_capacity(paths.len());
    let mut granules = Vec::new();
    let mut absent = Vec::new();
    for p in paths {
        if crate::remote::is_nbd_uri(p) {
            match crate::remote::open(p, opts) {
                Ok(dev) => devices.push((show_path(p), PowerGate::wrap(dev))),
                // Unreachable at start: assembly treats it as missing.
                Err(e) => {
                    warn!(
                        "member {} is unreachable: {}",
                        show_path(p),
                        super::error_chain(&e)
                    );
                    absent.push(p.clone());
                }
            }
            continue;
        }
        match member::open_member(p, opts) {
            Ok(dev) => {
                if dev.is_direct() {
                    granules.push((p.clone(), dev.block_size()));
                }
                devices.push((show_path(p), PowerGate::wrap(dev)))
            }
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
    Ok((devices, granules, absent))
}

/// Arms the config's member `volatile` rules on the power gates of the
/// members just opened, before anything is written to them
/// (`member::power_gate`). A rule names its member by path or by role
/// number, taken here as the position in `members` (a created array's
/// roles); a missing member is left to the start-up fault check.
fn arm_volatile(paths: &[PathBuf], devices: &[NamedDevice], faults: &[crate::config::FaultConfig]) {
    let volatile = faults.iter().filter(|f| f.spec.kind == FaultKind::Volatile);
    for f in volatile {
        let path = match f.member.parse::<usize>() {
            Ok(n) => paths.get(n),
            Err(_) => paths
                .iter()
                .find(|p| show_path(p) == f.member || p.as_path() == Path::new(&f.member)),
        };
        let Some(name) = path.map(|p| show_path(p)) else {
            continue;
        };
        let gate = devices.iter().find(|(n, _)| *n == name);
        if let Some(gate) = gate.and_then(|(_, d)| d.power_gate()) {
            gate.arm(crate::control::handle::next_fault_id(), f.spec.clone());
        }
    }
}

/// Before anything could write: a read-only run keeps every update in
/// memory (and refuses what it cannot serve); a read-write run reserves
/// the metadata areas. Block checksums need the bitmap.
async fn prepare_metadata(assembly: &Assembly, aopts: &ArrayOptions) -> Result<(), DaemonError> {
    if aopts.read_only {
        assembly.metadata.set_read_only().await;
        super::read_only::servable(assembly)?;
        info!(
            "{}: read-only: members are opened O_RDONLY and not written",
            assembly.name
        );
    } else {
        reserve_metadata(assembly).await;
    }
    if aopts.checksums && !aopts.bitmap {
        return Err(DaemonError::Usage(format!(
            "{}: block checksums need the write-intent bitmap; turn checksums off or the bitmap on",
            assembly.name
        )));
    }
    Ok(())
}

/// The volume and what was built with it.
struct BuiltVolume {
    volume: Arc<Volume>,
    bitmap: Option<Arc<DiskBitmap>>,
    checksums: Option<CsumWiring>,
    /// Wraps members that join later as the assembled ones are.
    wrap: MemberWrap,
    /// Gives members that join later a journal ring.
    joined: Option<JoinHook>,
}

/// Builds the volume in dependency order: geometry, bitmap, block
/// checksums, members wrapped, the volume, the journal replay, then the
/// volume with its journal and bitmap attached.
async fn build_volume(
    assembly: &Assembly,
    aopts: &ArrayOptions,
    slots: &MemberSlots,
    events: Arc<MetaEvents>,
) -> Result<BuiltVolume, DaemonError> {
    let name = assembly.name.clone();
    let raid_err = |source| DaemonError::Raid {
        name: name.clone(),
        source,
    };
    let geometry = geometry_of(assembly).map_err(raid_err)?;
    let set = aopts
        .checksums
        .then(|| Checksums::with_cache(aopts.checksum_cache));
    let written = load_written(assembly, aopts.read_only).await;
    let bitmap = load_bitmap(assembly, aopts, set.as_ref(), written.as_ref()).await;
    assembly.metadata.set_bitmap_enabled(bitmap.is_some()).await;
    if let Some(w) = written
        .as_ref()
        .filter(|_| bitmap.is_none() && !aopts.read_only)
    {
        untracked_run(assembly, w).await?;
    }
    let csum = set.zip(bitmap.clone()).map(|(set, bitmap)| CsumWiring {
        set,
        offset: assembly.layout.csum_offset,
        bitmap,
        verifying: Arc::new(AtomicBool::new(false)),
    });
    // Inline layout: the members' data areas interleave tags, checksums on
    // or off (off: tags are still written, reads are not verified).
    let inline = (assembly.checksum_layout == ChecksumLayout::Inline)
        .then_some((assembly.data_offset, assembly.data_size));
    let wrap = member_wrap(slots.clone(), csum.clone(), inline);
    let members = wrap_assembled(assembly, &wrap);
    let mut volume = Volume::new(name.clone(), geometry, members, events).map_err(raid_err)?;
    if let Some(w) = &written {
        volume = volume.with_written(w.clone());
    }
    if let Some(c) = &csum {
        // Before the journal replay: it asks the checksums which blocks to
        // trust (docs/FORMAT.md §8), unless the last run did not keep them.
        if !assembly.checksums_valid {
            c.set.set_entries_stale();
        }
        volume = volume.with_checksums(c.set.clone());
    }
    let journal = journal::replay_and_plan(assembly, &volume, aopts.write_hole_protection).await?;
    let (volume, ring) = seal_volume(volume, journal.as_ref(), bitmap.as_ref())
        .map_err(|e| DaemonError::Usage(format!("{name}: {}", super::error_chain(&e))))?;
    let joined = match (ring, journal) {
        (Some(ring), Some(plan)) => Some(journal::start(assembly, &ring, plan.encoder).await?),
        _ => None,
    };
    if let Some(c) = &csum {
        // After the replay, which reads chunks whose checksums a crash may
        // have torn from their data: every settled region is verified.
        c.verifying.store(true, Ordering::Release);
    }
    Ok(BuiltVolume {
        volume,
        bitmap,
        checksums: csum,
        wrap,
        joined,
    })
}

/// The array's geometry from its superblocks.
fn geometry_of(assembly: &Assembly) -> Result<Geometry, RaidError> {
    let chunk = ChunkSize::new(u64::from(assembly.chunk_size)).map_err(RaidError::Layout)?;
    Geometry::new(
        assembly.level,
        assembly.member_count as usize,
        chunk,
        assembly.data_size,
    )
    .map_err(RaidError::Layout)
}

/// The write-intent bitmap, when kept: for a redundant array, or a RAID-0
/// with block checksums. With checksums every clearing step writes them
/// back first.
async fn load_bitmap(
    assembly: &Assembly,
    aopts: &ArrayOptions,
    checksums: Option<&Arc<Checksums>>,
    written: Option<&Arc<WrittenMap>>,
) -> Option<Arc<DiskBitmap>> {
    if !aopts.bitmap || (assembly.level == Level::Raid0 && !aopts.checksums) {
        return None;
    }
    let mut b = DiskBitmap::load(
        assembly.metadata.clone(),
        &assembly.layout,
        assembly.data_size,
        assembly.bitmap_valid,
    )
    .await;
    if let Some(w) = written {
        b = b.with_written(w.clone());
    }
    if let Some(set) = checksums {
        let set = set.clone();
        b = b.with_before_clear(Arc::new(move || {
            let set = set.clone();
            crate::block::BoxFuture::new(async move { set.writeback_all().await })
        }));
    }
    Some(Arc::new(b))
}

/// The written-region map of an array that keeps one (FORMAT.md §10).
async fn load_written(assembly: &Assembly, read_only: bool) -> Option<Arc<WrittenMap>> {
    if !assembly.written_map {
        return upgrade_written(assembly, read_only).await;
    }
    let map = WrittenMap::load(
        &assembly.metadata,
        assembly.layout.bitmap_region_shift,
        assembly.data_size,
    )
    .await;
    info!(
        "{}: written-region map: {} of {} bytes per member written",
        assembly.name,
        map.written_bytes(),
        assembly.data_size
    );
    Some(Arc::new(map))
}

/// An array created before the written-region map gets one at a start
/// that allows it (FORMAT.md §10 "Upgrade"); otherwise it runs without,
/// and says so.
async fn upgrade_written(assembly: &Assembly, read_only: bool) -> Option<Arc<WrittenMap>> {
    use crate::meta::written_upgrade::{not_upgradable, upgrade};
    let name = &assembly.name;
    if let Some(why) = not_upgradable(assembly, read_only) {
        warn!("{name}: no written-region map (created by an older vraid), not added now: {why}; rebuild, resync and scrub walk the whole capacity until a clean read-write start with every member adds it");
        return None;
    }
    match upgrade(assembly).await {
        Ok(map) => {
            info!(
                "{name}: written-region map added: {} of {} bytes per member hold data",
                map.written_bytes(),
                assembly.data_size
            );
            Some(Arc::new(map))
        }
        Err(e) => {
            warn!("{name}: adding the written-region map failed ({e}); running without it");
            None
        }
    }
}

/// A read-write run without the bitmap cannot track first writes: every
/// region counts as written from now on, on disk before any write
/// (FORMAT.md §10, case 63).
async fn untracked_run(assembly: &Assembly, written: &WrittenMap) -> Result<(), DaemonError> {
    written.set_all();
    written.persist(&assembly.metadata).await.map_err(|e| {
        DaemonError::Usage(format!(
            "{}: writing the written-region map: {e}",
            assembly.name
        ))
    })?;
    warn!(
        "{}: running without the write-intent bitmap: every region now counts as written",
        assembly.name
    );
    Ok(())
}

/// Each assembled member's data window behind its slot's wrapping.
fn wrap_assembled(assembly: &Assembly, wrap: &MemberWrap) -> Vec<Option<Arc<dyn BlockDevice>>> {
    assembly
        .members
        .iter()
        .enumerate()
        .map(|(role, m)| {
            m.as_ref().map(|m| {
                let window = Arc::new(m.data.clone()) as Arc<dyn BlockDevice>;
                wrap(role, m.device.clone(), window, false)
            })
        })
        .collect()
}

/// The volume in its `Arc`, with this run's journal (whose checkpoints
/// flush the volume that owns it) and the bitmap attached.
fn seal_volume(
    volume: Volume,
    journal: Option<&journal::JournalPlan>,
    bitmap: Option<&Arc<DiskBitmap>>,
) -> Result<(Arc<Volume>, Option<Arc<RingLog>>), crate::raid::ppl::PplError> {
    let mut ring = None;
    let mut failed = None;
    let volume = Arc::new_cyclic(|me| {
        let mut volume = volume;
        if let Some(j) = journal {
            match RingLog::for_volume(j.journals.clone(), j.encoder.clone(), me.clone()) {
                Ok(log) => {
                    let log = Arc::new(log);
                    volume = volume.with_parity_log(log.clone());
                    ring = Some(log);
                }
                Err(e) => failed = Some(e),
            }
        }
        if let Some(b) = bitmap {
            volume = volume.with_write_intent(b.clone());
        }
        volume
    });
    match failed {
        Some(e) => Err(e),
        None => Ok((volume, ring)),
    }
}

/// Logs the members assembly left out, and records a dropped replace.
fn report_left_out(assembly: &Assembly, log: &EventLog) {
    let name = &assembly.name;
    for ex in &assembly.excluded {
        warn!("{name}: left out {}: {}", ex.path, ex.reason);
    }
    if let Some(role) = assembly.replace_dropped {
        log.push(
            name,
            "replace_dropped",
            Some(role),
            format!(
                "{name}: the new member of the replace of member {role} is absent; \
                 replace dropped, the old member keeps serving"
            ),
        );
    }
}

/// What the supervisor runs first.
struct SyncPlan {
    resync: sync_plan::Ranges,
    rebuild: Option<PlannedRebuild>,
    /// The whole array is resealed (checksums were not maintained).
    reseal_all: bool,
}

/// Decides the crash resync and the pass to run first (none read-only:
/// torn stripes are then distrusted instead), and a whole-array reseal
/// when the last run did not maintain the block checksums.
async fn plan_startup(
    assembly: &Assembly,
    aopts: &ArrayOptions,
    built: &BuiltVolume,
) -> Result<SyncPlan, DaemonError> {
    let name = &assembly.name;
    let (mut resync, rebuild) = if aopts.read_only {
        if assembly.was_dirty {
            warn!("{name} was not shut down cleanly; read-only: no resync, served as on disk");
            // Torn stripes stay torn: a member lost later must not have
            // its data rebuilt from their parity (read errors instead).
            built.volume.distrust_parity(0, u64::MAX);
        }
        (None, None)
    } else {
        sync_plan::plan_sync(
            assembly,
            &built.volume,
            built.bitmap.as_deref(),
            &built.wrap,
            aopts.checksums,
            built.joined.as_ref(),
        )
        .await?
    };
    // Checksums not maintained by the last run (or never): reseal the
    // whole array, like a full resync; valid again once it is done.
    let reseal_all = aopts.checksums && !assembly.checksums_valid;
    if let (true, Some(b)) = (reseal_all, &built.bitmap) {
        warn!("{name}: block checksums were not maintained; resealing the whole array");
        sync_plan::crash_case(name, 24, "checksums not kept valid: whole-array reseal");
        b.set_all();
        resync = Some(b.dirty_ranges());
    }
    if !aopts.checksums {
        assembly.metadata.set_checksums_valid(false).await;
    }
    Ok(SyncPlan {
        resync,
        rebuild,
        reseal_all,
    })
}

/// Pins (and persists) the bitmap's dirty regions when a resync or a
/// bitmap recovery will copy them, and starts its cleaner (and the wait
/// for a whole-array reseal).
async fn arm_bitmap(
    assembly: &Assembly,
    bitmap: Option<&Arc<DiskBitmap>>,
    plan: &SyncPlan,
) -> Result<(), DaemonError> {
    let Some(b) = bitmap else {
        return Ok(());
    };
    let recovery = plan.rebuild.as_ref().is_some_and(|r| r.only.is_some());
    if plan.resync.is_some() || recovery {
        b.pin_dirty();
        b.persist().await.map_err(|source| DaemonError::Block {
            context: format!("{}: writing the write-intent bitmap", assembly.name),
            source,
        })?;
    }
    if recovery {
        // The re-added member's written image missed the regions first
        // written while it was away (FORMAT.md §10, W-3).
        b.share_written()
            .await
            .map_err(|source| DaemonError::Block {
                context: format!("{}: writing the written-region map", assembly.name),
                source,
            })?;
    }
    b.spawn_cleaner(std::time::Duration::from_secs(1));
    if plan.reseal_all {
        spawn_checksums_valid(b.clone(), assembly.metadata.clone());
    }
    Ok(())
}

/// Says what the crash resync of an array not shut down cleanly covers.
fn warn_unclean(assembly: &Assembly, aopts: &ArrayOptions, bitmap: bool) {
    if assembly.was_dirty && assembly.level != Level::Raid0 && !aopts.read_only {
        warn!(
            "{} was not shut down cleanly; resyncing {}",
            assembly.name,
            if bitmap && assembly.bitmap_valid {
                "the regions marked in the write-intent bitmap"
            } else {
                "the whole array"
            }
        );
    }
}

/// Logs the assembled array (and how degraded it runs).
fn report_assembled(assembly: &Assembly, volume: &Volume) {
    let name = &assembly.name;
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
}

/// Reserves the metadata area (superblocks, bitmap, journal, checksums) of
/// every member joining the array, so that metadata writes never run out of
/// space on a filesystem that fills (docs/FORMAT.md §1). A member whose
/// area cannot be reserved still serves; the log says why.
async fn reserve_metadata(assembly: &Assembly) {
    let joining = assembly
        .members
        .iter()
        .flatten()
        .chain(assembly.rebuild.iter().map(|t| &t.member))
        .chain(assembly.rebuild_also.iter().map(|t| &t.member))
        .chain(assembly.replace.iter().map(|t| &t.member))
        .chain(assembly.readd.iter().map(|(_, m)| m));
    for m in joining {
        // The checksum area is reserved page by page as pages are first
        // written (docs/FORMAT.md §1): reserving it whole would allocate
        // 0.1 % of the member up front.
        let area = crate::units::ByteOffset(0);
        let len = assembly.layout.csum_offset;
        if let Err(e) = m.device.reserve(area, len).await {
            warn!(
                "{}: cannot reserve the metadata area of {}: {}; its metadata writes may fail \
                 if the filesystem fills",
                assembly.name,
                m.path,
                super::error_chain(&e)
            );
        }
    }
}

/// What members need to be wrapped in checksum devices.
#[derive(Clone)]
struct CsumWiring {
    set: Arc<Checksums>,
    /// `csum_offset` of the members.
    offset: u64,
    /// The bitmap, whose pinned regions are not verified.
    bitmap: Arc<DiskBitmap>,
    /// Nothing is verified until the partial-parity replay is done (it
    /// reads chunks whose checksums a crash may have torn from their data).
    verifying: Arc<AtomicBool>,
}

impl CsumWiring {
    /// Verified: settled regions, once the journal replay is done.
    fn trusted(&self) -> crate::integrity::Trusted {
        let (bitmap, verifying) = (self.bitmap.clone(), self.verifying.clone());
        Arc::new(move |off| verifying.load(Ordering::Acquire) && bitmap.settled(off))
    }
}

/// The physical data area of an inline-layout member (`area`: data offset
/// and logical size). A member too small for it gets what it holds: I/O
/// past its end fails like any out-of-range member I/O.
fn inline_window(
    raw: &Arc<dyn BlockDevice>,
    (offset, logical): (u64, u64),
) -> Arc<dyn BlockDevice> {
    use crate::integrity::tag::{physical_len, STRIDE};
    let fits = raw.size().saturating_sub(offset) / STRIDE * STRIDE;
    let len = physical_len(logical).min(fits);
    if len < physical_len(logical) {
        warn!("{}: too small for its inline-layout data area", raw.name());
    }
    match Window::new(raw.clone(), offset, len) {
        Ok(w) => Arc::new(w),
        Err(_) => Arc::new(Window::new(raw.clone(), 0, 0).expect("an empty window fits")),
    }
}

/// An inline-layout member: Volume ─► StatsDevice ─► InlineDevice ─►
/// FaultDevice ─► physical window; fault rules keep meaning logical data
/// offsets.
fn wrap_inline_member(
    h: &MemberHandle,
    csum: Option<&CsumWiring>,
    area: (u64, u64),
    raw: Arc<dyn BlockDevice>,
    tag: crate::member::fault::DeviceTag,
) -> Arc<dyn BlockDevice> {
    let seed = 0x5eed_0000 + h.role as u64;
    let faulty = FaultDevice::new(inline_window(&raw, area), h.faults.clone(), seed)
        .with_device(tag)
        .with_inline_layout();
    let errors = h.checksum_errors.clone();
    let dev = match csum {
        Some(c) => c
            .set
            .wrap_inline(h.role, Arc::new(faulty), c.trusted(), errors),
        None => Arc::new(InlineDevice::new(
            Arc::new(faulty),
            Arc::new(|_| false),
            errors,
        )),
    };
    Arc::new(StatsDevice::new(dev, h.stats.clone()))
}

/// Wraps the members joining each role (assembled now or later) as
/// [`wrap_member_with`] does, behind that role's slot.
fn member_wrap(
    slots: MemberSlots,
    csum: Option<CsumWiring>,
    inline: Option<(u64, u64)>,
) -> MemberWrap {
    Arc::new(move |role, raw, window, fresh| match slots.get(role) {
        Some(h) => wrap_member_with(h, csum.as_ref(), inline, raw, window, fresh),
        None => window,
    })
}

/// Puts a member's data window behind its slot's fault rules, block
/// checksums (when on) and counters:
/// Volume ─► StatsDevice ─► ChecksumDevice ─► FaultDevice ─► Window.
fn wrap_member_with(
    h: &MemberHandle,
    csum: Option<&CsumWiring>,
    inline: Option<(u64, u64)>,
    raw: Arc<dyn BlockDevice>,
    window: Arc<dyn BlockDevice>,
    fresh: bool,
) -> Arc<dyn BlockDevice> {
    let seed = 0x5eed_0000 + h.role as u64;
    // Rules added from now on for this device stay with it (not the slot).
    let tag = h.join_device(raw.name(), raw.power_gate().and_then(|g| g.armed_tag()));
    if let Some(gate) = raw.power_gate() {
        // Its `volatile` rule covers every write to it, metadata included.
        gate.attach(h.faults.clone(), tag);
    }
    if let Some(area) = inline {
        return wrap_inline_member(h, csum, area, raw, tag);
    }
    let faulty = FaultDevice::new(window, h.faults.clone(), seed).with_device(tag);
    let mut dev: Arc<dyn BlockDevice> = Arc::new(faulty);
    if let Some(c) = csum {
        let trusted = c.trusted();
        dev = c.set.wrap(
            h.role,
            raw,
            c.offset,
            dev,
            fresh,
            trusted,
            h.checksum_errors.clone(),
        );
    }
    Arc::new(StatsDevice::new(dev, h.stats.clone()))
}

/// Records `csum_state` = 1 for the next superblock update once the
/// whole-array reseal (every bit pinned) is done.
fn spawn_checksums_valid(bitmap: Arc<DiskBitmap>, metadata: Arc<ArrayMetadata>) {
    tokio::spawn(async move {
        bitmap.wait_unpinned().await;
        metadata.set_checksums_valid(true).await;
        info!("block checksums resealed");
    });
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

/// The path of each role's member (rebuild targets and re-added members
/// included), for status and for naming members by path.
fn member_paths_by_role(assembly: &Assembly) -> Vec<Option<String>> {
    let mut paths: Vec<Option<String>> = assembly
        .members
        .iter()
        .map(|m| m.as_ref().map(|m| m.path.clone()))
        .collect();
    for t in assembly.rebuild.iter().chain(&assembly.rebuild_also) {
        paths[t.role] = Some(t.member.path.clone());
    }
    for (role, m) in &assembly.readd {
        if paths[*role].is_none() {
            paths[*role] = Some(m.path.clone());
        }
    }
    paths
}

/// Opens the configured spares. A spare that holds an interrupted rebuild
/// of this array (its role is rebuilding/recovering, or it is the new member
/// of an interrupted replace) joins the assembly;
/// the others stay spares. Missing spare files are created when the volume
/// has a `create` size.
async fn open_spares(
    aopts: &ArrayOptions,
    opts: &MemberOptions,
    devices: &mut Vec<(String, Arc<dyn BlockDevice>)>,
) -> Result<Vec<Spare>, DaemonError> {
    let mut spares = Vec::new();
    for p in &aopts.spares {
        if !p.exists() && !crate::remote::is_nbd_uri(p) {
            match aopts.create_size {
                Some(size) => member::create_sparse(p, size)?,
                None => {
                    warn!("spare {} does not exist; ignored", show_path(p));
                    continue;
                }
            }
        }
        let device: Arc<dyn BlockDevice> = match open_any(p, opts) {
            Ok(d) => d,
            Err(e) => {
                warn!(
                    "spare {} unusable: {}",
                    show_path(p),
                    super::error_chain(&e)
                );
                continue;
            }
        };
        if let Err(why) = spare_refusal(device.as_ref(), devices, &spares).await {
            warn!(
                "spare {} refused: {why}; it is left untouched",
                show_path(p)
            );
            continue;
        }
        let rebuilding = match meta::read_superblock(device.as_ref()).await {
            Ok(read) => {
                let sb = read.superblock;
                sb.is_replacement()
                    || sb.members.get(sb.role as usize).is_some_and(|e| {
                        matches!(
                            e.state,
                            meta::MemberState::Rebuilding | meta::MemberState::Recovering
                        )
                    })
            }
            Err(_) => false,
        };
        if rebuilding {
            devices.push((show_path(p), device));
        } else {
            spares.push(Spare {
                path: p.clone(),
                device,
            });
        }
    }
    Ok(spares)
}

/// The pre-write check of a configured spare: not a member or another
/// spare under another name, and holding nothing but a vraid superblock
/// of this array (the config has no `--force`: wipe the file instead).
async fn spare_refusal(
    device: &dyn BlockDevice,
    members: &[(String, Arc<dyn BlockDevice>)],
    spares: &[Spare],
) -> Result<(), String> {
    let id = device.device_id();
    let same = |other: &dyn BlockDevice| id.is_some() && other.device_id() == id;
    if let Some((name, _)) = members.iter().find(|(_, d)| same(d.as_ref())) {
        return Err(format!("it is the member {name}"));
    }
    if let Some(s) = spares.iter().find(|s| same(s.device.as_ref())) {
        return Err(format!("it is the spare {} again", show_path(&s.path)));
    }
    let found = meta::signature::scan(device)
        .await
        .map_err(|e| format!("cannot read it: {}", super::error_chain(&e)))?;
    let mut ours = None;
    for (_, d) in members {
        if let Ok(read) = meta::read_superblock(d.as_ref()).await {
            ours = Some(read.superblock.array_uuid);
            break;
        }
    }
    match found.as_slice() {
        [] => Ok(()),
        [meta::signature::Signature::Vraid { array_uuid, .. }] if Some(*array_uuid) == ours => {
            Ok(())
        }
        [meta::signature::Signature::Vraid {
            name, array_uuid, ..
        }] => Err(format!(
            "it belongs to another array ({name}, {array_uuid})"
        )),
        other => Err(format!("it holds {}", meta::signature::describe(other))),
    }
}

/// Persists member failures the RAID layer reports into the other members'
/// superblocks (event counter bumped), so the failed member is not trusted
/// at the next assembly.
struct MetaEvents {
    name: String,
    metadata: Arc<ArrayMetadata>,
    level: Level,
    /// Where operational events go (shown by `vraid status`).
    log: Arc<EventLog>,
    /// Told about every recorded failure (hot-spare activation).
    notify: tokio::sync::mpsc::UnboundedSender<MemberIndex>,
}

impl MetaEvents {
    fn new(
        assembly: &Assembly,
        log: Arc<EventLog>,
        notify: tokio::sync::mpsc::UnboundedSender<MemberIndex>,
    ) -> MetaEvents {
        MetaEvents {
            name: assembly.name.clone(),
            metadata: assembly.metadata.clone(),
            level: assembly.level,
            log,
            notify,
        }
    }

    /// Records whether the array runs degraded or has failed, given the
    /// members' states.
    fn health_event(&self, states: &[crate::raid::MemberState]) {
        let down = states
            .iter()
            .filter(|s| !matches!(s, crate::raid::MemberState::Active))
            .count();
        let members = states.len();
        let (kind, what) = if down > self.level.redundancy(members) {
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
}

impl VolumeEvents for MetaEvents {
    fn member_failed(
        &self,
        member: MemberIndex,
        error: &BlockError,
        states: &[crate::raid::MemberState],
    ) -> BoxFuture<'_, ()> {
        let reason = super::error_chain(error);
        let states = states.to_vec();
        crate::block::BoxFuture::new(async move {
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
            self.health_event(&states);
            let _ = self.notify.send(member);
        })
    }
}

/// Opens a member path: an NBD URI as a remote member, anything else as a
/// file or block device; behind its power gate (`member::power_gate`).
pub(super) fn open_any(
    path: &Path,
    opts: &MemberOptions,
) -> Result<Arc<dyn BlockDevice>, member::MemberError> {
    let dev: Arc<dyn BlockDevice> = if crate::remote::is_nbd_uri(path) {
        crate::remote::open(path, opts)?
    } else {
        member::open_member(path, opts)?
    };
    Ok(PowerGate::wrap(dev))
}
