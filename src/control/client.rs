//! The client side of the control socket, used by the CLI verbs: connect,
//! send one JSON-RPC request, read its reply.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::rpc::{OutgoingRequest, Response};

/// Environment variable naming the control socket.
pub const CONTROL_ENV: &str = "VRAID_CONTROL";
/// Control socket of the demo (`vraid serve` without members or config).
pub const DEMO_CONTROL: &str = "vraid-data/control.sock";
/// Control socket of a daemon serving members or a config.
pub const DEFAULT_CONTROL: &str = "vraid-control.sock";

/// Longest reply accepted.
const MAX_REPLY: u64 = 64 << 20;

/// Errors talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error(
        "no vraid daemon is listening on {path} (start `vraid serve`, or pass --control PATH)"
    )]
    NoDaemon {
        /// The socket path.
        path: String,
    },
    /// The connection broke.
    #[error("control socket {path}")]
    Io {
        /// The socket path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The daemon refused the request.
    #[error("{message}")]
    Rpc {
        /// JSON-RPC error code.
        code: i64,
        /// The daemon's message.
        message: String,
    },
    /// The reply is not a JSON-RPC response.
    #[error("unexpected reply from the daemon: {0}")]
    BadReply(String),
}

/// The socket the CLI talks to when `--control` is not given.
pub fn default_client_path() -> PathBuf {
    if let Some(p) = std::env::var_os(CONTROL_ENV) {
        return PathBuf::from(p);
    }
    [DEMO_CONTROL, DEFAULT_CONTROL]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(DEMO_CONTROL))
}

/// Sends `method(params)` to the daemon at `path` and returns its result
/// as `R`.
pub fn call<P: Serialize, R: DeserializeOwned>(
    path: &Path,
    method: &str,
    params: &P,
) -> Result<R, ClientError> {
    let shown = path.display().to_string();
    let io = |source| ClientError::Io {
        path: shown.clone(),
        source,
    };
    let stream = UnixStream::connect(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ClientError::NoDaemon {
                path: shown.clone(),
            }
        }
        _ => io(e),
    })?;
    let request = serde_json::to_string(&OutgoingRequest::new(method, params))
        .map_err(|e| ClientError::BadReply(format!("cannot encode the request: {e}")))?;
    send_all(&stream, format!("{request}\n").as_bytes()).map_err(io)?;
    let mut line = Vec::new();
    BufReader::new(stream)
        .take(MAX_REPLY)
        .read_until(b'\n', &mut line)
        .map_err(io)?;
    let bad = |e: serde_json::Error| ClientError::BadReply(format!("{e}: {}", shown_reply(&line)));
    let reply: Response = serde_json::from_slice(&line).map_err(bad)?;
    if let Some(err) = reply.error {
        return Err(ClientError::Rpc {
            code: err.code,
            message: err.message,
        });
    }
    let result = reply
        .result
        .ok_or_else(|| ClientError::BadReply(shown_reply(&line)))?;
    serde_json::from_value(result).map_err(bad)
}

/// Most of a bad reply an error message shows.
const SHOWN_REPLY: usize = 200;

/// The start of a bad reply for an error message: a broken daemon may send
/// up to [`MAX_REPLY`] bytes, which must not all land on the terminal.
fn shown_reply(reply: &[u8]) -> String {
    let text = String::from_utf8_lossy(&reply[..reply.len().min(SHOWN_REPLY)]);
    if reply.len() > SHOWN_REPLY {
        format!("{}… ({} bytes)", text.trim_end(), reply.len())
    } else {
        text.trim_end().to_string()
    }
}

/// Writes all of `buf` with `MSG_NOSIGNAL`: the CLI runs with SIGPIPE at its
/// default (it ends quietly when its stdout reader goes away), and a daemon
/// that hangs up must give an error here, not end the process.
fn send_all(stream: &UnixStream, mut buf: &[u8]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    while !buf.is_empty() {
        // SAFETY: `buf` is a live slice of `buf.len()` bytes for the call;
        // the fd is kept open by `stream`.
        let n = unsafe {
            libc::send(
                stream.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        match usize::try_from(n) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(_) => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}
