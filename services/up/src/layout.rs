//! Where `kapp up` keeps everything: one state directory. Pure.

use std::path::{Path, PathBuf};

/// The state directory's layout.
#[derive(Clone, Debug)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Layout {
        Layout { root: root.to_path_buf() }
    }
    /// The cluster CA and every identity (`kapp gen pki` plus scheduler, controllers, node).
    pub fn pki(&self) -> PathBuf {
        self.root.join("pki")
    }
    pub fn store(&self) -> PathBuf {
        self.root.join("store")
    }
    pub fn gitops(&self) -> PathBuf {
        self.root.join("gitops")
    }
    pub fn kubelet(&self) -> PathBuf {
        self.root.join("kubelet")
    }
    /// OCI image layouts the kubelet imports at start.
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }
    /// The example repository (when no other is given).
    pub fn repo(&self) -> PathBuf {
        self.root.join("repo")
    }
    /// One log file per service, and the apiserver's audit log.
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    /// The cluster's age key: gitops decrypts `*.age` files and Secret values with it.
    pub fn age_key(&self) -> PathBuf {
        self.pki().join("age.key")
    }
    pub fn secret_key(&self) -> PathBuf {
        self.root.join("secret.key")
    }
    /// What `kapp up` changed on the host, so `kapp down` can put it back.
    pub fn host_state(&self) -> PathBuf {
        self.root.join("host.json")
    }
    /// Held while `kapp up` runs.
    pub fn lock(&self) -> PathBuf {
        self.root.join("lock")
    }
    /// A read-only kubeconfig (the viewer identity) for kubectl and kappctl.
    pub fn viewer_kubeconfig(&self) -> PathBuf {
        self.root.join("viewer.kubeconfig")
    }
    /// `--ca/--cert/--key` arguments for identity `name` (`<name>.pem`, `<name>.key`).
    pub fn tls_args(&self, name: &str) -> Vec<String> {
        let pki = self.pki();
        let p = |f: String| pki.join(f).display().to_string();
        vec!["--ca".into(), p(kapp_bootstrap::files::CA_CERT.into()), "--cert".into(), p(format!("{name}.pem")), "--key".into(), p(format!("{name}.key"))]
    }
    /// Identity `name` loaded.
    pub fn identity(&self, name: &str) -> Result<kapp_tls::Pem, kapp_tls::TlsError> {
        let pki = self.pki();
        kapp_tls::Pem::load(&pki.join(kapp_bootstrap::files::CA_CERT), &pki.join(format!("{name}.pem")), &pki.join(format!("{name}.key")))
    }
}
