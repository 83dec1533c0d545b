//! Command-line definitions (clap). Parsing only, then each command's
//! arguments become the plain options the daemon takes; `main.rs`
//! dispatches.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::daemon::{CreateRequest, ServeOptions};
use crate::duration;
use crate::member::EngineKind;
use crate::raid::Level;
use crate::units::parse_size;

/// Userspace software RAID 0/1/5, exported over NBD.
#[derive(Debug, Parser)]
#[command(name = "vraid", version, about, propagate_version = true)]
pub struct Cli {
    /// Log filter (tracing env-filter syntax); overrides RUST_LOG.
    #[arg(long, global = true, value_name = "FILTER")]
    pub log: Option<String>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an array: write superblocks to MEMBERs (files are created sparse if missing).
    Create(CreateArgs),
    /// Print a member's superblock.
    Examine(ExamineArgs),
    /// Assemble arrays and export them over NBD.
    Serve(ServeArgs),
    /// Show volumes, members, counters and events of a running daemon.
    Status(StatusArgs),
    /// Mark a member failed (the volume goes on degraded); the path of a
    /// replace's new member stops that replace (the old member keeps serving).
    Fail(MemberCmdArgs),
    /// Take a failed or missing member out of its slot, or an idle hot spare (by path) out of the spares.
    Remove(MemberCmdArgs),
    /// Add a member: rebuilt into a failed or missing slot, else kept as a hot spare.
    Add(AddArgs),
    /// Copy a member onto a new one while it keeps serving (like mdadm --replace).
    Replace(ReplaceArgs),
    /// Change a running volume's settings.
    Set(SetArgs),
    /// Check every member block (and with --repair fix what is bad) online.
    Scrub(ScrubArgs),
    /// Inject, list and clear member faults in a running daemon.
    #[command(subcommand)]
    Fault(FaultCommand),
    /// Record a volume's writes to a log file; replay it, list its crash points, check each.
    #[command(subcommand)]
    Log(LogCommand),
    /// Pools on arrays: create, list, check.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Thin volumes of pools: create, delete, list, resize, rename, snapshot, clone, revert.
    #[command(subcommand)]
    Volume(VolumeCommand),
}

/// `--control PATH` of the client verbs.
#[derive(Debug, Args)]
pub struct ControlArg {
    /// Control socket of the daemon (default: $VRAID_CONTROL, else
    /// ./vraid-data/control.sock or ./vraid-control.sock, whichever exists).
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
}

/// `vraid status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Control socket.
    #[command(flatten)]
    pub control: ControlArg,
    /// Print the daemon's JSON reply.
    #[arg(long)]
    pub json: bool,
    /// Redraw every second until Ctrl-C.
    #[arg(long, conflicts_with = "json")]
    pub watch: bool,
    /// Only this volume.
    #[arg(value_name = "VOLUME")]
    pub volume: Option<String>,
}

/// `vraid fail` / `vraid remove`.
#[derive(Debug, Args)]
pub struct MemberCmdArgs {
    /// Control socket.
    #[command(flatten)]
    pub control: ControlArg,
    /// Volume name.
    pub volume: String,
    /// Member path as given at start-up, or its role number.
    pub member: String,
}

/// `vraid add`.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// Control socket.
    #[command(flatten)]
    pub control: ControlArg,
    /// Volume name.
    pub volume: String,
    /// New member file or block device (must exist, at least the members' size).
    pub path: PathBuf,
    /// Overwrite a device holding a filesystem, another array or other
    /// data (never a live member or a device another process holds).
    #[arg(long)]
    pub force: bool,
}

/// `vraid replace`.
#[derive(Debug, Args)]
pub struct ReplaceArgs {
    /// Control socket.
    #[command(flatten)]
    pub control: ControlArg,
    /// Volume name.
    pub volume: String,
    /// Member to replace: its path as given at start-up, or its role number.
    pub member: String,
    /// New member file or block device.
    pub path: PathBuf,
    /// Overwrite a device holding a filesystem, another array or other
    /// data (never a live member or a device another process holds).
    #[arg(long)]
    pub force: bool,
}

/// `vraid set`.
#[derive(Debug, Args)]
pub struct SetArgs {
    /// Control socket.
    #[command(flatten)]
    pub control: ControlArg,
    /// Volume name.
    pub volume: String,
    /// Rebuild/resync rate limit in MB/s (0 = unlimited).
    #[arg(long, value_name = "N", required_unless_present_any = [
        "cache", "cache_size", "iops", "read_iops", "write_iops", "bps", "read_bps",
        "write_bps", "burst", "write_mostly", "write_behind", "write_behind_requests",
    ])]
    pub rebuild_max_mbps: Option<u64>,
    /// Write cache: `volatile` holds acknowledged writes in memory until
    /// FLUSH or FUA (a power cut loses them), `writethrough` writes them
    /// at once (switching to it writes the cache back).
    #[arg(long, value_enum)]
    pub cache: Option<CacheModeArg>,
    /// Write cache budget (e.g. 64M; at least 64K); when full, the oldest
    /// writes go to the volume.
    #[arg(long, value_parser = parse_size_arg, value_name = "SIZE")]
    pub cache_size: Option<u64>,
    /// QoS: reads and writes per second together (0 or `none`: no limit).
    /// A volume at a limit queues its requests; none fails.
    #[arg(long, value_parser = parse_count_limit, value_name = "N")]
    pub iops: Option<u64>,
    /// QoS: reads per second.
    #[arg(long, value_parser = parse_count_limit, value_name = "N")]
    pub read_iops: Option<u64>,
    /// QoS: writes (and TRIMs, WRITE_ZEROES) per second.
    #[arg(long, value_parser = parse_count_limit, value_name = "N")]
    pub write_iops: Option<u64>,
    /// QoS: bytes read and written per second together (e.g. 100M).
    #[arg(long, value_parser = parse_size_limit, value_name = "SIZE")]
    pub bps: Option<u64>,
    /// QoS: bytes read per second.
    #[arg(long, value_parser = parse_size_limit, value_name = "SIZE")]
    pub read_bps: Option<u64>,
    /// QoS: bytes written per second.
    #[arg(long, value_parser = parse_size_limit, value_name = "SIZE")]
    pub write_bps: Option<u64>,
    /// QoS: how much an idle volume saves up, as time at each rate
    /// (e.g. 500ms, 2s; default 100ms).
    #[arg(long, value_parser = parse_burst, value_name = "DURATION")]
    pub burst: Option<u64>,
    /// RAID-1: the member (path or role number) whose `--write-mostly`
    /// changes.
    #[arg(long, value_name = "MEMBER", requires = "write_mostly")]
    pub member: Option<String>,
    /// RAID-1: `on` reads the member only when no other can serve (md's
    /// write-mostly); kept in the superblocks (FORMAT.md §6).
    #[arg(long, value_parser = parse_on_off, value_name = "on|off", requires = "member")]
    pub write_mostly: Option<bool>,
    /// RAID-1: write-behind for the write-mostly members, the lag bound in
    /// bytes (e.g. 8M), or `off`; kept in the superblocks.
    #[arg(long, value_parser = parse_behind, value_name = "SIZE|off")]
    pub write_behind: Option<u64>,
    /// RAID-1: the write-behind lag bound in requests.
    #[arg(long, value_name = "N")]
    pub write_behind_requests: Option<u64>,
}

