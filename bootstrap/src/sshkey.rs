//! The cluster's SSH deploy key: an ed25519 key pair in OpenSSH's own formats (the
//! `openssh-key-v1` private key libssh2 and OpenSSH read, and an `authorized_keys` line to
//! give the git host), made with ring from a random seed.

use base64::Engine;
use ring::rand::SecureRandom;
use ring::signature::KeyPair;

/// A deploy key: the private key file's text and the public key line.
pub struct DeployKey {
    pub private: String,
    pub public: String,
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend((s.len() as u32).to_be_bytes());
    out.extend(s);
}

/// A new ed25519 deploy key with `comment`.
pub fn ed25519(comment: &str) -> Result<DeployKey, ring::error::Unspecified> {
    let rng = ring::rand::SystemRandom::new();
    let mut seed = [0u8; 32];
    rng.fill(&mut seed)?;
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|_| ring::error::Unspecified)?;
    let pk = pair.public_key().as_ref();
    let mut blob = Vec::new();
    put_string(&mut blob, b"ssh-ed25519");
    put_string(&mut blob, pk);
    let b64 = base64::engine::general_purpose::STANDARD;
    let public = format!("ssh-ed25519 {} {comment}", b64.encode(&blob));
    // The private section: a random check value twice, the key, the comment, padding.
    let mut check = [0u8; 4];
    rng.fill(&mut check)?;
    let mut private = Vec::new();
    private.extend(check);
    private.extend(check);
    put_string(&mut private, b"ssh-ed25519");
    put_string(&mut private, pk);
    put_string(&mut private, &[seed.as_slice(), pk].concat());
    put_string(&mut private, comment.as_bytes());
    let mut pad = 1u8;
    while private.len() % 8 != 0 {
        private.push(pad);
        pad += 1;
    }
    let mut file = b"openssh-key-v1\0".to_vec();
    for s in [b"none".as_slice(), b"none", b""] {
        put_string(&mut file, s);
    }
    file.extend(1u32.to_be_bytes());
    put_string(&mut file, &blob);
    put_string(&mut file, &private);
    let body = b64.encode(&file);
    let lines: Vec<&str> = body.as_bytes().chunks(70).map(|c| std::str::from_utf8(c).expect("base64 is ascii")).collect();
    Ok(DeployKey { private: format!("-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n-----END OPENSSH PRIVATE KEY-----\n", lines.join("\n")), public })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_keygen_reads_the_key_and_derives_the_same_public_key() {
        let k = ed25519("kapp-deploy@demo").unwrap();
        assert!(k.public.starts_with("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI") && k.public.ends_with(" kapp-deploy@demo"), "{}", k.public);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, &k.private).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let Ok(out) = std::process::Command::new("ssh-keygen").arg("-y").arg("-f").arg(&path).output() else {
            return eprintln!("ssh-keygen not installed: skipped");
        };
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), k.public);
    }
}
