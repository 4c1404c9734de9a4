//! Signed commits: when the cluster names trusted keys, gitops applies only commits signed
//! by one of them. Two kinds, both checked with ring:
//! - git's `gpg.format=ssh` signatures (OpenSSH's SSHSIG, namespace `git`) by keys given as
//!   `authorized_keys` lines (`ssh-ed25519 AAAA… comment`): ed25519, RSA
//!   (`rsa-sha2-256`/`rsa-sha2-512`) and ECDSA P-256;
//! - OpenPGP (GnuPG) signatures by keys given as ASCII-armored public key blocks
//!   (`gpg --armor --export`), checked by `crate::openpgp`.

use base64::Engine;
use ring::signature;

/// A key commits may be signed with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedKey {
    kind: KeyKind,
    /// `ssh-ed25519 SHA256:… comment` or `OpenPGP <fingerprint> <user ID>`, for messages.
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum KeyKind {
    /// The key's wire blob (what SSHSIG embeds).
    Ssh(Vec<u8>),
    OpenPgp(Box<crate::openpgp::Cert>),
}

/// Why a trusted key does not parse, or why a commit is not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("trusted key {index}: {reason}")]
    BadKey { index: usize, reason: String },
    #[error("not signed")]
    Unsigned,
    #[error("the signature uses {0}, which is not supported")]
    Unsupported(String),
    #[error("the signature by {key} is not valid: {why}")]
    Invalid { key: String, why: String },
    #[error("the signature does not parse: {0}")]
    Malformed(String),
    #[error("signed by {0}, which is not a trusted key")]
    UnknownKey(String),
    #[error("the signature by {0} does not match the commit")]
    BadSignature(String),
}

/// The line that starts an ASCII-armored OpenPGP public key.
pub const PGP_KEY_BEGIN: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----";
const PGP_KEY_END: &str = "-----END PGP PUBLIC KEY BLOCK-----";

/// Parse `authorized_keys`-style lines and ASCII-armored OpenPGP public key blocks (blank
/// lines and `#` comments between them skipped). An item may hold several lines (a
/// machine config's armored key); `index` in errors counts lines from 0, the line an entry
/// starts on.
pub fn parse_keys<'a>(lines: impl IntoIterator<Item = &'a str>) -> Result<Vec<TrustedKey>, TrustError> {
    let mut out = Vec::new();
    let mut lines = lines.into_iter().flat_map(str::lines).map(str::trim).enumerate().filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
    while let Some((index, line)) = lines.next() {
        let bad = |reason: &str| TrustError::BadKey { index, reason: reason.into() };
        if line == PGP_KEY_BEGIN {
            let mut block = vec![line];
            for (_, l) in lines.by_ref() {
                block.push(l);
                if l == PGP_KEY_END {
                    break;
                }
            }
            // The blank line after the armor headers was filtered out; dearmoring needs none.
            for cert in crate::openpgp::Cert::from_armor(&block.join("\n")).map_err(|e| bad(&e))? {
                out.push(TrustedKey { name: cert.name(), kind: KeyKind::OpenPgp(Box::new(cert)) });
            }
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(kind), Some(b64)) = (parts.next(), parts.next()) else { return Err(bad("not `<type> <base64> [comment]`")) };
        let blob = base64::engine::general_purpose::STANDARD.decode(b64).map_err(|_| bad("the key is not base64"))?;
        let mut r = blob.as_slice();
        if read_string(&mut r) != Some(kind.as_bytes()) {
            return Err(bad("the key's type does not match its data"));
        }
        if !["ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256"].contains(&kind) {
            return Err(bad(&format!("{kind} keys are not supported (ssh-ed25519, ssh-rsa, ecdsa-sha2-nistp256 are)")));
        }
        let comment = parts.collect::<Vec<_>>().join(" ");
        out.push(TrustedKey { name: format!("{kind} {} {comment}", fingerprint(&blob)).trim_end().to_string(), kind: KeyKind::Ssh(blob) });
    }
    Ok(out)
}