/// `on` or `off`.
fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{s:?}: expected on or off")),
    }
}

/// A write-behind bound: a size (at least 1), or `off` (0).
fn parse_behind(s: &str) -> Result<u64, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(0);
    }
    match parse_size_arg(s)? {
        0 => Err("0: give a size, or `off`".to_string()),
        n => Ok(n),
    }
}

impl SetArgs {
    /// True when a mirror policy is to change.
    pub fn sets_mirror(&self) -> bool {
        self.write_mostly.is_some()
            || self.write_behind.is_some()
            || self.write_behind_requests.is_some()
    }

    /// True when a QoS limit is to change.
    pub fn sets_qos(&self) -> bool {
        [
            self.iops,
            self.read_iops,
            self.write_iops,
            self.bps,
            self.read_bps,
            self.write_bps,
            self.burst,
        ]
        .iter()
        .any(Option::is_some)
    }
}

/// A count limit: a number, 0 or `none` (no limit).
fn parse_count_limit(s: &str) -> Result<u64, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(0);
    }
    s.parse::<u64>()
        .map_err(|_| format!("{s:?} is not a count (or `none`)"))
}

/// A bytes-per-second limit: a size (100M), 0 or `none` (no limit).
fn parse_size_limit(s: &str) -> Result<u64, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(0);
    }
    parse_size_arg(s)
}

/// A burst as whole milliseconds.
fn parse_burst(s: &str) -> Result<u64, String> {
    let d = crate::duration::parse(s)?;
    Ok(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `vraid set --cache`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CacheModeArg {
    /// Writes reach the volume before they are acknowledged.
    Writethrough,
    /// Writes stay in memory until FLUSH or FUA.
    Volatile,
}

/// `vraid fault powercut --keep`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KeepArg {
    /// Drop every unflushed write.
    None,
    /// Keep the oldest N unflushed writes (N at random).
    OrderedPrefix,
    /// Keep each unflushed write with probability 1/2.
    RandomSubset,
}

/// `vraid scrub`.
#[derive(Debug, Args)]
pub struct ScrubArgs {
    /// Control socket.
    #[command(flatten)]
    pub control: ControlArg,
    /// Volume name.
    pub volume: String,
    /// Rewrite bad blocks from redundancy and fix mismatches (md `repair`);
    /// without it nothing is written (md `check`).
    #[arg(long, conflicts_with = "cancel")]
    pub repair: bool,
    /// Stop the running scrub.
    #[arg(long)]
    pub cancel: bool,
    /// Start it and return at once (watch with `vraid status`).
    #[arg(long, conflicts_with = "cancel")]
    pub no_wait: bool,
    /// Print the daemon's JSON reply.
    #[arg(long)]
    pub json: bool,
}

/// `vraid fault ...`.
#[derive(Debug, Subcommand)]
pub enum FaultCommand {
    /// Add a fault rule to a member.
    Add(FaultAddArgs),
    /// List fault rules with their hit counters.
    List(FaultListArgs),
    /// Remove one fault rule (by id), or all of them.
    Clear(FaultClearArgs),
    /// Cut a volume's power: drop the writes its volatile cache holds.
    Powercut(PowercutArgs),
}

/// `vraid fault powercut`.
#[derive(Debug, Args)]
pub struct PowercutArgs {
    /// Control socket.
    #[command(flatten)]
    pub control: ControlArg,
    /// Volume name.
    pub volume: String,
    /// Which unflushed writes survive.
    #[arg(long, value_enum, default_value = "none")]
    pub keep: KeepArg,
    /// Seed of the choice (default: from the clock; printed, to repeat a cut).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print the daemon's JSON reply.
    #[arg(long)]
    pub json: bool,
}

/// Kind of injected fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FaultKindArg {
    /// Fail with EIO.
    Error,
    /// Wait, then run normally.
    Delay,
    /// Flip the bytes read or written.
    Corrupt,
    /// Fail every operation (the member is gone).
    Offline,
    /// Volume only: hold matching requests until the rule is cleared.
    Stall,
    /// Volume only: fail matching writes with EPERM.
    Readonly,
    /// Volume only: the range's sectors fail reads until written (dm-dust).
    BadSector,
    /// Volume only: a write over a block lands a prefix of its blocks, then fails.
    Torn,
    /// Member only: a volatile write cache; `fault powercut` drops what the member did not flush.
    Volatile,
}

