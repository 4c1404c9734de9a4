//! OpenPGP (GnuPG) signed commits: ASCII-armored transferable public keys and the detached
//! signature git puts in a commit's `gpgsig` header, v4 packets of RFC 4880, checked with
//! ring. No IO, no clock of its own: the caller passes the time.
//!
//! Supported: v4 keys and signatures; RSA (PKCS#1 v1.5, 2048 to 8192 bits) and Ed25519
//! (EdDSA, algorithm 22 with the Ed25519 curve OID, and algorithm 27); SHA-256, SHA-384,
//! SHA-512 for commit signatures. A key's user IDs are certified and its subkeys bound by
//! self-signatures that are checked the same way (SHA-1 is refused there too, so a key whose
//! self-signatures all use SHA-1 names itself by its first user ID and has no expiration
//! known); a subkey signs only with a valid binding signature (type 0x18) allowing signing.
//! Key expiration and revocation by the key's own signatures are honoured.

use base64::Engine;
use ring::{digest, signature};

use crate::trust::TrustError;

/// A transferable public key: the primary key, its user ID and the subkeys bound to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cert {
    primary: Key,
    /// The primary (or first certified, or first) user ID, for messages.
    pub user_id: String,
    /// Subkeys with a valid binding signature by the primary key.
    subkeys: Vec<Key>,
    /// Revoked by a key revocation signature of its own.
    revoked: bool,
}

/// One v4 public key or subkey.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Key {
    fingerprint: [u8; 20],
    /// The key packet's body (what fingerprints and binding signatures hash).
    body: Vec<u8>,
    created: u32,
    /// Seconds after `created` when the key expires (0 or absent: never), from the most
    /// recent valid self-signature.
    expires: Option<u32>,
    /// Key flags from that signature (0x02: may sign).
    flags: Option<u8>,
    revoked: bool,
    material: Material,
}

/// What a valid self-signature (certification or binding) says of its key.
#[derive(Clone, Copy)]
struct SelfSig {
    created: u32,
    expires: Option<u32>,
    flags: Option<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Material {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// Algorithm 22 (legacy EdDSA with the Ed25519 OID) or 27.
    Ed25519 { algo: u8, point: [u8; 32] },
    /// An algorithm this verifier does not check with (DSA, ECDSA, ECDH, Elgamal, …).
    Other(u8),
}

/// The Ed25519 curve's OID, 1.3.6.1.4.1.11591.15.1.
const ED25519_OID: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0xda, 0x47, 0x0f, 0x01];

const TAG_SIGNATURE: u8 = 2;
const TAG_PUBLIC_KEY: u8 = 6;
const TAG_USER_ID: u8 = 13;
const TAG_PUBLIC_SUBKEY: u8 = 14;
const TAG_USER_ATTRIBUTE: u8 = 17;

const ARMOR_KEY: &str = "PUBLIC KEY BLOCK";
const ARMOR_SIGNATURE: &str = "SIGNATURE";

impl Cert {
    /// The primary key's fingerprint, 40 upper-case hex digits (as `gpg --list-keys`).
    pub fn fingerprint(&self) -> String {
        hex(&self.primary.fingerprint)
    }

    /// `OpenPGP <fingerprint> <user ID>`, for messages.
    pub fn name(&self) -> String {
        format!("OpenPGP {} {}", self.fingerprint(), self.user_id).trim_end().to_string()
    }

    /// Parse an ASCII-armored block of transferable public keys (`gpg --armor --export`,
    /// one key or several).
    pub fn from_armor(text: &str) -> Result<Vec<Cert>, String> {
        let data = dearmor(text, ARMOR_KEY)?;
        let packets = packets(&data)?;
        match packets.first() {
            None => return Err("the key block is empty".into()),
            Some(p) if p.tag != TAG_PUBLIC_KEY => return Err(format!("the key block starts with packet {} rather than a public key", p.tag)),
            Some(_) => {}
        }
        let starts: Vec<usize> = packets.iter().enumerate().filter(|(_, p)| p.tag == TAG_PUBLIC_KEY).map(|(i, _)| i).collect();
        starts.iter().zip(starts.iter().skip(1).chain([&packets.len()])).map(|(&a, &b)| Cert::from_packets(&packets[a..b])).collect()
    }

