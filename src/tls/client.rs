//! The client side: a connector for NBD clients (`nbds://` members) that
//! checks the server against a CA file and may present a client certificate.
//!
//! The NBD client sends `NBD_OPT_STARTTLS`, reads the `NBD_REP_ACK`, then
//! hands its stream to [`ClientTls::connect`] and goes on over the result.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;

use super::switch::Capture;
use super::{pem, provider, TlsError};

/// A client-side TLS stream.
pub type ClientTlsStream<S> = tokio_rustls::client::TlsStream<S>;

/// A loaded client-side TLS setup, cheap to clone (one per member).
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls").finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Trusts the CA certificates of `ca` (PEM); presents the certificate
    /// chain and key of `identity` (PEM files: cert, key) if the server asks.
    pub fn load(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Self, TlsError> {
        let roots = pem::roots(ca)?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_root_certificates(roots);
        let mut config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(pem::certs(cert, "certificate")?, pem::key(key)?)
                .map_err(TlsError::Config)?,
        };
        // Our record layer may take over after the options (FORMAT.md §14).
        config.enable_secret_extraction = true;
        Ok(ClientTls {
            config: Arc::new(config),
        })
    }

    /// The rustls connector (tests drive the connection underneath).
    #[cfg(test)]
    pub(crate) fn connector(&self) -> TlsConnector {
        TlsConnector::from(self.config.clone())
    }

    /// Runs the TLS handshake as the client over `stream`, checking that
    /// the server's certificate is valid for `server_name` (a DNS name or
    /// an IP address, as in the URI).
    pub async fn connect<S>(
        &self,
        server_name: &str,
        stream: S,
    ) -> Result<ClientTlsStream<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        Ok(self.connect_switchable(server_name, stream).await?.0)
    }

    /// [`connect`](Self::connect), with the traffic secrets captured for
    /// `super::switch_client`.
    pub async fn connect_switchable<S>(
        &self,
        server_name: &str,
        stream: S,
    ) -> Result<(ClientTlsStream<S>, Arc<Capture>), TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|_| TlsError::ServerName(server_name.to_string()))?;
        let capture = Arc::new(Capture::default());
        let mut config = (*self.config).clone();
        config.key_log = capture.clone();
        let stream = TlsConnector::from(Arc::new(config))
            .connect(name, stream)
            .await
            .map_err(TlsError::Handshake)?;
        Ok((stream, capture))
    }
}