/// Operations a fault applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FaultOpArg {
    /// Reads.
    Read,
    /// Writes, discards, zeroing, flushes.
    Write,
    /// Everything.
    Any,
}

/// `vraid fault add`.
#[derive(Debug, Args)]
pub struct FaultAddArgs {
    /// Control socket.
    #[command(flatten)]
    pub control: ControlArg,
    /// Volume name.
    pub volume: String,
    /// Member path as given at start-up, or its role number (not with --volume).
    #[arg(required_unless_present = "on_volume", conflicts_with = "on_volume")]
    pub member: Option<String>,
    /// A volume fault: acts on what the volume's clients see.
    #[arg(long = "volume", id = "on_volume")]
    pub on_volume: bool,
    /// What the fault does.
    #[arg(long, value_enum)]
    pub kind: FaultKindArg,
    /// Which operations it hits.
    #[arg(long, value_enum, default_value = "any")]
    pub op: FaultOpArg,
    /// First member data byte (volume byte with --volume) affected (e.g. 1M).
    #[arg(long, value_parser = parse_size_arg)]
    pub offset: Option<u64>,
    /// Bytes affected from --offset (e.g. 64K).
    #[arg(long, value_parser = parse_size_arg)]
    pub length: Option<u64>,
    /// Chance each matching operation is hit (0..1).
    #[arg(long, value_parser = parse_probability)]
    pub probability: Option<f64>,
    /// Delay of --kind delay (e.g. 50ms, 2s, 500us).
    #[arg(long, value_parser = duration::parse)]
    pub delay: Option<std::time::Duration>,
    /// Expire after this many hits.
    #[arg(long)]
    pub count: Option<u64>,
}

/// `vraid fault list`.
#[derive(Debug, Args)]
pub struct FaultListArgs {
    /// Control socket.
    #[command(flatten)]
    pub control: ControlArg,
    /// Print the daemon's JSON reply.
    #[arg(long)]
    pub json: bool,
}

/// `vraid fault clear`.
#[derive(Debug, Args)]
pub struct FaultClearArgs {
    /// Control socket.
    #[command(flatten)]
    pub control: ControlArg,
    /// Fault id (from `vraid fault list`); all faults when omitted.
    pub id: Option<u64>,
}

/// `vraid create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// RAID level: 0, 1, 5, 6 or 10.
    #[arg(long, value_parser = parse_level)]
    pub level: Level,
    /// RAID-10 layout, md's names: n2 (default), n3, f2, f3, o2, o3.
    #[arg(long, value_parser = parse_raid10_layout)]
    pub layout: Option<crate::raid::Raid10Shape>,
    /// Chunk size (power of two, 4K to 16M).
    #[arg(long, default_value = "64K", value_parser = parse_size_arg)]
    pub chunk_size: u64,
    /// Size of member files created because they do not exist.
    #[arg(long, default_value = "256M", value_parser = parse_size_arg)]
    pub member_size: u64,
    /// Array name (the NBD export name).
    #[arg(long, default_value = "vol0")]
    pub name: String,
    /// Overwrite members that already hold a vraid superblock.
    #[arg(long)]
    pub force: bool,
    /// Where block checksums live: `separate` (a checksum area per member)
    /// or `inline` (a 512-byte tag after each 4 KiB block, written with it:
    /// random writes cost no extra I/O; uses 1/9 = 11.1 % of each member).
    #[arg(long, default_value = "separate")]
    pub checksum_layout: crate::meta::layout::ChecksumLayout,
    /// Member files or block devices, in role order.
    #[arg(required = true, value_name = "MEMBER")]
    pub members: Vec<PathBuf>,
}

/// `vraid examine`.
#[derive(Debug, Args)]
pub struct ExamineArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Member file or block device.
    #[arg(value_name = "MEMBER")]
    pub member: PathBuf,
}

