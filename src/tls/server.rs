//! The server side: which TLS policy the NBD exports follow, and the
//! acceptor that upgrades a connection after `NBD_OPT_STARTTLS`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;

use super::allow::{AllowList, AllowListVerifier};
use super::switch::{Capture, RecordLayer};
use super::{pem, provider, TlsError};

/// A server-side TLS stream.
pub type ServerTlsStream<S> = tokio_rustls::server::TlsStream<S>;

/// TLS policy of the NBD exports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsMode {
    /// No TLS (`NBD_OPT_STARTTLS` unsupported).
    #[default]
    Off,
    /// Clients may start TLS or stay in plain text.
    Allow,
    /// Clients must start TLS before anything else.
    Require,
}

impl FromStr for TlsMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(TlsMode::Off),
            "allow" => Ok(TlsMode::Allow),
            "require" => Ok(TlsMode::Require),
            other => Err(format!(
                "unknown TLS mode {other:?}: expected require, allow or off"
            )),
        }
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsMode::Off => "off",
            TlsMode::Allow => "allow",
            TlsMode::Require => "require",
        })
    }
}

/// Where the server's credentials are and what it asks of clients.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerTlsConfig {
    /// `allow` or `require` (`off` builds no [`ServerTls`]).
    pub mode: TlsMode,
    /// Certificate chain (PEM, the server's certificate first).
    pub cert: PathBuf,
    /// Private key of that certificate (PEM).
    pub key: PathBuf,
    /// CA bundle (PEM) client certificates must chain to; none: no client
    /// certificate is asked for.
    pub ca: Option<PathBuf>,
    /// Names a client certificate must carry (CN or SAN); needs `ca`.
    pub allow: AllowList,
    /// Who runs the record layer after the NBD options.
    pub record_layer: RecordLayer,
}

/// A loaded server-side TLS setup.
#[derive(Clone)]
pub struct ServerTls {
    mode: TlsMode,
    config: Arc<ServerConfig>,
    record_layer: RecordLayer,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("mode", &self.mode)
            .field("record_layer", &self.record_layer)
            .finish()
    }
}

impl ServerTls {
    /// Loads the credentials of `config` (whose mode is not `off`).
    pub fn load(config: &ServerTlsConfig) -> Result<Self, TlsError> {
        if config.mode == TlsMode::Off {
            return Err(TlsError::Usage("TLS mode is off".into()));
        }
        if config.ca.is_none() && !config.allow.is_empty() {
            return Err(TlsError::Usage(
                "a TLS allow list needs a CA for client certificates".into(),
            ));
        }
        let certs = pem::certs(&config.cert, "certificate")?;
        let key = pem::key(&config.key)?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?;
        let builder = match &config.ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let roots = Arc::new(pem::roots(ca)?);
                let inner = WebPkiClientVerifier::builder_with_provider(roots, provider())
                    .build()
                    .map_err(TlsError::Verifier)?;
                builder.with_client_cert_verifier(Arc::new(AllowListVerifier {
                    inner,
                    allow: config.allow.clone(),
                }))
            }
        };
        let mut server = builder
            .with_single_cert(certs, key)
            .map_err(TlsError::Config)?;
        // Our order (AES-128-GCM first, see `provider`), not the client's.
        server.ignore_client_order = true;
        // Our record layer takes over after the options (FORMAT.md §14): no
        // session tickets rustls would still have to send, secrets out.
        server.send_tls13_tickets = 0;
        server.enable_secret_extraction = config.record_layer == RecordLayer::Ours;
        Ok(ServerTls {
            mode: config.mode,
            config: Arc::new(server),
            record_layer: config.record_layer,
        })
    }

    /// `allow` or `require`.
    pub fn mode(&self) -> TlsMode {
        self.mode
    }

    /// Runs the TLS handshake as the server over `stream`.
    pub async fn accept<S>(&self, stream: S) -> Result<ServerTlsStream<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        Ok(self.accept_switchable(stream).await?.0)
    }

    /// [`accept`](Self::accept), with the traffic secrets captured when our
    /// record layer may take the connection over later (`super::switch`).
    pub async fn accept_switchable<S>(
        &self,
        stream: S,
    ) -> Result<(ServerTlsStream<S>, Option<Arc<Capture>>), TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (config, capture) = match self.record_layer {
            RecordLayer::Rustls => (self.config.clone(), None),
            RecordLayer::Ours => {
                let capture = Arc::new(Capture::default());
                let mut config = (*self.config).clone();
                config.key_log = capture.clone();
                (Arc::new(config), Some(capture))
            }
        };
        let stream = TlsAcceptor::from(config)
            .accept(stream)
            .await
            .map_err(TlsError::Handshake)?;
        Ok((stream, capture))
    }
}
