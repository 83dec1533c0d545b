//! vhost-user-blk export: attaches a volume to QEMU / cloud-hypervisor
//! guests through a Unix socket, the guest's virtqueues read straight from
//! its shared memory.
//!
//! ```text
//!  frontend (QEMU) ─unix socket─► server: accept loop, one frontend at a time
//!                                   └─► backend: VhostUserBackend (&self), a
//!                                       worker thread per queue
//!  virtqueue chain ─► request::parse ─► exec::execute, polled by the queue's
//!                                        worker thread (executor) in tokio's context
//!                                        └─► BlockDevice (raid::Volume)
//! ```
//!
//! `request` and `device` are pure (parser, feature bits, config space);
//! only this module imports virtio types.

mod backend;
pub mod device;
pub mod exec;
mod executor;
pub mod request;
mod server;

#[cfg(test)]
mod queue_tests;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use backend::{AtomicMem, BlkBackend, GuestMem, Vring};
pub use device::DeviceSpec;
pub use server::{check_socket_free, VhostExport, VhostServer};

/// Errors setting up a vhost-user-blk export.
#[derive(Debug, thiserror::Error)]
pub enum VhostError {
    /// The socket could not be created.
    #[error("cannot bind vhost-user-blk socket {}", .0.display())]
    Bind(PathBuf, #[source] std::io::Error),
    /// Another server is listening on the socket.
    #[error("vhost-user-blk socket {} is in use by another server", .0.display())]
    InUse(PathBuf),
    /// Something other than a socket is at the path.
    #[error("vhost-user-blk socket path {} exists and is not a socket: refusing to replace it", .0.display())]
    NotSocket(PathBuf),
    /// The queue count is out of range.
    #[error("{0} queues requested: a vhost-user-blk export has 1 to 16")]
    Queues(u16),
    /// The accept thread could not be started.
    #[error("cannot start the vhost-user-blk thread for {}", .0.display())]
    Thread(PathBuf, #[source] std::io::Error),
}
