//! TLS for NBD: X.509 credentials loaded from PEM files into rustls (the
//! `ring` provider), a server side for `NBD_OPT_STARTTLS` and a client side
//! for `nbds://` members.
//!
//! ```text
//!  pem       certificate chains, private keys, CA bundles from PEM files
//!  names     the names a certificate holds (subject CN, SAN DNS names)
//!  allow     client certificates: the CA check, then the allow list
//!  server    ServerTls: mode (off/allow/require) + acceptor, used by export::nbd
//!  client    ClientTls: connector (CA file, optional client identity)
//!  flushed   Flushed: a write counts once its ciphertext left the buffer
//!  record    our TLS 1.3 record protection (ring AEAD, KeyUpdate)
//!  fast      reader/writer halves over `record` (FORMAT.md §14)
//!  inplace   the writer sealing mutable pieces (READ data) where they lie
//!  switch    rustls -> `fast` after the NBD options: secrets, checks
//! ```
//!
//! Nothing here knows NBD: the NBD server decides when to upgrade a stream
//! (after `NBD_OPT_STARTTLS`), these types do the upgrade.

mod allow;
mod client;
mod fast;
#[cfg(test)]
mod fast_tests;
mod flushed;
#[cfg(test)]
mod hostile_tests;
mod inplace;
#[cfg(test)]
mod limit_tests;
pub mod names;
mod pem;
pub mod record;
mod server;
mod switch;
#[cfg(test)]
pub(crate) mod tests;

use std::path::PathBuf;

pub use allow::AllowList;
pub use client::{ClientTls, ClientTlsStream};
pub use fast::{fuzz_receive, FastReader, FastWriter};
pub use flushed::Flushed;
pub use inplace::Piece;
pub use server::{ServerTls, ServerTlsConfig, ServerTlsStream, TlsMode};
pub use switch::{
    client_record_layer, set_client_record_layer, switch, switch_client, Capture, ClientSwitch,
    RecordLayer, Switch, Switched,
};

/// Bytes read from the socket at once under a TLS stream. rustls asks its
/// transport for 4 KiB at a time (up to one record of 16 KiB): straight
/// on a socket that is four or more `recv` calls per record, and one per
/// small record (each NBD request header a client sends is one). Reading
/// through a buffer this size takes up to four full records in one call
/// (as large as the plain-text path's inbox, `export::nbd::wire`).
pub const READ_BUFFER: usize = 64 << 10;

/// `stream` with reads buffered by [`READ_BUFFER`] (writes pass through),
/// to put under a TLS stream.
pub fn buffered<S: tokio::io::AsyncRead>(stream: S) -> tokio::io::BufReader<S> {
    tokio::io::BufReader::with_capacity(READ_BUFFER, stream)
}

/// What can go wrong loading credentials or running a handshake.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("cannot read {what} from {}", path.display())]
    Pem {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why not.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A PEM file held no item of the kind needed.
    #[error("{} holds no {what}", path.display())]
    Empty {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// rustls refused the credentials (key not matching the certificate,
    /// unsupported key type, CA certificate unusable...).
    #[error("TLS configuration refused")]
    Config(#[source] rustls::Error),
    /// The CA bundle could not build a client-certificate verifier.
    #[error("client-certificate verifier refused the CA")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    /// Not a name a server certificate can be checked against.
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
    /// A TLS setting that contradicts another.
    #[error("{0}")]
    Usage(String),
    /// The handshake failed (I/O or a TLS alert).
    #[error("TLS handshake failed")]
    Handshake(#[source] std::io::Error),
}

/// The crypto provider every config here uses: ring, which builds without
/// cmake and nasm (aws-lc-rs needs both). rustls 0.23.48 deprecates it for
/// lacking post-quantum key exchange; the classical suites are what NBD
/// clients (GnuTLS in QEMU and libnbd) negotiate here anyway.
///
/// AES-128-GCM comes first (the server picks it over GnuTLS's preference for
/// AES-256-GCM: ten AES rounds instead of fourteen per block of a bulk data
/// stream; both are safe).
#[allow(deprecated)]
fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    use rustls::CipherSuite::{
        TLS13_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    };
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|s| {
        !matches!(
            s.suite(),
            TLS13_AES_128_GCM_SHA256
                | TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        )
    });
    std::sync::Arc::new(provider)
}
