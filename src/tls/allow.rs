//! Client certificates: the CA check (rustls-webpki), then the allow list
//! of names. Both run inside the TLS handshake, so a refused client sees a
//! TLS alert and never reaches option haggling.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::names::certificate_names;

/// Names a client certificate may carry (subject CN or a SAN DNS name),
/// compared ASCII case-insensitively; empty means any certificate the CA
/// signed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList(Vec<String>);

impl AllowList {
    /// The list of `names`.
    pub fn new(names: Vec<String>) -> Self {
        AllowList(names)
    }

    /// Whether the list is empty (no name check).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a certificate holding `names` is allowed.
    pub fn permits(&self, names: &[String]) -> bool {
        self.0.is_empty()
            || names
                .iter()
                .any(|n| self.0.iter().any(|a| a.eq_ignore_ascii_case(n)))
    }
}

/// The CA verifier, then the allow list.
pub(super) struct AllowListVerifier {
    pub(super) inner: Arc<dyn ClientCertVerifier>,
    pub(super) allow: AllowList,
}

impl fmt::Debug for AllowListVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AllowListVerifier")
            .field("allow", &self.allow)
            .finish()
    }
}

impl ClientCertVerifier for AllowListVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let names = certificate_names(end_entity).unwrap_or_default();
        if self.allow.permits(&names) {
            Ok(verified)
        } else {
            tracing::warn!(?names, "TLS client certificate not on the allow list");
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_list_permits_any_and_names_compare_without_case() {
        let names = vec!["Client-A".to_string()];
        assert!(AllowList::default().permits(&names));
        assert!(AllowList::new(vec!["client-a".into()]).permits(&names));
        assert!(!AllowList::new(vec!["client-b".into()]).permits(&names));
        assert!(!AllowList::new(vec!["client-b".into()]).permits(&[]));
    }
}