/// OpenSSH's `SHA256:<unpadded base64>` fingerprint of a key blob.
pub fn fingerprint(blob: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, blob);
    format!("SHA256:{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(d.as_ref()))
}

/// One SSH wire `string` (u32 big-endian length, then bytes).
fn read_string<'a>(r: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = u32::from_be_bytes(r.get(..4)?.try_into().ok()?) as usize;
    let s = r.get(4..4 + len)?;
    *r = &r[4 + len..];
    Some(s)
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend((s.len() as u32).to_be_bytes());
    out.extend(s);
}

/// Verify `signature` (the commit's `gpgsig` header) over `signed` (the commit object
/// without it) against `keys`; the key that signed.
pub fn verify(signature: &[u8], signed: &[u8], keys: &[TrustedKey]) -> Result<String, TrustError> {
    let text = std::str::from_utf8(signature).map_err(|_| TrustError::Malformed("not text".into()))?;
    if text.contains("-----BEGIN PGP SIGNATURE-----") {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let certs = keys.iter().filter_map(|k| match &k.kind {
            KeyKind::OpenPgp(c) => Some(c.as_ref()),
            KeyKind::Ssh(_) => None,
        });
        return crate::openpgp::verify(text, signed, certs, now);
    }
    let body: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN SSH SIGNATURE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END SSH SIGNATURE-----"))
        .map(str::trim)
        .collect();
    if body.is_empty() {
        return Err(TrustError::Malformed("no SSH SIGNATURE block".into()));
    }
    let blob = base64::engine::general_purpose::STANDARD.decode(body).map_err(|_| TrustError::Malformed("not base64".into()))?;
    let malformed = |what: &str| TrustError::Malformed(what.into());
    let mut r = blob.as_slice();
    if r.get(..6) != Some(b"SSHSIG".as_slice()) {
        return Err(malformed("no SSHSIG magic"));
    }
    r = &r[6..];
    if r.get(..4) != Some([0, 0, 0, 1].as_slice()) {
        return Err(malformed("not SSHSIG version 1"));
    }
    r = &r[4..];
    let key = read_string(&mut r).ok_or_else(|| malformed("no public key"))?;
    let namespace = read_string(&mut r).ok_or_else(|| malformed("no namespace"))?;
    let reserved = read_string(&mut r).ok_or_else(|| malformed("no reserved field"))?;
    let hash_alg = read_string(&mut r).ok_or_else(|| malformed("no hash algorithm"))?;
    let sig = read_string(&mut r).ok_or_else(|| malformed("no signature"))?;
    if namespace != b"git" {
        return Err(malformed(&format!("namespace {:?} is not \"git\"", String::from_utf8_lossy(namespace))));
    }
    let Some(trusted) = keys.iter().find(|k| matches!(&k.kind, KeyKind::Ssh(b) if b == key)) else {
        let mut kr = key;
        let kind = read_string(&mut kr).map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
        return Err(TrustError::UnknownKey(format!("{kind} {}", fingerprint(key))));
    };
    let digest = match hash_alg {
        b"sha512" => ring::digest::digest(&ring::digest::SHA512, signed),
        b"sha256" => ring::digest::digest(&ring::digest::SHA256, signed),
        other => return Err(malformed(&format!("hash {:?} is not sha256 or sha512", String::from_utf8_lossy(other)))),
    };
    let mut message = b"SSHSIG".to_vec();
    for s in [namespace, reserved, hash_alg, digest.as_ref()] {
        put_string(&mut message, s);
    }
    let bad = || TrustError::BadSignature(trusted.name.clone());
    check(key, sig, &message).ok_or_else(bad)?;
    Ok(trusted.name.clone())
}

