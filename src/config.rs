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

use crate::meta::superblock::{metadata_layout, valid_chunk_size, valid_name, MAX_MEMBERS};
use crate::raid::Level;
use crate::units::parse_size;

/// Chunk size used when a volume does not give one.
pub const DEFAULT_CHUNK_SIZE: u64 = 64 << 10;

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Server-wide options.
    pub server: ServerConfig,
    /// Volumes, in file order.
    pub volumes: Vec<VolumeConfig>,
}

/// The `[server]` table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerConfig {
    /// NBD TCP listen address.
    pub nbd: Option<SocketAddr>,
    /// NBD Unix socket path.
    pub nbd_socket: Option<PathBuf>,
    /// Member I/O engine.
    pub io_engine: IoEngine,
}

/// Which member I/O engine to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IoEngine {
    /// io_uring if it works here, else pread/pwrite.
    #[default]
    Auto,
    /// io_uring only.
    Uring,
    /// pread/pwrite only.
    Sync,
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
}

/// `create = { member_size = "256M" }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreateConfig {
    /// Size of each member file to create, in bytes.
    pub member_size: u64,
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    nbd: Option<Spanned<String>>,
    nbd_socket: Option<Spanned<String>>,
    io_engine: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVolume {
    name: Spanned<String>,
    level: Spanned<Scalar>,
    chunk_size: Option<Spanned<Scalar>>,
    members: Spanned<Vec<Spanned<String>>>,
    create: Option<RawCreate>,
    #[serde(default)]
    read_only: bool,
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCreate {
    member_size: Spanned<Scalar>,
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
        Ok(Config { server, volumes })
    }
}

fn server(src: &Source<'_>, s: RawServer) -> Result<ServerConfig, ConfigError> {
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
        None => IoEngine::Auto,
        Some(e) => match e.get_ref().as_str() {
            "auto" => IoEngine::Auto,
            "uring" => IoEngine::Uring,
            "sync" => IoEngine::Sync,
            other => {
                return Err(src.invalid(
                    e.span(),
                    "server.io_engine",
                    format!("unknown engine {other:?}: expected auto, uring or sync"),
                ))
            }
        },
    };
    Ok(ServerConfig {
        nbd,
        nbd_socket,
        io_engine,
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

fn volume(
    src: &Source<'_>,
    key: &str,
    v: RawVolume,
    paths: &mut Vec<(PathBuf, String)>,
) -> Result<VolumeConfig, ConfigError> {
    let name = v.name.get_ref().clone();
    if !valid_name(&name) {
        return Err(src.invalid(
            v.name.span(),
            format!("{key}.name"),
            format!("invalid name {name:?}: use 1..=64 characters from A-Z a-z 0-9 . _ -"),
        ));
    }
    let level = match v.level.get_ref() {
        Scalar::Int(n) => u32::try_from(*n).ok().and_then(Level::from_number),
        Scalar::Str(s) => s.parse::<Level>().ok(),
    }
    .ok_or_else(|| {
        src.invalid(
            v.level.span(),
            format!("{key}.level"),
            "unknown RAID level: expected 0, 1 or 5",
        )
    })?;
    let chunk_size = match &v.chunk_size {
        Some(c) => {
            let ckey = format!("{key}.chunk_size");
            let n = size(src, &ckey, c)?;
            if !valid_chunk_size(n) {
                return Err(src.invalid(
                    c.span(),
                    ckey,
                    format!("{n} is not a power of two from 4K to 16M"),
                ));
            }
            n
        }
        None => DEFAULT_CHUNK_SIZE,
    };
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
    let mut members = Vec::with_capacity(count);
    for (j, m) in v.members.get_ref().iter().enumerate() {
        let mkey = format!("{key}.members[{j}]");
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
        members.push(p);
    }
    let create = match &v.create {
        Some(c) => {
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
            Some(CreateConfig { member_size })
        }
        None => None,
    };
    Ok(VolumeConfig {
        name,
        level,
        chunk_size,
        members,
        create,
        read_only: v.read_only,
        description: v.description,
    })
}
