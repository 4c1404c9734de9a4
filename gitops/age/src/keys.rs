//! X25519 identities (`AGE-SECRET-KEY-1...`) and recipients (`age1...`).

use std::fmt;
use std::str::FromStr;

use x25519_dalek::{PublicKey, StaticSecret};

use crate::bech32;
use crate::error::Error;

const SECRET_HRP: &str = "age-secret-key-";
const PUBLIC_HRP: &str = "age";

/// An X25519 identity: the secret half. Its `Debug` shows only the recipient.
#[derive(Clone)]
pub struct Identity {
    pub(crate) secret: StaticSecret,
}

/// An X25519 recipient: the public half, `age1...`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Recipient {
    pub(crate) public: [u8; 32],
}

impl Identity {
    /// A new random identity.
    pub fn generate() -> Identity {
        Identity::from_bytes(crate::random())
    }

    pub(crate) fn from_bytes(b: [u8; 32]) -> Identity {
        Identity { secret: StaticSecret::from(b) }
    }

    pub fn to_recipient(&self) -> Recipient {
        Recipient { public: PublicKey::from(&self.secret).to_bytes() }
    }

    /// The secret key as `age-keygen` writes it (`AGE-SECRET-KEY-1...`). Handle with care.
    pub fn to_secret_string(&self) -> String {
        bech32::encode(SECRET_HRP, &self.secret.to_bytes()).to_ascii_uppercase()
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.to_recipient())
    }
}

impl FromStr for Identity {
    type Err = Error;
    /// One `AGE-SECRET-KEY-1...` string (surrounding whitespace allowed).
    fn from_str(s: &str) -> Result<Identity, Error> {
        let s = s.trim();
        if s.bytes().any(|b| b.is_ascii_lowercase()) {
            return Err(Error::InvalidIdentity("secret keys are upper case"));
        }
        let (hrp, data) = bech32::decode(s).map_err(Error::InvalidIdentity)?;
        if hrp != SECRET_HRP {
            return Err(Error::InvalidIdentity("it does not start with AGE-SECRET-KEY-1"));
        }
        let b: [u8; 32] = data.try_into().map_err(|_| Error::InvalidIdentity("not 32 bytes"))?;
        Ok(Identity::from_bytes(b))
    }
}

/// The identities of a key file as `age-keygen` writes it: one `AGE-SECRET-KEY-1...` per
/// line; blank lines and `#` comments ignored. At least one is required.
pub fn parse_identities(text: &str) -> Result<Vec<Identity>, Error> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.parse() {
            Ok(id) => out.push(id),
            Err(Error::InvalidIdentity(reason)) => return Err(Error::InvalidKeyFileLine { line: i + 1, reason }),
            Err(e) => return Err(e),
        }
    }
    if out.is_empty() {
        return Err(Error::NoIdentity);
    }
    Ok(out)
}

impl fmt::Display for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bech32::encode(PUBLIC_HRP, &self.public))
    }
}

impl fmt::Debug for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Recipient({self})")
    }
}

impl FromStr for Recipient {
    type Err = Error;
    fn from_str(s: &str) -> Result<Recipient, Error> {
        let s = s.trim();
        if s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(Error::InvalidRecipient("recipients are lower case"));
        }
        let (hrp, data) = bech32::decode(s).map_err(Error::InvalidRecipient)?;
        if hrp != PUBLIC_HRP {
            return Err(Error::InvalidRecipient("it does not start with age1"));
        }
        let public: [u8; 32] = data.try_into().map_err(|_| Error::InvalidRecipient("not 32 bytes"))?;
        Ok(Recipient { public })
    }
}
