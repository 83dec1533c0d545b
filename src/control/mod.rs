//! The control plane: a Unix socket speaking newline-delimited JSON-RPC 2.0,
//! the CLI verbs that talk to it, and the live state they act on.
//!
//! ```text
//!  vraid status|fail|remove|fault ─► client ─► control.sock ─► server
//!       (params ─►)                                              │ rpc: frame, parse, reply
//!       (◄─ status, replies: typed)                              ▼
//!                      methods ─► Registry ─► VolumeHandle (per volume)
//!                                               │ raid::Volume (fail), FaultSet per member,
//!                                               │ volfault::ClientStack (volume faults, cache),
//!                                               │ IoStats per member and volume, EventLog
//!                                               └ EngineOps (add/replace/set, wired by the engine)
//! ```
//!
//! What travels is typed on both sides: [`params`] (method parameters),
//! [`status`] (the `status` reply) and [`replies`] (the other results);
//! only [`rpc`] handles the JSON-RPC envelope as untyped JSON.

pub mod cli;
pub mod client;
pub mod events;
pub mod handle;
pub mod log_cli;
pub mod log_methods;
pub mod methods;
pub mod params;
pub mod pool_cli;
pub mod pool_methods;
pub mod replies;
pub mod rpc;
pub mod server;
pub mod status;
pub mod status_pools;
pub mod volume_faults;
pub mod watch;

#[cfg(test)]
mod tests;

pub use client::{default_client_path, ClientError};
pub use events::{Event, EventLog};
pub use handle::{EngineOps, MemberHandle, MemberSlots, Registry, VolumeHandle};
pub use server::ControlServer;

/// Errors a control request can end with, each with its JSON-RPC code.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The request line is not JSON.
    #[error("parse error: {0}")]
    Parse(String),
    /// JSON, but not a JSON-RPC 2.0 request.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// No such method.
    #[error("method not found: {0:?}")]
    MethodNotFound(String),
    /// The parameters do not fit the method.
    #[error("invalid params: {0}")]
    InvalidParams(String),
    /// No volume of that name.
    #[error("unknown volume {0:?}")]
    UnknownVolume(String),
    /// No member of that path or role in the volume.
    #[error("volume {volume} has no member {member}")]
    UnknownMember {
        /// Volume name.
        volume: String,
        /// What was asked for.
        member: String,
    },
    /// The request is understood but refused in the current state.
    #[error("{0}")]
    Refused(String),
    /// The method exists but its engine is not wired in this daemon.
    #[error("{0} is not available yet: the rebuild engine is not wired into this daemon")]
    NotAvailable(String),
    /// No fault with that id.
    #[error("no fault with id {0}")]
    UnknownFault(u64),
}

impl ControlError {
    /// The JSON-RPC error code.
    pub fn code(&self) -> i64 {
        match self {
            ControlError::Parse(_) => -32700,
            ControlError::InvalidRequest(_) => -32600,
            ControlError::MethodNotFound(_) => -32601,
            ControlError::InvalidParams(_) => -32602,
            ControlError::UnknownVolume(_) => -32001,
            ControlError::UnknownMember { .. } => -32002,
            ControlError::Refused(_) => -32003,
            ControlError::NotAvailable(_) => -32004,
            ControlError::UnknownFault(_) => -32005,
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
