//! Remote members: NBD exports on other hosts used as array members.
//!
//! ```text
//!  uri        nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH, nbds...
//!  reply      parsers of the server's bytes (fuzzed: nbd_server_bytes)
//!  handshake  fixed newstyle, STRUCTURED_REPLY, GO + INFO_BLOCK_SIZE
//!  link       sockets, handshake timeout
//!  tls_link   nbds://: STARTTLS, the upgrade, the handshake over TLS
//!  conn       one connection: pipelined requests by handle, reader/writer tasks
//!  member     RemoteMember: BlockDevice, request timeout, reconnect,
//!             member_timeout
//! ```
//!
//! The wire constants and request encoder are the server's
//! (`export::nbd::proto`). A remote member is identified by its canonical
//! URI (`DeviceId::Remote`), not by a lock: the same export cannot be two
//! members of one array, but nothing stops another host from using it.

pub mod conn;
pub mod handshake;
pub mod link;
mod member;
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
mod hostile_tests;
#[cfg(test)]
mod tests;
