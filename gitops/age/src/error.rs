//! What can go wrong. No message ever holds key material or plaintext.

/// Why a key, a recipient or a file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("not an age secret key (AGE-SECRET-KEY-1...): {0}")]
    InvalidIdentity(&'static str),
    #[error("line {line} of the key file is not an age secret key: {reason}")]
    InvalidKeyFileLine { line: usize, reason: &'static str },
    #[error("the key file holds no AGE-SECRET-KEY-1 line")]
    NoIdentity,
    #[error("not an age recipient (age1...): {0}")]
    InvalidRecipient(&'static str),
    #[error("not an age file: it does not start with age-encryption.org/v1 or an armor line")]
    NotAgeFile,
    #[error("malformed ascii armor: {0}")]
    Armor(&'static str),
    #[error("malformed header: {0}")]
    Header(&'static str),
    #[error("recipient type {0:?} is not supported (only X25519 keys are)")]
    Unsupported(String),
    #[error("no identity matches any recipient of the file (encrypted to another key)")]
    NoMatch,
    #[error("header MAC does not match: the header was altered")]
    HeaderMac,
    #[error("payload chunk {chunk} failed authentication: the file was altered")]
    Payload { chunk: u64 },
    #[error("the file is truncated")]
    Truncated,
    #[error("no recipients to encrypt to")]
    NoRecipients,
}
