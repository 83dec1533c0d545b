//! NBD server: fixed newstyle handshake, structured replies, pipelined
//! requests with out-of-order replies.
//!
//! ```text
//!  proto        pure wire parsers/encoders (fuzzed in fuzz/)
//!  handshake    option haggling as a state machine (no I/O)
//!  catalog      exports by name, transmission flags, block sizes
//!  meta         metadata contexts: base:allocation, registry, selection
//!  limits       handshake timeout, connection limits, byte pools
//!  transmission one connection's request pipeline (one task, one loop;
//!               its requests in `export::request_set`, no allocation)
//!  wire         its batched request reads and reply writes (writev)
//!  sink         replies to a plain writer (slices) or to our TLS (pieces)
//!  request      one request's volume call and reply
//!  server       listeners, connection lifecycle, shutdown, stats
//! ```
//!
//! Only this module knows NBD; it speaks [`crate::block::BlockDevice`] below.

mod catalog;
pub mod handshake;
pub mod limits;
pub mod meta;
pub mod proto;
pub(crate) mod reader;
mod request;
mod server;
mod sink;
mod transmission;
mod wire;

pub use catalog::{Export, ExportTable};
pub use limits::NbdLimits;
pub use meta::{MetaContext, MetaContexts};
pub use server::{NbdServer, NbdStats};
pub use transmission::{errno_to_nbd, nbd_error, MAX_IN_FLIGHT};

#[cfg(test)]
mod meta_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tls_red_tests;
#[cfg(test)]
mod tls_tests;
