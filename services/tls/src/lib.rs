//! mTLS + HTTP/2 plumbing shared by kapp services.
//!
//! Every kapp service talks HTTP/2 over mutual TLS with certificates issued by one cluster CA.
//! This crate provides:
//!
//! * [`pki`]: a small CA that issues ECDSA P-256 leaf certificates (bootstrap and tests);
//! * [`Pem`]: the PEM material of one identity (CA to trust, certificate chain, private key);
//! * [`server_config`] / [`client_config`]: rustls configurations built with the `ring` provider
//!   (never the process-global default), ALPN `h2`; [`client_config_for_peer`] accepts a server
//!   by the identity in its certificate (CN + O's) rather than by its address;
//! * [`Identity`]: who is on the other end of a connection, from its verified client certificate
//!   (CN = user, O = groups, as in Kubernetes);
//! * [`serve`]: an HTTP/2-over-TLS server loop with a connection limit and graceful shutdown;
//! * [`H2Client`]: an HTTP/2-over-TLS client to one address keeping one multiplexed connection;
//! * [`Body`] and helpers ([`full`], [`empty`], [`stream_body`], ...).

mod body;
mod client;
mod der;
mod peer;
pub mod pki;
mod server;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

pub use body::{
    boxed, collect_limited, empty, full, stream_body, Body, BodyError,
};
pub use client::{H2Client, DEFAULT_CONNECT_TIMEOUT};
pub use peer::{client_config_for_peer, is_expected_peer, UnexpectedPeer};
pub use server::{serve, Handler};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A PEM document could not be decoded.
    #[error("malformed pem in {origin}: {source}")]
    Pem {
        /// Where the PEM came from (a file name, or a description such as "ca pem").
        origin: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A PEM document contained no certificate.
    #[error("no certificate found in {origin}")]
    NoCertificate {
        /// Where the PEM came from.
        origin: String,
    },
    /// A PEM document contained no private key.
    #[error("no private key found in {origin}")]
    NoPrivateKey {
        /// Where the PEM came from.
        origin: String,
    },
    /// A certificate could not be parsed (message from the X.509 parser).
    #[error("bad certificate: {0}")]
    BadCertificate(String),
    /// A certificate has no subject common name, or an empty one was requested.
    #[error("certificate has no common name")]
    NoCommonName,
    /// The certificate given as a CA is not a CA certificate (basic constraints).
    #[error("certificate is not a ca certificate")]
    NotCa,
    /// The CA private key does not belong to the CA certificate.
    #[error("private key does not match the ca certificate")]
    KeyMismatch,
    /// The CA certificate has expired; it cannot issue certificates any more.
    #[error("ca certificate has expired")]
    CaExpired,
    /// DER produced by the certificate generator had an unexpected shape.
    #[error("malformed der: {0}")]
    Der(&'static str),
    /// A rustls error (bad key, certificate, ...).
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    /// Building the client certificate verifier failed.
    #[error("building client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The TCP connection could not be established.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// Server address.
        addr: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Connecting (TCP + TLS + HTTP/2 handshake) took longer than the connect timeout.
    #[error("connecting to {addr}: timed out")]
    ConnectTimeout {
        /// Server address.
        addr: String,
    },
    /// The TLS handshake failed (e.g. the server certificate did not verify).
    #[error("tls handshake with {addr}: {source}")]
    Handshake {
        /// Server address.
        addr: String,
        /// The underlying error (wraps a `rustls::Error` when TLS itself failed).
        #[source]
        source: std::io::Error,
    },
    /// A concurrent caller's connection attempt, which this call waited for, failed.
    #[error("connecting to {addr} failed (attempt made by a concurrent request): {reason}")]
    ConnectFailed {
        /// Server address.
        addr: String,
        /// The error of the failed attempt, as text.
        reason: String,
    },
    /// The server address is not a valid `host:port` authority.
    #[error("invalid server address {addr:?}")]
    InvalidAddress {
        /// Server address.
        addr: String,
    },
    /// The request URI could not be completed with scheme and authority.
    #[error("invalid request uri: {0}")]
    InvalidUri(#[from] http::uri::InvalidUriParts),
    /// An HTTP/2 error.
    #[error("http/2: {0}")]
    Http(#[from] hyper::Error),
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// The TLS server name is neither a DNS name nor an IP address.
    #[error("invalid tls server name {name:?}")]
    InvalidServerName {
        /// The offending name.
        name: String,
    },
}

/// PEM material for one identity: the CA to trust, our certificate (chain), our private key.
#[derive(Clone, PartialEq, Eq)]
pub struct Pem {
    /// The CA certificate(s) to trust for peers, PEM.
    pub ca: String,
    /// Our certificate, optionally followed by intermediates, PEM.
    pub cert: String,
    /// Our private key (PKCS#8, SEC1 or PKCS#1), PEM.
    pub key: String,
}

impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pem")
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .field("key", &"[elided]")
            .finish()
    }
}

impl Pem {
    /// Reads the three PEM files and checks that each holds what it should (certificates in `ca`
    /// and `cert`, a private key in `key`). Errors name the file concerned.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Pem, TlsError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| TlsError::Io {
                path: path.to_path_buf(),
                source,
            })
        };
        let pem = Pem {
            ca: read(ca)?,
            cert: read(cert)?,
            key: read(key)?,
        };
        parse_certs(&pem.ca, &ca.display().to_string())?;
        parse_certs(&pem.cert, &cert.display().to_string())?;
        parse_key(&pem.key, &key.display().to_string())?;
        Ok(pem)
    }

    /// Writes the three PEM files (creating or truncating them). The key file is created with
    /// mode 0600 on Unix. Errors name the file concerned.
    pub fn write_files(&self, ca: &Path, cert: &Path, key: &Path) -> Result<(), TlsError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TlsError::Io { path, source }
        };
        std::fs::write(ca, &self.ca).map_err(io(ca))?;
        std::fs::write(cert, &self.cert).map_err(io(cert))?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(key).map_err(io(key))?;
        std::io::Write::write_all(&mut file, self.key.as_bytes()).map_err(io(key))?;
        Ok(())
    }
}

