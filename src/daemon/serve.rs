//! `vraid serve`: decide which volumes to bring up (members on the command
//! line, a config file, or the demo), export them over NBD on TCP and/or a
//! Unix socket, and on SIGINT/SIGTERM stop accepting, drain, flush and mark
//! every array clean.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use super::array::ArrayOptions;
use super::bringup::{self, Assembled, CreateRequest};
use super::{demo, error_chain, show_path, DaemonError};
use crate::block::BlockDevice;
use crate::config::{Config, NbdLimitKeys, ServerConfig};
use crate::control::{ControlServer, Registry};
use crate::export::fence::{Fence, FencedDevice};
use crate::export::nbd::{Export, NbdLimits, NbdServer};
use crate::export::pool_volumes::{PoolExports, VhostPlan};
use crate::export::vhost::{VhostExport, VhostServer};
use crate::member::fault::FaultKind;
use crate::member::{EngineKind, MemberOptions};
use crate::metrics::stats::StatsDevice;
use crate::pool::service::PoolService;
use crate::volfault::CacheMode;

/// Default NBD TCP address: loopback only.
pub const DEFAULT_NBD_ADDR: &str = "127.0.0.1:10809";

/// How long shutdown waits for in-flight requests to drain.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// One volume to bring up.
#[derive(Debug)]
struct VolumeSpec {
    /// Name the user expects (config), checked against the superblocks.
    expected_name: Option<String>,
    members: Vec<PathBuf>,
    create: Option<CreateRequest>,
    read_only: bool,
    description: Option<String>,
    /// Faults installed at start-up.
    faults: Vec<crate::config::FaultConfig>,
    /// vhost-user-blk socket, if the volume is exported that way too.
    vhost_socket: Option<PathBuf>,
    /// Queues of the vhost-user-blk export.
    num_queues: u16,
    /// Spares, bitmap and rebuild settings.
    array: ArrayOptions,
    /// Volume faults and the write cache at start-up.
    client: ClientSettings,
}

/// Volume faults and the write cache of a volume at start-up (config).
#[derive(Debug)]
struct ClientSettings {
    qos: crate::qos::QosLimits,
    cache: CacheMode,
    cache_size: u64,
    faults: Vec<crate::config::VolumeFaultConfig>,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            qos: crate::qos::QosLimits::default(),
            cache: CacheMode::Writethrough,
            cache_size: crate::volfault::DEFAULT_CACHE_SIZE,
            faults: Vec::new(),
        }
    }
}

/// What `vraid serve` is asked on the command line (plain options; the
/// CLI's argument parser builds them).
#[derive(Clone, Debug, Default)]
pub struct ServeOptions {
    /// Serve every volume of this config file.
    pub config: Option<PathBuf>,
    /// NBD TCP listen address.
    pub nbd: Option<SocketAddr>,
    /// NBD Unix socket path.
    pub nbd_socket: Option<PathBuf>,
    /// NBD limits given on the command line (they win over the config's).
    pub nbd_limits: NbdLimitKeys,
    /// TLS settings given on the command line (they win over the config's).
    pub tls: crate::config::TlsKeys,
    /// Member I/O engine (else `VRAID_IO_ENGINE`, else the config's).
    pub io_engine: Option<EngineKind>,
    /// Export every volume read-only.
    pub read_only: bool,
    /// Directory of the built-in demo.
    pub demo_dir: PathBuf,
    /// vhost-user-blk socket of the volume given by its members (or the demo).
    pub vhost_user_blk: Option<PathBuf>,
    /// Request queues of that vhost-user-blk export.
    pub vhost_queues: u16,
    /// Members of one array to serve.
    pub members: Vec<PathBuf>,
    /// Control socket path.
    pub control: Option<PathBuf>,
    /// Prometheus metrics listen address.
    pub metrics: Option<SocketAddr>,
    /// Turn block checksums off on every volume.
    pub no_checksums: bool,
    /// Checksum-page cache budget of every volume (over the config's key).
    pub checksum_cache: Option<u64>,
    /// Turn the RAID-5 partial-parity journal off on every volume.
    pub no_journal: bool,
    /// Forced assembly of every volume.
    pub force_assemble: bool,
    /// Mirror policies of the volume given by its members.
    pub mirror: crate::config::MirrorConfig,
    /// `members` are the members of a Linux md array (served read-only).
    pub md: bool,
    /// Serve that md array writable (`--md-writable`).
    pub md_writable: bool,
}

