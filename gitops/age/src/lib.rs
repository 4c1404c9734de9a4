//! The age v1 file format (<https://age-encryption.org/v1>) for X25519 recipients, as the
//! `age` CLI writes and reads it: keys (`AGE-SECRET-KEY-1...`, `age1...`), encryption,
//! decryption of binary and ASCII-armored files.
//!
//! - `keys`: identities and recipients (Bech32 in `bech32`)
//! - `header`: the header's stanzas and MAC
//! - `armor`: `-----BEGIN AGE ENCRYPTED FILE-----`
//! - this file: X25519 stanzas (HKDF-SHA256 + ChaCha20-Poly1305 around the file key) and
//!   the payload (HKDF-SHA256 payload key, ChaCha20-Poly1305 STREAM in 64 KiB chunks, the
//!   last flagged so truncation is detected)
//!
//! Crypto is ring's, except X25519 with a static secret, which is x25519-dalek's. Errors
//! ([`Error`]) never carry key material or plaintext.

mod armor;
mod bech32;
mod error;
mod header;
mod keys;

pub use armor::is_armored;
pub use error::Error;
pub use keys::{parse_identities, Identity, Recipient};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::hkdf::{Salt, HKDF_SHA256};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use x25519_dalek::{PublicKey, StaticSecret};

use header::Stanza;

const X25519_INFO: &[u8] = b"age-encryption.org/v1/X25519";
const CHUNK: usize = 64 * 1024;
const TAG: usize = 16;
const FILE_KEY_LEN: usize = 16;

pub(crate) fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    SystemRandom::new().fill(&mut b).expect("the system's random source works");
    b
}

fn hkdf(ikm: &[u8], salt: &[u8], info: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    Salt::new(HKDF_SHA256, salt).extract(ikm).expand(&[info], HKDF_SHA256).expect("32 bytes is a valid length").fill(&mut out).expect("32 bytes is a valid length");
    out
}

fn aead_key(key: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).expect("32-byte key"))
}

fn seal(key: &[u8; 32], nonce: [u8; 12], mut data: Vec<u8>) -> Vec<u8> {
    aead_key(key).seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut data).expect("sealing cannot fail for these sizes");
    data
}

fn open(key: &[u8; 32], nonce: [u8; 12], data: &[u8]) -> Option<Vec<u8>> {
    let mut buf = data.to_vec();
    let n = aead_key(key).open_in_place(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf).ok()?.len();
    buf.truncate(n);
    Some(buf)
}

fn header_mac_key(file_key: &[u8]) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, &hkdf(file_key, &[], b"header"))
}

fn wrap(recipient: &Recipient, file_key: &[u8; FILE_KEY_LEN]) -> Stanza {
    let ephemeral = StaticSecret::from(random::<32>());
    let share = PublicKey::from(&ephemeral).to_bytes();
    let shared = ephemeral.diffie_hellman(&PublicKey::from(recipient.public));
    let salt = [share, recipient.public].concat();
    let key = hkdf(shared.as_bytes(), &salt, X25519_INFO);
    Stanza { args: vec!["X25519".into(), header::b64(&share)], body: seal(&key, [0; 12], file_key.to_vec()) }
}

/// The file key from an X25519 stanza if `id` is its recipient; `Ok(None)` if not.
fn unwrap(id: &Identity, s: &Stanza) -> Result<Option<Vec<u8>>, Error> {
    let share: [u8; 32] = match s.args.as_slice() {
        [_, share] => header::unb64(share).and_then(|b| b.try_into().ok()).ok_or(Error::Header("X25519 share is not 32 bytes of base64"))?,
        _ => return Err(Error::Header("X25519 stanza takes one argument")),
    };
    if s.body.len() != FILE_KEY_LEN + TAG {
        return Err(Error::Header("X25519 stanza body is not 32 bytes"));
    }
    let shared = id.secret.diffie_hellman(&PublicKey::from(share));
    if shared.as_bytes().iter().all(|&b| b == 0) {
        return Err(Error::Header("X25519 share is a low-order point"));
    }
    let public = PublicKey::from(&id.secret).to_bytes();
    let key = hkdf(shared.as_bytes(), &[share, public].concat(), X25519_INFO);
    Ok(open(&key, [0; 12], &s.body))
}