/// Who is on the other end of a connection, from its verified client certificate.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    /// Subject common name (the user / node name).
    pub common_name: String,
    /// Subject organizations, in certificate order (the groups).
    pub organizations: Vec<String>,
}

/// Whether a server requires client certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Clients must present a certificate that chains to the CA.
    Required,
    /// Clients without a certificate may connect (handlers see `None`); a certificate that is
    /// presented must still chain to the CA, otherwise the handshake fails.
    Optional,
}

/// The crypto provider used for every configuration built here (`ring`).
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const ALPN_H2: &[u8] = b"h2";

/// Server configuration presenting `pem.cert`/`pem.key`, verifying client certificates against
/// `pem.ca`. ALPN: `h2`.
pub fn server_config(pem: &Pem, auth: ClientAuth) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = crypto_provider();
    let roots = Arc::new(root_store(&pem.ca, "ca pem")?);
    let mut verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
    if auth == ClientAuth::Optional {
        verifier = verifier.allow_unauthenticated();
    }
    let verifier = verifier.build()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            parse_certs(&pem.cert, "certificate pem")?,
            parse_key(&pem.key, "private key pem")?,
        )?;
    config.alpn_protocols = vec![ALPN_H2.to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Client configuration presenting `pem.cert`/`pem.key` and trusting only `pem.ca`. ALPN: `h2`.
pub fn client_config(pem: &Pem) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = crypto_provider();
    let roots = root_store(&pem.ca, "ca pem")?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(
            parse_certs(&pem.cert, "certificate pem")?,
            parse_key(&pem.key, "private key pem")?,
        )?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// Client configuration that trusts only `ca_pem` and presents no certificate (anonymous
/// client, e.g. for a server using [`ClientAuth::Optional`]). ALPN: `h2`.
pub fn client_config_anonymous(ca_pem: &str) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = crypto_provider();
    let roots = root_store(ca_pem, "ca pem")?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// Extracts the identity (subject CN and all O entries) from a DER certificate.
///
/// This does not verify anything; call it on certificates rustls has already verified.
pub fn identity_from_der(cert_der: &[u8]) -> Result<Identity, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| TlsError::BadCertificate(e.to_string()))?;
    let subject = cert.subject();
    let common_name = subject
        .iter_common_name()
        .next()
        .ok_or(TlsError::NoCommonName)?
        .as_str()
        .map_err(|e| TlsError::BadCertificate(e.to_string()))?
        .to_owned();
    if common_name.is_empty() {
        return Err(TlsError::NoCommonName);
    }
    let organizations = subject
        .iter_organization()
        .map(|o| o.as_str().map(str::to_owned))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate(e.to_string()))?;
    Ok(Identity {
        common_name,
        organizations,
    })
}

/// Parses all certificates in a PEM document; at least one is required.
pub(crate) fn parse_certs(
    pem: &str,
    origin: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            origin: origin.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            origin: origin.to_owned(),
        });
    }
    Ok(certs)
}

/// Parses the first private key in a PEM document.
fn parse_key(pem: &str, origin: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|source| TlsError::Pem {
            origin: origin.to_owned(),
            source,
        })?
        .ok_or_else(|| TlsError::NoPrivateKey {
            origin: origin.to_owned(),
        })
}

fn root_store(pem: &str, origin: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(pem, origin)? {
        roots.add(cert)?;
    }
    Ok(roots)
}
