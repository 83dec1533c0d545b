//! The control socket: a Unix listener (mode 0600; a stale socket file is
//! replaced, a live one refused), one task per client, one JSON-RPC request
//! per line, replies in order per connection.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::handle::Registry;
use super::rpc::{failure, parse_request, success, MAX_LINE};
use super::{methods, ControlError};

/// Errors setting up the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another daemon answers on the path.
    #[error("control socket {0} is in use by another vraid daemon (give this one --control PATH)")]
    InUse(String),
    /// Something other than a socket is in the way.
    #[error("control socket path {0} exists and is not a socket; not replacing it")]
    NotASocket(String),
    /// Binding or preparing the socket failed.
    #[error("cannot listen on control socket {path}")]
    Bind {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A bound control socket.
#[derive(Debug)]
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    registry: Arc<Registry>,
}

impl ControlServer {
    /// Fails if a live daemon answers on `path` (a stale file is fine, and
    /// so is the socket of a daemon that is exiting: after a SIGKILL it
    /// listens until its io_uring requests are cancelled, never to accept).
    pub fn check_free(path: &Path) -> Result<(), ServerError> {
        if !path.exists() {
            return Ok(());
        }
        let Ok(stream) = std::os::unix::net::UnixStream::connect(path) else {
            return Ok(());
        };
        match peer_pid(&stream) {
            Some(pid) if !crate::member::claim::alive(pid) => {
                tracing::info!(
                    "control socket {}: its daemon (pid {pid}) is exiting; taking it over",
                    path.display()
                );
                Ok(())
            }
            _ => Err(ServerError::InUse(path.display().to_string())),
        }
    }

    /// Binds `path` (creating its directory if needed).
    pub fn bind(path: &Path, registry: Arc<Registry>) -> Result<ControlServer, ServerError> {
        let shown = path.display().to_string();
        let err = |source| ServerError::Bind {
            path: shown.clone(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        ControlServer::check_free(path)?;
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(ServerError::NotASocket(shown));
            }
            std::fs::remove_file(path).map_err(err)?;
        }
        let listener = UnixListener::bind(path).map_err(err)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        Ok(ControlServer {
            listener,
            path: path.to_path_buf(),
            registry,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts clients until the task is dropped.
    pub async fn serve(self) -> std::io::Result<()> {
        loop {
            let (stream, _) = self.listener.accept().await?;
            let registry = self.registry.clone();
            tokio::spawn(async move {
                if let Err(e) = handle_client(stream, &registry).await {
                    tracing::debug!("control client: {e}");
                }
            });
        }
    }
}

/// The pid of the process that listens on the other end (`SO_PEERCRED`),
/// if the kernel names one in this pid namespace.
fn peer_pid(stream: &std::os::unix::net::UnixStream) -> Option<libc::pid_t> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given;
    // the descriptor is owned by `stream` for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0 && cred.pid > 0).then_some(cred.pid)
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn handle_client(stream: UnixStream, registry: &Registry) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        let complete = line.last() == Some(&b'\n');
        if complete {
            line.pop();
        }
        if line.len() > MAX_LINE {
            let e =
                ControlError::InvalidRequest(format!("request line longer than {MAX_LINE} bytes"));
            // Skip the rest of the line without buffering it, then answer.
            if !complete && !skip_line(&mut reader).await? {
                return Ok(());
            }
            let reply = failure(serde_json::Value::Null, &e) + "\n";
            write.write_all(reply.as_bytes()).await?;
            continue;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if let Some(reply) = answer(&line, registry).await {
            write.write_all((reply + "\n").as_bytes()).await?;
        }
    }
}

/// Discards input up to and including the next newline; false at EOF.
async fn skip_line<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> std::io::Result<bool> {
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(false);
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                reader.consume(i + 1);
                return Ok(true);
            }
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
    }
}

/// The reply line for one request line (`None` for a notification).
pub async fn answer(line: &[u8], registry: &Registry) -> Option<String> {
    let req = match parse_request(line) {
        Ok(r) => r,
        Err((id, e)) => return Some(failure(id, &e)),
    };
    let result = methods::dispatch(registry, &req.method, req.params).await;
    let id = req.id?;
    Some(match result {
        Ok(v) => success(id, v),
        Err(e) => failure(id, &e),
    })
}