/// What `serve` decided from its options and the config.
struct ServePlan {
    opts: MemberOptions,
    nbd: Option<SocketAddr>,
    nbd_socket: Option<PathBuf>,
    control: PathBuf,
    metrics: Option<SocketAddr>,
    limits: NbdLimits,
    /// TLS on the NBD exports, credentials loaded.
    tls: Option<crate::tls::ServerTls>,
    specs: Vec<VolumeSpec>,
    /// Linux md arrays to serve read-only.
    md: Vec<crate::config::MdConfig>,
    /// Pools and their volumes from the config.
    pools: Vec<crate::config::PoolConfig>,
    demo_mode: bool,
}

/// `vraid serve`.
pub async fn serve(args: ServeOptions) -> Result<(), DaemonError> {
    let plan = plan_serve(&args)?;
    // Refuse before touching any member if another daemon owns the socket.
    ControlServer::check_free(&plan.control)?;
    check_vhost_sockets(&plan)?;
    let volumes = bring_up_all(plan.specs, &plan.opts).await?;
    let taken: Vec<String> = volumes
        .iter()
        .map(|(a, _)| a.assembly.name.clone())
        .collect();
    let md = match bring_up_md(&plan.md, &plan.opts, taken).await {
        Ok(md) => md,
        Err(e) => {
            shutdown_volumes(&volumes).await;
            return Err(e);
        }
    };
    let fences: Vec<_> = volumes
        .iter()
        .map(|_| crate::export::fence::Fence::new())
        .collect();
    let mut exports = nbd_exports(&volumes, &fences);
    exports.extend(md.iter().map(|m| m.export()));
    let server = Arc::new(NbdServer::with_tls(exports, plan.limits, plan.tls));
    let sink = PoolExports::new(
        server.exports(),
        Default::default(),
        tokio::runtime::Handle::current(),
    );
    for ((a, _), fence) in volumes.iter().zip(&fences) {
        sink.add_array(&a.assembly.name, fence.clone());
    }
    let ops_plan = OpsPlan {
        control: &plan.control,
        metrics: plan.metrics,
        pools: &plan.pools,
    };
    let started = start_pools_and_ops(&volumes, &ops_plan, &sink, &fences).await;
    let (ops, pools) = match started {
        Ok(x) => x,
        Err(e) => {
            sink.shutdown().await;
            shutdown_volumes(&volumes).await;
            return Err(e);
        }
    };
    let running = Running {
        ops,
        sink: &sink,
        pools: &pools,
        md: &md,
        volumes: &volumes,
    };
    if let Err(e) = start_md_vhost(&md, &plan.md, &sink) {
        running.stop(None).await;
        return Err(e);
    }
    let nbd_socket = plan.nbd_socket.as_deref();
    let result = run_listeners(&server, plan.nbd, nbd_socket, &volumes, plan.demo_mode).await;
    info!("shutting down: draining in-flight requests");
    running.stop(Some(&server)).await;
    if let Some(path) = nbd_socket {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// What a running daemon stops at shutdown (or when its start fails late).
struct Running<'a> {
    ops: Vec<tokio::task::JoinHandle<()>>,
    sink: &'a PoolExports,
    pools: &'a PoolService,
    md: &'a [super::md::MdServed],
    volumes: &'a [(Assembled, VolumeSpec)],
}

impl Running<'_> {
    /// Stops the control and metrics tasks and the vhost exports, drains
    /// the NBD server if it ran, then flushes pools and closes md arrays
    /// and volumes.
    async fn stop(self, server: Option<&NbdServer>) {
        for task in self.ops {
            task.abort();
        }
        // Stalled requests go on (their rules go), or the drain would wait.
        for (a, _) in self.volumes {
            a.handle.client.faults.clear();
        }
        self.sink.shutdown().await;
        if let Some(server) = server {
            server.shutdown();
            if tokio::time::timeout(DRAIN_TIMEOUT, server.wait_idle())
                .await
                .is_err()
            {
                warn!("in-flight requests did not drain within {DRAIN_TIMEOUT:?}");
            }
        }
        self.pools.flush_all().await;
        super::md::close_all(self.md).await;
        shutdown_volumes(self.volumes).await;
    }
}

/// Refuses a live vhost-user socket, or a path that is no socket, of an
/// array or a pool volume before any member is touched.
fn check_vhost_sockets(plan: &ServePlan) -> Result<(), DaemonError> {
    let pool_sockets = plan.pools.iter().flat_map(|p| &p.volumes);
    let pool_sockets = pool_sockets.filter_map(|v| v.vhost_user_blk.as_deref());
    let md_sockets = plan.md.iter().filter_map(|m| m.vhost_user_blk.as_deref());
    for socket in plan
        .specs
        .iter()
        .filter_map(|s| s.vhost_socket.as_deref())
        .chain(pool_sockets)
        .chain(md_sockets)
    {
        crate::export::vhost::check_socket_free(socket)?;
    }
    Ok(())
}

