//! The control plane's side of the write log (`log.start`, `log.mark`,
//! `log.stop`): parameters, replies, and the calls on the volume's
//! [`crate::wlog::WriteLog`], with events.
//!
//! | method      | params                      |
//! |-------------|-----------------------------|
//! | `log.start` | `volume`, `path` (absolute) |
//! | `log.mark`  | `volume`, `name`            |
//! | `log.stop`  | `volume`                    |

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ControlError, Registry};
use crate::wlog::LogStatus;

/// `log.start`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogStartParams {
    /// Volume.
    pub volume: String,
    /// New log file (must not exist; absolute).
    pub path: PathBuf,
}

/// `log.mark`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogMarkParams {
    /// Volume.
    pub volume: String,
    /// Name of the point.
    pub name: String,
}

/// `log.stop`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogStopParams {
    /// Volume.
    pub volume: String,
}

/// Reply of `log.start` and `log.stop`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogReply {
    /// Volume.
    pub volume: String,
    /// The log.
    pub log: LogStatus,
}

/// Reply of `log.mark`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogMarkReply {
    /// Volume.
    pub volume: String,
    /// Entry number of the mark.
    pub entry: u64,
}

fn refused(volume: &str, e: crate::wlog::LogError) -> ControlError {
    ControlError::Refused(format!(
        "write log of {volume}: {}",
        crate::daemon::error_chain(&e)
    ))
}

/// `log.start`.
pub fn start(reg: &Registry, p: LogStartParams) -> Result<LogReply, ControlError> {
    let (client, vol) = reg.client(&p.volume)?;
    if !p.path.is_absolute() {
        return Err(ControlError::InvalidParams(format!(
            "log path {} is not absolute",
            p.path.display()
        )));
    }
    let size = client.device.size();
    let log = &client.log;
    log.start(&p.path, &p.volume, size)
        .map_err(|e| refused(&p.volume, e))?;
    if let Some(vol) = vol {
        let text = format!("{}: write log started: {}", vol.name, p.path.display());
        vol.events.push(&vol.name, "log_started", None, text);
    }
    Ok(LogReply {
        volume: p.volume.clone(),
        log: log.status().unwrap_or_else(|| stopped_meanwhile(&p.path)),
    })
}

/// The status of a log stopped by someone else meanwhile: empty.
fn stopped_meanwhile(path: &std::path::Path) -> LogStatus {
    LogStatus {
        path: path.to_path_buf(),
        entries: 0,
        bytes: 0,
        failed: Some("stopped at once".into()),
        active: false,
    }
}

/// `log.mark`.
pub async fn mark(reg: &Registry, p: LogMarkParams) -> Result<LogMarkReply, ControlError> {
    let (client, _) = reg.client(&p.volume)?;
    let entry = client
        .log
        .mark(&p.name)
        .await
        .map_err(|e| refused(&p.volume, e))?;
    Ok(LogMarkReply {
        volume: p.volume.clone(),
        entry,
    })
}

/// `log.stop`.
pub async fn stop(reg: &Registry, p: LogStopParams) -> Result<LogReply, ControlError> {
    let (client, vol) = reg.client(&p.volume)?;
    let log = client.log.stop().await.map_err(|e| refused(&p.volume, e))?;
    if let Some(vol) = vol {
        let text = format!(
            "{}: write log stopped: {} ({} entries, {} bytes)",
            vol.name,
            log.path.display(),
            log.entries,
            log.bytes
        );
        vol.events.push(&vol.name, "log_stopped", None, text);
    }
    Ok(LogReply {
        volume: p.volume.clone(),
        log,
    })
}