/// `vraid serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Serve every volume in this TOML file.
    #[arg(long, value_name = "FILE", conflicts_with = "members")]
    pub config: Option<PathBuf>,
    /// NBD TCP listen address (default 127.0.0.1:10809 unless only --nbd-socket is given).
    #[arg(long, value_name = "HOST:PORT")]
    pub nbd: Option<SocketAddr>,
    /// NBD Unix socket path.
    #[arg(long, value_name = "PATH")]
    pub nbd_socket: Option<PathBuf>,
    /// Drop an NBD client that has not finished the handshake by then
    /// (default 10s; `[server] nbd_handshake_timeout`).
    #[arg(long, value_name = "DURATION", value_parser = duration::parse_positive)]
    pub nbd_handshake_timeout: Option<std::time::Duration>,
    /// Open NBD connections allowed, all clients together (default 256,
    /// lowered to fit the descriptor limit; `[server] nbd_max_connections`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub nbd_max_connections: Option<u32>,
    /// Open NBD connections allowed from one IP address (default 64;
    /// `[server] nbd_max_connections_per_client`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub nbd_max_connections_per_client: Option<u32>,
    /// READ/WRITE bytes one NBD connection may have buffered, requests
    /// being served and replies not yet written (default 256M;
    /// `[server] nbd_connection_memory`).
    #[arg(long, value_name = "SIZE", value_parser = parse_pool_size)]
    pub nbd_connection_memory: Option<u64>,
    /// The same over all NBD connections together (default 1G;
    /// `[server] nbd_memory`).
    #[arg(long, value_name = "SIZE", value_parser = parse_pool_size)]
    pub nbd_memory: Option<u64>,
    /// Drop an NBD client whose replies could not be written for this long
    /// (it does not read them), or whose WRITE payload did not arrive
    /// within it, freeing what it held (default 30s;
    /// `[server] nbd_write_timeout`).
    #[arg(long, value_name = "DURATION", value_parser = duration::parse_positive)]
    pub nbd_write_timeout: Option<std::time::Duration>,
    /// Close an NBD connection in transmission with no request in flight,
    /// no reply pending and no byte from its client for this long (default:
    /// never; `[server] nbd_idle_timeout`).
    #[arg(long, value_name = "DURATION", value_parser = duration::parse_positive)]
    pub nbd_idle_timeout: Option<std::time::Duration>,
    /// Drop an NBD client that keeps replies pending for a whole write
    /// timeout while reading fewer than this many bytes per second of them,
    /// freeing what it held (default 64K; 0: no minimum;
    /// `[server] nbd_min_drain_rate`).
    #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
    pub nbd_min_drain_rate: Option<u64>,
    /// TLS on the NBD exports.
    #[command(flatten)]
    pub tls: Box<TlsArgs>,
    /// Member I/O engine (also VRAID_IO_ENGINE).
    #[arg(long, value_enum)]
    pub io_engine: Option<EngineKind>,
    /// Export read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Directory for the built-in demo (used when no members and no config are given).
    #[arg(long, value_name = "DIR", default_value = "vraid-data")]
    pub demo_dir: PathBuf,
    /// Also export the volume over vhost-user-blk on this Unix socket
    /// (the demo uses DIR/vol0.sock unless given). Config files use the
    /// per-volume `vhost_user_blk` key instead.
    #[arg(long, value_name = "PATH", conflicts_with = "config")]
    pub vhost_user_blk: Option<PathBuf>,
    /// Request queues of the vhost-user-blk export (1 to 16).
    #[arg(long, value_name = "N", default_value_t = crate::config::DEFAULT_NUM_QUEUES,
          value_parser = clap::value_parser!(u16).range(1..=16))]
    pub vhost_queues: u16,
    /// Members of one array to assemble and serve (any order).
    #[arg(value_name = "MEMBER")]
    pub members: Vec<PathBuf>,
    /// The MEMBERs are the disks (or images) of a Linux md array: assemble
    /// it from its md superblocks and serve it read-only (over NBD, and
    /// over vhost-user-blk too with --vhost-user-blk).
    #[arg(long, requires = "members", conflicts_with = "config")]
    pub md: bool,
    /// With --md: write through to the md members, keeping md's
    /// superblocks (events, clean/dirty, checksum) so Linux md assembles
    /// the array again afterwards. Refused, with the reason, for degraded,
    /// unclean or bitmap arrays (docs/FORMAT.md §12).
    #[arg(long, requires = "md")]
    pub md_writable: bool,
    /// Control socket path (default: DEMO_DIR/control.sock for the demo,
    /// else ./vraid-control.sock; also $VRAID_CONTROL or `[server] control`).
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Serve Prometheus metrics on http://HOST:PORT/metrics.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics: Option<SocketAddr>,
    /// Do not verify per-block checksums (every volume of this command
    /// line; overrides `checksums = true` in the config).
    #[arg(long)]
    pub no_checksums: bool,
    /// Bytes of checksum pages each array keeps in memory (default 64M;
    /// every volume of this command line; overrides the per-volume
    /// `checksum_cache` key). Pages beyond it are evicted, dirty ones
    /// written back first.
    #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
    pub checksum_cache: Option<u64>,
    /// Turn off the RAID-5 write-hole protection (the partial-parity
    /// journal) of every volume, for benchmarks: a crash followed by a
    /// missing member may then corrupt chunks nobody was writing.
    #[arg(long)]
    pub no_journal: bool,
    /// Assemble even when more members are marked failed than the level
    /// tolerates, from failed members whose data was current when they
    /// failed (by event count; later writes are resynced from the
    /// write-intent bitmap), like `mdadm --assemble --force`. Logs what it
    /// trusted. Also the per-volume config key `force_assemble`.
    #[arg(long)]
    pub force_assemble: bool,
    /// RAID-1 mirror policies of the volume given by its members.
    #[command(flatten)]
    pub mirror: MirrorArgs,
}

/// `vraid serve`'s mirror policies (RAID-1; config keys `write_mostly`,
/// `write_behind`, `write_behind_requests`, `auto_rejoin`).
#[derive(Debug, Args)]
pub struct MirrorArgs {
    /// A member (path as given, or role number) read only when no other
    /// member can serve the read, like mdadm's --write-mostly; repeat for
    /// more.
    #[arg(long, value_name = "MEMBER", conflicts_with = "config")]
    pub write_mostly: Vec<String>,
    /// Acknowledge writes once the members that are not write-mostly have
    /// them; the write-mostly ones lag by at most SIZE (e.g. 8M). FLUSH
    /// and FUA still wait for every member. Needs --write-mostly.
    #[arg(long, value_name = "SIZE", value_parser = parse_size_arg,
          requires = "write_mostly", conflicts_with = "config")]
    pub write_behind: Option<u64>,
    /// ... and by at most N requests (default 256).
    #[arg(long, value_name = "N", requires = "write_behind",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub write_behind_requests: Option<u64>,
    /// Do not re-add a remote member failed by member_timeout when its
    /// server answers again (default: re-added, only dirty regions copied).
    #[arg(long, conflicts_with = "config")]
    pub no_auto_rejoin: bool,
}

impl MirrorArgs {
    /// The policies these flags ask for.
    pub fn config(&self) -> crate::config::MirrorConfig {
        let write_behind =
            self.write_behind
                .filter(|&b| b > 0)
                .map(|max_bytes| crate::raid::BehindLimits {
                    max_bytes,
                    max_requests: self
                        .write_behind_requests
                        .unwrap_or(crate::raid::BehindLimits::default().max_requests),
                });
        crate::config::MirrorConfig {
            write_mostly: self.write_mostly.clone(),
            write_behind,
            auto_rejoin: !self.no_auto_rejoin,
        }
    }
}

