//! Offline cluster generation: the cluster CA and the certificates of the store, the
//! apiserver, gitops and a viewer for one host (`kapp gen pki`); a whole cluster's CA and
//! one self-contained [`machine`] config per node ([`cluster`], `kapp gen cluster`).
//! [`image`]: container images from the host's Debian
//! packages as OCI image layouts (`kapp gen image`), for nodes that reach no registry.

pub mod cluster;
pub mod image;
pub mod machine;
pub mod sshkey;

use std::path::{Path, PathBuf};

use kapp_api::groups;
use kapp_store_client::{CLIENT_GROUP, PEER_GROUP};
use kapp_tls::pki::Ca;

/// Why generation failed.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error("{path} already exists: refusing to overwrite a cluster's keys")]
    Exists { path: PathBuf },
    #[error("cannot create {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] kapp_tls::TlsError),
    #[error("no host names or addresses given for the store certificate")]
    NoHosts,
    #[error("{0}")]
    Invalid(String),
}

/// Files written by [`gen_pki`], relative to its output directory.
pub mod files {
    pub const CA_CERT: &str = "ca.pem";
    pub const CA_KEY: &str = "ca.key";
    pub const STORE_CERT: &str = "store.pem";
    pub const STORE_KEY: &str = "store.key";
    pub const CLIENT_CERT: &str = "store-client.pem";
    pub const CLIENT_KEY: &str = "store-client.key";
    pub const APISERVER_CERT: &str = "apiserver.pem";
    pub const APISERVER_KEY: &str = "apiserver.key";
    pub const GITOPS_CERT: &str = "gitops.pem";
    pub const GITOPS_KEY: &str = "gitops.key";
    pub const VIEWER_CERT: &str = "viewer.pem";
    pub const VIEWER_KEY: &str = "viewer.key";
}


/// Write a new cluster CA, a certificate for store members (valid for `hosts`, groups
/// `kapp:store-peer` and `kapp:store-client`), a store client certificate, the apiserver's
/// serving certificate (valid for `hosts`; also its store client identity), and the
/// gitops and viewer identities into `out`. Refuses to overwrite an existing CA.
pub fn gen_pki(out: &Path, cluster: &str, hosts: &[&str]) -> Result<(), GenError> {
    if hosts.is_empty() {
        return Err(GenError::NoHosts);
    }
    let ca_key = out.join(files::CA_KEY);
    if ca_key.exists() {
        return Err(GenError::Exists { path: ca_key });
    }
    std::fs::create_dir_all(out).map_err(|source| GenError::Io { path: out.to_path_buf(), source })?;
    let ca = Ca::generate(cluster)?;
    let member = ca.issue("store", &[PEER_GROUP, CLIENT_GROUP], hosts)?;
    member.write_files(&out.join(files::CA_CERT), &out.join(files::STORE_CERT), &out.join(files::STORE_KEY))?;
    let client = ca.issue("store-client", &[CLIENT_GROUP], &[])?;
    client.write_files(&out.join(files::CA_CERT), &out.join(files::CLIENT_CERT), &out.join(files::CLIENT_KEY))?;
    let identities: [(&str, &[&str], &[&str], &str, &str); 3] = [
        ("apiserver", &[CLIENT_GROUP], hosts, files::APISERVER_CERT, files::APISERVER_KEY),
        ("gitops", &[groups::GITOPS], &[], files::GITOPS_CERT, files::GITOPS_KEY),
        ("viewer", &[groups::VIEWERS], &[], files::VIEWER_CERT, files::VIEWER_KEY),
    ];
    for (cn, orgs, sans, cert, key) in identities {
        ca.issue(cn, orgs, sans)?.write_files(&out.join(files::CA_CERT), &out.join(cert), &out.join(key))?;
    }
    write_private(&ca_key, ca.key_pem().as_bytes())
}

/// Issue one more identity from the CA in `pki` (written there by [`gen_pki`]): `<name>.pem`
/// and `<name>.key`, common name `cn`, organisations (groups) `orgs`, server names `sans`.
/// Refuses to overwrite an existing key.
pub fn gen_identity(pki: &Path, name: &str, cn: &str, orgs: &[&str], sans: &[&str]) -> Result<(), GenError> {
    let read = |f: &str| {
        let path = pki.join(f);
        std::fs::read_to_string(&path).map_err(|source| GenError::Io { path, source })
    };
    let key = pki.join(format!("{name}.key"));
    if key.exists() {
        return Err(GenError::Exists { path: key });
    }
    let ca = Ca::from_pem(&read(files::CA_CERT)?, &read(files::CA_KEY)?)?;
    ca.issue(cn, orgs, sans)?.write_files(&pki.join(files::CA_CERT), &pki.join(format!("{name}.pem")), &key)?;
    Ok(())
}

