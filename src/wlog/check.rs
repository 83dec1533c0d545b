//! `vraid log check`: every crash state of a log built in turn on one
//! image, and a command run on each (`{}` in its arguments, and
//! `$VRAID_LOG_IMAGE`, name the image; `$VRAID_LOG_POINT` the state).
//!
//! The states come sorted by cut. A side file (`IMAGE.prefix`) holds the
//! log's prefix up to the durable part of the current state and only
//! moves forward, so the log is read once for the prefixes; each state is
//! that prefix copied to IMAGE plus the state's own entries.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::crash::CrashPoint;
use super::replay::{FileTarget, OpenLog, Target};
use super::LogError;

/// The outcome at one crash state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PointResult {
    /// The state.
    pub point: CrashPoint,
    /// Whether the command succeeded, and its output when it did not.
    pub failure: Option<String>,
}

/// Runs `command` on every state of `points` built on `image`, whose
/// start contents are copied from `base` (None: zeroes).
pub fn check(
    log: &OpenLog,
    points: &[CrashPoint],
    image: &Path,
    base: Option<&Path>,
    command: &[String],
) -> Result<Vec<PointResult>, LogError> {
    let size = log.index.header.volume_size;
    let prefix_path = side_file(image, "prefix");
    start_image(&prefix_path, base, size)?;
    let prefix = Target::File(FileTarget::open(&prefix_path, size)?);
    let mut at = 0u64;
    let mut sorted: Vec<&CrashPoint> = points.iter().collect();
    sorted.sort_by_key(|p| (p.durable.min(p.cut), p.id));
    let mut results = Vec::new();
    for p in sorted {
        let durable = p.durable.min(p.cut);
        log.apply(&prefix, at, durable, &[])?;
        at = durable;
        std::fs::copy(&prefix_path, image).map_err(|e| LogError::file(image, e))?;
        let target = Target::File(FileTarget::open(image, size)?);
        log.apply(&target, durable, p.cut, &p.dropped)?;
        target.sync()?;
        drop(target);
        let failure = run(command, image, &p.label)?;
        results.push(PointResult {
            point: p.clone(),
            failure,
        });
    }
    let _ = std::fs::remove_file(&prefix_path);
    results.sort_by_key(|r| r.point.id);
    Ok(results)
}

fn side_file(image: &Path, tag: &str) -> PathBuf {
    let mut s = image.as_os_str().to_owned();
    s.push(format!(".{tag}"));
    PathBuf::from(s)
}

/// The prefix file as the volume was when logging started.
fn start_image(path: &Path, base: Option<&Path>, size: u64) -> Result<(), LogError> {
    let _ = std::fs::remove_file(path);
    if let Some(base) = base {
        std::fs::copy(base, path).map_err(|e| LogError::file(base, e))?;
    }
    FileTarget::open(path, size).map(drop)
}

/// Runs the command on the image; Some(output) when it failed.
fn run(command: &[String], image: &Path, label: &str) -> Result<Option<String>, LogError> {
    let shown = image.display().to_string();
    let args: Vec<String> = command[1..]
        .iter()
        .map(|a| a.replace("{}", &shown))
        .collect();
    let out = Command::new(&command[0])
        .args(&args)
        .env("VRAID_LOG_IMAGE", image)
        .env("VRAID_LOG_POINT", label)
        .output()
        .map_err(|source| LogError::Command {
            command: command[0].clone(),
            source,
        })?;
    if out.status.success() {
        return Ok(None);
    }
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok(Some(format!("{}: {}", out.status, text.trim())))
}
