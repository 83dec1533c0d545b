//! The daemon and the one-shot commands behind the CLI: `create`, `examine`,
//! `serve`. This is the only place that wires members, metadata, RAID and
//! exports together:
//!
//! ```text
//!  paths ─► member::open_member ─► meta::assemble ─► raid::Volume ─► export::nbd
//!                                      ▲ superblocks        │ member failed
//!                                      └──── MetaEvents ◄───┘
//! ```

pub mod array;
mod bringup;
mod demo;
mod engine_ops;
mod journal;
mod md;
mod mirror;
mod mirror_policy;
mod pool_config;
mod pools;
mod read_only;
mod serve;
mod serve_tls;
mod sync_plan;

use std::error::Error as StdError;
use std::path::{Path, PathBuf};

pub use bringup::CreateRequest;
pub use serve::{serve, ServeOptions};

/// Errors of the CLI commands and the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Opening or creating a member failed.
    #[error(transparent)]
    Member(#[from] crate::member::MemberError),
    /// Metadata (superblock, create, assembly) failed.
    #[error(transparent)]
    Meta(#[from] crate::meta::MetaError),
    /// The array cannot be assembled from its members.
    #[error(transparent)]
    Assemble(#[from] crate::meta::AssembleError),
    /// The configuration file is wrong.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The RAID volume could not be built.
    #[error("volume {name}")]
    Raid {
        /// Volume name.
        name: String,
        /// Why.
        #[source]
        source: crate::raid::RaidError,
    },
    /// The NBD TLS credentials could not be loaded.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// A socket could not be set up.
    #[error("cannot listen on {what}")]
    Listen {
        /// Address or path.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A block operation failed during start-up or shutdown.
    #[error("{context}")]
    Block {
        /// What was being done.
        context: String,
        /// Why.
        #[source]
        source: crate::block::BlockError,
    },
    /// A control-socket client request failed.
    #[error(transparent)]
    Control(#[from] crate::control::ClientError),
    /// The control socket could not be set up.
    #[error(transparent)]
    ControlSocket(#[from] crate::control::server::ServerError),
    /// A vhost-user-blk export could not be started.
    #[error(transparent)]
    Vhost(#[from] crate::export::vhost::VhostError),
    /// A write log could not be read, replayed or checked.
    #[error(transparent)]
    Log(#[from] crate::wlog::LogError),
    /// A pool on an array could not be opened.
    #[error("pool on array {array}")]
    Pool {
        /// Array name.
        array: String,
        /// Why.
        #[source]
        source: crate::pool::PoolError,
    },
    /// Anything else the user must fix, already phrased as one line.
    #[error("{0}")]
    Usage(String),
    /// The pre-write check found contents a write would destroy (another
    /// array's member, a filesystem...): `--force` overwrites them.
    #[error("{0}")]
    Overwrite(String),
}

/// Renders an error and its sources as one line: "a: b: c".
pub fn error_chain(e: &dyn StdError) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// `vraid create`: the array `req` on `members`, in role order.
pub async fn create(members: &[PathBuf], req: &CreateRequest) -> Result<(), DaemonError> {
    let info = bringup::create_array(members, req, &bringup::member_options(None)).await?;
    println!(
        "created {} ({}, {} members, chunk {}, {} bytes per member, array {})",
        info.name,
        crate::raid::Level::from_number(info.level)
            .map_or_else(|| info.level.to_string(), |l| l.to_string()),
        info.member_count,
        crate::units::format_size(u64::from(info.chunk_size)),
        info.data_size,
        info.array_uuid
    );
    if req.checksum_layout == crate::meta::layout::ChecksumLayout::Inline {
        println!(
            "checksums inline: a 512-byte tag after each 4 KiB block; 1/9 (11.1 %) of each \
             member's data area holds tags"
        );
    }
    Ok(())
}

/// `vraid examine` of `member` (`json`: print JSON instead of text).
pub async fn examine(member: &Path, json: bool) -> Result<(), DaemonError> {
    let report = match bringup::examine_member(member).await? {
        bringup::Examined::Member(report) => report,
        bringup::Examined::Md(report) => {
            print_report(&report, json);
            return Ok(());
        }
        bringup::Examined::Foreign(foreign) => {
            print_report(&foreign, json);
            let md = foreign
                .md_error
                .as_ref()
                .map(|e| format!(" (unreadable: {e})"))
                .unwrap_or_default();
            return Err(DaemonError::Usage(format!(
                "{}: no vraid superblock; it holds {}{md}",
                show_path(member),
                foreign.summary()
            )));
        }
    };
    print_report(&report, json);
    Ok(())
}

/// Prints an `examine` report as JSON or as text.
fn print_report<R: serde::Serialize + std::fmt::Display>(report: &R, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(report).expect("report serializes")
        );
    } else {
        print!("{report}");
    }
}

fn show_path(p: &Path) -> String {
    p.display().to_string()
}

fn paths_display(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| show_path(p))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod array_tests;
