//! Fetching the followed commit with git2 into a bare repository in gitops' state
//! directory, and exporting its tree into a directory the renderer reads. Blocking (run it
//! on a blocking thread); bounded by a timeout and a size limit.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kapp_api::kapp::{CommitInfo, GitRef};

/// How gitops authenticates to the repository.
#[derive(Clone, Default)]
pub enum Auth {
    #[default]
    None,
    /// HTTPS with a token (sent as the password, as GitHub, GitLab and Gitea accept).
    Token(String),
    /// ssh:// with a deploy key (an OpenSSH private key); the host must present one of
    /// `known_hosts`.
    Ssh { key: String, known_hosts: Vec<KnownHost> },
}

/// One `known_hosts` entry: the host names it is for and the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownHost {
    pub hosts: KnownHostNames,
    pub key_type: String,
    pub key: Vec<u8>,
}

/// The host names of a `known_hosts` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KnownHostNames {
    /// `host` or `[host]:port`, comma-separated on the line.
    Plain(Vec<String>),
    /// `|1|<base64 salt>|<base64 hash>` (`ssh-keygen -H`, `HashKnownHosts yes`): one name
    /// whose HMAC-SHA1 keyed with the salt is the hash.
    Hashed { salt: Vec<u8>, hash: Vec<u8> },
}

impl KnownHost {
    /// Whether this entry is for `name` as known_hosts writes it (`host` or `[host]:port`).
    pub fn matches(&self, name: &str) -> bool {
        match &self.hosts {
            KnownHostNames::Plain(hosts) => hosts.iter().any(|h| h == name),
            KnownHostNames::Hashed { salt, hash } => {
                let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, salt);
                ring::hmac::verify(&key, name.as_bytes(), hash).is_ok()
            }
        }
    }
}

/// `known_hosts` lines (`host[,host] type base64`, or `|1|salt|hash type base64` for a
/// hashed name); comments and blank lines skipped, markers (`@revoked`, `@cert-authority`)
/// refused.
pub fn parse_known_hosts(text: &str) -> Result<Vec<KnownHost>, SourceError> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = Vec::new();
    for (n, line) in text.lines().map(str::trim).enumerate().filter(|(_, l)| !l.is_empty() && !l.starts_with('#')) {
        let bad = |why: &str| SourceError::Ref(format!("known_hosts line {}: {why}", n + 1));
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 3 || f[0].starts_with('@') {
            return Err(bad("not `<host>[,<host>] <key type> <base64>` (markers such as @revoked and @cert-authority are not supported)"));
        }
        let hosts = match f[0].strip_prefix("|1|") {
            Some(hashed) => {
                let not_hashed = || bad("a hashed host name is `|1|<base64 salt>|<base64 hash>`");
                let (salt, hash) = hashed.split_once('|').ok_or_else(not_hashed)?;
                let (salt, hash) = (b64.decode(salt).map_err(|_| not_hashed())?, b64.decode(hash).map_err(|_| not_hashed())?);
                if salt.is_empty() || hash.len() != 20 {
                    return Err(not_hashed());
                }
                KnownHostNames::Hashed { salt, hash }
            }
            None if f[0].starts_with('|') => return Err(bad("only `|1|` hashed host names (HMAC-SHA1) are supported")),
            None => KnownHostNames::Plain(f[0].split(',').map(str::to_string).collect()),
        };
        let key = b64.decode(f[2]).map_err(|_| bad("the key is not base64"))?;
        out.push(KnownHost { hosts, key_type: f[1].to_string(), key });
    }
    Ok(out)
}

/// How `host` (and `port`) of an ssh:// URL appear in known_hosts.
fn known_host_name(url: &str) -> Option<String> {
    let rest = url.strip_prefix("ssh://")?;
    let authority = rest.split('/').next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h.trim_start_matches('[').trim_end_matches(']'), Some(p)),
        _ => (host_port, None),
    };
    Some(match port {
        Some(p) if p != "22" => format!("[{host}]:{p}"),
        _ => host.to_string(),
    })
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Auth::None => "None",
            Auth::Token(_) => "Token(..)",
            Auth::Ssh { .. } => "Ssh(..)",
        })
    }
}

