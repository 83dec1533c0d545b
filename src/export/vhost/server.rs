//! The listening side of one vhost-user-blk export: binds the socket
//! (mode 0600, stale file replaced, live one refused) and serves one
//! frontend at a time on a dedicated thread, accepting the next one after a
//! disconnect.
//!
//! ```text
//!  accept thread: loop {
//!      new BlkBackend + VhostUserDaemon ─► start (accept) ─► wait (until the
//!      frontend leaves or shutdown) ─► drop daemon (worker threads exit)
//!      ─► drain in-flight requests
//!  }
//!  shutdown(): flag, close the live connection, wake the accept, join
//! ```

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::{info, warn};
use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use super::backend::{BlkBackend, DRAIN_TIMEOUT};
use super::device::{DeviceSpec, MAX_QUEUES};
use super::exec::ExportContext;
use super::VhostError;
use crate::block::BlockDevice;

/// One volume exported over vhost-user-blk.
#[derive(Clone)]
pub struct VhostExport {
    /// The volume.
    pub device: Arc<dyn BlockDevice>,
    /// Socket path.
    pub socket: PathBuf,
    /// GET_ID string (the volume name).
    pub name: String,
    /// Refuse writes.
    pub read_only: bool,
    /// Request queues (1..=16).
    pub num_queues: u16,
    /// Minimum I/O size in bytes (the chunk).
    pub min_io: u64,
    /// Optimal I/O size in bytes (the full stripe).
    pub opt_io: u64,
}

impl std::fmt::Debug for VhostExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostExport")
            .field("device", &self.device.name())
            .field("socket", &self.socket)
            .field("read_only", &self.read_only)
            .field("num_queues", &self.num_queues)
            .finish()
    }
}

#[derive(Default)]
struct Control {
    stopping: bool,
    connection: Option<ShutdownHandle>,
}

/// A running vhost-user-blk export.
pub struct VhostServer {
    socket: PathBuf,
    control: Arc<Mutex<Control>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for VhostServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostServer")
            .field("socket", &self.socket)
            .finish()
    }
}

impl VhostServer {
    /// Binds the socket and starts accepting; requests run on `runtime`.
    pub fn start(
        export: VhostExport,
        runtime: tokio::runtime::Handle,
    ) -> Result<VhostServer, VhostError> {
        if !(1..=MAX_QUEUES).contains(&export.num_queues) {
            return Err(VhostError::Queues(export.num_queues));
        }
        let listener = bind(&export.socket)?;
        let ctx = Arc::new(ExportContext {
            spec: DeviceSpec {
                name: export.name.clone(),
                size: export.device.size(),
                read_only: export.read_only,
                num_queues: export.num_queues,
                min_io: export.min_io,
                opt_io: export.opt_io,
            },
            device: export.device,
            writeback: AtomicBool::new(true),
        });
        let control = Arc::new(Mutex::new(Control::default()));
        let thread_control = control.clone();
        let socket = export.socket.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vhost-{}", export.name))
            .spawn(move || accept_loop(listener, &socket, ctx, runtime, &thread_control))
            .map_err(|e| VhostError::Thread(export.socket.clone(), e))?;
        Ok(VhostServer {
            socket: export.socket,
            control,
            thread: Some(thread),
        })
    }

    /// True while a frontend is connected.
    pub fn has_frontend(&self) -> bool {
        let c = self.control.lock().unwrap_or_else(|e| e.into_inner());
        c.connection.is_some()
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Disconnects the frontend, drains its requests, stops accepting and
    /// removes the socket. Blocks: call it from a blocking context.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        {
            let mut c = self.control.lock().unwrap_or_else(|e| e.into_inner());
            c.stopping = true;
            if let Some(conn) = c.connection.take() {
                conn.shutdown();
            }
        }
        // Wake an accept that may be blocking; it sees `stopping` and leaves.
        let _ = UnixStream::connect(&self.socket);
        if thread.join().is_err() {
            warn!(
                "vhost-user-blk {}: accept thread panicked",
                self.socket.display()
            );
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for VhostServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Fails if a server already listens on `path`, or if something other
/// than a socket is there (a file the user keeps, a directory: never
/// removed); a stale socket is fine.
pub fn check_socket_free(path: &Path) -> Result<(), VhostError> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(VhostError::NotSocket(path.to_path_buf()));
    }
    if UnixStream::connect(path).is_ok() {
        return Err(VhostError::InUse(path.to_path_buf()));
    }
    Ok(())
}

/// Binds `path`: a stale socket file is replaced, a live one refused.
fn bind(path: &Path) -> Result<UnixListener, VhostError> {
    let err = |e| VhostError::Bind(path.to_path_buf(), e);
    if std::fs::symlink_metadata(path).is_ok() {
        check_socket_free(path)?;
        std::fs::remove_file(path).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

fn accept_loop(
    listener: UnixListener,
    socket: &Path,
    ctx: Arc<ExportContext>,
    runtime: tokio::runtime::Handle,
    control: &Mutex<Control>,
) {
    let mut listener = Listener::from(listener);
    let stopping = || control.lock().unwrap_or_else(|e| e.into_inner()).stopping;
    let where_ = socket.display();
    while !stopping() {
        let (mut daemon, backend) = match new_daemon(&ctx, &runtime) {
            Ok(d) => d,
            Err(e) => {
                warn!("vhost-user-blk {where_}: cannot create the device: {e}");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        if let Err(e) = daemon.start(&mut listener) {
            warn!("vhost-user-blk {where_}: accept failed: {e}");
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        {
            let mut c = control.lock().unwrap_or_else(|e| e.into_inner());
            if c.stopping {
                daemon.request_shutdown();
                break;
            }
            c.connection = daemon.shutdown_handle();
        }
        info!("vhost-user-blk {where_}: frontend connected");
        match daemon.wait() {
            Ok(())
            | Err(vhost_user_backend::Error::HandleRequest(
                vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
            )) => info!("vhost-user-blk {where_}: frontend disconnected"),
            Err(e) => warn!("vhost-user-blk {where_}: connection ended: {e}"),
        }
        control.lock().unwrap_or_else(|e| e.into_inner()).connection = None;
        // Drain while the queue worker threads still poll their requests;
        // dropping the daemon then stops and joins them.
        let pending = backend.in_flight();
        if pending > 0 {
            info!("vhost-user-blk {where_}: draining {pending} requests of the old connection");
        }
        if !backend.drain(DRAIN_TIMEOUT) {
            warn!(
                "vhost-user-blk {where_}: {} requests still in flight after {DRAIN_TIMEOUT:?}",
                backend.in_flight()
            );
        }
        drop(daemon);
    }
}

/// A fresh backend and daemon for the next frontend, with each queue's
/// completion eventfd in its worker thread's epoll set.
fn new_daemon(
    ctx: &Arc<ExportContext>,
    runtime: &tokio::runtime::Handle,
) -> Result<(VhostUserDaemon<Arc<BlkBackend>>, Arc<BlkBackend>), String> {
    let backend =
        Arc::new(BlkBackend::new(ctx.clone(), runtime.clone()).map_err(|e| e.to_string())?);
    let memory = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let daemon = VhostUserDaemon::new(ctx.spec.name.clone(), backend.clone(), memory)
        .map_err(|e| e.to_string())?;
    backend
        .register_wakers(&daemon.get_epoll_handlers())
        .map_err(|e| e.to_string())?;
    Ok((daemon, backend))
}