/// Decides what to serve and how: the volumes (config, members on the
/// command line, or the demo), the member engine, the listeners and the
/// NBD limits, the command line winning over the config.
fn plan_serve(args: &ServeOptions) -> Result<ServePlan, DaemonError> {
    let config = args.config.as_deref().map(Config::load).transpose()?;
    let server = config.as_ref().map(|c| &c.server);
    let demo_mode = config.is_none() && args.members.is_empty();
    let md = match &config {
        Some(config) => config.md.clone(),
        None if args.md => vec![crate::config::MdConfig {
            members: args.members.clone(),
            name: None,
            writable: args.md_writable,
            vhost_user_blk: args.vhost_user_blk.clone(),
            num_queues: args.vhost_queues,
        }],
        None => Vec::new(),
    };
    let mut specs = match &config {
        Some(config) => config_specs(config, args),
        None if args.md => Vec::new(),
        None if !demo_mode => vec![members_spec(args)],
        None => vec![demo_spec(args)],
    };
    for s in &mut specs {
        if args.no_journal {
            s.array.write_hole_protection = false;
        }
        if args.force_assemble {
            s.array.force_assemble = true;
        }
    }
    let mut nbd = args.nbd.or(server.and_then(|s| s.nbd));
    let nbd_socket = args
        .nbd_socket
        .clone()
        .or_else(|| server.and_then(|s| s.nbd_socket.clone()));
    if nbd.is_none() && nbd_socket.is_none() {
        nbd = Some(DEFAULT_NBD_ADDR.parse().expect("valid default address"));
    }
    let config_control = server.and_then(|s| s.control.clone());
    let limit_keys = server.map(|s| s.nbd_limits).unwrap_or_default();
    let tls = super::serve_tls::load(&args.tls, server.map(|s| &s.tls), nbd)?;
    Ok(ServePlan {
        opts: member_options(args, server),
        nbd,
        nbd_socket,
        control: control_path(args, config_control, demo_mode),
        metrics: args.metrics.or(server.and_then(|s| s.metrics)),
        limits: nbd_limits(&args.nbd_limits, limit_keys),
        tls,
        specs,
        md,
        pools: config.as_ref().map(|c| c.pools.clone()).unwrap_or_default(),
        demo_mode,
    })
}

/// The md arrays given by `--md` or `[[md]]`.
async fn bring_up_md(
    specs: &[crate::config::MdConfig],
    opts: &MemberOptions,
    mut taken: Vec<String>,
) -> Result<Vec<super::md::MdServed>, DaemonError> {
    let mut served = Vec::with_capacity(specs.len());
    for spec in specs {
        let name = spec.name.as_deref();
        let md = super::md::bring_up(&spec.members, name, spec.writable, opts).await?;
        md.claim_name(&mut taken)?;
        served.push(md);
    }
    Ok(served)
}

/// The member engine: the command line's, else `VRAID_IO_ENGINE`, else the
/// config's, else auto.
fn member_options(args: &ServeOptions, server: Option<&ServerConfig>) -> MemberOptions {
    let mut opts = engine_choice(args, server);
    if let Some(t) = server.and_then(|s| s.member_timeout) {
        if std::env::var_os(crate::remote::RemoteOptions::ENV).is_none() {
            opts.remote.member_timeout = t;
        }
    }
    opts
}

/// The engine part of [`member_options`].
fn engine_choice(args: &ServeOptions, server: Option<&ServerConfig>) -> MemberOptions {
    match server {
        Some(s) if args.io_engine.is_none() && std::env::var_os(EngineKind::ENV).is_none() => {
            bringup::engine_options(s.io_engine)
        }
        _ => bringup::member_options(args.io_engine),
    }
}

/// The control socket: the command line's, else the config's, else
/// `$VRAID_CONTROL`, else in the demo directory or the working directory.
fn control_path(args: &ServeOptions, config: Option<PathBuf>, demo_mode: bool) -> PathBuf {
    args.control
        .clone()
        .or(config)
        .or_else(|| std::env::var_os(crate::control::client::CONTROL_ENV).map(PathBuf::from))
        .unwrap_or_else(|| {
            if demo_mode {
                args.demo_dir.join("control.sock")
            } else {
                PathBuf::from(crate::control::client::DEFAULT_CONTROL)
            }
        })
}