/// `vraid serve`'s TLS options.
#[derive(Debug, Args)]
pub struct TlsArgs {
    /// TLS on the NBD exports: `require` (NBD_OPT_STARTTLS before anything
    /// else), `allow` (TLS or plain text) or `off` (default: require when
    /// --tls-cert is given, else off; `[server] tls`).
    #[arg(long, value_name = "MODE", value_parser = parse_tls_mode)]
    pub tls: Option<crate::tls::TlsMode>,
    /// Server certificate chain, PEM (`[server] tls_cert`).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert, PEM (`[server] tls_key`).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Ask clients for a certificate signed by this CA bundle, PEM
    /// (`[server] tls_ca`).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Only client certificates naming one of these (subject CN or SAN DNS
    /// name) are accepted; needs --tls-ca (`[server] tls_allow`).
    #[arg(long, value_name = "NAME", num_args = 1..)]
    pub tls_allow: Vec<String>,
    /// After the NBD options, TLS 1.3 records are sealed and opened by
    /// vraid's own record layer (`ours`, default; TLS 1.2 stays on rustls)
    /// or by rustls (`rustls`) (`[server] tls_record_layer`).
    #[arg(long, value_name = "WHO", value_parser = parse_record_layer)]
    pub tls_record_layer: Option<crate::tls::RecordLayer>,
}

/// A byte pool size: at least one maximum-size NBD request (32M).
fn parse_pool_size(s: &str) -> Result<u64, String> {
    match parse_size_arg(s)? {
        n if n < crate::config::MIN_NBD_POOL => Err(format!(
            "{s:?}: at least 32M (one maximum-size NBD request)"
        )),
        n => Ok(n),
    }
}

impl CreateArgs {
    /// The level asked for: `--level` with `--layout` for RAID-10; a
    /// layout with another level is refused.
    pub fn level(&self) -> Result<Level, String> {
        match (self.level, self.layout) {
            (Level::Raid10(_), Some(shape)) => Ok(Level::Raid10(shape)),
            (level, Some(shape)) => Err(format!(
                "--layout {shape} is a RAID-10 layout, not one of {level}"
            )),
            (level, None) => Ok(level),
        }
    }

    /// The array `vraid create` asks for.
    pub fn request(&self) -> CreateRequest {
        CreateRequest {
            name: self.name.clone(),
            level: self.level().unwrap_or(self.level),
            chunk_size: self.chunk_size,
            member_size: self.member_size,
            force: self.force,
            checksum_layout: self.checksum_layout,
        }
    }
}

impl ServeArgs {
    /// The daemon's options, as given on the command line.
    pub fn into_options(self) -> ServeOptions {
        let as_usize = |n: u32| usize::try_from(n).unwrap_or(usize::MAX);
        ServeOptions {
            config: self.config,
            nbd: self.nbd,
            nbd_socket: self.nbd_socket,
            nbd_limits: crate::config::NbdLimitKeys {
                handshake_timeout: self.nbd_handshake_timeout,
                max_connections: self.nbd_max_connections.map(as_usize),
                max_connections_per_client: self.nbd_max_connections_per_client.map(as_usize),
                connection_memory: self.nbd_connection_memory,
                memory: self.nbd_memory,
                write_timeout: self.nbd_write_timeout,
                idle_timeout: self.nbd_idle_timeout,
                min_drain_rate: self.nbd_min_drain_rate,
            },
            tls: crate::config::TlsKeys {
                mode: self.tls.tls,
                cert: self.tls.tls_cert,
                key: self.tls.tls_key,
                ca: self.tls.tls_ca,
                allow: self.tls.tls_allow,
                record_layer: self.tls.tls_record_layer,
            },
            io_engine: self.io_engine,
            read_only: self.read_only,
            demo_dir: self.demo_dir,
            vhost_user_blk: self.vhost_user_blk,
            vhost_queues: self.vhost_queues,
            members: self.members,
            control: self.control,
            metrics: self.metrics,
            no_checksums: self.no_checksums,
            checksum_cache: self.checksum_cache,
            no_journal: self.no_journal,
            force_assemble: self.force_assemble,
            mirror: self.mirror.config(),
            md: self.md,
            md_writable: self.md_writable,
        }
    }
}

fn parse_tls_mode(s: &str) -> Result<crate::tls::TlsMode, String> {
    s.parse()
}

fn parse_record_layer(s: &str) -> Result<crate::tls::RecordLayer, String> {
    s.parse()
}

fn parse_level(s: &str) -> Result<Level, String> {
    s.parse()
}

