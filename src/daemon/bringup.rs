//! Bringing arrays up and down: creating members and superblocks, assembling
//! a volume from member paths, and persisting member failures the RAID layer
//! reports (the [`MetaEvents`] bridge from `raid` back to `meta`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, Weak};

use tracing::{info, warn};

use super::array::MemberWrap;
use super::array::{ArrayHandle, ArrayOptions, PlannedRebuild, Spare, StartPlan};
use super::{show_path, DaemonError};
use crate::block::{BlockDevice, BlockError, BoxFuture, Window};
use crate::cli::EngineArg;
use crate::control::{EventLog, MemberHandle, VolumeHandle};
use crate::integrity::{Checksums, InlineDevice};
use crate::member::fault::FaultDevice;
use crate::member::{self, EngineKind, MemberOptions};
use crate::meta::layout::ChecksumLayout;
use crate::meta::{self, ArrayMetadata, Assembly, CreateSpec, DiskBitmap};
use crate::metrics::stats::{IoStats, StatsDevice};
use crate::raid::{ChunkSize, Geometry, Level, MemberIndex, RaidError, Volume, VolumeEvents};
use crate::raid::{PplRecord, RingLog};

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
    let csum_layout = req.checksum_layout;
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
        let device = member::open_member(p, opts)?;
        if csum_layout == ChecksumLayout::Inline && device.is_direct() {
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
    Ok(meta::create_array_with(&devices, &spec, csum_layout).await?)
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
    let dev = member::open_member(path, &opts)?;
    let busy = member::claim::in_use_elsewhere(path).ok();
    match meta::examine(&*dev).await {
        Ok(mut report) => {
            report.in_use_elsewhere = busy;
            Ok(Examined::Member(Box::new(report)))
        }
        Err(meta::MetaError::Superblock { .. }) => {
            let mut report = meta::ForeignReport::probe(&*dev).await?;
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
pub async fn assemble_volume_with(
    paths: &[PathBuf],
    opts: &MemberOptions,
    aopts: &ArrayOptions,
) -> Result<Assembled, DaemonError> {
    let read_only;
    let (opts, aopts) = if aopts.read_only {
        if !aopts.spares.is_empty() {
            warn!("read-only: hot spares are not used");
        }
        let member_opts = MemberOptions {
            read_only: true,
            ..*opts
        };
        read_only = (member_opts, super::read_only::options(aopts));
        (&read_only.0, &read_only.1)
    } else {
        (opts, aopts)
    };
    let mut devices = Vec::with_capacity(paths.len());
    // O_DIRECT granule of each member (the inline layout needs 512).
    let mut granules = Vec::new();
    for p in paths {
        match member::open_member(p, opts) {
            Ok(dev) => {
                if dev.is_direct() {
                    granules.push((p, dev.block_size()));
                }
                devices.push((show_path(p), dev as Arc<dyn BlockDevice>))
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
    let spares = open_spares(aopts, opts, &mut devices).await?;
    let force = meta::AssembleOptions {
        force: aopts.force_assemble,
    };
    let assembly = Arc::new(meta::assemble_with(devices, force).await?);
    if assembly.checksum_layout == ChecksumLayout::Inline {
        for (p, granule) in granules {
            inline_fits(p, granule)?;
        }
    }
    if aopts.read_only {
        // Before anything could write: every update stays in memory.
        assembly.metadata.set_read_only().await;
        super::read_only::servable(&assembly)?;
        info!(
            "{}: read-only: members are opened O_RDONLY and not written",
            assembly.name
        );
    } else {
        reserve_metadata(&assembly).await;
    }
    if aopts.checksums && !aopts.bitmap {
        return Err(DaemonError::Usage(format!(
            "{}: block checksums need the write-intent bitmap; turn checksums off or the bitmap on",
            assembly.name
        )));
    }
    let handles = member_handles(&assembly);
    let csum = aopts.checksums.then(|| CsumWiring {
        set: Checksums::new(),
        offset: assembly.layout.csum_offset,
        bitmap: Arc::new(OnceLock::new()),
    });
    // Inline layout: the members' data areas interleave tags, checksums on
    // or off (off: tags are still written, reads are not verified).
    let inline = (assembly.checksum_layout == ChecksumLayout::Inline)
        .then_some((assembly.data_offset, assembly.data_size));
    // Each member's data window sits behind its fault rules and counters:
    // Volume ─► StatsDevice ─► [ChecksumDevice ─►] FaultDevice ─► Window.
    let members: Vec<Option<Arc<dyn BlockDevice>>> = assembly
        .members
        .iter()
        .zip(&handles)
        .map(|(m, h)| {
            m.as_ref().map(|m| {
                let window = Arc::new(m.data.clone()) as Arc<dyn BlockDevice>;
                wrap_member_with(h, csum.as_ref(), inline, m.device.clone(), window, false)
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
    let (notify, failures) = tokio::sync::mpsc::unbounded_channel();
    let events = Arc::new(MetaEvents {
        name: name.clone(),
        metadata: assembly.metadata.clone(),
        log: log.clone(),
        volume: OnceLock::new(),
        notify: Some(notify),
    });
    let bitmap = if aopts.bitmap && (assembly.level != Level::Raid0 || aopts.checksums) {
        let b = DiskBitmap::load(
            assembly.metadata.clone(),
            &assembly.layout,
            assembly.data_size,
            assembly.bitmap_valid,
        )
        .await;
        Some(Arc::new(b))
    } else {
        None
    };
    assembly.metadata.set_bitmap_enabled(bitmap.is_some()).await;
    let mut volume =
        Volume::new(name.clone(), geometry, members, events.clone()).map_err(raid_err)?;
    if let (Some(c), Some(_)) = (&csum, &bitmap) {
        // Before the journal replay: it asks the checksums which blocks to
        // trust (docs/FORMAT.md §8), unless the last run did not keep them.
        if !assembly.checksums_valid {
            c.set.set_entries_stale();
        }
        volume = volume.with_checksums(c.set.clone());
    }
    let (volume, parity_log) =
        setup_journal(&assembly, volume, aopts.write_hole_protection).await?;
    let mut volume = volume;
    if let (Some(c), Some(b)) = (&csum, &bitmap) {
        let _ = c.bitmap.set(b.clone());
        let set = c.set.clone();
        b.set_before_clear(Arc::new(move || {
            let set = set.clone();
            Box::pin(async move { set.writeback_all().await })
        }));
    }
    if let Some(b) = &bitmap {
        volume = volume.with_write_intent(b.clone());
    }
    let volume = Arc::new(volume);
    let _ = events.volume.set(Arc::downgrade(&volume));
    if let Some(log) = &parity_log {
        log.attach_volume(Arc::downgrade(&volume));
    }
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
    if let Some(role) = assembly.replace_dropped {
        handle.events.push(
            &name,
            "replace_dropped",
            Some(role),
            format!(
                "{name}: the new member of the replace of member {role} is absent; \
                 replace dropped, the old member keeps serving"
            ),
        );
    }
    // Members that join later (rebuild targets, spares, added members) sit
    // behind the same fault rules and counters as the ones assembled now.
    let weak = Arc::downgrade(&handle);
    let wrap_csum = csum.clone();
    let wrap: MemberWrap = Arc::new(move |role, raw, window, fresh| {
        match weak.upgrade().as_ref().and_then(|h| h.members.get(role)) {
            Some(h) => wrap_member_with(h, wrap_csum.as_ref(), inline, raw, window, fresh),
            None => window,
        }
    });
    let (mut resync, rebuild) = if aopts.read_only {
        if assembly.was_dirty {
            warn!("{name} was not shut down cleanly; read-only: no resync, served as on disk");
            // Torn stripes stay torn: a member lost later must not have
            // its data rebuilt from their parity (read errors instead).
            volume.distrust_parity(0, u64::MAX);
        }
        (None, None)
    } else {
        plan_sync(
            &assembly,
            &volume,
            bitmap.as_deref(),
            &wrap,
            aopts.checksums,
        )
        .await?
    };
    // Checksums not maintained by the last run (or never): reseal the
    // whole array, like a full resync; valid again once it is done.
    let reseal_all = aopts.checksums && !assembly.checksums_valid;
    if let (true, Some(b)) = (reseal_all, &bitmap) {
        warn!("{name}: block checksums were not maintained; resealing the whole array");
        b.set_all();
        resync = Some(b.dirty_ranges());
    }
    if !aopts.checksums {
        assembly.metadata.set_checksums_valid(false).await;
    }
    if let Some(b) = &bitmap {
        if resync.is_some() || rebuild.as_ref().is_some_and(|r| r.only.is_some()) {
            b.pin_dirty();
            b.persist().await.map_err(|source| DaemonError::Block {
                context: format!("{name}: writing the write-intent bitmap"),
                source,
            })?;
        }
        b.spawn_cleaner(std::time::Duration::from_secs(1));
        if reseal_all {
            spawn_checksums_valid(b.clone(), assembly.metadata.clone());
        }
    }
    assembly.mark_dirty().await?;
    if assembly.was_dirty && assembly.level != Level::Raid0 && !aopts.read_only {
        warn!(
            "{name} was not shut down cleanly; resyncing {}",
            if bitmap.is_some() && assembly.bitmap_valid {
                "the regions marked in the write-intent bitmap"
            } else {
                "the whole array"
            }
        );
    }
    let array = ArrayHandle::start(StartPlan {
        volume: volume.clone(),
        metadata: assembly.metadata.clone(),
        bitmap,
        data_offset: assembly.data_offset,
        data_size: assembly.data_size,
        resync,
        rebuild,
        spares,
        paths: member_paths_by_role(&assembly),
        failures,
        max_mbps: aopts.rebuild_max_mbps,
        opts: *opts,
        scrub_interval: aopts.scrub_interval,
        scrub_repair: aopts.scrub_repair,
    });
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
    handle.set_engine(Arc::new(super::engine_ops::ArrayEngine(array.clone())));
    array.set_event_log(handle.events.clone());
    array.set_member_wrap(wrap);
    Ok(Assembled {
        volume,
        assembly,
        handle,
        array,
        checksums: csum.map(|c| c.set),
    })
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
        .chain(assembly.replace.iter().map(|t| &t.member))
        .chain(assembly.readd.iter().map(|(_, m)| m));
    for m in joining {
        let area = crate::units::ByteOffset(0);
        if let Err(e) = m.device.reserve(area, assembly.data_offset).await {
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
    /// The bitmap, whose pinned regions are not verified (set once built).
    bitmap: Arc<OnceLock<Arc<DiskBitmap>>>,
}

impl CsumWiring {
    /// Nothing is verified until the bitmap is attached (after the
    /// partial-parity replay, which reads chunks whose checksums a crash
    /// may have torn from their data), then every settled region is.
    fn trusted(&self) -> crate::integrity::Trusted {
        let bitmap = self.bitmap.clone();
        Arc::new(move |off| bitmap.get().is_some_and(|b| b.settled(off)))
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
    let tag = h.join_device(raw.name());
    if let Some(area) = inline {
        // Volume ─► StatsDevice ─► InlineDevice ─► FaultDevice ─► physical
        // window; fault rules keep meaning logical data offsets.
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
        return Arc::new(StatsDevice::new(dev, h.stats.clone()));
    }
    let faulty = FaultDevice::new(window, h.faults.clone(), seed).with_device(tag);
    let mut dev: Arc<dyn BlockDevice> = Arc::new(faulty);
    if let Some(c) = csum {
        dev = c.set.wrap(
            h.role,
            raw,
            c.offset,
            dev,
            fresh,
            c.trusted(),
            h.checksum_errors.clone(),
        );
    }
    Arc::new(StatsDevice::new(dev, h.stats.clone()))
}

/// Records `csum_state` = 1 for the next superblock update once the
/// whole-array reseal (every bit pinned) is done.
fn spawn_checksums_valid(bitmap: Arc<DiskBitmap>, metadata: Arc<ArrayMetadata>) {
    tokio::spawn(async move {
        while bitmap.pinned() > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
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
    if let Some(t) = &assembly.rebuild {
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
        if !p.exists() {
            match aopts.create_size {
                Some(size) => member::create_sparse(p, size)?,
                None => {
                    warn!("spare {} does not exist; ignored", show_path(p));
                    continue;
                }
            }
        }
        let device: Arc<dyn BlockDevice> = match member::open_member(p, opts) {
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

/// Decides the crash resync (dirty ranges) and the rebuild to run: an
/// interrupted one resumes from its checkpoint (from the first dirty range
/// below it after a crash), else a re-added member recovers from the bitmap.
async fn plan_sync(
    assembly: &Assembly,
    volume: &Volume,
    bitmap: Option<&DiskBitmap>,
    wrap: &MemberWrap,
    checksums: bool,
) -> Result<(Option<Vec<(u64, u64)>>, Option<PlannedRebuild>), DaemonError> {
    let whole = vec![(0, assembly.data_size)];
    let trusted = bitmap.filter(|_| assembly.bitmap_valid);
    // RAID-0 has nothing to resync, except its block checksums.
    let resyncs = assembly.level != Level::Raid0 || checksums;
    let resync = (assembly.was_dirty && resyncs).then(|| {
        if let Some(b) = bitmap {
            if !assembly.bitmap_valid {
                b.set_all();
            }
        }
        bitmap.map_or(whole.clone(), |b| b.dirty_ranges())
    });
    let name = &assembly.name;
    let raid_err = |e: crate::raid::RebuildError| DaemonError::Usage(format!("{name}: {e}"));
    if let Some(t) = &assembly.rebuild {
        let mut up_to = t.up_to;
        if let Some(r) = &resync {
            up_to = r.iter().map(|&(a, _)| a).fold(up_to, u64::min);
        }
        let only = t
            .recovering
            .then(|| trusted.map_or(whole.clone(), |b| b.dirty_ranges()));
        volume
            .attach_rebuild_target(
                MemberIndex(t.role),
                wrap(
                    t.role,
                    t.member.device.clone(),
                    Arc::new(t.member.data.clone()),
                    !t.recovering,
                ),
                up_to,
            )
            .map_err(raid_err)?;
        info!(
            "{name}: resuming the {} of member {} at {up_to}",
            if t.recovering { "recovery" } else { "rebuild" },
            t.role
        );
        return Ok((
            resync,
            Some(PlannedRebuild {
                role: t.role,
                only,
                replace: None,
            }),
        ));
    }
    if let Some(t) = &assembly.replace {
        let mut up_to = t.up_to;
        if let Some(r) = &resync {
            up_to = r.iter().map(|&(a, _)| a).fold(up_to, u64::min);
        }
        volume
            .attach_rebuild_target(
                MemberIndex(t.role),
                wrap(
                    t.role,
                    t.member.device.clone(),
                    Arc::new(t.member.data.clone()),
                    true,
                ),
                up_to,
            )
            .map_err(raid_err)?;
        info!(
            "{name}: resuming the replace of member {} onto {} at {up_to}",
            t.role, t.member.path
        );
        return Ok((
            resync,
            Some(PlannedRebuild {
                role: t.role,
                only: None,
                replace: Some(t.member.path.clone()),
            }),
        ));
    }
    if let (Some(b), Some((role, m))) = (trusted, assembly.readd.first()) {
        let ranges = b.dirty_ranges();
        volume
            .attach_rebuild_target(
                MemberIndex(*role),
                wrap(*role, m.device.clone(), Arc::new(m.data.clone()), false),
                0,
            )
            .map_err(raid_err)?;
        if let Err(e) = assembly
            .metadata
            .begin_rebuild(*role, m.device.clone(), m.member_uuid, true)
            .await
        {
            volume.detach_rebuild_target(MemberIndex(*role));
            return Err(e.into());
        }
        info!(
            "{name}: re-adding {} as member {role}: catching up {} dirty bytes from the bitmap",
            m.path,
            ranges.iter().map(|(a, b)| b - a).sum::<u64>()
        );
        return Ok((
            resync,
            Some(PlannedRebuild {
                role: *role,
                only: Some(ranges),
                replace: None,
            }),
        ));
    }
    Ok((resync, None))
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
    /// Told about every recorded failure (hot-spare activation).
    notify: Option<tokio::sync::mpsc::UnboundedSender<MemberIndex>>,
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
            if let Some(n) = &self.notify {
                let _ = n.send(member);
            }
        })
    }
}

/// RAID-5 write-hole protection at assembly (docs/FORMAT.md §9): replays
/// the partial-parity journal of a run that crashed, then, when enabled,
/// starts this run's log (a barrier in every member's ring) and attaches it
/// to the volume. Records `journal_state` for the next superblock update.
async fn setup_journal(
    assembly: &Assembly,
    volume: Volume,
    enabled: bool,
) -> Result<(Volume, Option<Arc<RingLog>>), DaemonError> {
    if assembly.level != Level::Raid5 {
        return Ok((volume, None));
    }
    let name = &assembly.name;
    let layout = &assembly.layout;
    // Members that join at assembly (an interrupted rebuild, a re-added
    // member) get a ring too: once in sync they hold parity like the others.
    let joining = joining_members(assembly);
    let journals: Vec<Option<Arc<dyn BlockDevice>>> = joining
        .iter()
        .map(|m| {
            let m = m.as_ref()?;
            let w = Window::new(m.device.clone(), layout.journal_offset, layout.journal_len);
            w.ok().map(|w| Arc::new(w) as Arc<dyn BlockDevice>)
        })
        .collect();
    // Replay reads only the rings of the members assembled in sync.
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
        let stats = crate::raid::ppl::replay(&volume, &records)
            .await
            .map_err(|source| DaemonError::Block {
                context: format!("{name}: replaying the partial-parity journal"),
                source,
            })?;
        info!(
            "{name}: replayed {} partial-parity records ({} skipped: a chunk they wrote is missing)",
            stats.replayed, stats.skipped
        );
    } else if assembly.was_dirty {
        warn!("{name}: the partial-parity journal was off in the last run; nothing to replay");
    }
    if !enabled {
        assembly.metadata.set_journal_valid(false).await;
        info!("{name}: write-hole protection is off");
        return Ok((volume, None));
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
    let usable = || {
        journals
            .iter()
            .all(|j| j.as_ref().is_none_or(|j| j.size() >= 16 << 10))
    };
    if !usable() {
        warn!("{name}: journal area too small; write-hole protection is off");
        assembly.metadata.set_journal_valid(false).await;
        return Ok((volume, None));
    }
    let log = RingLog::new(journals, encoder.clone())
        .map_err(|e| DaemonError::Usage(format!("{name}: {}", super::error_chain(&e))))?;
    log.write_barriers()
        .await
        .map_err(|e| DaemonError::Usage(format!("{name}: {}", super::error_chain(&e))))?;
    assembly.metadata.set_journal_valid(true).await;
    let log = Arc::new(log);
    assembly.metadata.set_join_hook(join_hook(
        name.clone(),
        *layout,
        encoder,
        Arc::downgrade(&log),
    ));
    Ok((volume.with_parity_log(log.clone()), Some(log)))
}

/// The journal encoder of this run, told about members that join it.
struct LiveEncoder(std::sync::RwLock<meta::journal::JournalEncoder>);

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
) -> meta::JoinHook {
    Arc::new(move |role, device, member_uuid| {
        let (name, encoder, log) = (name.clone(), encoder.clone(), log.clone());
        Box::pin(async move {
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
    if let Some((role, m)) = joining {
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