    /// One transferable public key: a public key packet, then its signatures, user IDs and
    /// subkeys.
    fn from_packets(packets: &[Packet]) -> Result<Cert, String> {
        let mut it = packets.iter();
        let first = it.next().expect("a key packet");
        let mut primary = parse_key(first.body)?;
        enum Under {
            Primary,
            UserId(String),
            Subkey(usize),
            Skipped,
        }
        let mut under = Under::Primary;
        let mut subkeys: Vec<Key> = Vec::new();
        let mut bound: Vec<Option<SelfSig>> = Vec::new();
        let mut user_ids: Vec<String> = Vec::new();
        // The valid self-certification to go by (the primary user ID's, else the newest),
        // its user ID (empty for a direct-key signature) and whether it is marked primary.
        let mut best: Option<(SelfSig, String, bool)> = None;
        let mut revoked = false;
        for p in it {
            match p.tag {
                TAG_USER_ID => {
                    let uid = String::from_utf8_lossy(p.body).into_owned();
                    user_ids.push(uid.clone());
                    under = Under::UserId(uid);
                }
                TAG_PUBLIC_SUBKEY => match parse_key(p.body) {
                    Ok(k) => {
                        subkeys.push(k);
                        bound.push(None);
                        under = Under::Subkey(subkeys.len() - 1);
                    }
                    Err(_) => under = Under::Skipped,
                },
                TAG_USER_ATTRIBUTE => under = Under::Skipped,
                TAG_SIGNATURE => {
                    let Ok(sig) = parse_signature(p.body) else { continue };
                    if !sig.issued_by(&primary) {
                        continue;
                    }
                    let created = sig.created().unwrap_or(0);
                    let this = SelfSig { created, expires: sig.key_expiration(), flags: sig.key_flags() };
                    match &under {
                        Under::Primary => {
                            let prefix = key_prefix(&primary.body);
                            if check(&primary, &sig, &[&prefix]).is_ok() {
                                match sig.sig_type {
                                    0x20 => revoked = true,
                                    0x1f if best.is_none() => best = Some((this, String::new(), false)),
                                    _ => {}
                                }
                            }
                        }
                        Under::UserId(uid) if (0x10..=0x13).contains(&sig.sig_type) => {
                            let mut uid_prefix = vec![0xb4];
                            uid_prefix.extend((uid.len() as u32).to_be_bytes());
                            uid_prefix.extend(uid.as_bytes());
                            if check(&primary, &sig, &[&key_prefix(&primary.body), &uid_prefix]).is_ok() {
                                let is_primary = sig.primary_user_id();
                                let newer = best.as_ref().is_none_or(|(s, u, pr)| u.is_empty() || (is_primary, created) > (*pr, s.created));
                                if newer {
                                    best = Some((this, uid.clone(), is_primary));
                                }
                            }
                        }
                        Under::Subkey(i) if matches!(sig.sig_type, 0x18 | 0x28) => {
                            let sub = &subkeys[*i];
                            if check(&primary, &sig, &[&key_prefix(&primary.body), &key_prefix(&sub.body)]).is_ok() {
                                if sig.sig_type == 0x28 {
                                    subkeys[*i].revoked = true;
                                } else if bound[*i].is_none_or(|b| created > b.created) {
                                    bound[*i] = Some(this);
                                }
                            }
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        let mut user_id = user_ids.first().cloned().unwrap_or_default();
        if let Some((s, uid, _)) = best {
            if !uid.is_empty() {
                user_id = uid;
            }
            (primary.expires, primary.flags) = (s.expires, s.flags);
        }
        let subkeys = subkeys
            .into_iter()
            .zip(bound)
            .filter_map(|(mut k, b)| {
                let b = b?;
                (k.expires, k.flags) = (b.expires, b.flags);
                Some(k)
            })
            .collect();
        Ok(Cert { primary, user_id, subkeys, revoked })
    }
}

/// Verify `armored` (an armored detached signature, the commit's `gpgsig` header) over
/// `signed` against `certs` at time `now` (seconds since the epoch): the signer's name.
pub fn verify<'a>(armored: &str, signed: &[u8], certs: impl IntoIterator<Item = &'a Cert>, now: u64) -> Result<String, TrustError> {
    let data = dearmor(armored, ARMOR_SIGNATURE).map_err(TrustError::Malformed)?;
    let packets = packets(&data).map_err(TrustError::Malformed)?;
    let body = packets.iter().find(|p| p.tag == TAG_SIGNATURE).ok_or_else(|| TrustError::Malformed("no signature packet".into()))?.body;
    let sig = parse_signature(body)?;
    if sig.sig_type != 0x00 {
        return Err(TrustError::Unsupported(format!("OpenPGP signature type {:#04x} (a commit's is 0x00, binary document)", sig.sig_type)));
    }
    hash_algorithm(sig.hash_algo)?;
    let Some((cert, key)) = certs.into_iter().find_map(|c| std::iter::once(&c.primary).chain(&c.subkeys).find(|k| sig.issued_by(k)).map(|k| (c, k))) else {
        return Err(TrustError::UnknownKey(format!("OpenPGP key {}", sig.issuer().unwrap_or_else(|| "(no issuer named)".into()))));
    };
    let is_subkey = key.fingerprint != cert.primary.fingerprint;
    let name = if is_subkey { format!("{} (subkey {})", cert.name(), hex(&key.fingerprint)) } else { cert.name() };
    let invalid = |why: String| TrustError::Invalid { key: name.clone(), why };
    let created = sig.created().ok_or_else(|| TrustError::Malformed("the signature has no creation time".into()))?;
    if cert.revoked || key.revoked {
        return Err(invalid("the key is revoked".into()));
    }
    if key.flags.is_some_and(|f| f & 0x02 == 0) {
        return Err(invalid("the key is not allowed to sign".into()));
    }
    if created < key.created {
        return Err(invalid("the signature is older than the key".into()));
    }
    for k in [&cert.primary, key] {
        if let Some(e) = k.expires.filter(|e| *e != 0) {
            let end = u64::from(k.created) + u64::from(e);
            if u64::from(created) >= end || now >= end {
                return Err(invalid(format!("the key {} expired at {}", hex(&k.fingerprint), kapp_api::table::format_rfc3339(end as i64))));
            }
        }
    }
    if let Some(e) = sig.subpacket(3).and_then(be32).filter(|e| *e != 0) {
        if now >= u64::from(created) + u64::from(e) {
            return Err(invalid("the signature has expired".into()));
        }
    }
    match check(key, &sig, &[signed]) {
        Ok(()) => Ok(name),
        Err(Failure::Unsupported(what)) => Err(TrustError::Unsupported(what)),
        Err(Failure::Bad) => Err(TrustError::BadSignature(name)),
    }
}

/// Why a signature did not check.
enum Failure {
    Unsupported(String),
    Bad,
}

/// Check `sig` by `key` over `prefix` (the signed data, concatenated) and the signature's
/// hashed part with its v4 trailer.
fn check(key: &Key, sig: &Signature, prefix: &[&[u8]]) -> Result<(), Failure> {
    let alg = hash_algorithm(sig.hash_algo).map_err(|e| match e {
        TrustError::Unsupported(what) => Failure::Unsupported(what),
        other => Failure::Unsupported(other.to_string()),
    })?;
    let mut message: Vec<u8> = prefix.concat();
    message.extend(sig.hashed);
    message.extend([0x04, 0xff]);
    message.extend((sig.hashed.len() as u32).to_be_bytes());
    let d = digest::digest(alg, &message);
    if d.as_ref()[..2] != sig.left16 {
        return Err(Failure::Bad);
    }
    let mut r = Reader(sig.mpis);
    match (&key.material, sig.pk_algo) {
        (Material::Rsa { n, e }, 1 | 3) => {
            let bits = n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize);
            if !(2048..=8192).contains(&bits) {
                return Err(Failure::Unsupported(format!("an RSA key of {bits} bits (2048 to 8192 are checked)")));
            }
            let s = r.mpi().map_err(|_| Failure::Bad)?;
            let padded = left_pad(s, n.len()).ok_or(Failure::Bad)?;
            let ring_alg = match sig.hash_algo {
                8 => &signature::RSA_PKCS1_2048_8192_SHA256,
                9 => &signature::RSA_PKCS1_2048_8192_SHA384,
                _ => &signature::RSA_PKCS1_2048_8192_SHA512,
            };
            signature::RsaPublicKeyComponents { n: n.as_slice(), e: e.as_slice() }.verify(ring_alg, &message, &padded).map_err(|_| Failure::Bad)
        }
        (Material::Ed25519 { algo, point }, pk) if pk == *algo => {
            let rs = if pk == 27 {
                r.take(64).map_err(|_| Failure::Bad)?.to_vec()
            } else {
                let (rr, ss) = (r.mpi().map_err(|_| Failure::Bad)?, r.mpi().map_err(|_| Failure::Bad)?);
                [left_pad(rr, 32).ok_or(Failure::Bad)?, left_pad(ss, 32).ok_or(Failure::Bad)?].concat()
            };
            // EdDSA in OpenPGP signs the digest.
            signature::UnparsedPublicKey::new(&signature::ED25519, point).verify(d.as_ref(), &rs).map_err(|_| Failure::Bad)
        }
        (Material::Other(a), _) => Err(Failure::Unsupported(format!("OpenPGP public key algorithm {} (RSA and Ed25519 are checked)", algorithm_name(*a)))),
        _ => Err(Failure::Bad),
    }
}

/// ring's digest for an OpenPGP hash algorithm id; MD5, SHA-1 and the rest refused.
fn hash_algorithm(id: u8) -> Result<&'static digest::Algorithm, TrustError> {
    match id {
        8 => Ok(&digest::SHA256),
        9 => Ok(&digest::SHA384),
        10 => Ok(&digest::SHA512),
        1 => Err(TrustError::Unsupported("MD5 (broken; SHA-256, SHA-384 and SHA-512 are accepted)".into())),
        2 => Err(TrustError::Unsupported("SHA-1 (broken; SHA-256, SHA-384 and SHA-512 are accepted: `personal-digest-preferences SHA512` in gpg.conf)".into())),
        other => Err(TrustError::Unsupported(format!("OpenPGP hash algorithm {other} (SHA-256, SHA-384 and SHA-512 are accepted)"))),
    }
}

fn algorithm_name(id: u8) -> String {
    match id {
        1..=3 => "RSA".into(),
        16 => "Elgamal".into(),
        17 => "DSA".into(),
        18 => "ECDH".into(),
        19 => "ECDSA".into(),
        22 => "EdDSA on a curve other than Ed25519".into(),
        25 | 26 => "X25519/X448".into(),
        28 => "Ed448".into(),
        other => format!("{other}"),
    }
}

/// `b` (an MPI's bytes, big-endian without leading zeros) left-padded with zeros to `len`.
fn left_pad(b: &[u8], len: usize) -> Option<Vec<u8>> {
    let b = &b[b.iter().take_while(|x| **x == 0).count()..];
    (b.len() <= len).then(|| [vec![0; len - b.len()], b.to_vec()].concat())
}

/// What a key's binding or certification hashes for it: 0x99, its length, its body.
fn key_prefix(body: &[u8]) -> Vec<u8> {
    let mut v = vec![0x99];
    v.extend((body.len() as u16).to_be_bytes());
    v.extend(body);
    v
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

fn be32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

/// A parsed v4 signature packet.
struct Signature<'a> {
    sig_type: u8,
    pk_algo: u8,
    hash_algo: u8,
    /// Version through the end of the hashed subpackets: what the signature covers.
    hashed: &'a [u8],
    hashed_subs: Vec<(u8, &'a [u8])>,
    unhashed_subs: Vec<(u8, &'a [u8])>,
    left16: [u8; 2],
    mpis: &'a [u8],
}

impl Signature<'_> {
    /// A hashed subpacket's data.
    fn subpacket(&self, kind: u8) -> Option<&[u8]> {
        self.hashed_subs.iter().find(|(k, _)| *k == kind).map(|(_, d)| *d)
    }

    fn created(&self) -> Option<u32> {
        self.subpacket(2).and_then(be32)
    }

    fn key_expiration(&self) -> Option<u32> {
        self.subpacket(9).and_then(be32)
    }

    fn key_flags(&self) -> Option<u8> {
        self.subpacket(27).and_then(|d| d.first().copied())
    }

    fn primary_user_id(&self) -> bool {
        self.subpacket(25).is_some_and(|d| d.first() == Some(&1))
    }

    /// Issuer fingerprints (33) and key IDs (16), hashed or not.
    fn issuers(&self) -> impl Iterator<Item = &[u8]> {
        self.hashed_subs.iter().chain(&self.unhashed_subs).filter_map(|(k, d)| match (k, d.len()) {
            (33, 21) if d[0] == 4 => Some(&d[1..]),
            (16, 8) => Some(*d),
            _ => None,
        })
    }

    /// Whether the issuer named is `key` (by fingerprint or key ID).
    fn issued_by(&self, key: &Key) -> bool {
        self.issuers().any(|i| key.fingerprint.ends_with(i))
    }

    fn issuer(&self) -> Option<String> {
        self.issuers().max_by_key(|i| i.len()).map(hex)
    }
}

fn parse_signature(body: &[u8]) -> Result<Signature<'_>, TrustError> {
    let bad = |what: &str| TrustError::Malformed(format!("the OpenPGP signature packet {what}"));
    let mut r = Reader(body);
    let version = r.u8().map_err(|_| bad("is empty"))?;
    if version != 4 {
        return Err(TrustError::Unsupported(format!("OpenPGP signature version {version} (version 4 is checked)")));
    }
    let short = |_| bad("is cut short");
    let (sig_type, pk_algo, hash_algo) = (r.u8().map_err(short)?, r.u8().map_err(short)?, r.u8().map_err(short)?);
    let hashed_len = r.u16().map_err(short)? as usize;
    let hashed_area = r.take(hashed_len).map_err(short)?;
    let hashed = &body[..6 + hashed_len];
    let unhashed_len = r.u16().map_err(short)? as usize;
    let unhashed_area = r.take(unhashed_len).map_err(short)?;
    let left = r.take(2).map_err(short)?;
    let hashed_subs = subpackets(hashed_area).ok_or_else(|| bad("has malformed subpackets"))?;
    // A critical subpacket this verifier does not know makes the signature invalid.
    const KNOWN: &[u8] = &[2, 3, 4, 9, 11, 16, 21, 22, 23, 25, 27, 30, 33, 34];
    if let Some((k, _)) = subpackets_raw(hashed_area).into_iter().flatten().find(|(k, _)| k & 0x80 != 0 && !KNOWN.contains(&(k & 0x7f))) {
        return Err(TrustError::Unsupported(format!("a critical OpenPGP signature subpacket of type {}", k & 0x7f)));
    }
    Ok(Signature {
        sig_type,
        pk_algo,
        hash_algo,
        hashed,
        hashed_subs,
        unhashed_subs: subpackets(unhashed_area).ok_or_else(|| bad("has malformed subpackets"))?,
        left16: [left[0], left[1]],
        mpis: r.0,
    })
}

/// Subpackets as (type without the critical bit, data).
fn subpackets(area: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    Some(subpackets_raw(area)?.into_iter().map(|(k, d)| (k & 0x7f, d)).collect())
}

/// Subpackets as (type octet, data).
fn subpackets_raw(area: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut r = Reader(area);
    let mut out = Vec::new();
    while !r.0.is_empty() {
        let o1 = r.u8().ok()? as usize;
        let len = match o1 {
            0..=191 => o1,
            192..=254 => ((o1 - 192) << 8) + r.u8().ok()? as usize + 192,
            _ => r.u32().ok()? as usize,
        };
        let sub = r.take(len).ok()?;
        let (&kind, data) = sub.split_first()?;
        out.push((kind, data));
    }
    Some(out)
}

fn parse_key(body: &[u8]) -> Result<Key, String> {
    let short = |_| "a key packet is cut short".to_string();
    let mut r = Reader(body);
    let version = r.u8().map_err(short)?;
    if version != 4 {
        return Err(format!("version {version} OpenPGP keys are not supported (version 4 are)"));
    }
    let created = r.u32().map_err(short)?;
    let algo = r.u8().map_err(short)?;
    let material = match algo {
        1 | 3 => {
            let n = r.mpi().map_err(short)?.to_vec();
            let e = r.mpi().map_err(short)?.to_vec();
            Material::Rsa { n, e }
        }
        22 => {
            let len = r.u8().map_err(short)? as usize;
            let oid = r.take(len).map_err(short)?;
            let q = r.mpi().map_err(short)?;
            match (oid == ED25519_OID, q) {
                (true, [0x40, point @ ..]) if point.len() == 32 => Material::Ed25519 { algo, point: point.try_into().expect("32 bytes") },
                (true, _) => return Err("an Ed25519 key whose point is not in native form".into()),
                (false, _) => Material::Other(algo),
            }
        }
        27 => Material::Ed25519 { algo, point: r.take(32).map_err(short)?.try_into().expect("32 bytes") },
        other => Material::Other(other),
    };
    let fp = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, &key_prefix(body));
    Ok(Key { fingerprint: fp.as_ref().try_into().expect("SHA-1 is 20 bytes"), body: body.to_vec(), created, expires: None, flags: None, revoked: false, material })
}

/// One OpenPGP packet: its tag and body.
#[derive(Debug)]
struct Packet<'a> {
    tag: u8,
    body: &'a [u8],
}

