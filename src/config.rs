//! The TOML configuration file: server options and volumes.
//!
//! ```text
//! text ──toml+serde (deny_unknown_fields, spans)──► Raw* ──validate──► Config
//!             │ syntax / unknown key / wrong type         │ semantic errors
//!             └──────────► ConfigError with path:line:column and the key ◄┘
//! ```
//!
//! See `config/*.toml` for documented examples.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

use crate::member::EngineKind;
use crate::meta::superblock::{metadata_layout, valid_chunk_size, valid_name, MAX_MEMBERS};
use crate::raid::Level;
use crate::units::parse_size;

mod pool;
pub use pool::{PoolConfig, PoolVolumeConfig, DEFAULT_FILL_EVENTS};
mod mirror;
pub use mirror::MirrorConfig;

/// Chunk size used when a volume does not give one.
pub const DEFAULT_CHUNK_SIZE: u64 = 64 << 10;

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Server-wide options.
    pub server: ServerConfig,
    /// Volumes, in file order.
    pub volumes: Vec<VolumeConfig>,
    /// Linux md arrays served read-only (`[[md]]`), in file order.
    pub md: Vec<MdConfig>,
    /// Pools on the arrays, with their declared volumes (`[[pool]]`).
    pub pools: Vec<PoolConfig>,
}

/// One `[[md]]`: a Linux md array assembled from its members and served
/// read-only (as `vraid serve --md`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MdConfig {
    /// Member paths, in any order.
    pub members: Vec<PathBuf>,
    /// Export name (default: the md name without its host part, or the
    /// array UUID for 0.90).
    pub name: Option<String>,
    /// Write through to the members, keeping md's superblocks
    /// (`writable = true`; as `--md-writable`).
    pub writable: bool,
    /// vhost-user-blk socket to export the array on too, if any.
    pub vhost_user_blk: Option<PathBuf>,
    /// Request queues of that export.
    pub num_queues: u16,
}

/// The `[server]` table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerConfig {
    /// NBD TCP listen address.
    pub nbd: Option<SocketAddr>,
    /// NBD Unix socket path.
    pub nbd_socket: Option<PathBuf>,
    /// Member I/O engine.
    pub io_engine: EngineKind,
    /// Control socket path.
    pub control: Option<PathBuf>,
    /// Prometheus metrics listen address.
    pub metrics: Option<SocketAddr>,
    /// What NBD clients may take (`nbd_*` keys); unset ones keep their defaults.
    pub nbd_limits: NbdLimitKeys,
    /// `member_timeout`: how long a remote (NBD) member may be unreachable
    /// before it is failed (`VRAID_MEMBER_TIMEOUT` wins; unset: 30 s).
    pub member_timeout: Option<std::time::Duration>,
    /// TLS on the NBD exports (`tls*` keys).
    pub tls: TlsKeys,
}

/// The `tls*` keys of `[server]` (and the `--tls*` options): TLS on the NBD
/// exports. Unset ones fall back (command line, then config, then default).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsKeys {
    /// `tls`: `require`, `allow` or `off` (default: `require` when a
    /// certificate is given, else `off`).
    pub mode: Option<crate::tls::TlsMode>,
    /// `tls_cert`: the server's certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// `tls_key`: its private key (PEM).
    pub key: Option<PathBuf>,
    /// `tls_ca`: CA bundle (PEM) client certificates must chain to.
    pub ca: Option<PathBuf>,
    /// `tls_allow`: names (CN or SAN) a client certificate must carry.
    pub allow: Vec<String>,
    /// `tls_record_layer`: `ours` (default) or `rustls` after the options.
    pub record_layer: Option<crate::tls::RecordLayer>,
}

/// Smallest NBD byte pool: one maximum-size request (32 MiB).
pub const MIN_NBD_POOL: u64 = 32 * 1024 * 1024;

/// The `nbd_*` limit keys of `[server]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NbdLimitKeys {
    /// `nbd_handshake_timeout`.
    pub handshake_timeout: Option<std::time::Duration>,
    /// `nbd_max_connections`.
    pub max_connections: Option<usize>,
    /// `nbd_max_connections_per_client`.
    pub max_connections_per_client: Option<usize>,
    /// `nbd_connection_memory`.
    pub connection_memory: Option<u64>,
    /// `nbd_memory`.
    pub memory: Option<u64>,
    /// `nbd_write_timeout`.
    pub write_timeout: Option<std::time::Duration>,
    /// `nbd_idle_timeout` (absent: no idle timeout).
    pub idle_timeout: Option<std::time::Duration>,
    /// `nbd_min_drain_rate`, bytes per second (0: no minimum).
    pub min_drain_rate: Option<u64>,
}

/// One `[[volume]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeConfig {
    /// Volume (= array) name.
    pub name: String,
    /// RAID level.
    pub level: Level,
    /// Chunk size in bytes.
    pub chunk_size: u64,
    /// Member paths; their order does not matter for an existing array.
    pub members: Vec<PathBuf>,
    /// Create the array if the members hold no superblock.
    pub create: Option<CreateConfig>,
    /// Export read-only.
    pub read_only: bool,
    /// Free text.
    pub description: Option<String>,
    /// Faults injected at start-up (`[[volume.fault]]`).
    pub faults: Vec<FaultConfig>,
    /// vhost-user-blk socket to export the volume on, if any.
    pub vhost_user_blk: Option<PathBuf>,
    /// Request queues of the vhost-user-blk export.
    pub num_queues: u16,
    /// Hot spares: activated (and rebuilt onto) when a member fails.
    pub spares: Vec<PathBuf>,
    /// Rebuild/resync rate limit in MB/s (0 = unlimited).
    pub rebuild_max_mbps: u64,
    /// Maintain the write-intent bitmap (resync only dirty regions).
    pub bitmap: bool,
    /// Scrub when the last scrub finished this long ago (`scrub_interval`).
    pub scrub_interval: Option<std::time::Duration>,
    /// Scheduled scrubs repair what they find (`scrub_repair`).
    pub scrub_repair: bool,
    /// Verify per-block checksums of member data (default: on with the
    /// bitmap, which they need).
    pub checksums: bool,
    /// RAID-5: log partial parity before each partial-stripe write, so a
    /// crash followed by a missing member corrupts nothing (default true).
    pub write_hole_protection: bool,
    /// Assemble from members marked failed whose data was current when
    /// they failed, when too many roles are down (`force_assemble`,
    /// default false; also `vraid serve --force-assemble`).
    pub force_assemble: bool,
    /// Bytes of checksum pages this array keeps in memory
    /// (`checksum_cache`, default 64M; also `vraid serve --checksum-cache`).
    pub checksum_cache: u64,
    /// Write cache in front of the volume (`cache`, default
    /// `writethrough`; `volatile` holds writes until FLUSH or FUA).
    pub cache: crate::volfault::CacheMode,
    /// Its budget (`cache_size`, default 64M).
    pub cache_size: u64,
    /// Volume faults installed at start-up (`[[volume.fault]]` with
    /// `volume = true`).
    pub volume_faults: Vec<VolumeFaultConfig>,
    /// QoS limits (`[volume.qos]`: `iops`, `read_iops`, `write_iops`,
    /// `bps`, `read_bps`, `write_bps` (sizes: "100M"), `burst` (a
    /// duration); absent or 0: no limit).
    pub qos: crate::qos::QosLimits,
    /// Mirror policies (`write_mostly`, `write_behind`,
    /// `write_behind_requests`, `auto_rejoin`).
    pub mirror: MirrorConfig,
}

/// One `[[volume.fault]]` with `volume = true`: a rule on what the
/// volume's clients see.
#[derive(Clone, Debug, PartialEq)]
pub struct VolumeFaultConfig {
    /// The rule (validated).
    pub spec: crate::member::fault::FaultSpec,
}

// Validated specs hold finite probabilities, so equality is reflexive.
impl Eq for VolumeFaultConfig {}

/// Queues of a vhost-user-blk export when `num_queues` is not given.
pub const DEFAULT_NUM_QUEUES: u16 = 4;
/// Most queues of a vhost-user-blk export.
pub const MAX_NUM_QUEUES: u16 = 16;

