//! Remote members: NBD exports on other hosts used as array members.
//!
//! ```text
//!  uri        nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH, nbds...
//!  reply      parsers of the server's bytes (fuzzed: nbd_server_bytes)
//!  handshake  fixed newstyle, STRUCTURED_REPLY, GO + INFO_BLOCK_SIZE
//!  link       sockets, handshake timeout
//!  tls_link   nbds://: STARTTLS, the upgrade, the handshake over TLS
//!  conn       one connection: pipelined requests by handle, reader/writer tasks
//!  pool       the member's connections (several with CAN_MULTI_CONN),
//!             least-loaded choice, reconnect per connection
//!  align      requests cut to the server's minimum block (read-modify-write)
//!  range_lock blocks held by writes while they are read-modified-written
//!  member     RemoteMember: BlockDevice, request timeout, member_timeout
//! ```
//!
//! The wire constants and request encoder are the server's
//! (`export::nbd::proto`). A remote member is identified by its canonical
//! URI (`DeviceId::Remote`), not by a lock: the same export cannot be two
//! members of one array, but nothing stops another host from using it.

pub mod align;
pub mod conn;
pub mod handshake;
pub mod link;
mod member;
mod pool;
mod range_lock;
pub mod reply;
pub mod stats;
mod tls_link;
pub mod uri;

pub use link::LinkError;
pub use member::{RemoteMember, RemoteOptions};
pub use stats::{RemoteSnapshot, RemoteStats};
pub use uri::{is_nbd_uri, NbdUri};

/// Opens the remote member a member path names (`is_nbd_uri(path)`).
pub fn open(
    path: &std::path::Path,
    opts: &crate::member::MemberOptions,
) -> Result<std::sync::Arc<RemoteMember>, crate::member::MemberError> {
    RemoteMember::open(path, opts.remote, opts.read_only)
        .map(std::sync::Arc::new)
        .map_err(|source| crate::member::MemberError::Remote {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod given_up_tests;
#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod multi_tests;
#[cfg(test)]
mod rmw_tests;
#[cfg(test)]
mod strict_server;
#[cfg(test)]
mod tests;