/// Check `sig` (an SSH signature blob) by `key` (an SSH key blob) over `message`.
fn check(key: &[u8], sig: &[u8], message: &[u8]) -> Option<()> {
    let (mut k, mut s) = (key, sig);
    let key_type = read_string(&mut k)?;
    let sig_type = read_string(&mut s)?;
    let sig_blob = read_string(&mut s)?;
    match (key_type, sig_type) {
        (b"ssh-ed25519", b"ssh-ed25519") => {
            let pk = read_string(&mut k)?;
            signature::UnparsedPublicKey::new(&signature::ED25519, pk).verify(message, sig_blob).ok()
        }
        (b"ssh-rsa", b"rsa-sha2-256" | b"rsa-sha2-512") => {
            let e = read_string(&mut k)?;
            let n = read_string(&mut k)?;
            let alg = if sig_type == b"rsa-sha2-512" { &signature::RSA_PKCS1_2048_8192_SHA512 } else { &signature::RSA_PKCS1_2048_8192_SHA256 };
            signature::RsaPublicKeyComponents { n: strip_zero(n), e: strip_zero(e) }.verify(alg, message, sig_blob).ok()
        }
        (b"ecdsa-sha2-nistp256", b"ecdsa-sha2-nistp256") => {
            let _curve = read_string(&mut k)?;
            let point = read_string(&mut k)?;
            // (mpint r, mpint s) → r ‖ s, 32 bytes each.
            let mut rs = sig_blob;
            let (r, s) = (read_string(&mut rs)?, read_string(&mut rs)?);
            let mut fixed = vec![0u8; 64];
            for (i, part) in [strip_zero(r), strip_zero(s)].into_iter().enumerate() {
                if part.len() > 32 {
                    return None;
                }
                fixed[i * 32 + 32 - part.len()..(i + 1) * 32].copy_from_slice(part);
            }
            signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point).verify(message, &fixed).ok()
        }
        _ => None,
    }
}

/// An mpint's leading zero byte (there to keep it positive) dropped.
fn strip_zero(b: &[u8]) -> &[u8] {
    match b {
        [0, rest @ ..] => rest,
        _ => b,
    }
}

/// Whether commit `oid` of `repo` is signed by one of `keys`: the signer's name.
pub fn verify_commit(repo: &git2::Repository, oid: git2::Oid, keys: &[TrustedKey]) -> Result<String, TrustError> {
    match repo.extract_signature(&oid, None) {
        Ok((sig, signed)) => verify(&sig, &signed, keys),
        Err(e) if e.code() == git2::ErrorCode::NotFound => Err(TrustError::Unsigned),
        Err(e) => Err(TrustError::Malformed(e.message().to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_bad_ones_are_named() {
        let k = parse_keys(["# ops", "", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGMU76NDlZG/brxJsc9wgRP0+5regiomyVcEyjEqmGvH ops@example"]).unwrap();
        assert_eq!(k.len(), 1);
        assert!(k[0].name.starts_with("ssh-ed25519 SHA256:") && k[0].name.ends_with(" ops@example"), "{}", k[0].name);
        assert!(matches!(parse_keys(["ssh-ed25519"]), Err(TrustError::BadKey { index: 0, .. })));
        assert!(matches!(parse_keys(["ssh-ed25519 !!!"]), Err(TrustError::BadKey { .. })));
        // The type on the line must be the one in the blob.
        let e = parse_keys(["ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIGMU76NDlZG/brxJsc9wgRP0+5regiomyVcEyjEqmGvH"]).unwrap_err();
        assert!(e.to_string().contains("does not match"), "{e}");
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let gpg = b"-----BEGIN PGP SIGNATURE-----\n\niQEz\n-----END PGP SIGNATURE-----\n";
        assert!(matches!(verify(gpg, b"tree x", &[]), Err(TrustError::Malformed(_))));
        let cut_key = format!("{PGP_KEY_BEGIN}\n\nmQ==\n");
        assert!(matches!(parse_keys([cut_key.as_str()]), Err(TrustError::BadKey { index: 0, .. })));
        assert!(matches!(verify(b"hello", b"tree x", &[]), Err(TrustError::Malformed(_))));
        let wrong_magic = format!("-----BEGIN SSH SIGNATURE-----\n{}\n-----END SSH SIGNATURE-----\n", base64::engine::general_purpose::STANDARD.encode(b"NOTSIG\0\0\0\x01"));
        assert!(matches!(verify(wrong_magic.as_bytes(), b"tree x", &[]), Err(TrustError::Malformed(_))));
    }
}