/// The volumes of a config file, with the command line's overrides.
fn config_specs(config: &Config, args: &ServeOptions) -> Vec<VolumeSpec> {
    config
        .volumes
        .iter()
        .map(|v| VolumeSpec {
            expected_name: Some(v.name.clone()),
            members: v.members.clone(),
            create: v.create.as_ref().map(|c| CreateRequest {
                name: v.name.clone(),
                level: v.level,
                chunk_size: v.chunk_size,
                member_size: c.member_size,
                force: false,
                checksum_layout: c.checksum_layout,
            }),
            read_only: v.read_only || args.read_only,
            description: v.description.clone(),
            faults: v.faults.clone(),
            vhost_socket: v.vhost_user_blk.clone(),
            num_queues: v.num_queues,
            array: ArrayOptions {
                spares: v.spares.clone(),
                rebuild_max_mbps: v.rebuild_max_mbps,
                bitmap: v.bitmap,
                write_hole_protection: v.write_hole_protection,
                create_size: v.create.as_ref().map(|c| c.member_size),
                scrub_interval: v.scrub_interval,
                scrub_repair: v.scrub_repair,
                checksums: v.checksums && !args.no_checksums,
                read_only: v.read_only || args.read_only,
                force_assemble: v.force_assemble || args.force_assemble,
                checksum_cache: args.checksum_cache.unwrap_or(v.checksum_cache),
                mirror: v.mirror.clone(),
                // Member `volatile` rules act from the first member write.
                armed_faults: v.faults.clone(),
            },
            client: ClientSettings {
                qos: v.qos,
                cache: v.cache,
                cache_size: v.cache_size,
                faults: v.volume_faults.clone(),
            },
        })
        .collect()
}

/// The one volume whose members are given on the command line.
fn members_spec(args: &ServeOptions) -> VolumeSpec {
    VolumeSpec {
        expected_name: None,
        members: args.members.clone(),
        create: None,
        read_only: args.read_only,
        description: None,
        faults: Vec::new(),
        vhost_socket: args.vhost_user_blk.clone(),
        num_queues: args.vhost_queues,
        array: command_line_array(args),
        client: ClientSettings::default(),
    }
}

/// The built-in demo volume (created on first start).
fn demo_spec(args: &ServeOptions) -> VolumeSpec {
    let d = demo::spec(&args.demo_dir);
    VolumeSpec {
        expected_name: Some(d.name.clone()),
        members: d.members,
        create: Some(d.create),
        read_only: args.read_only,
        description: Some(d.description),
        faults: Vec::new(),
        vhost_socket: Some(
            args.vhost_user_blk
                .clone()
                .unwrap_or_else(|| args.demo_dir.join(demo::DEMO_SOCKET)),
        ),
        num_queues: args.vhost_queues,
        array: command_line_array(args),
        client: ClientSettings::default(),
    }
}

/// Array options of a volume without a config: defaults and the flags.
fn command_line_array(args: &ServeOptions) -> ArrayOptions {
    ArrayOptions {
        checksums: !args.no_checksums,
        read_only: args.read_only,
        checksum_cache: args
            .checksum_cache
            .unwrap_or(crate::integrity::cache::DEFAULT_BUDGET),
        mirror: args.mirror.clone(),
        ..ArrayOptions::default()
    }
}

/// Brings every volume up in order; on a failure, shuts down the ones up.
async fn bring_up_all(
    specs: Vec<VolumeSpec>,
    opts: &MemberOptions,
) -> Result<Vec<(Assembled, VolumeSpec)>, DaemonError> {
    let mut volumes: Vec<(Assembled, VolumeSpec)> = Vec::new();
    for spec in specs {
        match bring_up(&spec, opts).await {
            Ok(a) => volumes.push((a, spec)),
            Err(e) => {
                shutdown_volumes(&volumes).await;
                return Err(e);
            }
        }
    }
    Ok(volumes)
}

/// The NBD export of every volume (client I/O counted in its stats),
/// each behind its fence (cut when a pool takes the array over).
fn nbd_exports(volumes: &[(Assembled, VolumeSpec)], fences: &[Arc<Fence>]) -> Vec<Export> {
    volumes
        .iter()
        .zip(fences)
        .map(|((a, spec), fence)| Export {
            name: a.assembly.name.clone(),
            description: spec.description.clone().unwrap_or_else(|| {
                format!(
                    "vraid {} volume, {} members",
                    a.assembly.level, a.assembly.member_count
                )
            }),
            device: array_device(a, fence),
            read_only: spec.read_only,
            preferred_block: 4096,
            multi_conn: true,
            contexts: Default::default(),
        })
        .collect()
}

/// What an array's own exports serve: its client stack, counted, behind
/// its fence.
fn array_device(a: &Assembled, fence: &Arc<Fence>) -> Arc<dyn BlockDevice> {
    let counted = StatsDevice::new(a.handle.client.device.clone(), a.handle.stats.clone());
    Arc::new(FencedDevice::new(Arc::new(counted), fence.clone()))
}