/// Split `data` into packets (old and new header formats; partial lengths refused).
fn packets(mut data: &[u8]) -> Result<Vec<Packet<'_>>, String> {
    let short = || "an OpenPGP packet is cut short".to_string();
    let mut out = Vec::new();
    while let Some(&h) = data.first() {
        if h & 0x80 == 0 {
            return Err("not OpenPGP data (a packet header without its high bit)".into());
        }
        let at = |i: usize| data.get(i).copied().map(usize::from).ok_or_else(short);
        let (tag, len, header) = if h & 0x40 != 0 {
            match at(1)? {
                o @ 0..=191 => (h & 0x3f, o, 2),
                o @ 192..=223 => (h & 0x3f, ((o - 192) << 8) + at(2)? + 192, 3),
                255 => (h & 0x3f, (at(2)? << 24) | (at(3)? << 16) | (at(4)? << 8) | at(5)?, 6),
                _ => return Err("partial-length OpenPGP packets are not supported".into()),
            }
        } else {
            let tag = (h >> 2) & 0x0f;
            match h & 3 {
                0 => (tag, at(1)?, 2),
                1 => (tag, (at(1)? << 8) | at(2)?, 3),
                2 => (tag, (at(1)? << 24) | (at(2)? << 16) | (at(3)? << 8) | at(4)?, 5),
                _ => (tag, data.len() - 1, 1),
            }
        };
        let body = data.get(header..header + len).ok_or_else(short)?;
        out.push(Packet { tag, body });
        data = &data[header + len..];
    }
    Ok(out)
}

