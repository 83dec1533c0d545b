//! The write log (docs/FAULTS.md "Write log"): a record of every write,
//! trim, write-zeroes, FLUSH and FUA a volume's clients had acknowledged,
//! with data and named marks, to replay onto an image up to any point and
//! to enumerate the crash states a disk's volatile cache allows.
//!
//! ```text
//!  NBD / vhost ─► stats ─► volume faults ─► LogDevice ─► write cache ─► volume
//!                                             │ records on completion
//!                                             ▼
//!                                  WriteLog ─► FILE (format.rs)
//!  vraid log replay / crashpoints / check ◄── scan.rs ◄── FILE
//! ```
//!
//! [`format`] owns the bytes, [`scan`] reads them back (checked),
//! [`recorder`] writes them from the data path, [`replay`] applies a
//! prefix or a crash state onto a target (a file, or an NBD export via
//! [`nbd_target`]), [`crash`] enumerates the crash
//! states.

pub mod check;
pub mod crash;
pub mod format;
pub mod nbd_target;
pub mod recorder;
pub mod replay;
pub mod scan;

use std::path::PathBuf;

pub use recorder::{LogDevice, LogStatus, WriteLog};
pub use scan::LogIndex;

/// Errors of the write log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The file does not start with the log magic.
    #[error("not a vraid write log (no VRAIDLOG magic)")]
    NotALog,
    /// A version this build does not read.
    #[error("write log version {0} is not supported (this vraid reads version 1)")]
    Version(u32),
    /// The file ends inside its header.
    #[error("write log cut short in its {what} (byte {at})")]
    Truncated {
        /// Byte offset.
        at: u64,
        /// What was cut.
        what: String,
    },
    /// A field is wrong.
    #[error("write log corrupt at byte {at}{}: {why}", entry.map(|e| format!(" (entry {e})")).unwrap_or_default())]
    Corrupt {
        /// Byte offset of the record.
        at: u64,
        /// Its entry number.
        entry: Option<u64>,
        /// What is wrong.
        why: String,
    },
    /// No `End` record: damaged, or the daemon stopped while logging.
    #[error(
        "write log is unfinished (damaged, or the daemon stopped while logging): \
         {entries} complete entries end at byte {at}, then {problem}; \
         pass --allow-torn to use the complete entries"
    )]
    Unfinished {
        /// Complete entries.
        entries: u64,
        /// Where they end.
        at: u64,
        /// What follows.
        problem: String,
    },
    /// Reading the log failed.
    #[error("cannot read the write log")]
    Read(#[source] std::io::Error),
    /// A file could not be opened, created, written or synced.
    #[error("{path}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A replay target (an NBD export) cannot be used or written.
    #[error("replay target {target}: {why}")]
    Target {
        /// The target as given.
        target: String,
        /// Why.
        why: String,
    },
    /// The point asked for is not in the log.
    #[error("{0}")]
    NoSuchPoint(String),
    /// A command run by `vraid log check` could not start.
    #[error("cannot run {command}")]
    Command {
        /// The program.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `vraid log check` found crash points where the command failed.
    #[error("{failed} of {points} crash points failed the check (first: {first})")]
    CheckFailed {
        /// Points that failed.
        failed: usize,
        /// Points checked.
        points: usize,
        /// The first that failed.
        first: String,
    },
}

impl LogError {
    /// [`LogError::File`] for `path`.
    pub fn file(path: impl Into<PathBuf>, source: std::io::Error) -> LogError {
        LogError::File {
            path: path.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests;