/// Opens the pools (the config's laid and their volumes created), starts
/// the control socket and metrics, then the arrays' vhost-user-blk
/// exports (not of an array that holds a pool).
/// What [`start_pools_and_ops`] takes of the plan.
struct OpsPlan<'a> {
    control: &'a Path,
    metrics: Option<SocketAddr>,
    pools: &'a [crate::config::PoolConfig],
}

async fn start_pools_and_ops(
    volumes: &[(Assembled, VolumeSpec)],
    plan: &OpsPlan<'_>,
    sink: &Arc<PoolExports>,
    fences: &[Arc<Fence>],
) -> Result<(Vec<tokio::task::JoinHandle<()>>, Arc<PoolService>), DaemonError> {
    for p in plan.pools {
        for v in &p.volumes {
            if let Some(socket) = &v.vhost_user_blk {
                sink.plan_vhost(
                    &v.name,
                    VhostPlan {
                        socket: socket.clone(),
                        num_queues: v.num_queues,
                    },
                );
            }
        }
    }
    let pools = super::pools::open_pools(volumes, sink.clone()).await?;
    super::pool_config::apply(plan.pools, &pools, sink).await?;
    let ops = start_ops(volumes, plan.control, plan.metrics, (pools.clone(), sink)).await?;
    let pooled = pools.pooled().await;
    if let Err(e) = start_vhost(volumes, &pooled, sink, fences) {
        for task in ops {
            task.abort();
        }
        return Err(e);
    }
    Ok((ops, pools))
}

/// Installs the config's member rules; a `volatile` one is in its slot
/// already (armed on the member's power gate at open, `arm_volatile`),
/// and only checked to be on the member the config names.
fn install_faults(a: &Assembled, faults: &[crate::config::FaultConfig]) -> Result<(), DaemonError> {
    let armed = |role: usize| {
        let m = &a.handle.members[role];
        m.faults
            .rules()
            .iter()
            .any(|r| r.spec.kind == FaultKind::Volatile)
    };
    let mut volatile_roles = Vec::new();
    for f in faults {
        let added = a.handle.find_member(&f.member).and_then(|m| {
            if f.spec.kind == FaultKind::Volatile && armed(m.role) {
                volatile_roles.push(m.role);
                return Ok(0);
            }
            a.handle.add_fault(m.role, f.spec.clone())
        });
        if let Err(e) = added {
            return Err(DaemonError::Usage(format!(
                "volume {}: start-up fault on member {}: {e}",
                a.handle.name, f.member
            )));
        }
    }
    // A role number is armed by its position in `members`: refuse a
    // device that joined another role than the number said.
    match (0..a.handle.members.len()).find(|r| armed(*r) && !volatile_roles.contains(r)) {
        Some(role) => Err(DaemonError::Usage(format!(
            "volume {}: a start-up volatile fault armed by position in `members` landed on role {role}; name the member by its path",
            a.handle.name
        ))),
        None => Ok(()),
    }
}

/// Installs start-up faults, binds the control socket and the metrics
/// listener, and runs them as tasks (aborted at shutdown).
async fn start_ops(
    volumes: &[(Assembled, VolumeSpec)],
    control: &Path,
    metrics: Option<SocketAddr>,
    (pools, sink): (Arc<PoolService>, &Arc<PoolExports>),
) -> Result<Vec<tokio::task::JoinHandle<()>>, DaemonError> {
    for (a, spec) in volumes {
        start_client(a, &spec.client).await?;
        install_faults(a, &spec.faults)?;
    }
    let registry = Arc::new(
        Registry::new(volumes.iter().map(|(a, _)| a.handle.clone()).collect())
            .with_pools(pools)
            .with_pool_exports(sink.clone()),
    );
    let mut tasks = vec![tokio::spawn(watch_pool_fill(registry.clone()))];
    let metrics_listener = match metrics {
        Some(addr) => Some((
            addr,
            crate::metrics::http::bind(addr)
                .await
                .map_err(|e| DaemonError::Listen {
                    what: format!("metrics address {addr}"),
                    source: e,
                })?,
        )),
        None => None,
    };
    let server = ControlServer::bind(control, registry.clone())?;
    info!("control socket: {}", show_path(server.path()));
    tasks.push(tokio::spawn(async move {
        if let Err(e) = server.serve().await {
            warn!("control socket stopped: {e}");
        }
    }));
    if let Some((addr, listener)) = metrics_listener {
        info!(
            "metrics: http://{}/metrics",
            listener.local_addr().unwrap_or(addr)
        );
        tasks.push(tokio::spawn(async move {
            if let Err(e) = crate::metrics::http::serve(listener, registry).await {
                warn!("metrics listener stopped: {e}");
            }
        }));
    }
    Ok(tasks)
}

/// How often the pools' fill levels are looked at.
const FILL_CHECK: Duration = Duration::from_millis(500);