fn chunk_nonce(counter: u64, last: bool) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[3..11].copy_from_slice(&counter.to_be_bytes());
    n[11] = u8::from(last);
    n
}

/// Encrypt `plaintext` to `recipients`: the binary age format.
pub fn encrypt(recipients: &[Recipient], plaintext: &[u8]) -> Result<Vec<u8>, Error> {
    if recipients.is_empty() {
        return Err(Error::NoRecipients);
    }
    let file_key = random::<FILE_KEY_LEN>();
    let stanzas: Vec<Stanza> = recipients.iter().map(|r| wrap(r, &file_key)).collect();
    let mut out = header::encode_without_mac(&stanzas);
    let mac = hmac::sign(&header_mac_key(&file_key), &out);
    out.extend_from_slice(format!(" {}\n", header::b64(mac.as_ref())).as_bytes());
    let nonce = random::<16>();
    out.extend_from_slice(&nonce);
    let key = hkdf(&file_key, &nonce, b"payload");
    let chunks: Vec<&[u8]> = if plaintext.is_empty() { vec![&[]] } else { plaintext.chunks(CHUNK).collect() };
    let n = chunks.len();
    for (i, c) in chunks.into_iter().enumerate() {
        out.extend_from_slice(&seal(&key, chunk_nonce(i as u64, i + 1 == n), c.to_vec()));
    }
    Ok(out)
}

/// Encrypt `plaintext` to `recipients`, ASCII-armored (what `age -a` writes).
pub fn encrypt_armored(recipients: &[Recipient], plaintext: &[u8]) -> Result<String, Error> {
    Ok(armor::encode(&encrypt(recipients, plaintext)?))
}

/// Whether `data` is an age file, binary or armored (it may still fail to decrypt).
pub fn is_encrypted(data: &[u8]) -> bool {
    data.starts_with(b"age-encryption.org/") || is_armored(data)
}

/// Decrypt an age file, binary or armored, with any of `identities`.
pub fn decrypt(identities: &[Identity], data: &[u8]) -> Result<Vec<u8>, Error> {
    if is_armored(data) {
        return decrypt_binary(identities, &armor::decode(data)?);
    }
    decrypt_binary(identities, data)
}

fn decrypt_binary(identities: &[Identity], data: &[u8]) -> Result<Vec<u8>, Error> {
    let h = header::parse(data)?;
    if let Some(s) = h.stanzas.iter().find(|s| s.args[0] == "scrypt") {
        return Err(Error::Unsupported(s.args[0].clone()));
    }
    let mut file_key = None;
    'find: for s in h.stanzas.iter().filter(|s| s.args[0] == "X25519") {
        for id in identities {
            if let Some(k) = unwrap(id, s)? {
                file_key = Some(k);
                break 'find;
            }
        }
    }
    let file_key = file_key.ok_or(Error::NoMatch)?;
    hmac::verify(&header_mac_key(&file_key), &data[..h.mac_len], &h.mac).map_err(|_| Error::HeaderMac)?;
    let rest = &data[h.payload_at..];
    if rest.len() < 16 {
        return Err(Error::Truncated);
    }
    let (nonce, mut body) = rest.split_at(16);
    let key = hkdf(&file_key, nonce, b"payload");
    let mut out = Vec::with_capacity(body.len());
    let mut counter = 0u64;
    loop {
        if body.len() > CHUNK + TAG {
            let (c, more) = body.split_at(CHUNK + TAG);
            out.extend(open(&key, chunk_nonce(counter, false), c).ok_or(Error::Payload { chunk: counter })?);
            body = more;
            counter += 1;
            continue;
        }
        if body.len() < TAG {
            return Err(if body.is_empty() { Error::Truncated } else { Error::Payload { chunk: counter } });
        }
        match open(&key, chunk_nonce(counter, true), body) {
            Some(p) if p.is_empty() && counter > 0 => return Err(Error::Payload { chunk: counter }),
            Some(p) => {
                out.extend(p);
                return Ok(out);
            }
            // A full chunk that is not the last: the file was cut at a chunk boundary.
            None if open(&key, chunk_nonce(counter, false), body).is_some() => return Err(Error::Truncated),
            None => return Err(Error::Payload { chunk: counter }),
        }
    }
}