/// The binary inside an ASCII-armored block `-----BEGIN PGP <kind>-----` (armor headers
/// skipped, the CRC-24 checked when present).
fn dearmor(text: &str, kind: &str) -> Result<Vec<u8>, String> {
    let (begin, end) = (format!("-----BEGIN PGP {kind}-----"), format!("-----END PGP {kind}-----"));
    let mut lines = text.lines().map(str::trim).skip_while(|l| *l != begin);
    if lines.next().is_none() {
        return Err(format!("no `{begin}` line"));
    }
    let (mut body, mut crc, mut ended) = (String::new(), None, false);
    for l in lines {
        if l == end {
            ended = true;
            break;
        }
        if l.is_empty() || l.contains(':') {
            continue; // armor headers (`Comment: …`); base64 has no ':'
        }
        match l.strip_prefix('=') {
            Some(c) if c.len() == 4 => crc = Some(c.to_string()),
            _ => body.push_str(l),
        }
    }
    if !ended {
        return Err(format!("no `{end}` line"));
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let data = b64.decode(&body).map_err(|_| "the armored data is not base64".to_string())?;
    if let Some(c) = crc {
        if b64.decode(c).ok().as_deref() != Some(&crc24(&data).to_be_bytes()[1..]) {
            return Err("the armor checksum does not match its data".into());
        }
    }
    Ok(data)
}

/// OpenPGP's CRC-24 (RFC 4880 6.1).
fn crc24(data: &[u8]) -> u32 {
    let mut crc: u32 = 0x00b7_04ce;
    for &b in data {
        crc ^= u32::from(b) << 16;
        for _ in 0..8 {
            crc <<= 1;
            if crc & 0x0100_0000 != 0 {
                crc ^= 0x0186_4cfb;
            }
        }
    }
    crc & 0x00ff_ffff
}

/// A cursor over packet bytes.
struct Reader<'a>(&'a [u8]);