/// Records an event in the pool's array log for every fill threshold a
/// pool crosses (`pool::fill`), checking every [`FILL_CHECK`].
async fn watch_pool_fill(reg: Arc<Registry>) {
    let mut tick = tokio::time::interval(FILL_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok(pools) = reg.pools() else { return };
        for (l, e) in pools.fill_crossings().await {
            let s = &l.space;
            let text = match e.kind {
                "pool_fill" => format!(
                    "pool {} is {:.1}% full (threshold {}%): {} of {} bytes used, {} free, {:.2}x overcommitted",
                    l.pool, e.used_percent, e.threshold, s.used_bytes, s.total_bytes, s.free_bytes, l.overcommit
                ),
                _ => format!(
                    "pool {} is back to {:.1}% full, under threshold {}% (re-armed)",
                    l.pool, e.used_percent, e.threshold
                ),
            };
            if let Ok(v) = reg.volume(&l.pool) {
                v.events.push(&l.pool, e.kind, None, text);
            }
        }
    }
}

/// Sets a volume's write cache and installs its start-up volume faults.
async fn start_client(a: &Assembled, c: &ClientSettings) -> Result<(), DaemonError> {
    let name = &a.handle.name;
    let cache = &a.handle.client.cache;
    let cache_failed =
        |e: crate::block::BlockError| DaemonError::Usage(format!("volume {name}: cache: {e}"));
    cache
        .set_capacity(c.cache_size)
        .await
        .map_err(cache_failed)?;
    cache.set_mode(c.cache).await.map_err(cache_failed)?;
    a.handle.client.qos.set(c.qos);
    for f in &c.faults {
        a.handle.add_volume_fault(f.spec.clone()).map_err(|e| {
            DaemonError::Usage(format!("volume {name}: start-up volume fault: {e}"))
        })?;
    }
    Ok(())
}

/// Starts the vhost-user-blk export of every array that has a socket,
/// except those holding a pool (their volumes are exported, never the raw
/// array: the socket is refused with an error in the log); the servers go
/// to `sink`, which stops them at shutdown or when a pool takes the array.
fn start_vhost(
    volumes: &[(Assembled, VolumeSpec)],
    pooled: &[String],
    sink: &PoolExports,
    fences: &[Arc<Fence>],
) -> Result<(), DaemonError> {
    for ((a, spec), fence) in volumes.iter().zip(fences) {
        let Some(socket) = &spec.vhost_socket else {
            continue;
        };
        let name = &a.assembly.name;
        if pooled.contains(name) {
            tracing::error!(
                array = %name,
                socket = %socket.display(),
                "array holds a pool: not exported raw over vhost-user-blk; give its volumes \
                 sockets instead ([[pool.volume]] vhost_user_blk, vraid volume create --vhost-socket)"
            );
            continue;
        }
        let geometry = a.volume.geometry();
        let export = VhostExport {
            device: array_device(a, fence),
            socket: socket.clone(),
            name: name.clone(),
            read_only: spec.read_only,
            num_queues: spec.num_queues,
            min_io: geometry.chunk().get(),
            opt_io: geometry.stripe_data_size(),
        };
        let server = VhostServer::start(export, tokio::runtime::Handle::current())?;
        sink.adopt_vhost(name, server);
    }
    Ok(())
}

/// Starts the vhost-user-blk export of every md array that has a socket;
/// the servers go to `sink`, which stops them at shutdown.
fn start_md_vhost(
    md: &[super::md::MdServed],
    specs: &[crate::config::MdConfig],
    sink: &PoolExports,
) -> Result<(), DaemonError> {
    for (m, spec) in md.iter().zip(specs) {
        let Some(socket) = &spec.vhost_user_blk else {
            continue;
        };
        let export = m.vhost_export(socket.clone(), spec.num_queues);
        let name = format!("md:{}", export.name);
        let server = VhostServer::start(export, tokio::runtime::Handle::current())?;
        sink.adopt_vhost(&name, server);
    }
    Ok(())
}

/// Creates the array first when asked to and no member holds a superblock yet,
/// then assembles it.
async fn bring_up(spec: &VolumeSpec, opts: &MemberOptions) -> Result<Assembled, DaemonError> {
    if let Some(create) = &spec.create {
        if !any_member_initialised(&spec.members).await {
            if spec.read_only {
                return Err(DaemonError::Usage(format!(
                    "volume {}: read-only, so its members cannot be created",
                    create.name
                )));
            }
            info!(
                "creating {} ({}) on {}",
                create.name,
                create.level,
                super::paths_display(&spec.members)
            );
            bringup::create_array(&spec.members, create, opts).await?;
        }
    }
    let assembled = bringup::assemble_volume_with(&spec.members, opts, &spec.array).await?;
    if let Some(expected) = &spec.expected_name {
        if &assembled.assembly.name != expected {
            let found = assembled.assembly.name.clone();
            shutdown_volumes(&[(assembled, VolumeSpec::named(expected))]).await;
            return Err(DaemonError::Usage(format!(
                "volume {expected}: its members hold array {found:?}, not {expected:?}"
            )));
        }
    }
    Ok(assembled)
}

