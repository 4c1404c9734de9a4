//! Image references (`[registry/]repository[:tag][@digest]`) as Docker and containerd read
//! them, and sha256 digests.

use std::fmt;

use super::ImageError;

/// Docker Hub's name in references and the host its API is served from.
const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A parsed image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host (and port) as written, `docker.io` for Docker Hub.
    pub registry: String,
    /// Repository path (`library/busybox`).
    pub repository: String,
    /// Tag; `latest` when neither tag nor digest is given.
    pub tag: Option<String>,
    /// Pinned manifest digest (`sha256:…`).
    pub digest: Option<Digest>,
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, ImageError> {
        let bad = |why: &str| ImageError::BadReference { reference: s.to_string(), reason: why.to_string() };
        if s.is_empty() || s.len() > 4096 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("empty, too long or contains whitespace"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(Digest::parse(d).map_err(|_| bad("invalid digest"))?)),
            None => (s, None),
        };
        // A tag is after the last ':' that follows the last '/' (a registry may have a port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(rest[last_slash + i + 1..].to_string())),
            None => (rest, None),
        };
        if let Some(t) = &tag {
            if t.is_empty() || t.len() > 128 || !t.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
                return Err(bad("invalid tag"));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path)) if first.contains('.') || first.contains(':') || first == "localhost" => (first.to_string(), path.to_string()),
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') { format!("library/{repository}") } else { repository };
        if repository.is_empty()
            || repository.split('/').any(|c| c.is_empty() || !c.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch)))
        {
            return Err(bad("invalid repository name"));
        }
        let tag = if tag.is_none() && digest.is_none() { Some("latest".to_string()) } else { tag };
        Ok(Reference { registry, repository, tag, digest })
    }

    /// The host the registry API is served from.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// What to ask the manifests endpoint for: the digest if pinned, else the tag.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// Whether the tag is `latest` (or absent) without a digest: the default pull policy
    /// is then Always.
    pub fn is_latest(&self) -> bool {
        self.digest.is_none() && self.tag.as_deref().is_none_or(|t| t == "latest")
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// A `sha256:<64 hex>` content digest (the only algorithm accepted).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    pub fn parse(s: &str) -> Result<Digest, ImageError> {
        match s.strip_prefix("sha256:") {
            Some(h) if h.len() == 64 && h.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)) => Ok(Digest(s.to_string())),
            _ => Err(ImageError::BadDigest(s.to_string())),
        }
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        Digest(format!("sha256:{}", hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())))
    }

    /// The 64 hex digits (safe as a file name).
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    #[test]
    fn docker_hub_names() {
        let x = r("busybox");
        assert_eq!((x.registry.as_str(), x.repository.as_str(), x.tag.as_deref()), ("docker.io", "library/busybox", Some("latest")));
        assert_eq!(x.api_host(), "registry-1.docker.io");
        assert!(x.is_latest());
        let x = r("bitnami/redis:7.2");
        assert_eq!((x.repository.as_str(), x.tag.as_deref()), ("bitnami/redis", Some("7.2")));
        assert!(!x.is_latest());
    }

    #[test]
    fn registries_with_ports_and_digests() {
        let d = format!("sha256:{}", "a".repeat(64));
        let x = r(&format!("127.0.0.1:5000/test/busybox:1.36@{d}"));
        assert_eq!((x.registry.as_str(), x.repository.as_str(), x.tag.as_deref()), ("127.0.0.1:5000", "test/busybox", Some("1.36")));
        assert_eq!(x.manifest_ref(), d);
        assert!(!x.is_latest());
        let x = r("localhost/app");
        assert_eq!((x.registry.as_str(), x.repository.as_str(), x.tag.as_deref()), ("localhost", "app", Some("latest")));
        let x = r("reg.example:5000/app");
        assert_eq!((x.registry.as_str(), x.tag.as_deref()), ("reg.example:5000", Some("latest")));
        assert_eq!(x.to_string(), "reg.example:5000/app:latest");
    }

    #[test]
    fn bad_references() {
        for s in ["", "Upper/case", "a b", "x:", "x@sha256:abc", "reg.io//x", "x:t@md5:00"] {
            assert!(Reference::parse(s).is_err(), "{s:?} should be refused");
        }
    }

    #[test]
    fn digests() {
        let d = Digest::of(b"");
        assert_eq!(d.to_string(), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(d.hex().len(), 64);
        assert!(Digest::parse("sha256:E3B0").is_err());
    }
}