/// Write a new key for sealing Secrets at rest (`kapp apiserver --secret-key-file`): 32
/// random bytes as 64 hex characters, readable by the owner only. Refuses to overwrite.
pub fn gen_secret_key(path: &Path) -> Result<(), GenError> {
    let hex = secret_key_hex().map_err(|source| GenError::Io { path: path.to_path_buf(), source })?;
    write_private(path, hex.as_bytes()).map_err(|e| match e {
        GenError::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists => GenError::Exists { path: path.to_path_buf() },
        e => e,
    })
}

/// A new age key file at `path` (as `age-keygen` writes it, owner-only), for the cluster's
/// encrypted Secrets; returns its recipient. Refuses to overwrite.
pub fn gen_age_key(path: &Path) -> Result<kapp_age::Recipient, GenError> {
    let id = kapp_age::Identity::generate();
    let r = id.to_recipient();
    write_private(path, age_key_file(&id).as_bytes()).map_err(|e| match e {
        GenError::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists => GenError::Exists { path: path.to_path_buf() },
        e => e,
    })?;
    Ok(r)
}

/// An age key file's text: a comment naming the recipient, then the key.
pub fn age_key_file(id: &kapp_age::Identity) -> String {
    format!("# kapp cluster age key: encrypt with age -r {}\n{}\n", id.to_recipient(), id.to_secret_string())
}

/// The recipient of the age key file at `path`.
pub fn age_recipient(path: &Path) -> Result<kapp_age::Recipient, GenError> {
    let text = std::fs::read_to_string(path).map_err(|source| GenError::Io { path: path.to_path_buf(), source })?;
    let ids = kapp_age::parse_identities(&text).map_err(|e| GenError::Invalid(format!("{}: {e}", path.display())))?;
    Ok(ids[0].to_recipient())
}

/// A new Secret-sealing key: 32 random bytes as 64 hex characters.
fn secret_key_hex() -> Result<String, std::io::Error> {
    let mut key = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key).map_err(|_| std::io::Error::other("no system randomness"))?;
    Ok(key.iter().map(|b| format!("{b:02x}")).collect())
}

/// Write a secret readable by its owner only.
fn write_private(path: &Path, data: &[u8]) -> Result<(), GenError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| GenError::Io { path: path.to_path_buf(), source };
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_ca_and_certificates_that_chain_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        gen_pki(dir.path(), "t", &["127.0.0.1"]).unwrap();
        let member = kapp_tls::Pem::load(&dir.path().join(files::CA_CERT), &dir.path().join(files::STORE_CERT), &dir.path().join(files::STORE_KEY)).unwrap();
        // The member certificate is accepted by a config that trusts only this CA.
        kapp_tls::server_config(&member, kapp_tls::ClientAuth::Required).unwrap();
        let ca = Ca::from_pem(&std::fs::read_to_string(dir.path().join(files::CA_CERT)).unwrap(), &std::fs::read_to_string(dir.path().join(files::CA_KEY)).unwrap()).unwrap();
        assert!(ca.cert_pem().contains("BEGIN CERTIFICATE"));
        // Each identity carries its group, as the apiserver authorises it.
        for (cert, cn, group) in [(files::APISERVER_CERT, "apiserver", CLIENT_GROUP), (files::GITOPS_CERT, "gitops", groups::GITOPS), (files::VIEWER_CERT, "viewer", groups::VIEWERS)] {
            let pem = std::fs::read(dir.path().join(cert)).unwrap();
            let der = rustls_pemfile::certs(&mut pem.as_slice()).next().unwrap().unwrap();
            let id = kapp_tls::identity_from_der(&der).unwrap();
            assert_eq!((id.common_name.as_str(), id.organizations.as_slice()), (cn, [group.to_string()].as_slice()));
        }
        let err = gen_pki(dir.path(), "t", &["127.0.0.1"]).unwrap_err();
        assert!(matches!(err, GenError::Exists { .. }), "{err}");
        assert!(matches!(gen_pki(&dir.path().join("x"), "t", &[]).unwrap_err(), GenError::NoHosts));
        // A further identity from the same CA, once.
        gen_identity(dir.path(), "node", "system:node:n1", &[groups::NODES], &[]).unwrap();
        let node = kapp_tls::Pem::load(&dir.path().join(files::CA_CERT), &dir.path().join("node.pem"), &dir.path().join("node.key")).unwrap();
        let der = rustls_pemfile::certs(&mut node.cert.as_bytes()).next().unwrap().unwrap();
        let id = kapp_tls::identity_from_der(&der).unwrap();
        assert_eq!((id.common_name.as_str(), id.organizations.as_slice()), ("system:node:n1", [groups::NODES.to_string()].as_slice()));
        assert!(matches!(gen_identity(dir.path(), "node", "x", &[], &[]).unwrap_err(), GenError::Exists { .. }));
        // The Secret key: 64 hex characters, owner-only, never overwritten.
        let key = dir.path().join("secret.key");
        gen_secret_key(&key).unwrap();
        let text = std::fs::read_to_string(&key).unwrap();
        assert!(text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()), "{text}");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(matches!(gen_secret_key(&key).unwrap_err(), GenError::Exists { .. }));
        assert_eq!(std::fs::read_to_string(&key).unwrap(), text);
    }
}
