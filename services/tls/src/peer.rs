//! Client configurations that accept a server by its identity (subject CN and O's, as for
//! clients) instead of by the address it was reached at.
//!
//! A kapp identity is its certificate subject; node certificates may carry no IP or DNS
//! names at all, so checking the server name against SANs is the wrong test for them. The
//! verifier here checks that the chain leads to the cluster CA (with the serverAuth usage,
//! validity and signatures, as rustls' own verifier does) and that the leaf names the peer
//! the caller meant to reach.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};

use crate::{crypto_provider, identity_from_der, parse_certs, parse_key, root_store, Identity, Pem, TlsError, ALPN_H2};

/// Whether `found` is the peer `expected` names: the same common name, and every
/// organization of `expected` among `found`'s. Pure.
pub fn is_expected_peer(found: &Identity, expected: &Identity) -> bool {
    found.common_name == expected.common_name && expected.organizations.iter().all(|o| found.organizations.contains(o))
}

/// Client configuration presenting `pem.cert`/`pem.key` and accepting only a server whose
/// certificate chains to `pem.ca` and carries `expected`'s identity (see
/// [`is_expected_peer`]), whatever address or name it was reached by. ALPN: `h2`.
pub fn client_config_for_peer(pem: &Pem, expected: &Identity) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = crypto_provider();
    let verifier = PeerVerifier {
        roots: root_store(&pem.ca, "ca pem")?,
        algorithms: provider.signature_verification_algorithms,
        expected: expected.clone(),
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(parse_certs(&pem.cert, "certificate pem")?, parse_key(&pem.key, "private key pem")?)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The server certificate named someone else. (Debug prints the message: rustls shows this
/// error through `Debug`.)
#[derive(thiserror::Error)]
#[error("the server is {found_cn:?} in {found_orgs:?}, not {expected_cn:?} in {expected_orgs:?}")]
pub struct UnexpectedPeer {
    /// The common name found.
    pub found_cn: String,
    /// The organizations found.
    pub found_orgs: Vec<String>,
    /// The common name expected.
    pub expected_cn: String,
    /// The organizations expected (at least).
    pub expected_orgs: Vec<String>,
}

impl std::fmt::Debug for UnexpectedPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

#[derive(Debug)]
struct PeerVerifier {
    roots: RootCertStore,
    algorithms: WebPkiSupportedAlgorithms,
    expected: Identity,
}

fn invalid(error: impl std::error::Error + Send + Sync + 'static) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(error))))
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(&parsed, &self.roots, intermediates, now, self.algorithms.all)?;
        let found = identity_from_der(end_entity).map_err(invalid)?;
        if !is_expected_peer(&found, &self.expected) {
            return Err(invalid(UnexpectedPeer {
                found_cn: found.common_name,
                found_orgs: found.organizations,
                expected_cn: self.expected.common_name.clone(),
                expected_orgs: self.expected.organizations.clone(),
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(cn: &str, orgs: &[&str]) -> Identity {
        Identity { common_name: cn.into(), organizations: orgs.iter().map(|o| o.to_string()).collect() }
    }

    #[test]
    fn the_common_name_must_match_and_every_expected_group_be_present() {
        let want = id("system:node:a", &["kapp:nodes"]);
        assert!(is_expected_peer(&id("system:node:a", &["kapp:nodes"]), &want));
        assert!(is_expected_peer(&id("system:node:a", &["other", "kapp:nodes"]), &want));
        assert!(!is_expected_peer(&id("system:node:b", &["kapp:nodes"]), &want));
        assert!(!is_expected_peer(&id("system:node:a", &[]), &want));
        assert!(!is_expected_peer(&id("system:node:ab", &["kapp:nodes"]), &want));
        assert!(is_expected_peer(&id("anyone", &["x"]), &id("anyone", &[])));
    }
}