#[derive(Debug)]
struct Short;

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Short> {
        let b = self.0.get(..n).ok_or(Short)?;
        self.0 = &self.0[n..];
        Ok(b)
    }
    fn u8(&mut self) -> Result<u8, Short> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, Short> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Result<u32, Short> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    /// A multiprecision integer: a 16-bit bit count, then its bytes.
    fn mpi(&mut self) -> Result<&'a [u8], Short> {
        let bits = usize::from(self.u16()?);
        self.take(bits.div_ceil(8))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc24_is_openpgps() {
        // RFC 4880's CRC-24 of "123456789" is 0x21cf02.
        assert_eq!(crc24(b"123456789"), 0x21cf02);
    }

    #[test]
    fn armor_and_packets_are_checked() {
        assert!(dearmor("hello", ARMOR_KEY).unwrap_err().contains("no `-----BEGIN PGP PUBLIC KEY BLOCK-----` line"));
        let cut = "-----BEGIN PGP SIGNATURE-----\n\niQEz\n";
        assert!(dearmor(cut, ARMOR_SIGNATURE).unwrap_err().contains("no `-----END PGP SIGNATURE-----`"));
        let bad_crc = "-----BEGIN PGP SIGNATURE-----\nComment: x\n\nAQID\n=AAAA\n-----END PGP SIGNATURE-----\n";
        assert!(dearmor(bad_crc, ARMOR_SIGNATURE).unwrap_err().contains("checksum"));
        let data = b"\x01\x02\x03";
        let crc = base64::engine::general_purpose::STANDARD.encode(&crc24(data).to_be_bytes()[1..]);
        let good = format!("-----BEGIN PGP SIGNATURE-----\n\nAQID\n={crc}\n-----END PGP SIGNATURE-----\n");
        assert_eq!(dearmor(&good, ARMOR_SIGNATURE).unwrap(), data);
        assert!(packets(b"\x01").unwrap_err().contains("not OpenPGP"));
        assert!(packets(b"\xc2\x05ab").unwrap_err().contains("cut short"));
        // Old format (tag 2, one length byte) and new format (tag 13).
        let p = packets(b"\x88\x01x\xcd\x02ab").unwrap();
        assert_eq!((p[0].tag, p[0].body, p[1].tag, p[1].body), (2, &b"x"[..], 13, &b"ab"[..]));
    }

    #[test]
    fn hash_algorithms_other_than_sha2_are_refused_with_a_reason() {
        assert!(hash_algorithm(2).unwrap_err().to_string().contains("SHA-1 (broken"));
        assert!(hash_algorithm(1).unwrap_err().to_string().contains("MD5"));
        assert!(hash_algorithm(8).is_ok() && hash_algorithm(9).is_ok() && hash_algorithm(10).is_ok());
    }

    /// A fixture made by gpg: an Ed25519 key expiring a day after its creation, with an
    /// Ed25519 signing subkey, and a commit object signed by the subkey.
    const KEY: &str = include_str!("../tests/data/openpgp/expiring-with-subkey.asc");
    const COMMIT: &str = include_str!("../tests/data/openpgp/commit-by-subkey");
    const PRIMARY: &str = "8EB9AB2A56918C7961000D9DCDF2E4964D609773";
    const SUBKEY: &str = "AE07B6043D2284A94DA6BDAA9303CAF0C15136E8";
    /// The commit's time (its signature's creation, give or take a second).
    const SIGNED_AT: u64 = 1_795_391_448;

    /// The commit's `gpgsig` header and the commit without it (what git2 extracts).
    fn split_commit(raw: &str) -> (String, String) {
        let (head, msg) = raw.split_once("\n\n").unwrap();
        let (mut sig, mut signed, mut in_sig) = (String::new(), String::new(), false);
        for l in head.lines() {
            if let Some(first) = l.strip_prefix("gpgsig ") {
                (in_sig, sig) = (true, format!("{first}\n"));
            } else if let (true, Some(more)) = (in_sig, l.strip_prefix(' ')) {
                sig += &format!("{more}\n");
            } else {
                in_sig = false;
                signed += &format!("{l}\n");
            }
        }
        (sig, format!("{signed}\n{msg}"))
    }

    #[test]
    fn a_subkey_signs_while_its_binding_and_the_keys_last() {
        let certs = Cert::from_armor(KEY).unwrap();
        assert_eq!(certs.len(), 1);
        assert_eq!(certs[0].name(), format!("OpenPGP {PRIMARY} Fixture <fixture@example.com>"));
        let (sig, signed) = split_commit(COMMIT);
        let by_subkey = format!("OpenPGP {PRIMARY} Fixture <fixture@example.com> (subkey {SUBKEY})");
        assert_eq!(verify(&sig, signed.as_bytes(), &certs, SIGNED_AT + 60), Ok(by_subkey.clone()));
        // Other content: the signature does not match.
        assert_eq!(verify(&sig, signed.replace("fixture", "fixture!").as_bytes(), &certs, SIGNED_AT + 60), Err(TrustError::BadSignature(by_subkey.clone())));
        // Two days on, the key has expired.
        let e = verify(&sig, signed.as_bytes(), &certs, SIGNED_AT + 2 * 86_400).unwrap_err();
        assert!(matches!(&e, TrustError::Invalid { why, .. } if why.contains("expired")), "{e}");
        // Without the subkey's binding signature the subkey is nobody's.
        let data = dearmor(KEY, ARMOR_KEY).unwrap();
        let mut stripped = Vec::new();
        let mut after_subkey = false;
        for p in packets(&data).unwrap() {
            let binding = after_subkey && p.tag == TAG_SIGNATURE;
            after_subkey = p.tag == TAG_PUBLIC_SUBKEY || binding;
            if !binding {
                stripped.extend([0xc0 | p.tag, 0xff]);
                stripped.extend((p.body.len() as u32).to_be_bytes());
                stripped.extend(p.body);
            }
        }
        assert!(stripped.len() < data.len());
        let armored = format!("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n{}\n-----END PGP PUBLIC KEY BLOCK-----\n", base64::engine::general_purpose::STANDARD.encode(&stripped));
        let unbound = Cert::from_armor(&armored).unwrap();
        assert_eq!(unbound[0].name(), certs[0].name());
        assert_eq!(verify(&sig, signed.as_bytes(), &unbound, SIGNED_AT + 60), Err(TrustError::UnknownKey(format!("OpenPGP key {SUBKEY}"))));
    }

    #[test]
    fn mpis_are_left_padded() {
        assert_eq!(left_pad(&[1, 2], 4).unwrap(), [0, 0, 1, 2]);
        assert_eq!(left_pad(&[0, 1], 1).unwrap(), [1]);
        assert!(left_pad(&[1, 2, 3], 2).is_none());
    }
}