/// The repository to follow.
#[derive(Clone, Debug)]
pub struct Source {
    pub url: String,
    pub git_ref: GitRef,
    pub auth: Auth,
    /// The whole fetch (connect, negotiate, download) must finish within this.
    pub timeout: Duration,
    /// Most bytes downloaded in one fetch, and most bytes of one exported tree.
    pub max_bytes: u64,
    /// When not empty, only commits signed by one of these keys are used.
    pub trusted_keys: Vec<crate::trust::TrustedKey>,
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("git: {0}")]
    Git(#[from] git2::Error),
    #[error("io: {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the repository is over the size limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("fetching {url} took longer than {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("{0}")]
    Ref(String),
    #[error("ssh: {0}")]
    HostKey(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SourceError + '_ {
    move |source| SourceError::Io { path: path.to_path_buf(), source }
}

/// The ref to fetch into `refs/kapp/head`, or `None` for a pinned commit (fetch all heads).
fn refspec(r: &GitRef) -> Result<Option<String>, SourceError> {
    match (&r.branch, &r.tag, &r.commit) {
        (None, None, None) => Ok(Some("+HEAD:refs/kapp/head".into())),
        (Some(b), None, None) => Ok(Some(format!("+refs/heads/{b}:refs/kapp/head"))),
        (None, Some(t), None) => Ok(Some(format!("+refs/tags/{t}:refs/kapp/head"))),
        (None, None, Some(_)) => Ok(None),
        _ => Err(SourceError::Ref("ref: set at most one of branch, tag and commit".into())),
    }
}

/// A fetched commit, its tree exported to `dir`.
#[derive(Debug)]
pub struct Fetched {
    pub commit: CommitInfo,
    /// Where its tree is (empty when the commit is untrusted: nothing is exported).
    pub dir: PathBuf,
    /// Why the commit may not be applied: trusted keys are configured and it is not signed
    /// by one of them.
    pub untrusted: Option<String>,
}

/// Fetch `src` into the bare repository at `state/repo` and export the commit's tree into
/// `state/trees/<sha>` (reused if already there; older trees removed).
pub fn fetch(state: &Path, src: &Source) -> Result<Fetched, SourceError> {
    let repo_dir = state.join("repo");
    let repo = match git2::Repository::open_bare(&repo_dir) {
        Ok(r) => r,
        Err(_) => {
            std::fs::create_dir_all(&repo_dir).map_err(io(&repo_dir))?;
            git2::Repository::init_bare(&repo_dir)?
        }
    };
    let started = Instant::now();
    let (limit, timeout) = (src.max_bytes, src.timeout);
    let too_large = std::cell::Cell::new(false);
    let timed_out = std::cell::Cell::new(false);
    let host_key_error = std::cell::RefCell::new(None::<String>);
    {
        let mut cb = git2::RemoteCallbacks::new();
        cb.transfer_progress(|p| {
            too_large.set(p.received_bytes() as u64 > limit);
            timed_out.set(started.elapsed() > timeout);
            !too_large.get() && !timed_out.get()
        });
        let auth = src.auth.clone();
        let mut tries = 0;
        cb.credentials(move |_url, user, allowed| {
            tries += 1;
            match &auth {
                Auth::Token(t) if tries == 1 => git2::Cred::userpass_plaintext(user.unwrap_or("git"), t),
                // libgit2 asks for the user name first when the URL has none.
                Auth::Ssh { .. } if allowed.contains(git2::CredentialType::USERNAME) && tries <= 2 => git2::Cred::username(user.unwrap_or("git")),
                Auth::Ssh { key, .. } if tries <= 2 => git2::Cred::ssh_key_from_memory(user.unwrap_or("git"), None, key, None),
                _ => Err(git2::Error::from_str("the repository refused the configured credentials")),
            }
        });
        if let Auth::Ssh { known_hosts, .. } = &src.auth {
            let name = known_host_name(&src.url).unwrap_or_default();
            let (known_hosts, host_key_error) = (known_hosts.clone(), &host_key_error);
            cb.certificate_check(move |cert, _host| {
                let Some(presented) = cert.as_hostkey().and_then(|h| h.hostkey()) else {
                    *host_key_error.borrow_mut() = Some(format!("{name} presented no SSH host key"));
                    return Err(git2::Error::from_str("no SSH host key"));
                };
                let ok = known_hosts.iter().any(|k| k.matches(&name) && k.key == presented);
                if ok {
                    Ok(git2::CertificateCheckStatus::CertificateOk)
                } else {
                    *host_key_error.borrow_mut() = Some(format!("the host key of {name} is not one of the known hosts given for it"));
                    Err(git2::Error::from_str("unknown SSH host key"))
                }
            });
        }
        let mut opts = git2::FetchOptions::new();
        opts.remote_callbacks(cb);
        opts.download_tags(git2::AutotagOption::None);
        let mut remote = repo.remote_anonymous(&src.url)?;
        let spec = refspec(&src.git_ref)?.unwrap_or_else(|| "+refs/heads/*:refs/kapp/heads/*".into());
        let r = remote.fetch(&[spec.as_str()], Some(&mut opts), None);
        if too_large.get() {
            return Err(SourceError::TooLarge { limit });
        }
        if timed_out.get() {
            return Err(SourceError::Timeout { url: src.url.clone(), timeout });
        }
        if let Some(why) = host_key_error.borrow_mut().take() {
            return Err(SourceError::HostKey(why));
        }
        r?;
    }
    let commit = match &src.git_ref.commit {
        Some(sha) => repo.find_commit(git2::Oid::from_str(sha)?).map_err(|e| SourceError::Ref(format!("commit {sha} is not in {}: {}", src.url, e.message())))?,
        None => repo.find_reference("refs/kapp/head")?.peel_to_commit()?,
    };
    let sha = commit.id().to_string();
    let info = CommitInfo {
        sha: sha.clone(),
        subject: commit.summary().ok().flatten().unwrap_or("").to_string(),
        author: format!("{} <{}>", commit.author().name().unwrap_or(""), commit.author().email().unwrap_or("")),
        time: kapp_api::table::format_rfc3339(commit.time().seconds()),
    };
    if !src.trusted_keys.is_empty() {
        if let Err(e) = crate::trust::verify_commit(&repo, commit.id(), &src.trusted_keys) {
            return Ok(Fetched { commit: info, dir: PathBuf::new(), untrusted: Some(e.to_string()) });
        }
    }
    let trees = state.join("trees");
    let dir = trees.join(&sha);
    if !dir.join(".kapp-complete").exists() {
        let tmp = trees.join(format!(".{sha}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        let mut total = 0u64;
        export(&repo, &commit.tree()?, &tmp, &mut total, limit)?;
        std::fs::write(tmp.join(".kapp-complete"), &sha).map_err(io(&tmp))?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).map_err(io(&dir))?;
    }
    // Keep only the tree in use.
    if let Ok(entries) = std::fs::read_dir(&trees) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy() != sha {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(Fetched { commit: info, dir, untrusted: None })
}

/// Write the blobs of `tree` under `dir`; symlinks and submodules are skipped (a symlink
/// could point outside the repository).
fn export(repo: &git2::Repository, tree: &git2::Tree, dir: &Path, total: &mut u64, limit: u64) -> Result<(), SourceError> {
    for entry in tree.iter() {
        let Ok(name) = entry.name() else { continue };
        if name == ".git" || name.contains('/') || name == ".." {
            continue;
        }
        let path = dir.join(name);
        match entry.kind() {
            Some(git2::ObjectType::Tree) => {
                std::fs::create_dir_all(&path).map_err(io(&path))?;
                export(repo, &repo.find_tree(entry.id())?, &path, total, limit)?;
            }
            Some(git2::ObjectType::Blob) if entry.filemode() != 0o120000 => {
                let blob = repo.find_blob(entry.id())?;
                *total += blob.size() as u64;
                if *total > limit {
                    return Err(SourceError::TooLarge { limit });
                }
                std::fs::write(&path, blob.content()).map_err(io(&path))?;
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_map_to_refspecs() {
        assert_eq!(refspec(&GitRef::default()).unwrap().unwrap(), "+HEAD:refs/kapp/head");
        assert_eq!(refspec(&GitRef { branch: Some("main".into()), ..Default::default() }).unwrap().unwrap(), "+refs/heads/main:refs/kapp/head");
        assert!(refspec(&GitRef { branch: Some("a".into()), tag: Some("b".into()), commit: None }).is_err());
    }
}

#[cfg(test)]
mod ssh_tests {
    use super::*;

    #[test]
    fn known_hosts_names_follow_openssh() {
        assert_eq!(known_host_name("ssh://git@example.com/org/repo.git").as_deref(), Some("example.com"));
        assert_eq!(known_host_name("ssh://git@example.com:22/r").as_deref(), Some("example.com"));
        assert_eq!(known_host_name("ssh://git@10.77.0.1:2222/r").as_deref(), Some("[10.77.0.1]:2222"));
        assert_eq!(known_host_name("https://example.com/r"), None);
        let k = parse_known_hosts("# c\n\nexample.com,10.0.0.1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGMU76NDlZG/brxJsc9wgRP0+5regiomyVcEyjEqmGvH\n").unwrap();
        assert_eq!(k[0].hosts, KnownHostNames::Plain(vec!["example.com".into(), "10.0.0.1".into()]));
        assert!(k[0].matches("10.0.0.1") && !k[0].matches("example.org"));
        assert_eq!(k[0].key.len(), 51);
        assert!(parse_known_hosts("|1|salt|hash ssh-ed25519 AAAA").unwrap_err().to_string().contains("line 1: a hashed host name is"));
        assert!(parse_known_hosts("|2|c2FsdA==|aGFzaA== ssh-ed25519 AAAA").unwrap_err().to_string().contains("only `|1|`"));
        assert!(parse_known_hosts("@revoked * ssh-ed25519 AAAA").unwrap_err().to_string().contains("markers"));
        assert!(parse_known_hosts("@cert-authority * ssh-ed25519 AAAA").is_err());
    }

    #[test]
    fn hashed_known_hosts_match_their_host_only() {
        // `ssh-keygen -H` of "[127.0.0.1]:2222 …" and "example.com …".
        let k = parse_known_hosts(
            "|1|vWkaRunjPyQ1OmxyTIzFahCWHmM=|Yheb+906FNPn5JuPfrQpCz0nyuQ= ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG15FYnQjhd5RNObrvsouFiUDvpIR5TyLaSLdpwP2uno\n\
             |1|l0EMMaPHIlquY3AeXAJ4s0kDbpI=|ObyAIjzq7KagomubjX9FykEAtZI= ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG15FYnQjhd5RNObrvsouFiUDvpIR5TyLaSLdpwP2uno\n",
        )
        .unwrap();
        assert!(matches!(k[0].hosts, KnownHostNames::Hashed { .. }));
        assert_eq!(k[0].key_type, "ssh-ed25519");
        assert!(k[0].matches("[127.0.0.1]:2222"));
        assert!(!k[0].matches("127.0.0.1") && !k[0].matches("[127.0.0.1]:2223") && !k[0].matches("example.com"));
        assert!(k[1].matches(&known_host_name("ssh://git@example.com/org/repo.git").unwrap()));
        assert!(!k[1].matches("example.org"));
    }
}
