//! How objects are stored: JSON, and for Secrets, AES-256-GCM sealed JSON when the head has
//! an encryption key, so no plaintext of a Secret reaches the store's files.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use serde_json::Value;

/// Marks a sealed value; the rest is a 12-byte nonce and the ciphertext with its tag.
const SEALED: &[u8] = b"kapp:aes256gcm:v1:";

/// Why a stored value could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("stored object is not JSON: {0}")]
    Json(String),
    #[error("stored secret is encrypted but this apiserver has no encryption key")]
    NoKey,
    #[error("stored secret cannot be decrypted with this apiserver's key")]
    Decrypt,
    #[error("the encryption key must be 32 bytes, got {0}")]
    KeyLength(usize),
}

pub struct Codec {
    key: Option<LessSafeKey>,
}

impl Codec {
    /// `key`: 32 bytes to seal Secrets with (None: Secrets are stored as plain JSON).
    pub fn new(key: Option<&[u8]>) -> Result<Codec, CodecError> {
        let key = match key {
            None => None,
            Some(k) => Some(LessSafeKey::new(UnboundKey::new(&AES_256_GCM, k).map_err(|_| CodecError::KeyLength(k.len()))?)),
        };
        Ok(Codec { key })
    }

    /// The bytes to store for `obj` of `kind`.
    pub fn encode(&self, kind: &str, obj: &Value) -> Vec<u8> {
        let json = serde_json::to_vec(obj).expect("json serialises");
        match (&self.key, kind) {
            (Some(key), "Secret") => {
                let nonce_bytes: [u8; NONCE_LEN] = rand::random();
                let mut sealed = json;
                key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce_bytes), Aad::from(SEALED), &mut sealed)
                    .expect("AES-GCM sealing of an in-memory buffer cannot fail");
                let mut out = Vec::with_capacity(SEALED.len() + NONCE_LEN + sealed.len());
                out.extend_from_slice(SEALED);
                out.extend_from_slice(&nonce_bytes);
                out.extend_from_slice(&sealed);
                out
            }
            _ => json,
        }
    }

    /// The object stored as `bytes`.
    pub fn decode(&self, bytes: &[u8]) -> Result<Value, CodecError> {
        let Some(rest) = bytes.strip_prefix(SEALED) else {
            return serde_json::from_slice(bytes).map_err(|e| CodecError::Json(e.to_string()));
        };
        let key = self.key.as_ref().ok_or(CodecError::NoKey)?;
        if rest.len() < NONCE_LEN {
            return Err(CodecError::Decrypt);
        }
        let (nonce, ct) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CodecError::Decrypt)?;
        let mut buf = ct.to_vec();
        let plain = key.open_in_place(nonce, Aad::from(SEALED), &mut buf).map_err(|_| CodecError::Decrypt)?;
        serde_json::from_slice(plain).map_err(|e| CodecError::Json(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_sealed_and_open_only_with_the_key() {
        let key = [7u8; 32];
        let c = Codec::new(Some(&key)).unwrap();
        let s = json!({"kind": "Secret", "data": {"p": "aHVudGVyMg=="}});
        let sealed = c.encode("Secret", &s);
        assert!(sealed.starts_with(SEALED));
        assert!(!sealed.windows(12).any(|w| w == b"aHVudGVyMg=="));
        assert_eq!(c.decode(&sealed).unwrap(), s);
        assert_ne!(sealed, c.encode("Secret", &s), "a fresh nonce every time");
        let cm = json!({"kind": "ConfigMap"});
        assert_eq!(c.encode("ConfigMap", &cm), serde_json::to_vec(&cm).unwrap());
        assert!(matches!(Codec::new(None).unwrap().decode(&sealed), Err(CodecError::NoKey)));
        assert!(matches!(Codec::new(Some(&[8u8; 32])).unwrap().decode(&sealed), Err(CodecError::Decrypt)));
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(matches!(c.decode(&tampered), Err(CodecError::Decrypt)));
        assert!(matches!(Codec::new(Some(&[0u8; 16])), Err(CodecError::KeyLength(16))));
    }
}