impl VolumeSpec {
    fn named(name: &str) -> VolumeSpec {
        VolumeSpec {
            expected_name: Some(name.to_string()),
            members: Vec::new(),
            create: None,
            read_only: false,
            description: None,
            faults: Vec::new(),
            vhost_socket: None,
            num_queues: 1,
            array: ArrayOptions::default(),
            client: ClientSettings::default(),
        }
    }
}

async fn any_member_initialised(paths: &[PathBuf]) -> bool {
    for p in paths {
        if (p.exists() || crate::remote::is_nbd_uri(p))
            && matches!(
                bringup::examine_member(p).await,
                Ok(bringup::Examined::Member(_))
            )
        {
            return true;
        }
    }
    false
}

/// Flushes every volume and marks its superblocks clean.
async fn shutdown_volumes(volumes: &[(Assembled, VolumeSpec)]) {
    for (a, _) in volumes {
        let name = &a.assembly.name;
        // A clean stop writes the volatile cache back (no power was cut).
        if let Err(e) = a
            .handle
            .client
            .cache
            .set_mode(CacheMode::Writethrough)
            .await
        {
            warn!(
                "{name}: writing back the write cache failed: {}",
                error_chain(&e)
            );
        }
        let resynced = a.array.shutdown().await;
        if let Err(e) = a.volume.flush().await {
            warn!("{name}: final flush failed: {}", error_chain(&e));
            continue;
        }
        if let Some(c) = &a.checksums {
            // Only active members matter: a failed one is not trusted again.
            let states = a.volume.member_states();
            let bad = c
                .writeback_roles()
                .await
                .into_iter()
                .find(|(role, _)| states.get(*role) == Some(&crate::raid::MemberState::Active));
            if let Some((role, e)) = bad {
                warn!(
                    "{name}: writing back the block checksums of member {role} failed: {}; leaving the array dirty",
                    error_chain(&e)
                );
                continue;
            }
        }
        if !resynced {
            warn!("{name}: crash resync unfinished; leaving the array dirty");
            continue;
        }
        if a.volume.needs_resync_after_no_space() {
            warn!(
                "{name}: writes failed for lack of space; leaving the array dirty so that the \
                 next start resyncs the regions they touched"
            );
            continue;
        }
        if a.assembly.metadata.is_read_only().await {
            info!("{name}: stopped (read-only: members left as they were)");
            continue;
        }
        match a.assembly.mark_clean().await {
            Ok(()) => info!("{name}: stopped cleanly"),
            Err(e) => warn!("{name}: could not mark clean: {}", error_chain(&e)),
        }
    }
}

/// The NBD limits: command line over config over defaults, the connection
/// limit fitted under `RLIMIT_NOFILE` so accept never runs out of descriptors
/// because of idle clients.
fn nbd_limits(args: &NbdLimitKeys, keys: NbdLimitKeys) -> NbdLimits {
    let d = NbdLimits::default();
    let mut limits = NbdLimits {
        handshake_timeout: args
            .handshake_timeout
            .or(keys.handshake_timeout)
            .unwrap_or(d.handshake_timeout),
        max_connections: args
            .max_connections
            .or(keys.max_connections)
            .unwrap_or(d.max_connections),
        max_connections_per_client: args
            .max_connections_per_client
            .or(keys.max_connections_per_client)
            .unwrap_or(d.max_connections_per_client),
        connection_memory: args
            .connection_memory
            .or(keys.connection_memory)
            .unwrap_or(d.connection_memory),
        memory: args.memory.or(keys.memory).unwrap_or(d.memory),
        write_timeout: args
            .write_timeout
            .or(keys.write_timeout)
            .unwrap_or(d.write_timeout),
        min_drain_rate: args
            .min_drain_rate
            .or(keys.min_drain_rate)
            .unwrap_or(d.min_drain_rate),
        idle_timeout: args.idle_timeout.or(keys.idle_timeout),
    };
    if let Some((fd_limit, fds_open)) = descriptor_budget() {
        if let Some(fitted) = limits.fit_fd_limit(fd_limit, fds_open) {
            warn!(
                "NBD connection limit lowered from {} to {fitted} to fit the descriptor \
                 limit ({fd_limit}, {fds_open} open)",
                limits.max_connections
            );
            limits.max_connections = fitted;
        }
    }
    info!(
        handshake_timeout = ?limits.handshake_timeout,
        max_connections = limits.max_connections,
        max_connections_per_client = limits.max_connections_per_client,
        connection_memory = limits.connection_memory,
        memory = limits.memory,
        write_timeout = ?limits.write_timeout,
        min_drain_rate = limits.min_drain_rate,
        idle_timeout = ?limits.idle_timeout,
        "NBD limits"
    );
    limits
}

