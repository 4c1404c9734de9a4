//! A minimal certificate authority: generate a cluster CA, load it back, issue leaf certificates.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, PublicKeyData, SigningKey,
};
use x509_parser::extensions::ParsedExtension;
use x509_parser::time::ASN1Time;

use crate::{der, parse_certs, Pem, TlsError};

/// Validity of a CA created by [`Ca::generate`] (10 years).
pub const CA_VALIDITY: Duration = Duration::from_secs(3652 * 24 * 3600);
/// Validity of a leaf certificate issued by [`Ca::issue`] (1 year, as kubeadm does), capped to
/// the CA's own expiry.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// How far `notBefore` is backdated to tolerate clock skew between nodes.
const BACKDATE: Duration = Duration::from_secs(3600);

/// A CA that can issue certificates (used by bootstrap `kapp gen` and by tests).
pub struct Ca {
    cert_pem: String,
    key_pem: String,
    key: KeyPair,
    /// DER of the CA's subject Name, copied verbatim into the issuer field of leaves.
    subject_der: Vec<u8>,
    /// The CA's subject key identifier, if it has one (used as the leaves' authority key id).
    key_id: Option<Vec<u8>>,
    not_after: ASN1Time,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("cert_pem", &self.cert_pem)
            .field("key", &"[elided]")
            .finish()
    }
}

impl Ca {
    /// Generates a new self-signed CA: ECDSA P-256, valid 10 years, CN = `"<cluster_name> CA"`,
    /// path length 0 (it can sign only leaf certificates).
    ///
    /// Serial numbers (here and in [`Ca::issue`]) are derived from the (fresh) subject key, as
    /// rcgen does by default.
    pub fn generate(cluster_name: &str) -> Result<Ca, TlsError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{cluster_name} CA"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + CA_VALIDITY).into();
        let cert = params.self_signed(&key)?;
        Ca::from_pem(&cert.pem(), &key.serialize_pem())
    }

    /// Loads a CA from its certificate and private key. The key must be PKCS#8 PEM
    /// ("PRIVATE KEY", as written by [`Ca::key_pem`]) and must match the certificate, which must
    /// be a CA certificate.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, TlsError> {
        let cert_der = parse_certs(cert_pem, "ca certificate pem")?
            .into_iter()
            .next()
            .ok_or_else(|| TlsError::NoCertificate {
                origin: "ca certificate pem".into(),
            })?;
        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| TlsError::BadCertificate(e.to_string()))?;
        if !cert.is_ca() {
            return Err(TlsError::NotCa);
        }
        let key = KeyPair::from_pem(key_pem)?;
        if key.subject_public_key_info() != cert.public_key().raw {
            return Err(TlsError::KeyMismatch);
        }
        let key_id = cert
            .extensions()
            .iter()
            .find_map(|ext| match ext.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            });
        Ok(Ca {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            subject_der: cert.subject().as_raw().to_vec(),
            key_id,
            not_after: cert.validity().not_after,
            key,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The CA private key, PEM. Keep it secret.
    pub fn key_pem(&self) -> String {
        self.key_pem.clone()
    }

    /// Issues a leaf certificate usable as both TLS server and client (EKU serverAuth +
    /// clientAuth), valid for [`LEAF_VALIDITY`] (capped to the CA's expiry).
    ///
    /// The subject has CN = `common_name` and one O entry per organization (these carry the
    /// identity and groups, as in Kubernetes). SANs are the given strings, each parsed as an IP
    /// address if it parses, otherwise taken as a DNS name. The returned [`Pem`] has this CA as
    /// `ca`, the new certificate as `cert` and a fresh ECDSA P-256 key (PKCS#8) as `key`.
    pub fn issue(
        &self,
        common_name: &str,
        organizations: &[&str],
        sans: &[&str],
    ) -> Result<Pem, TlsError> {
        self.issue_with_validity(common_name, organizations, sans, LEAF_VALIDITY)
    }

    /// Like [`Ca::issue`] with an explicit validity (still capped to the CA's expiry).
    pub fn issue_with_validity(
        &self,
        common_name: &str,
        organizations: &[&str],
        sans: &[&str],
        validity: Duration,
    ) -> Result<Pem, TlsError> {
        if common_name.is_empty() {
            return Err(TlsError::NoCommonName);
        }
        let now = SystemTime::now();
        let now_secs = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        if self.not_after.timestamp() <= now_secs {
            return Err(TlsError::CaExpired);
        }

        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        // rcgen's DistinguishedName holds at most one O; the real subject is written below.
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + validity).into();
        let ca_not_after = self.not_after.to_datetime();
        if params.not_after > ca_not_after {
            params.not_after = ca_not_after;
        }

        let mut issuer_params = CertificateParams::default();
        if let Some(id) = &self.key_id {
            issuer_params.key_identifier_method = KeyIdMethod::PreSpecified(id.clone());
            params.use_authority_key_identifier_extension = true;
        }
        let issuer = Issuer::new(issuer_params, &self.key);
        let draft = params.signed_by(&key, &issuer)?;

        let subject = der::name(common_name, organizations);
        let cert_der = rewrite_names(draft.der(), &self.subject_der, &subject, &self.key)?;
        Ok(Pem {
            ca: self.cert_pem.clone(),
            cert: der::pem_encode("CERTIFICATE", &cert_der),
            key: key.serialize_pem(),
        })
    }
}

/// Replaces the issuer and subject Names in the TBS part of `cert_der` and re-signs it with
/// `ca_key` (same signature algorithm, which rcgen took from `ca_key` too).
fn rewrite_names(
    cert_der: &[u8],
    issuer: &[u8],
    subject: &[u8],
    ca_key: &KeyPair,
) -> Result<Vec<u8>, TlsError> {
    let (cert, rest) = der::read(cert_der)?;
    if cert.tag != der::SEQUENCE || !rest.is_empty() {
        return Err(TlsError::Der("certificate is not one sequence"));
    }
    let parts = der::read_all(cert.content)?;
    let [tbs, algorithm, _signature] = parts.as_slice() else {
        return Err(TlsError::Der("certificate does not have three parts"));
    };
    if tbs.tag != der::SEQUENCE {
        return Err(TlsError::Der("tbs certificate is not a sequence"));
    }
    let mut fields: Vec<&[u8]> = der::read_all(tbs.content)?
        .iter()
        .map(|f| f.whole)
        .collect();
    // version [0], serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo, ...
    if fields.len() < 7 || fields[0].first() != Some(&0xa0) {
        return Err(TlsError::Der("unexpected tbs certificate layout"));
    }
    fields[3] = issuer;
    fields[5] = subject;
    let tbs = der::tlv(der::SEQUENCE, &fields.concat());
    let mut bits = vec![0u8]; // no unused bits
    bits.extend(ca_key.sign(&tbs)?);
    let body = [
        tbs,
        algorithm.whole.to_vec(),
        der::tlv(der::BIT_STRING, &bits),
    ]
    .concat();
    Ok(der::tlv(der::SEQUENCE, &body))
}
