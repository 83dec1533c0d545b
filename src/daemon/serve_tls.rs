//! `vraid serve`'s TLS settings: the command line over the config, the
//! default mode, the checks between the keys, the credentials loaded, and
//! the warning for an NBD address reachable from other hosts in plain text.

use std::net::SocketAddr;

use tracing::warn;

use super::DaemonError;
use crate::config::TlsKeys;
use crate::tls::{AllowList, ServerTls, ServerTlsConfig, TlsError, TlsMode};

/// The TLS setup of the NBD exports, `None` when TLS is off.
pub(super) fn load(
    args: &TlsKeys,
    config: Option<&TlsKeys>,
    nbd: Option<SocketAddr>,
) -> Result<Option<ServerTls>, DaemonError> {
    let layer = args.record_layer.or(config.and_then(|c| c.record_layer));
    crate::tls::set_client_record_layer(layer.unwrap_or_default());
    let resolved = resolve(args, config.cloned().unwrap_or_default())?;
    let mode = resolved.as_ref().map_or(TlsMode::Off, |c| c.mode);
    if let Some(addr) = nbd.filter(|a| !a.ip().is_loopback()) {
        match mode {
            TlsMode::Off => warn!(
                "NBD listens on {addr}, reachable from other hosts, without TLS: \
                 volumes travel in plain text (--tls-cert/--tls-key, --tls=require)"
            ),
            TlsMode::Allow => warn!(
                "NBD listens on {addr} with --tls=allow: clients may still connect \
                 in plain text"
            ),
            TlsMode::Require => {}
        }
    }
    let Some(config) = resolved else {
        return Ok(None);
    };
    let tls = ServerTls::load(&config)?;
    tracing::info!(mode = %config.mode, client_ca = config.ca.is_some(), record_layer = %config.record_layer, "NBD TLS");
    Ok(Some(tls))
}

/// Each key from the command line, else the config; the mode defaults to
/// `require` when a certificate is given. `None`: TLS off.
fn resolve(args: &TlsKeys, config: TlsKeys) -> Result<Option<ServerTlsConfig>, TlsError> {
    let cert = args.cert.clone().or(config.cert);
    let key = args.key.clone().or(config.key);
    let ca = args.ca.clone().or(config.ca);
    let allow = if args.allow.is_empty() {
        config.allow
    } else {
        args.allow.clone()
    };
    let default = if cert.is_some() {
        TlsMode::Require
    } else {
        TlsMode::Off
    };
    let mode = args.mode.or(config.mode).unwrap_or(default);
    if mode == TlsMode::Off {
        return Ok(None);
    }
    let (Some(cert), Some(key)) = (cert, key) else {
        return Err(TlsError::Usage(format!(
            "--tls={mode} needs --tls-cert and --tls-key (or tls_cert and tls_key in [server])"
        )));
    };
    if !allow.is_empty() && ca.is_none() {
        return Err(TlsError::Usage(
            "--tls-allow needs --tls-ca: names are read from client certificates".into(),
        ));
    }
    Ok(Some(ServerTlsConfig {
        mode,
        cert,
        key,
        ca,
        allow: AllowList::new(allow),
        record_layer: args
            .record_layer
            .or(config.record_layer)
            .unwrap_or_default(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn keys(mode: Option<TlsMode>, cert: bool) -> TlsKeys {
        TlsKeys {
            mode,
            cert: cert.then(|| PathBuf::from("c.pem")),
            key: cert.then(|| PathBuf::from("k.pem")),
            ..TlsKeys::default()
        }
    }

    #[test]
    fn a_certificate_alone_means_require_and_nothing_means_off() {
        let on = resolve(&keys(None, true), TlsKeys::default()).unwrap();
        assert_eq!(on.map(|c| c.mode), Some(TlsMode::Require));
        assert!(resolve(&TlsKeys::default(), TlsKeys::default())
            .unwrap()
            .is_none());
    }

    #[test]
    fn command_line_mode_wins_over_the_config() {
        let r = resolve(&keys(Some(TlsMode::Off), false), keys(None, true)).unwrap();
        assert!(r.is_none());
        let r = resolve(&keys(Some(TlsMode::Allow), false), keys(None, true)).unwrap();
        assert_eq!(r.map(|c| c.mode), Some(TlsMode::Allow));
    }

    #[test]
    fn tls_without_credentials_or_allow_without_ca_is_refused() {
        assert!(resolve(&keys(Some(TlsMode::Require), false), TlsKeys::default()).is_err());
        let mut allow = keys(None, true);
        allow.allow = vec!["client".into()];
        assert!(resolve(&allow, TlsKeys::default()).is_err());
    }
}