/// `RLIMIT_NOFILE` (soft) and the descriptors open now, if both are known.
fn descriptor_budget() -> Option<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    let open = std::fs::read_dir("/proc/self/fd").ok()?.count();
    Some((lim.rlim_cur, u64::try_from(open).ok()?))
}

async fn run_listeners(
    server: &Arc<NbdServer>,
    nbd: Option<SocketAddr>,
    nbd_socket: Option<&Path>,
    volumes: &[(Assembled, VolumeSpec)],
    demo_mode: bool,
) -> Result<(), DaemonError> {
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| DaemonError::Listen {
        what: "SIGTERM".into(),
        source: e,
    })?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| DaemonError::Listen {
        what: "SIGINT".into(),
        source: e,
    })?;
    let mut tasks = tokio::task::JoinSet::new();
    let mut tcp_addr = None;
    if let Some(addr) = nbd {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| DaemonError::Listen {
                what: format!("NBD address {addr}"),
                source: e,
            })?;
        tcp_addr = Some(listener.local_addr().unwrap_or(addr));
        tasks.spawn(server.clone().serve_tcp(listener));
    }
    if let Some(path) = nbd_socket {
        let listener = bind_unix(path)?;
        tasks.spawn(server.clone().serve_unix(listener));
    }
    print_ready(tcp_addr, nbd_socket, volumes, demo_mode);

    tokio::select! {
        _ = sigterm.recv() => info!("SIGTERM received"),
        _ = sigint.recv() => info!("SIGINT received"),
        Some(res) = tasks.join_next() => {
            if let Ok(Err(e)) = res {
                return Err(DaemonError::Listen { what: "NBD".into(), source: e });
            }
        }
    }
    Ok(())
}

/// Binds a Unix socket, replacing a stale socket file but refusing a live one.
fn bind_unix(path: &Path) -> Result<UnixListener, DaemonError> {
    let err = |source| DaemonError::Listen {
        what: format!("NBD socket {}", show_path(path)),
        source,
    };
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(DaemonError::Usage(format!(
                "NBD socket {} is in use by another server",
                show_path(path)
            )));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

fn print_ready(
    tcp: Option<SocketAddr>,
    unix: Option<&Path>,
    volumes: &[(Assembled, VolumeSpec)],
    demo_mode: bool,
) {
    let mut out = String::new();
    for (a, spec) in volumes {
        let name = &a.assembly.name;
        out.push_str(&format!(
            "vraid: serving {name}: {}, {} of {} members{}, {} bytes{}\n",
            a.assembly.level,
            a.volume
                .member_states()
                .iter()
                .filter(|s| matches!(s, crate::raid::MemberState::Active))
                .count(),
            a.assembly.member_count,
            if a.volume.is_degraded() {
                " (DEGRADED)"
            } else {
                ""
            },
            a.volume.size(),
            if spec.read_only { ", read-only" } else { "" },
        ));
        if let Some(addr) = tcp {
            out.push_str(&format!("  NBD URI:  nbd://{addr}/{name}\n"));
        }
        if let Some(p) = unix {
            out.push_str(&format!(
                "  NBD URI:  nbd+unix:///{name}?socket={}\n",
                p.display()
            ));
        }
        if let Some(p) = &spec.vhost_socket {
            out.push_str(&format!(
                "  vhost-user-blk: {} ({} queues)\n",
                p.display(),
                spec.num_queues
            ));
        }
    }
    if let (Some(addr), Some((a, _))) = (tcp, volumes.first()) {
        let uri = format!("nbd://{addr}/{}", a.assembly.name);
        out.push_str(&format!(
            "\nTry it:\n  \
             nbdinfo {uri}\n  \
             qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' {uri}\n  \
             qemu-img convert -n -f raw -O raw disk.img {uri}\n  \
             qemu-system-x86_64 -m 1G -drive file={uri},format=raw,if=virtio ...\n  \
             mkdir -p /tmp/vraid-mnt && nbdfuse /tmp/vraid-mnt {uri} &   # then: losetup -f --show /tmp/vraid-mnt/nbd\n"
        ));
    }
    if demo_mode {
        out.push_str(
            "\nDemo array in ./vraid-data (4 sparse members, RAID-5). Ctrl-C stops cleanly.\n",
        );
    }
    print!("{out}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
}