/// One `[[volume.fault]]`: a fault rule installed when the volume starts.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultConfig {
    /// Member path as listed in `members`, or its role number.
    pub member: String,
    /// The rule (validated).
    pub spec: crate::member::fault::FaultSpec,
}

// Validated specs hold finite probabilities, so equality is reflexive.
impl Eq for FaultConfig {}

/// Default `rebuild_max_mbps`.
pub const DEFAULT_REBUILD_MAX_MBPS: u64 = 200;

/// `create = { member_size = "256M", checksum_layout = "inline" }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreateConfig {
    /// Size of each member file to create, in bytes.
    pub member_size: u64,
    /// Where the new array keeps its block checksums (default `separate`;
    /// docs/FORMAT.md §8 "Inline layout").
    pub checksum_layout: crate::meta::layout::ChecksumLayout,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax, unknown key or wrong type.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// A value that parses but makes no sense.
    #[error("{}:{line}:{column}: {key}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// Dotted key, e.g. `volume[1].chunk_size`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    /// The 1-based line the error points at, if any.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Syntax { line, .. } | ConfigError::Invalid { line, .. } => Some(*line),
        }
    }
}

/// An integer, or a string such as `"64K"` / `"raid5"`.
#[derive(Clone, Debug)]
enum Scalar {
    Int(i64),
    Str(String),
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer or a string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                i64::try_from(v)
                    .map(Scalar::Int)
                    .map_err(|_| E::custom("integer too large"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: Option<RawServer>,
    #[serde(default)]
    volume: Vec<RawVolume>,
    #[serde(default)]
    md: Vec<RawMd>,
    #[serde(default)]
    pool: Vec<pool::RawPool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMd {
    members: Spanned<Vec<Spanned<String>>>,
    name: Option<Spanned<String>>,
    #[serde(default)]
    writable: bool,
    vhost_user_blk: Option<Spanned<String>>,
    num_queues: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    nbd: Option<Spanned<String>>,
    nbd_socket: Option<Spanned<String>>,
    io_engine: Option<Spanned<String>>,
    control: Option<Spanned<String>>,
    metrics: Option<Spanned<String>>,
    nbd_handshake_timeout: Option<Spanned<String>>,
    nbd_max_connections: Option<Spanned<i64>>,
    nbd_max_connections_per_client: Option<Spanned<i64>>,
    nbd_connection_memory: Option<Spanned<Scalar>>,
    nbd_memory: Option<Spanned<Scalar>>,
    nbd_write_timeout: Option<Spanned<String>>,
    nbd_idle_timeout: Option<Spanned<String>>,
    nbd_min_drain_rate: Option<Spanned<Scalar>>,
    tls: Option<Spanned<String>>,
    tls_cert: Option<Spanned<String>>,
    tls_key: Option<Spanned<String>>,
    tls_ca: Option<Spanned<String>>,
    tls_allow: Option<Vec<Spanned<String>>>,
    tls_record_layer: Option<Spanned<String>>,
    member_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVolume {
    name: Spanned<String>,
    level: Spanned<Scalar>,
    /// RAID-10 layout (n2, n3, f2, f3, o2, o3).
    layout: Option<Spanned<String>>,
    chunk_size: Option<Spanned<Scalar>>,
    members: Spanned<Vec<Spanned<String>>>,
    create: Option<RawCreate>,
    #[serde(default)]
    read_only: bool,
    description: Option<String>,
    spares: Option<Vec<Spanned<String>>>,
    rebuild_max_mbps: Option<Spanned<i64>>,
    bitmap: Option<bool>,
    scrub_interval: Option<Spanned<String>>,
    scrub_repair: Option<bool>,
    checksums: Option<Spanned<bool>>,
    checksum_cache: Option<Spanned<Scalar>>,
    cache: Option<Spanned<String>>,
    cache_size: Option<Spanned<Scalar>>,
    write_hole_protection: Option<bool>,
    #[serde(default)]
    force_assemble: bool,
    vhost_user_blk: Option<Spanned<String>>,
    num_queues: Option<Spanned<i64>>,
    #[serde(default)]
    fault: Vec<Spanned<RawFault>>,
    qos: Option<RawQos>,
    write_mostly: Option<Spanned<Vec<Spanned<Scalar>>>>,
    write_behind: Option<Spanned<Scalar>>,
    write_behind_requests: Option<Spanned<i64>>,
    auto_rejoin: Option<bool>,
}

/// `[volume.qos]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQos {
    iops: Option<Spanned<Scalar>>,
    read_iops: Option<Spanned<Scalar>>,
    write_iops: Option<Spanned<Scalar>>,
    bps: Option<Spanned<Scalar>>,
    read_bps: Option<Spanned<Scalar>>,
    write_bps: Option<Spanned<Scalar>>,
    burst: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFault {
    member: Option<Spanned<Scalar>>,
    volume: Option<Spanned<bool>>,
    kind: Spanned<String>,
    op: Option<Spanned<String>>,
    offset: Option<Spanned<Scalar>>,
    length: Option<Spanned<Scalar>>,
    probability: Option<Spanned<f64>>,
    delay: Option<Spanned<Scalar>>,
    count: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCreate {
    member_size: Spanned<Scalar>,
    checksum_layout: Option<Spanned<String>>,
}

/// Turns byte offsets into `path:line:column` errors.
struct Source<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Source<'_> {
    fn position(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    fn invalid(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = self.position(span.start);
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line,
            column,
            key: key.into(),
            message: message.into(),
        }
    }
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates `text`; `path` is only used in messages.
    pub fn parse(text: &str, path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let src = Source {
            text,
            path: path.as_ref(),
        };
        let raw: RawConfig = toml::from_str(text).map_err(|err| {
            let (line, column) = src.position(err.span().map_or(0, |s| s.start));
            ConfigError::Syntax {
                path: src.path.to_path_buf(),
                line,
                column,
                message: err.message().trim().to_string(),
            }
        })?;
        let server = match raw.server {
            Some(s) => server(&src, s)?,
            None => ServerConfig::default(),
        };
        let mut volumes: Vec<VolumeConfig> = Vec::new();
        let mut names: Vec<(String, Range<usize>)> = Vec::new();
        let mut paths: Vec<(PathBuf, String)> = Vec::new();
        for (i, v) in raw.volume.into_iter().enumerate() {
            let key = format!("volume[{i}]");
            if let Some((_, first)) = names.iter().find(|(n, _)| n == v.name.get_ref()) {
                let (line, _) = src.position(first.start);
                return Err(src.invalid(
                    v.name.span(),
                    format!("{key}.name"),
                    format!(
                        "volume name {:?} already used on line {line}",
                        v.name.get_ref()
                    ),
                ));
            }
            names.push((v.name.get_ref().clone(), v.name.span()));
            let vol = volume(&src, &key, v, &mut paths)?;
            volumes.push(vol);
        }
        let md = raw
            .md
            .iter()
            .enumerate()
            .map(|(i, m)| md_array(&src, &format!("md[{i}]"), m, &mut paths))
            .collect::<Result<Vec<_>, _>>()?;
        let pools = pool::pools(&src, raw.pool, &volumes, &md, &mut paths)?;
        Ok(Config {
            server,
            volumes,
            md,
            pools,
        })
    }
}

/// One `[[md]]`: at least one member, paths not used elsewhere, a valid
/// export name if given.
fn md_array(
    src: &Source<'_>,
    key: &str,
    m: &RawMd,
    paths: &mut TakenPaths,
) -> Result<MdConfig, ConfigError> {
    if m.members.get_ref().is_empty() {
        return Err(src.invalid(
            m.members.span(),
            format!("{key}.members"),
            "an md array needs at least one member",
        ));
    }
    let members = unique_paths(src, &format!("{key}.members"), m.members.get_ref(), paths)?;
    let name = m
        .name
        .as_ref()
        .map(|n| volume_name(src, key, n))
        .transpose()?;
    let vhost = (m.vhost_user_blk.as_ref(), m.num_queues.as_ref());
    let (vhost_user_blk, num_queues) = vhost_keys(src, key, vhost, paths)?;
    Ok(MdConfig {
        members,
        name,
        writable: m.writable,
        vhost_user_blk,
        num_queues,
    })
}

fn server(src: &Source<'_>, s: RawServer) -> Result<ServerConfig, ConfigError> {
    let nbd_limits = nbd_limit_keys(src, &s)?;
    let tls = tls_keys(src, &s)?;
    let nbd = match s.nbd {
        Some(a) => Some(a.get_ref().parse::<SocketAddr>().map_err(|_| {
            src.invalid(
                a.span(),
                "server.nbd",
                format!("{:?} is not an IP:port address", a.get_ref()),
            )
        })?),
        None => None,
    };
    let nbd_socket = match s.nbd_socket {
        Some(p) if p.get_ref().is_empty() => {
            return Err(src.invalid(p.span(), "server.nbd_socket", "empty path"))
        }
        Some(p) => Some(PathBuf::from(p.into_inner())),
        None => None,
    };
    let io_engine = match s.io_engine {
        None => EngineKind::Auto,
        Some(e) => <EngineKind as clap::ValueEnum>::from_str(e.get_ref(), false).map_err(|_| {
            src.invalid(
                e.span(),
                "server.io_engine",
                format!(
                    "unknown engine {:?}: expected auto, uring, sync or inline",
                    e.get_ref()
                ),
            )
        })?,
    };
    let control = match s.control {
        Some(p) if p.get_ref().is_empty() => {
            return Err(src.invalid(p.span(), "server.control", "empty path"))
        }
        Some(p) => Some(PathBuf::from(p.into_inner())),
        None => None,
    };
    let metrics = match s.metrics {
        Some(a) => Some(a.get_ref().parse::<SocketAddr>().map_err(|_| {
            src.invalid(
                a.span(),
                "server.metrics",
                format!("{:?} is not an IP:port address", a.get_ref()),
            )
        })?),
        None => None,
    };
    Ok(ServerConfig {
        nbd,
        nbd_socket,
        io_engine,
        control,
        metrics,
        nbd_limits,
        member_timeout: member_timeout(src, &s.member_timeout)?,
        tls,
    })
}

fn tls_keys(src: &Source<'_>, s: &RawServer) -> Result<TlsKeys, ConfigError> {
    let path = |key: &str, v: &Option<Spanned<String>>| match v {
        Some(p) if p.get_ref().is_empty() => Err(src.invalid(p.span(), key, "empty path")),
        Some(p) => Ok(Some(PathBuf::from(p.get_ref()))),
        None => Ok(None),
    };
    let mode = match &s.tls {
        Some(m) => Some(
            m.get_ref()
                .parse::<crate::tls::TlsMode>()
                .map_err(|e| src.invalid(m.span(), "server.tls", e))?,
        ),
        None => None,
    };
    let record_layer = match &s.tls_record_layer {
        Some(m) => Some(
            m.get_ref()
                .parse::<crate::tls::RecordLayer>()
                .map_err(|e| src.invalid(m.span(), "server.tls_record_layer", e))?,
        ),
        None => None,
    };
    let mut allow = Vec::new();
    for name in s.tls_allow.iter().flatten() {
        if name.get_ref().is_empty() {
            return Err(src.invalid(name.span(), "server.tls_allow", "empty name"));
        }
        allow.push(name.get_ref().clone());
    }
    Ok(TlsKeys {
        mode,
        cert: path("server.tls_cert", &s.tls_cert)?,
        key: path("server.tls_key", &s.tls_key)?,
        ca: path("server.tls_ca", &s.tls_ca)?,
        allow,
        record_layer,
    })
}

/// `[server] member_timeout`, a positive duration.
fn member_timeout(
    src: &Source<'_>,
    v: &Option<Spanned<String>>,
) -> Result<Option<std::time::Duration>, ConfigError> {
    let Some(t) = v else { return Ok(None) };
    crate::duration::parse_positive(t.get_ref())
        .map(Some)
        .map_err(|_| {
            src.invalid(
                t.span(),
                "server.member_timeout",
                format!("{:?} is not a duration like \"30s\"", t.get_ref()),
            )
        })
}

fn nbd_limit_keys(src: &Source<'_>, s: &RawServer) -> Result<NbdLimitKeys, ConfigError> {
    let positive = |key: &str, v: &Option<Spanned<i64>>| match v {
        Some(n) => usize::try_from(*n.get_ref())
            .ok()
            .filter(|&n| n > 0)
            .map(Some)
            .ok_or_else(|| src.invalid(n.span(), key, "expected a whole number of at least 1")),
        None => Ok(None),
    };
    let bytes = |key: &str, v: &Option<Spanned<Scalar>>| match v {
        Some(b) => match size(src, key, b)? {
            n if n < MIN_NBD_POOL => {
                Err(src.invalid(b.span(), key, "at least 32M (one maximum-size NBD request)"))
            }
            n => Ok(Some(n)),
        },
        None => Ok(None),
    };
    let duration = |key: &str, v: &Option<Spanned<String>>| match v {
        Some(t) => crate::duration::parse_positive(t.get_ref())
            .map(Some)
            .map_err(|_| {
                src.invalid(
                    t.span(),
                    key,
                    format!("{:?} is not a duration like \"10s\" or \"1m\"", t.get_ref()),
                )
            }),
        None => Ok(None),
    };
    Ok(NbdLimitKeys {
        handshake_timeout: duration("server.nbd_handshake_timeout", &s.nbd_handshake_timeout)?,
        write_timeout: duration("server.nbd_write_timeout", &s.nbd_write_timeout)?,
        max_connections: positive("server.nbd_max_connections", &s.nbd_max_connections)?,
        max_connections_per_client: positive(
            "server.nbd_max_connections_per_client",
            &s.nbd_max_connections_per_client,
        )?,
        connection_memory: bytes("server.nbd_connection_memory", &s.nbd_connection_memory)?,
        memory: bytes("server.nbd_memory", &s.nbd_memory)?,
        idle_timeout: duration("server.nbd_idle_timeout", &s.nbd_idle_timeout)?,
        min_drain_rate: s
            .nbd_min_drain_rate
            .as_ref()
            .map(|r| size(src, "server.nbd_min_drain_rate", r))
            .transpose()?,
    })
}

fn size(src: &Source<'_>, key: &str, v: &Spanned<Scalar>) -> Result<u64, ConfigError> {
    match v.get_ref() {
        Scalar::Int(n) => {
            u64::try_from(*n).map_err(|_| src.invalid(v.span(), key, format!("{n} is negative")))
        }
        Scalar::Str(s) => parse_size(s).map_err(|e| src.invalid(v.span(), key, e.to_string())),
    }
}

/// Paths already taken by a member or spare, with the key that took each.
type TakenPaths = Vec<(PathBuf, String)>;

fn volume(
    src: &Source<'_>,
    key: &str,
    v: RawVolume,
    paths: &mut TakenPaths,
) -> Result<VolumeConfig, ConfigError> {
    let name = volume_name(src, key, &v.name)?;
    let level = volume_level(src, key, &v.level)?;
    let level = raid10_layout(src, key, level, v.layout.as_ref())?;
    let chunk_size = chunk_size(src, key, v.chunk_size.as_ref())?;
    let count = v.members.get_ref().len();
    if !(level.min_members()..=MAX_MEMBERS).contains(&count) {
        return Err(src.invalid(
            v.members.span(),
            format!("{key}.members"),
            format!(
                "{level} needs {}..={MAX_MEMBERS} members, got {count}",
                level.min_members()
            ),
        ));
    }
    let members = unique_paths(src, &format!("{key}.members"), v.members.get_ref(), paths)?;
    let spare_list = v.spares.as_deref().unwrap_or_default();
    let spares = unique_paths(src, &format!("{key}.spares"), spare_list, paths)?;
    let rebuild_max_mbps = rebuild_max_mbps(src, key, v.rebuild_max_mbps.as_ref())?;
    let create = create_key(src, key, v.create.as_ref(), chunk_size)?;
    let mut faults = Vec::with_capacity(v.fault.len());
    let mut volume_faults = Vec::new();
    for (j, f) in v.fault.iter().enumerate() {
        match fault(src, &format!("{key}.fault[{j}]"), f, &members)? {
            FaultTarget::Member(f) => faults.push(f),
            FaultTarget::Volume(spec) => volume_faults.push(spec),
        }
    }
    let (cache, cache_size) = cache_keys(src, key, v.cache.as_ref(), v.cache_size.as_ref())?;
    let vhost = (v.vhost_user_blk.as_ref(), v.num_queues.as_ref());
    let (vhost_user_blk, num_queues) = vhost_keys(src, key, vhost, paths)?;
    let scrub_interval = scrub_interval(src, key, v.scrub_interval.as_ref())?;
    let bitmap = v.bitmap.unwrap_or(true);
    let checksums = checksums_key(src, key, v.checksums.as_ref(), bitmap)?;
    let raw_mirror = mirror::RawMirror {
        write_mostly: v.write_mostly.as_ref(),
        write_behind: v.write_behind.as_ref(),
        write_behind_requests: v.write_behind_requests.as_ref(),
        auto_rejoin: v.auto_rejoin,
    };
    let mirror = mirror::keys(src, key, raw_mirror, level, &members, bitmap)?;
    Ok(VolumeConfig {
        mirror,
        name,
        level,
        chunk_size,
        members,
        create,
        read_only: v.read_only,
        description: v.description,
        vhost_user_blk,
        num_queues,
        faults,
        spares,
        rebuild_max_mbps,
        scrub_interval,
        scrub_repair: v.scrub_repair.unwrap_or(false),
        bitmap,
        checksums,
        write_hole_protection: v.write_hole_protection.unwrap_or(true),
        force_assemble: v.force_assemble,
        checksum_cache: match &v.checksum_cache {
            Some(c) => size(src, &format!("{key}.checksum_cache"), c)?,
            None => crate::integrity::cache::DEFAULT_BUDGET,
        },
        cache,
        cache_size,
        volume_faults,
        qos: qos_keys(src, key, v.qos.as_ref())?,
    })
}

/// `[volume.qos]`: counts and sizes (0: no limit) and a burst duration.
fn qos_keys(
    src: &Source<'_>,
    key: &str,
    q: Option<&RawQos>,
) -> Result<crate::qos::QosLimits, ConfigError> {
    let Some(q) = q else {
        return Ok(crate::qos::QosLimits::default());
    };
    let get = |name: &str, v: &Option<Spanned<Scalar>>| match v {
        Some(v) => size(src, &format!("{key}.qos.{name}"), v),
        None => Ok(0),
    };
    let burst_ms = match &q.burst {
        None => 0,
        Some(b) => crate::duration::parse(b.get_ref())
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .map_err(|e| src.invalid(b.span(), format!("{key}.qos.burst"), e))?,
    };
    Ok(crate::qos::QosLimits {
        iops: get("iops", &q.iops)?,
        read_iops: get("read_iops", &q.read_iops)?,
        write_iops: get("write_iops", &q.write_iops)?,
        bps: get("bps", &q.bps)?,
        read_bps: get("read_bps", &q.read_bps)?,
        write_bps: get("write_bps", &q.write_bps)?,
        burst_ms,
    })
}

/// `cache` and `cache_size` of a volume.
fn cache_keys(
    src: &Source<'_>,
    key: &str,
    cache: Option<&Spanned<String>>,
    cache_size: Option<&Spanned<Scalar>>,
) -> Result<(crate::volfault::CacheMode, u64), ConfigError> {
    use crate::volfault::{CacheMode, WriteCache, DEFAULT_CACHE_SIZE};
    let mode = match cache.map(|c| (c, c.get_ref().as_str())) {
        None | Some((_, "writethrough")) => CacheMode::Writethrough,
        Some((_, "volatile")) => CacheMode::Volatile,
        Some((c, other)) => {
            return Err(src.invalid(
                c.span(),
                format!("{key}.cache"),
                format!("unknown cache mode {other:?}: expected writethrough or volatile"),
            ))
        }
    };
    let bytes = match cache_size {
        None => DEFAULT_CACHE_SIZE,
        Some(c) => {
            let ckey = format!("{key}.cache_size");
            let bytes = size(src, &ckey, c)?;
            WriteCache::check_capacity(bytes)
                .map_err(|e| src.invalid(c.span(), ckey, e.to_string()))?;
            bytes
        }
    };
    Ok((mode, bytes))
}

/// Where a `[[volume.fault]]` goes.
enum FaultTarget {
    Member(FaultConfig),
    Volume(VolumeFaultConfig),
}

/// `name`: a valid array name.
fn volume_name(src: &Source<'_>, key: &str, v: &Spanned<String>) -> Result<String, ConfigError> {
    let name = v.get_ref().clone();
    if !valid_name(&name) {
        return Err(src.invalid(
            v.span(),
            format!("{key}.name"),
            format!("invalid name {name:?}: use 1..=64 characters from A-Z a-z 0-9 . _ -"),
        ));
    }
    Ok(name)
}

/// `level`: 0, 1, 5 or 6, as a number or a string.
fn volume_level(src: &Source<'_>, key: &str, v: &Spanned<Scalar>) -> Result<Level, ConfigError> {
    match v.get_ref() {
        Scalar::Int(n) => u32::try_from(*n).ok().and_then(Level::from_number),
        Scalar::Str(s) => s.parse::<Level>().ok(),
    }
    .ok_or_else(|| {
        src.invalid(
            v.span(),
            format!("{key}.level"),
            "unknown RAID level: expected 0, 1, 5, 6 or 10",
        )
    })
}

/// `layout`: a RAID-10 layout (default n2); refused for other levels.
fn raid10_layout(
    src: &Source<'_>,
    key: &str,
    level: Level,
    v: Option<&Spanned<String>>,
) -> Result<Level, ConfigError> {
    let Some(v) = v else {
        return Ok(level);
    };
    let invalid = |why: String| src.invalid(v.span(), format!("{key}.layout"), why);
    match level {
        Level::Raid10(_) => v
            .get_ref()
            .parse()
            .map(Level::Raid10)
            .map_err(|e: crate::raid::raid10_layout::Raid10Error| invalid(e.to_string())),
        _ => Err(invalid(format!(
            "a layout is for RAID-10 only, not {level}"
        ))),
    }
}

/// `chunk_size`: a power of two from 4K to 16M (default 64K).
fn chunk_size(
    src: &Source<'_>,
    key: &str,
    v: Option<&Spanned<Scalar>>,
) -> Result<u64, ConfigError> {
    let Some(c) = v else {
        return Ok(DEFAULT_CHUNK_SIZE);
    };
    let ckey = format!("{key}.chunk_size");
    let n = size(src, &ckey, c)?;
    if !valid_chunk_size(n) {
        return Err(src.invalid(
            c.span(),
            ckey,
            format!("{n} is not a power of two from 4K to 16M"),
        ));
    }
    Ok(n)
}

/// `members` or `spares` (`key`): non-empty paths, none used twice in the
/// whole file (recorded in `paths`).
fn unique_paths(
    src: &Source<'_>,
    key: &str,
    list: &[Spanned<String>],
    paths: &mut TakenPaths,
) -> Result<Vec<PathBuf>, ConfigError> {
    let mut out = Vec::with_capacity(list.len());
    for (j, m) in list.iter().enumerate() {
        let mkey = format!("{key}[{j}]");
        if m.get_ref().is_empty() {
            return Err(src.invalid(m.span(), mkey, "empty path"));
        }
        let p = PathBuf::from(m.get_ref());
        if let Some((_, other)) = paths.iter().find(|(q, _)| *q == p) {
            return Err(src.invalid(
                m.span(),
                mkey,
                format!("{} is already used as {other}", p.display()),
            ));
        }
        paths.push((p.clone(), mkey));
        out.push(p);
    }
    Ok(out)
}

/// `rebuild_max_mbps`: 0 (unlimited) or a positive rate.
fn rebuild_max_mbps(
    src: &Source<'_>,
    key: &str,
    v: Option<&Spanned<i64>>,
) -> Result<u64, ConfigError> {
    let Some(n) = v else {
        return Ok(DEFAULT_REBUILD_MAX_MBPS);
    };
    u64::try_from(*n.get_ref()).map_err(|_| {
        src.invalid(
            n.span(),
            format!("{key}.rebuild_max_mbps"),
            "must be 0 (unlimited) or a positive number of MB/s",
        )
    })
}

/// `create`: a member size that holds the metadata and one chunk.
fn create_key(
    src: &Source<'_>,
    key: &str,
    v: Option<&RawCreate>,
    chunk_size: u64,
) -> Result<Option<CreateConfig>, ConfigError> {
    let Some(c) = v else {
        return Ok(None);
    };
    let ckey = format!("{key}.create.member_size");
    let member_size = size(src, &ckey, &c.member_size)?;
    let fits = metadata_layout(member_size).is_some_and(|l| l.data_size >= chunk_size);
    if !fits {
        return Err(src.invalid(
            c.member_size.span(),
            ckey,
            format!("{member_size} bytes cannot hold the metadata and one chunk"),
        ));
    }
    let checksum_layout = match &c.checksum_layout {
        Some(l) => l.get_ref().parse().map_err(|e: String| {
            src.invalid(l.span(), format!("{key}.create.checksum_layout"), e)
        })?,
        None => Default::default(),
    };
    Ok(Some(CreateConfig {
        member_size,
        checksum_layout,
    }))
}

/// `scrub_interval`: a positive duration.
fn scrub_interval(
    src: &Source<'_>,
    key: &str,
    v: Option<&Spanned<String>>,
) -> Result<Option<std::time::Duration>, ConfigError> {
    let Some(i) = v else {
        return Ok(None);
    };
    crate::duration::parse_positive(i.get_ref())
        .map(Some)
        .map_err(|_| {
            src.invalid(
                i.span(),
                format!("{key}.scrub_interval"),
                format!(
                    "invalid interval {:?}: use a positive duration such as \"12h\" or \"7d\"",
                    i.get_ref()
                ),
            )
        })
}

/// `checksums`: on by default with the bitmap, refused without it.
fn checksums_key(
    src: &Source<'_>,
    key: &str,
    v: Option<&Spanned<bool>>,
    bitmap: bool,
) -> Result<bool, ConfigError> {
    match v {
        Some(c) if *c.get_ref() && !bitmap => Err(src.invalid(
            c.span(),
            format!("{key}.checksums"),
            "checksums need the write-intent bitmap (it makes them crash-safe): \
             remove `bitmap = false` or set `checksums = false`",
        )),
        Some(c) => Ok(*c.get_ref()),
        None => Ok(bitmap),
    }
}

fn fault(
    src: &Source<'_>,
    key: &str,
    f: &Spanned<RawFault>,
    members: &[PathBuf],
) -> Result<FaultTarget, ConfigError> {
    use crate::member::fault::{FaultOp, FaultSpec};
    let raw = f.get_ref();
    let member = fault_member(src, key, f, members)?;
    let kind = fault_kind(src, key, &raw.kind, member.is_none())?;
    let op = match raw.op.as_ref().map(|o| (o, o.get_ref().as_str())) {
        None | Some((_, "any")) => FaultOp::Any,
        Some((_, "read")) => FaultOp::Read,
        Some((_, "write")) => FaultOp::Write,
        Some((o, other)) => {
            return Err(src.invalid(
                o.span(),
                format!("{key}.op"),
                format!("unknown op {other:?}: expected read, write or any"),
            ))
        }
    };
    let opt_size = |name: &str, v: &Option<Spanned<Scalar>>| {
        v.as_ref()
            .map(|v| size(src, &format!("{key}.{name}"), v))
            .transpose()
    };
    let delay_us = match &raw.delay {
        None => 0,
        Some(d) => {
            let parsed = match d.get_ref() {
                Scalar::Int(ms) => u64::try_from(*ms)
                    .map(std::time::Duration::from_millis)
                    .map_err(|_| format!("{ms} is negative")),
                Scalar::Str(s) => crate::duration::parse(s),
            };
            let d2 = parsed.map_err(|e| src.invalid(d.span(), format!("{key}.delay"), e))?;
            u64::try_from(d2.as_micros()).unwrap_or(u64::MAX)
        }
    };
    let spec = FaultSpec {
        kind,
        op,
        offset: opt_size("offset", &raw.offset)?,
        length: opt_size("length", &raw.length)?,
        probability: raw.probability.as_ref().map_or(1.0, |p| *p.get_ref()),
        delay_us,
        count: raw.count.as_ref().map(|c| *c.get_ref()),
    };
    let Some(member) = member else {
        crate::control::volume_faults::check_volume_spec(&spec)
            .map_err(|e| src.invalid(f.span(), key, e))?;
        return Ok(FaultTarget::Volume(VolumeFaultConfig { spec }));
    };
    spec.validate()
        .map_err(|e| src.invalid(f.span(), key, e.to_string()))?;
    Ok(FaultTarget::Member(FaultConfig { member, spec }))
}

/// The member a fault names (`None`: a volume fault, `volume = true`).
fn fault_member(
    src: &Source<'_>,
    key: &str,
    f: &Spanned<RawFault>,
    members: &[PathBuf],
) -> Result<Option<String>, ConfigError> {
    let raw = f.get_ref();
    let volume = raw.volume.as_ref().is_some_and(|v| *v.get_ref());
    let m = match (&raw.member, volume) {
        (None, true) => return Ok(None),
        (Some(m), false) => m,
        (Some(m), true) => {
            return Err(src.invalid(
                m.span(),
                format!("{key}.member"),
                "a volume fault (volume = true) names no member",
            ))
        }
        (None, false) => {
            return Err(src.invalid(
                f.span(),
                key,
                "give member = PATH or ROLE, or volume = true for a volume fault",
            ))
        }
    };
    match m.get_ref() {
        Scalar::Int(n) if usize::try_from(*n).is_ok_and(|r| r < members.len()) => {
            Ok(Some(n.to_string()))
        }
        Scalar::Str(p) if members.iter().any(|x| x == Path::new(p)) => Ok(Some(p.clone())),
        _ => Err(src.invalid(
            m.span(),
            format!("{key}.member"),
            "not one of this volume's members (give its path or role number)",
        )),
    }
}

/// A fault's `kind`; the volume-only kinds only on a volume fault.
fn fault_kind(
    src: &Source<'_>,
    key: &str,
    kind: &Spanned<String>,
    volume: bool,
) -> Result<crate::member::fault::FaultKind, ConfigError> {
    use crate::member::fault::FaultKind;
    let parsed: Option<FaultKind> = serde::Deserialize::deserialize(
        serde::de::value::StrDeserializer::<serde::de::value::Error>::new(kind.get_ref()),
    )
    .ok();
    match parsed {
        Some(k) if volume || !k.volume_only() => Ok(k),
        Some(_) => Err(src.invalid(
            kind.span(),
            format!("{key}.kind"),
            format!(
                "{:?} is a volume fault: set volume = true instead of member",
                kind.get_ref()
            ),
        )),
        None => Err(src.invalid(
            kind.span(),
            format!("{key}.kind"),
            format!(
                "unknown fault kind {:?}: expected error, delay, corrupt or offline (members), \
                 or error, delay, corrupt, stall, readonly, bad-sector or torn (volume = true)",
                kind.get_ref()
            ),
        )),
    }
}

/// `vhost_user_blk` and `num_queues` of a volume; socket paths must be unique.
fn vhost_keys(
    src: &Source<'_>,
    key: &str,
    (socket, num_queues): (Option<&Spanned<String>>, Option<&Spanned<i64>>),
    paths: &mut TakenPaths,
) -> Result<(Option<PathBuf>, u16), ConfigError> {
    let socket = match socket {
        Some(p) if p.get_ref().is_empty() => {
            return Err(src.invalid(p.span(), format!("{key}.vhost_user_blk"), "empty path"))
        }
        Some(p) => {
            let skey = format!("{key}.vhost_user_blk");
            let path = PathBuf::from(p.get_ref());
            if let Some((_, other)) = paths.iter().find(|(q, _)| *q == path) {
                return Err(src.invalid(
                    p.span(),
                    skey,
                    format!("{} is already used as {other}", path.display()),
                ));
            }
            paths.push((path.clone(), skey));
            Some(path)
        }
        None => None,
    };
    let queues = match num_queues {
        Some(n) => u16::try_from(*n.get_ref())
            .ok()
            .filter(|q| (1..=MAX_NUM_QUEUES).contains(q))
            .ok_or_else(|| {
                src.invalid(
                    n.span(),
                    format!("{key}.num_queues"),
                    format!("{} queues: expected 1 to {MAX_NUM_QUEUES}", n.get_ref()),
                )
            })?,
        None => DEFAULT_NUM_QUEUES,
    };
    Ok((socket, queues))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_cache_defaults_to_64m_and_takes_a_size() {
        let base = "[[volume]]\nname = \"v\"\nlevel = 1\nmembers = [\"/a\", \"/b\"]\n";
        assert_eq!(parse(base).unwrap().volumes[0].checksum_cache, 64 << 20);
        let small = format!("{base}checksum_cache = \"4M\"\n");
        assert_eq!(parse(&small).unwrap().volumes[0].checksum_cache, 4 << 20);
        let bad = format!("{base}checksum_cache = \"lots\"\n");
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.contains("volume[0].checksum_cache"), "{e}");
    }

    #[test]
    fn checksums_default_to_the_bitmap_and_refuse_to_run_without_it() {
        let base = "[[volume]]\nname = \"v\"\nlevel = 1\nmembers = [\"/a\", \"/b\"]\n";
        assert!(parse(base).unwrap().volumes[0].checksums);
        let off = format!("{base}checksums = false\n");
        assert!(!parse(&off).unwrap().volumes[0].checksums);
        let no_bitmap = format!("{base}bitmap = false\n");
        assert!(!parse(&no_bitmap).unwrap().volumes[0].checksums);
        let both = format!("{base}bitmap = false\nchecksums = true\n");
        let e = parse(&both).unwrap_err().to_string();
        assert!(e.contains("checksums need the write-intent bitmap"), "{e}");
        assert!(e.contains("volume[0].checksums"), "{e}");
    }

    #[test]
    fn write_hole_protection_defaults_on_and_can_be_turned_off() {
        let base = "[[volume]]\nname = \"v\"\nlevel = 5\nmembers = [\"/a\", \"/b\", \"/c\"]\n";
        assert!(parse(base).unwrap().volumes[0].write_hole_protection);
        let off = format!("{base}write_hole_protection = false\n");
        assert!(!parse(&off).unwrap().volumes[0].write_hole_protection);
    }

    #[test]
    fn spares_rate_and_bitmap_are_read_and_checked() {
        let text = "[[volume]]\nname = \"v\"\nlevel = 1\nmembers = [\"/a\", \"/b\"]\nspares = [\"/s\"]\nrebuild_max_mbps = 50\nbitmap = false\n";
        let v = &parse(text).unwrap().volumes[0];
        assert_eq!(v.spares, vec![PathBuf::from("/s")]);
        assert_eq!(v.rebuild_max_mbps, 50);
        assert!(!v.bitmap);
        let dup =
            "[[volume]]\nname = \"v\"\nlevel = 1\nmembers = [\"/a\", \"/b\"]\nspares = [\"/a\"]\n";
        let e = parse(dup).unwrap_err().to_string();
        assert!(
            e.contains("volume[0].spares[0]: /a is already used as volume[0].members[0]"),
            "{e}"
        );
        let neg = "[[volume]]\nname = \"v\"\nlevel = 1\nmembers = [\"/a\", \"/b\"]\nrebuild_max_mbps = -1\n";
        assert!(parse(neg)
            .unwrap_err()
            .to_string()
            .contains("rebuild_max_mbps"));
        let d = &parse("[[volume]]\nname = \"v\"\nlevel = 1\nmembers = [\"/a\", \"/b\"]\n")
            .unwrap()
            .volumes[0];
        assert_eq!(
            (d.rebuild_max_mbps, d.bitmap, d.spares.len()),
            (200, true, 0)
        );
    }

    #[test]
    fn scrub_schedule_is_read_and_bad_intervals_are_refused_with_position() {
        let base = "[[volume]]\nname = \"v\"\nlevel = 5\nmembers = [\"/a\", \"/b\", \"/c\"]\n";
        let ok = parse(&format!(
            "{base}scrub_interval = \"7d\"\nscrub_repair = true\n"
        ))
        .unwrap();
        assert_eq!(
            ok.volumes[0].scrub_interval,
            Some(std::time::Duration::from_secs(7 * 86_400))
        );
        assert!(ok.volumes[0].scrub_repair);
        let none = parse(base).unwrap();
        assert_eq!(
            (none.volumes[0].scrub_interval, none.volumes[0].scrub_repair),
            (None, false)
        );
        for bad in ["\"\"", "\"0d\"", "\"7x\"", "\"d\"", "\"-1h\"", "\"1.5x\""] {
            let e = err(&format!("{base}scrub_interval = {bad}\n"));
            assert!(
                e.contains(":5:18: volume[0].scrub_interval: invalid interval"),
                "{e}"
            );
        }
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml")
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn tls_keys_parse_and_refuse_unknown_modes_and_empty_paths() {
        let c = parse(
            "[server]\ntls = \"allow\"\ntls_cert = \"s.pem\"\ntls_key = \"k.pem\"\n\
             tls_ca = \"ca.pem\"\ntls_allow = [\"a\", \"b\"]\n",
        )
        .unwrap();
        let t = c.server.tls;
        assert_eq!(t.mode, Some(crate::tls::TlsMode::Allow));
        assert_eq!(t.cert, Some(PathBuf::from("s.pem")));
        assert_eq!(t.ca, Some(PathBuf::from("ca.pem")));
        assert_eq!(t.allow, vec!["a", "b"]);
        assert!(err("[server]\ntls = \"maybe\"\n").contains("server.tls"));
        assert!(err("[server]\ntls_key = \"\"\n").contains("server.tls_key"));
        assert!(err("[server]\ntls_allow = [\"\"]\n").contains("server.tls_allow"));
    }

    #[test]
    fn nbd_limit_keys_parse_and_refuse_zero() {
        let c = parse(
            "[server]\nnbd_handshake_timeout = \"5s\"\nnbd_max_connections = 100\n\
             nbd_max_connections_per_client = 8\nnbd_connection_memory = \"64M\"\n\
             nbd_memory = \"512M\"\nnbd_write_timeout = \"1m\"\n\
             nbd_idle_timeout = \"10m\"\nnbd_min_drain_rate = \"1M\"\n",
        )
        .unwrap();
        let l = c.server.nbd_limits;
        assert_eq!(l.handshake_timeout, Some(std::time::Duration::from_secs(5)));
        assert_eq!(l.max_connections, Some(100));
        assert_eq!(l.max_connections_per_client, Some(8));
        assert_eq!(l.connection_memory, Some(64 << 20));
        assert_eq!(l.memory, Some(512 << 20));
        assert_eq!(l.write_timeout, Some(std::time::Duration::from_secs(60)));
        assert_eq!(l.idle_timeout, Some(std::time::Duration::from_secs(600)));
        assert_eq!(l.min_drain_rate, Some(1 << 20));
        assert!(err("[server]\nnbd_idle_timeout = \"0s\"\n").contains("server.nbd_idle_timeout"));
        assert!(err("[server]\nnbd_min_drain_rate = -1\n").contains("server.nbd_min_drain_rate"));
        let off = parse("[server]\nnbd_min_drain_rate = 0\n").unwrap();
        assert_eq!(off.server.nbd_limits.min_drain_rate, Some(0));
        assert!(err("[server]\nnbd_max_connections = 0\n").contains("server.nbd_max_connections"));
        assert!(err("[server]\nnbd_memory = 0\n").contains("server.nbd_memory"));
        assert!(err("[server]\nnbd_handshake_timeout = \"soon\"\n")
            .contains("server.nbd_handshake_timeout"));
    }

    const GOOD: &str = r#"
[server]
nbd = "127.0.0.1:10809"
nbd_socket = "/run/vraid.sock"
io_engine = "uring"

[[volume]]
name = "vol0"
level = 5
chunk_size = "128K"
members = ["/a", "/b", "/c"]
create = { member_size = "256M" }
read_only = true
description = "test"

[[volume]]
name = "m.1"
level = "raid1"
members = ["/d", "/e"]
"#;

    #[test]
    fn example_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
                let served = config.volumes.len() + config.md.len();
                assert!(served > 0, "{}", path.display());
                seen += 1;
            }
        }
        assert!(seen >= 3, "only {seen} example configs");
    }

    #[test]
    fn full_config_parses_into_typed_values() {
        let c = parse(GOOD).unwrap();

        assert_eq!(c.server.nbd, Some("127.0.0.1:10809".parse().unwrap()));
        assert_eq!(c.server.nbd_socket, Some(PathBuf::from("/run/vraid.sock")));
        assert_eq!(c.server.io_engine, EngineKind::Uring);
        let v = &c.volumes[0];
        assert_eq!(
            (v.name.as_str(), v.level, v.chunk_size),
            ("vol0", Level::Raid5, 128 << 10)
        );
        assert_eq!(v.members.len(), 3);
        assert_eq!(
            v.create,
            Some(CreateConfig {
                member_size: 256 << 20,
                checksum_layout: Default::default(),
            })
        );
        assert!(v.read_only);
        let m = &c.volumes[1];
        assert_eq!(
            (m.level, m.chunk_size, m.create),
            (Level::Raid1, DEFAULT_CHUNK_SIZE, None)
        );
        assert!(!m.read_only);
    }

    #[test]
    fn qos_keys_parse_and_bad_ones_are_refused() {
        let base = "[[volume]]\nname = \"v\"\nlevel = 1\nmembers = [\"/a\", \"/b\"]\n";
        let good =
            format!("{base}[volume.qos]\niops = 500\nwrite_bps = \"100M\"\nburst = \"2s\"\n");

        let q = parse(&good).unwrap().volumes[0].qos;

        assert_eq!((q.iops, q.write_bps, q.burst_ms), (500, 100 << 20, 2000));
        assert_eq!((q.read_iops, q.bps), (0, 0));
        for extra in [
            "[volume.qos]\niops = -1\n",
            "[volume.qos]\nburst = \"soon\"\n",
            "[volume.qos]\nlatency = 1\n",
        ] {
            let e = parse(&format!("{base}{extra}")).unwrap_err().to_string();
            assert!(e.contains("qos") || e.contains("latency"), "{extra}: {e}");
        }
    }

    #[test]
    fn volume_faults_and_the_write_cache_parse_and_bad_ones_are_refused() {
        let base = "[[volume]]\nname = \"v\"\nlevel = 1\nmembers = [\"/a\", \"/b\"]\n";
        let good = format!(
            "{base}cache = \"volatile\"\ncache_size = \"8M\"\n\
             [[volume.fault]]\nvolume = true\nkind = \"bad-sector\"\noffset = \"4K\"\nlength = 512\n"
        );
        let c = parse(&good).unwrap();
        let v = &c.volumes[0];
        assert_eq!(
            (v.cache, v.cache_size),
            (crate::volfault::CacheMode::Volatile, 8 << 20)
        );
        assert!(v.faults.is_empty());
        assert_eq!(v.volume_faults.len(), 1);
        assert_eq!(
            v.volume_faults[0].spec.kind,
            crate::member::fault::FaultKind::BadSector
        );
        let d = parse(base).unwrap();
        assert_eq!(d.volumes[0].cache, crate::volfault::CacheMode::Writethrough);
        assert!(!d.volumes[0].qos.any());
        assert_eq!(d.volumes[0].cache_size, 64 << 20);
        for (extra, key) in [
            ("cache = \"sometimes\"\n", "cache"),
            ("cache_size = \"1K\"\n", "cache_size"),
            ("[[volume.fault]]\nmember = 0\nkind = \"stall\"\n", "kind"),
            ("[[volume.fault]]\nkind = \"error\"\n", "fault[0]"),
            (
                "[[volume.fault]]\nvolume = true\nmember = 0\nkind = \"error\"\n",
                "member",
            ),
            (
                "[[volume.fault]]\nvolume = true\nkind = \"torn\"\nop = \"read\"\n",
                "fault[0]",
            ),
            (
                "[[volume.fault]]\nvolume = true\nkind = \"offline\"\n",
                "fault[0]",
            ),
        ] {
            let e = parse(&format!("{base}{extra}")).unwrap_err().to_string();
            assert!(e.contains(key), "{extra}: {e}");
        }
    }

    #[test]
    fn start_up_faults_and_control_settings_parse() {
        let c = parse(
            r#"
[server]
control = "/run/vraid/control.sock"
metrics = "127.0.0.1:9100"

[[volume]]
name = "v"
level = 1
members = ["/a", "/b"]

[[volume.fault]]
member = "/b"
kind = "delay"
op = "read"
offset = "1M"
length = "64K"
delay = "20ms"
count = 5

[[volume.fault]]
member = 0
kind = "error"
probability = 0.5
"#,
        )
        .unwrap();
        assert_eq!(
            c.server.control,
            Some(PathBuf::from("/run/vraid/control.sock"))
        );
        assert_eq!(c.server.metrics, Some("127.0.0.1:9100".parse().unwrap()));
        let f = &c.volumes[0].faults;
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].member, "/b");
        assert_eq!(f[0].spec.delay_us, 20_000);
        assert_eq!(
            (f[0].spec.offset, f[0].spec.length),
            (Some(1 << 20), Some(64 << 10))
        );
        assert_eq!(f[0].spec.count, Some(5));
        assert_eq!(f[1].member, "0");
        assert_eq!(f[1].spec.probability, 0.5);
    }

    #[test]
    fn bad_start_up_faults_are_refused_with_lines() {
        let base =
            "[[volume]]\nname = \"v\"\nlevel = 1\nmembers = [\"/a\", \"/b\"]\n[[volume.fault]]\n";
        for (extra, needle) in [
            (
                "member = \"/c\"\nkind = \"error\"\n",
                "volume[0].fault[0].member",
            ),
            (
                "member = 5\nkind = \"error\"\n",
                "volume[0].fault[0].member",
            ),
            ("member = 0\nkind = \"melt\"\n", "unknown fault kind"),
            ("member = 0\nkind = \"delay\"\n", "needs a delay"),
            (
                "member = 0\nkind = \"error\"\nprobability = 2.0\n",
                "probability",
            ),
            (
                "member = 0\nkind = \"error\"\nop = \"sideways\"\n",
                "unknown op",
            ),
        ] {
            let e = err(&format!("{base}{extra}"));
            assert!(e.contains(needle), "{e}");
            assert!(e.starts_with("test.toml:"), "{e}");
        }
    }

    #[test]
    fn server_table_and_volumes_are_optional() {
        let c = parse("").unwrap();

        assert_eq!(c.server, ServerConfig::default());
        assert!(c.volumes.is_empty());
    }

    #[test]
    fn unknown_key_is_reported_with_line_and_column() {
        let text = "[[volume]]\nname = \"v\"\nlevel = 1\nmembers = [\"/a\", \"/b\"]\nchunksize = \"64K\"\n";

        let e = err(text);

        assert!(
            e.starts_with("test.toml:5:1: unknown field `chunksize`"),
            "{e}"
        );
    }

    #[test]
    fn unknown_server_key_and_syntax_errors_have_lines() {
        assert!(err("[server]\nnbd_port = 1\n").starts_with("test.toml:2:1:"));
        assert!(err("[server\n").starts_with("test.toml:1:"));
        let e = parse("\n\n[[volume]]\nname = \n").unwrap_err();
        assert_eq!(e.line(), Some(4), "{e}");
    }

    #[test]
    fn wrong_type_is_reported_at_the_value() {
        let e = err("[[volume]]\nname = \"v\"\nlevel = 1\nmembers = [\"/a\", \"/b\"]\nread_only = \"yes\"\n");

        assert!(e.starts_with("test.toml:5:13:"), "{e}");
    }

    #[test]
    fn missing_required_key_is_an_error() {
        let e = err("[[volume]]\nname = \"v\"\nmembers = [\"/a\", \"/b\"]\n");

        assert!(e.contains("missing field `level`"), "{e}");
    }

    #[test]
    fn semantic_errors_name_key_and_line() {
        let base = |extra: &str| {
            format!(
                "[[volume]]\nname = \"v\"\nlevel = 5\nmembers = [\"/a\", \"/b\", \"/c\"]\n{extra}"
            )
        };
        let cases = [
            (
                base("chunk_size = \"48K\"\n"),
                "test.toml:5:14: volume[0].chunk_size: 49152 is not a power of two",
            ),
            (
                base("chunk_size = \"32M\"\n"),
                "test.toml:5:14: volume[0].chunk_size:",
            ),
            (
                base("chunk_size = \"64Q\"\n"),
                "test.toml:5:14: volume[0].chunk_size: invalid size",
            ),
            (
                base("create = { member_size = \"1M\" }\n"),
                "test.toml:5:26: volume[0].create.member_size:",
            ),
            (
                "[[volume]]\nname = \"bad name\"\nlevel = 0\nmembers = [\"/a\", \"/b\"]\n"
                    .to_string(),
                "test.toml:2:8: volume[0].name: invalid name",
            ),
            (
                "[[volume]]\nname = \"v\"\nlevel = 4\nmembers = [\"/a\", \"/b\"]\n".to_string(),
                "test.toml:3:9: volume[0].level: unknown RAID level",
            ),
            (
                "[[volume]]\nname = \"v\"\nlevel = 5\nmembers = [\"/a\", \"/b\"]\n".to_string(),
                "test.toml:4:11: volume[0].members: raid5 needs 3..=32 members, got 2",
            ),
            (
                "[server]\nio_engine = \"fast\"\n".to_string(),
                "test.toml:2:13: server.io_engine: unknown engine",
            ),
            (
                "[server]\nnbd = \"localhost\"\n".to_string(),
                "test.toml:2:7: server.nbd:",
            ),
        ];
        for (text, expected) in cases {
            let e = err(&text);
            assert!(e.starts_with(expected), "expected {expected:?}, got {e:?}");
        }
    }

    #[test]
    fn duplicate_volume_names_and_member_paths_are_refused() {
        let dup_name = "[[volume]]\nname = \"v\"\nlevel = 1\nmembers = [\"/a\", \"/b\"]\n\n[[volume]]\nname = \"v\"\nlevel = 1\nmembers = [\"/c\", \"/d\"]\n";
        let dup_path = "[[volume]]\nname = \"v\"\nlevel = 1\nmembers = [\"/a\", \"/b\"]\n\n[[volume]]\nname = \"w\"\nlevel = 1\nmembers = [\"/c\", \"/a\"]\n";
        let dup_in_one = "[[volume]]\nname = \"v\"\nlevel = 1\nmembers = [\"/a\", \"//a\"]\n";

        assert_eq!(
            err(dup_name),
            "test.toml:7:8: volume[1].name: volume name \"v\" already used on line 2"
        );
        assert_eq!(
            err(dup_path),
            "test.toml:9:18: volume[1].members[1]: /a is already used as volume[0].members[0]"
        );
        assert!(err(dup_in_one).starts_with("test.toml:4:18: volume[0].members[1]:"));
    }

    #[test]
    fn vhost_user_blk_socket_and_queues_parse_with_defaults() {
        let text = "[[volume]]\nname = \"a\"\nlevel = 1\nmembers = [\"/a\", \"/b\"]\n\
                    vhost_user_blk = \"/run/a.sock\"\nnum_queues = 2\n\
                    [[volume]]\nname = \"b\"\nlevel = 0\nmembers = [\"/c\", \"/d\"]\n";

        let config = parse(text).unwrap();

        assert_eq!(
            config.volumes[0].vhost_user_blk.as_deref(),
            Some(Path::new("/run/a.sock"))
        );
        assert_eq!(config.volumes[0].num_queues, 2);
        assert_eq!(config.volumes[1].vhost_user_blk, None);
        assert_eq!(config.volumes[1].num_queues, DEFAULT_NUM_QUEUES);
    }

    #[test]
    fn bad_vhost_keys_are_refused_with_line() {
        let base = "[[volume]]\nname = \"a\"\nlevel = 1\nmembers = [\"/a\", \"/b\"]\n";

        let zero = err(&format!("{base}num_queues = 0\n"));
        let many = err(&format!("{base}num_queues = 17\n"));
        let empty = err(&format!("{base}vhost_user_blk = \"\"\n"));
        let clash = err(&format!("{base}vhost_user_blk = \"/a\"\n"));

        assert!(
            zero.contains("test.toml:5:14: volume[0].num_queues"),
            "{zero}"
        );
        assert!(many.contains("17 queues"), "{many}");
        assert!(
            empty.contains("volume[0].vhost_user_blk: empty path"),
            "{empty}"
        );
        assert!(
            clash.contains("already used as volume[0].members[0]"),
            "{clash}"
        );
    }

    #[test]
    fn load_reports_unreadable_file() {
        let e = Config::load("/nonexistent/vraid.toml").unwrap_err();

        assert!(matches!(e, ConfigError::Read { .. }));
        assert_eq!(e.line(), None);
    }

    #[test]
    fn non_ascii_text_gives_character_columns() {
        let e = err("# é\n[server]\nnbd = \"é\"\n");

        assert!(e.starts_with("test.toml:3:7: server.nbd:"), "{e}");
    }

    #[test]
    fn force_assemble_key_defaults_off() {
        let base = "[[volume]]\nname = \"v\"\nlevel = 5\nmembers = [\"/a\", \"/b\", \"/c\"]\n";
        assert!(!parse(base).unwrap().volumes[0].force_assemble);
        let on = parse(&format!("{base}force_assemble = true\n")).unwrap();
        assert!(on.volumes[0].force_assemble);
    }

    #[test]
    fn create_checksum_layout_is_read_and_checked() {
        use crate::meta::layout::ChecksumLayout;
        let base = "[[volume]]\nname = \"v\"\nlevel = 1\nmembers = [\"/a\", \"/b\"]\n";
        let create = |extra: &str| format!("{base}create = {{ member_size = \"64M\"{extra} }}\n");
        let layout = |text: &str| {
            parse(text).unwrap().volumes[0]
                .create
                .unwrap()
                .checksum_layout
        };
        assert_eq!(layout(&create("")), ChecksumLayout::Separate);
        let inline = create(", checksum_layout = \"inline\"");
        assert_eq!(layout(&inline), ChecksumLayout::Inline);
        let e = err(&create(", checksum_layout = \"sideways\""));
        assert!(e.contains("volume[0].create.checksum_layout"), "{e}");
        assert!(e.contains("use `separate` or `inline`"), "{e}");
    }
    #[test]
    fn md_tables_are_read_and_their_paths_checked() {
        let md = "[[md]]\nmembers = [\"/a\", \"/b\"]\nname = \"nas\"\n";
        let c = parse(md).unwrap();
        assert_eq!(c.md.len(), 1);
        assert_eq!(c.md[0].members, [PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(c.md[0].name.as_deref(), Some("nas"));
        assert!(!c.md[0].writable, "read-only unless asked");
        let w = parse("[[md]]\nmembers = [\"/a\"]\nwritable = true\n").unwrap();
        assert!(w.md[0].writable);
        let e = err("[[md]]\nmembers = [\"/a\"]\nwritable = \"yes\"\n");
        assert!(e.contains(":3:") && e.contains("expected a boolean"), "{e}");
        let v = parse("[[md]]\nmembers = [\"/a\"]\nvhost_user_blk = \"/s\"\nnum_queues = 2\n");
        let v = v.unwrap();
        assert_eq!(v.md[0].vhost_user_blk, Some(PathBuf::from("/s")));
        assert_eq!(
            (v.md[0].num_queues, c.md[0].num_queues),
            (2, DEFAULT_NUM_QUEUES)
        );
        let e = err("[[md]]\nmembers = [\"/a\"]\nvhost_user_blk = \"/a\"\n");
        assert!(
            e.contains("md[0].vhost_user_blk") && e.contains("already used"),
            "{e}"
        );
        let e = err(&format!("{md}[[md]]\nmembers = [\"/b\"]\n"));
        assert!(
            e.contains("md[1].members[0]") && e.contains("already used"),
            "{e}"
        );
        let e = err("[[md]]\nmembers = []\n");
        assert!(e.contains("at least one member"), "{e}");
        let example = include_str!("../config/md.toml");
        assert_eq!(parse(example).unwrap().md[0].members.len(), 4);
    }
}