fn parse_raid10_layout(s: &str) -> Result<crate::raid::Raid10Shape, String> {
    s.parse()
        .map_err(|e: crate::raid::raid10_layout::Raid10Error| e.to_string())
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

/// A probability in 0..=1 (NaN and infinities would reach the daemon as
/// JSON `null`, i.e. "always").
fn parse_probability(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("{s:?} is not a probability between 0 and 1")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn replay_points_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_point("7"), Ok(ReplayPoint::Entries(7)));
        assert_eq!(parse_point("entry:7"), Ok(ReplayPoint::Entries(7)));
        assert_eq!(parse_point("flush:2"), Ok(ReplayPoint::Flush(2)));
        assert_eq!(parse_point("mark:a:b"), Ok(ReplayPoint::Mark("a:b".into())));
        for bad in ["flush:x", "mark:", "bogus:3", "", "-1", "entry:"] {
            let e = parse_point(bad).unwrap_err();
            assert!(e.contains("entry:N"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn serve_parses_nbd_limits_and_refuses_a_zero_timeout() {
        let cli = Cli::try_parse_from([
            "vraid",
            "serve",
            "--nbd-handshake-timeout",
            "1500ms",
            "--nbd-max-connections",
            "10",
            "--nbd-connection-memory",
            "64M",
            "--nbd-idle-timeout",
            "5m",
            "--nbd-min-drain-rate",
            "128K",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(
            args.nbd_handshake_timeout,
            Some(std::time::Duration::from_millis(1500))
        );
        assert_eq!(args.nbd_max_connections, Some(10));
        assert_eq!(args.nbd_connection_memory, Some(64 << 20));
        assert_eq!(
            args.nbd_idle_timeout,
            Some(std::time::Duration::from_secs(300))
        );
        assert_eq!(args.nbd_min_drain_rate, Some(128 << 10));
        assert!(Cli::try_parse_from(["vraid", "serve", "--nbd-idle-timeout", "0"]).is_err());
        assert!(Cli::try_parse_from(["vraid", "serve", "--nbd-write-timeout", "0"]).is_err());
        assert!(Cli::try_parse_from(["vraid", "serve", "--nbd-max-connections", "0"]).is_err());
        assert!(Cli::try_parse_from(["vraid", "serve", "--nbd-memory", "16M"]).is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn create_parses_sizes_and_level() {
        let cli = Cli::try_parse_from([
            "vraid",
            "create",
            "--level",
            "5",
            "--chunk-size",
            "128K",
            "a",
            "b",
            "c",
        ])
        .unwrap();
        let Command::Create(args) = cli.command else {
            panic!("not create")
        };
        assert_eq!(args.level, Level::Raid5);
        assert_eq!(args.chunk_size, 128 << 10);
        assert_eq!(args.member_size, 256 << 20);
        assert_eq!(args.members.len(), 3);
    }

    #[test]
    fn fault_add_parses_kind_op_range_and_delay() {
        let cli = Cli::try_parse_from([
            "vraid", "fault", "add", "vol0", "2", "--kind", "delay", "--op", "read", "--offset",
            "1M", "--length", "64K", "--delay", "50ms", "--count", "3",
        ])
        .unwrap();
        let Command::Fault(FaultCommand::Add(a)) = cli.command else {
            panic!("not fault add")
        };
        assert_eq!(
            (a.volume.as_str(), a.member.as_deref()),
            ("vol0", Some("2"))
        );
        assert_eq!(a.kind, FaultKindArg::Delay);
        assert_eq!(a.op, FaultOpArg::Read);
        assert_eq!((a.offset, a.length), (Some(1 << 20), Some(64 << 10)));
        assert_eq!(a.delay, Some(std::time::Duration::from_millis(50)));
        assert_eq!(a.count, Some(3));
        assert!(Cli::try_parse_from([
            "vraid", "fault", "add", "v", "0", "--kind", "delay", "--delay", "5parsecs"
        ])
        .is_err());
    }

    #[test]
    fn volume_fault_powercut_and_cache_verbs_parse() {
        let cli = Cli::try_parse_from([
            "vraid",
            "fault",
            "add",
            "v",
            "--volume",
            "--kind",
            "bad-sector",
            "--offset",
            "4K",
        ])
        .unwrap();
        let Command::Fault(FaultCommand::Add(a)) = cli.command else {
            panic!("not fault add")
        };
        assert!(a.on_volume && a.member.is_none());
        assert_eq!(a.kind, FaultKindArg::BadSector);
        // A member and --volume together, or neither, are refused.
        assert!(Cli::try_parse_from([
            "vraid", "fault", "add", "v", "0", "--volume", "--kind", "stall"
        ])
        .is_err());
        assert!(Cli::try_parse_from(["vraid", "fault", "add", "v", "--kind", "stall"]).is_err());
        let cli = Cli::try_parse_from([
            "vraid",
            "fault",
            "powercut",
            "v",
            "--keep",
            "ordered-prefix",
            "--seed",
            "9",
        ])
        .unwrap();
        let Command::Fault(FaultCommand::Powercut(p)) = cli.command else {
            panic!("not powercut")
        };
        assert_eq!((p.keep, p.seed), (KeepArg::OrderedPrefix, Some(9)));
        let cli = Cli::try_parse_from(["vraid", "set", "v", "--cache", "volatile"]).unwrap();
        let Command::Set(s) = cli.command else {
            panic!("not set")
        };
        assert_eq!(
            (s.cache, s.rebuild_max_mbps),
            (Some(CacheModeArg::Volatile), None)
        );
        assert!(Cli::try_parse_from(["vraid", "set", "v"]).is_err());
        assert!(Cli::try_parse_from(["vraid", "set", "v", "--cache", "sometimes"]).is_err());
    }

    #[test]
    fn serve_takes_vhost_socket_and_queue_count() {
        let cli = Cli::try_parse_from([
            "vraid",
            "serve",
            "--vhost-user-blk",
            "/tmp/v.sock",
            "--vhost-queues",
            "2",
            "m0",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(args.vhost_user_blk, Some(PathBuf::from("/tmp/v.sock")));
        assert_eq!(args.vhost_queues, 2);
        assert!(Cli::try_parse_from(["vraid", "serve", "--vhost-queues", "0"]).is_err());
        assert!(Cli::try_parse_from(["vraid", "serve", "--vhost-queues", "17"]).is_err());
    }

    #[test]
    fn create_rejects_bad_level_and_size() {
        assert!(Cli::try_parse_from(["vraid", "create", "--level", "7", "a"]).is_err());
        assert!(
            Cli::try_parse_from(["vraid", "create", "--level", "1", "--chunk-size", "x", "a"])
                .is_err()
        );
    }
}

/// `vraid log ...` (docs/FAULTS.md "Write log").
#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Start recording every write, trim, zeroing, FLUSH and FUA of VOLUME to FILE (new).
    Start(LogStartArgs),
    /// Insert a named point into VOLUME's log.
    Mark(LogMarkArgs),
    /// Stop recording (the log is complete and synced when this returns).
    Stop(LogStopArgs),
    /// Show a log's header, entries, flushes and marks.
    List(LogListArgs),
    /// Write a prefix of the log (or one crash point) onto TARGET.
    Replay(LogReplayArgs),
    /// List the crash states a volatile disk cache allows at the log's points.
    Crashpoints(LogCrashArgs),
    /// Build every crash state on IMAGE in turn and run COMMAND on each.
    Check(LogCheckArgs),
}

/// `vraid log start`.
#[derive(Debug, Args)]
pub struct LogStartArgs {
    /// Control socket.
    #[command(flatten)]
    pub control: ControlArg,
    /// Volume name.
    pub volume: String,
    /// Log file to create.
    pub file: PathBuf,
}

/// `vraid log mark`.
#[derive(Debug, Args)]
pub struct LogMarkArgs {
    /// Control socket.
    #[command(flatten)]
    pub control: ControlArg,
    /// Volume name.
    pub volume: String,
    /// Name of the point (1 to 255 bytes).
    pub name: String,
}

/// `vraid log stop`.
#[derive(Debug, Args)]
pub struct LogStopArgs {
    /// Control socket.
    #[command(flatten)]
    pub control: ControlArg,
    /// Volume name.
    pub volume: String,
    /// Print the daemon's JSON reply.
    #[arg(long)]
    pub json: bool,
}

/// The log file argument of the offline verbs.
#[derive(Debug, Args)]
pub struct LogFileArg {
    /// The log file.
    pub file: PathBuf,
    /// Use the complete entries of an unfinished (torn) log.
    #[arg(long)]
    pub allow_torn: bool,
}

/// `vraid log list`.
#[derive(Debug, Args)]
pub struct LogListArgs {
    /// The log.
    #[command(flatten)]
    pub log: LogFileArg,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Which crash states to enumerate.
#[derive(Clone, Debug, Args)]
pub struct CrashArgs {
    /// Random subsets of the unflushed writes drawn per window between FLUSHes (0: flush points only).
    #[arg(long, default_value_t = 0)]
    pub subsets: usize,
    /// Seed of the draws.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// At most this many crash points.
    #[arg(long, default_value_t = 10_000)]
    pub max: usize,
    /// Only points after entry N (e.g. past a mark's entry: skip the mkfs).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub after: u64,
    /// Only points after the mark NAME.
    #[arg(long, value_name = "NAME", conflicts_with = "after")]
    pub after_mark: Option<String>,
    /// Only points whose cut is at or before entry N (the first N entries).
    #[arg(long, value_name = "N")]
    pub before: Option<u64>,
    /// Only points up to the mark NAME (e.g. crashes during a mkfs).
    #[arg(long, value_name = "NAME", conflicts_with = "before")]
    pub before_mark: Option<String>,
}

/// `vraid log replay`.
#[derive(Debug, Args)]
pub struct LogReplayArgs {
    /// The log.
    #[command(flatten)]
    pub log: LogFileArg,
    /// Image file, block device, or NBD export (nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH, e.g. another volume) holding the volume as it was when logging started (a missing file is created zeroed; an export must be at least the log's volume size).
    pub target: PathBuf,
    /// The point: `entry:N` (or N: the first N entries), `flush:K` (up to and including FLUSH number K, from 0), `mark:NAME`.
    #[arg(long, value_name = "POINT", group = "point", value_parser = parse_point)]
    pub to: Option<ReplayPoint>,
    /// Up to and including FLUSH number K (from 0).
    #[arg(long, value_name = "K", group = "point")]
    pub to_flush: Option<u64>,
    /// Up to and including the mark NAME.
    #[arg(long, value_name = "NAME", group = "point")]
    pub to_mark: Option<String>,
    /// Crash point ID of `vraid log crashpoints` (same --subsets/--seed/--max/--after).
    #[arg(long, value_name = "ID", group = "point")]
    pub crashpoint: Option<usize>,
    /// The enumeration --crashpoint refers to.
    #[command(flatten)]
    pub crash: CrashArgs,
}

/// `vraid log crashpoints`.
#[derive(Debug, Args)]
pub struct LogCrashArgs {
    /// The log.
    #[command(flatten)]
    pub log: LogFileArg,
    /// Which states.
    #[command(flatten)]
    pub crash: CrashArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `vraid log check`.
#[derive(Debug, Args)]
pub struct LogCheckArgs {
    /// The log.
    #[command(flatten)]
    pub log: LogFileArg,
    /// Only the flush points and the end (the default: no --subsets).
    #[arg(long, conflicts_with = "subsets")]
    pub each_flush: bool,
    /// Scratch image the states are built on (overwritten).
    #[arg(long)]
    pub image: PathBuf,
    /// The volume's image when logging started (default: zeroes).
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Which states.
    #[command(flatten)]
    pub crash: CrashArgs,
    /// Command run on each state; `{}` in it is the image path.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// A replay's `--to` point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplayPoint {
    /// The first N entries.
    Entries(u64),
    /// Up to and including FLUSH number K.
    Flush(u64),
    /// Up to and including the mark.
    Mark(String),
}

/// `entry:N`, `N`, `flush:K` or `mark:NAME`.
fn parse_point(s: &str) -> Result<ReplayPoint, String> {
    let number = |n: &str| {
        n.parse::<u64>()
            .map_err(|_| format!("{n:?} is not a number (entry:N, flush:K, mark:NAME)"))
    };
    match s.split_once(':') {
        Some(("entry", n)) => number(n).map(ReplayPoint::Entries),
        Some(("flush", k)) => number(k).map(ReplayPoint::Flush),
        Some(("mark", name)) if !name.is_empty() => Ok(ReplayPoint::Mark(name.to_string())),
        None => number(s).map(ReplayPoint::Entries),
        _ => Err(format!("{s:?}: expected entry:N, flush:K or mark:NAME")),
    }
}

/// Fill-event thresholds as given (`80,90,95`, or `none`).
#[derive(Clone, Debug)]
pub struct Thresholds(pub Vec<u8>);

/// `80,90,95` or `none`: ascending percentages from 1 to 100.
fn parse_thresholds(s: &str) -> Result<Thresholds, String> {
    if s == "none" {
        return Ok(Thresholds(Vec::new()));
    }
    let t = s
        .split(',')
        .map(|x| {
            x.trim()
                .parse::<u8>()
                .map_err(|_| format!("{x:?} is not a percentage"))
        })
        .collect::<Result<Vec<u8>, String>>()?;
    crate::pool::fill::check_thresholds(&t)?;
    Ok(Thresholds(t))
}

/// `vraid pool ...`.
#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Lay a pool on a running array (its own export goes; its volumes are exported instead).
    Create {
        /// Control socket.
        #[command(flatten)]
        control: ControlArg,
        /// Array name.
        array: String,
        /// Cluster size (allocation unit), a power of two from 64K to 64M.
        #[arg(long, default_value = "1M", value_parser = parse_size_arg)]
        cluster_size: u64,
        /// Lay it even over data found in the array's first or last MiB
        /// (a filesystem, a partition table, any non-zero byte), and cut
        /// off clients connected to the array's own export.
        #[arg(long)]
        force: bool,
        /// Lay a version-3 pool, whose shared clusters are split on write:
        /// a write after a snapshot copies only the granules it touches
        /// (64 KiB, or 1/64 of larger clusters), not the whole cluster.
        /// Older builds refuse such a pool.
        #[arg(long)]
        split_clusters: bool,
    },
    /// Pools with their space and volumes.
    List {
        /// Control socket.
        #[command(flatten)]
        control: ControlArg,
        /// Print the daemon's JSON reply.
        #[arg(long)]
        json: bool,
    },
    /// Set a pool's fill-event thresholds (percent full; "none" for none).
    Set {
        /// Control socket.
        #[command(flatten)]
        control: ControlArg,
        /// Pool (array) name.
        pool: String,
        /// Thresholds, e.g. 80,90,95: an event when the pool's used space
        /// reaches each, another when it falls 5 points below it again.
        #[arg(long, value_name = "PERCENT,...", value_parser = parse_thresholds)]
        fill_events: Thresholds,
    },
    /// Verify a pool's metadata (read-only unless --repair); exit status 1 if anything is wrong.
    Check {
        /// Control socket.
        #[command(flatten)]
        control: ControlArg,
        /// Pool (array) name.
        pool: String,
        /// Reclaim leaked clusters and map pages (counts above their references are lowered).
        #[arg(long)]
        repair: bool,
        /// With --repair: also raise counts below their references (shared clusters the
        /// counts missed; their bytes may already be mixed).
        #[arg(long, requires = "repair")]
        force: bool,
        /// Print the daemon's JSON reply.
        #[arg(long)]
        json: bool,
    },
}

/// `vraid volume ...`.
#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create a thin volume (exported over NBD under its name at once).
    Create {
        /// Control socket.
        #[command(flatten)]
        control: ControlArg,
        /// Pool (array) name.
        pool: String,
        /// Volume name.
        name: String,
        /// Size.
        #[arg(long, value_parser = parse_size_arg)]
        size: u64,
        /// Export it over vhost-user-blk on this socket too (for this run;
        /// `[[pool.volume]] vhost_user_blk` in the config keeps it).
        #[arg(long, value_name = "PATH")]
        vhost_socket: Option<PathBuf>,
        /// Request queues of that export (1 to 16, default 4).
        #[arg(long, value_name = "N", requires = "vhost_socket")]
        vhost_queues: Option<u16>,
    },
    /// Delete a volume or snapshot.
    Delete {
        /// Control socket.
        #[command(flatten)]
        control: ControlArg,
        /// Volume name.
        name: String,
    },
    /// List the volumes of every pool.
    List {
        /// Control socket.
        #[command(flatten)]
        control: ControlArg,
        /// Print the daemon's JSON reply.
        #[arg(long)]
        json: bool,
    },
    /// Grow a volume (live), or shrink it (clusters past the end are freed).
    Resize {
        /// Control socket.
        #[command(flatten)]
        control: ControlArg,
        /// Volume name.
        name: String,
        /// New size.
        #[arg(long, value_parser = parse_size_arg)]
        size: u64,
        /// Shrink even while clients are connected to the volume.
        #[arg(long)]
        force: bool,
    },
    /// Make a volume hold a snapshot's bytes and size again (instant; the snapshot stays).
    Revert {
        /// Control socket.
        #[command(flatten)]
        control: ControlArg,
        /// Volume name.
        name: String,
        /// A snapshot taken of that volume.
        snapshot: String,
        /// Revert even while clients are connected (they see the disk change under them).
        #[arg(long)]
        force: bool,
    },
    /// Rename a volume (and its export).
    Rename {
        /// Control socket.
        #[command(flatten)]
        control: ControlArg,
        /// Volume name.
        name: String,
        /// New name.
        new_name: String,
    },
    /// Take a read-only snapshot (instant; exported read-only).
    Snapshot {
        /// Control socket.
        #[command(flatten)]
        control: ControlArg,
        /// Volume name.
        name: String,
        /// Snapshot name.
        snapshot: String,
    },
    /// Make a writable clone of a snapshot (or volume), sharing its clusters.
    Clone {
        /// Control socket.
        #[command(flatten)]
        control: ControlArg,
        /// Snapshot (or volume) name.
        name: String,
        /// Clone name.
        clone: String,
    },
}
