//! The header: version line, recipient stanzas, MAC.
//!
//! ```text
//! age-encryption.org/v1
//! -> X25519 <base64 ephemeral share>
//! <base64 body, 64 columns, last line shorter (maybe empty)>
//! --- <base64 HMAC-SHA256 of everything up to and including "---">
//! ```

use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use base64::Engine;

use crate::error::Error;

pub(crate) const VERSION_LINE: &[u8] = b"age-encryption.org/v1\n";
const INTRO: &[u8] = b"age-encryption.org/";
const COLUMNS: usize = 64;

/// One recipient stanza: `-> type args...` and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stanza {
    pub args: Vec<String>,
    pub body: Vec<u8>,
}

#[derive(Debug)]
pub(crate) struct Header {
    pub stanzas: Vec<Stanza>,
    pub mac: Vec<u8>,
    /// The bytes the MAC covers: up to and including `---`.
    pub mac_len: usize,
    /// Where the payload (nonce, then chunks) starts.
    pub payload_at: usize,
}

/// The next `\n`-terminated line at `at`, without its newline.
fn line(data: &[u8], at: usize) -> Result<(&[u8], usize), Error> {
    let rest = &data[at..];
    let end = rest.iter().position(|&b| b == b'\n').ok_or(Error::Truncated)?;
    Ok((&rest[..end], at + end + 1))
}

fn b64_line(l: &[u8]) -> bool {
    l.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

pub(crate) fn parse(data: &[u8]) -> Result<Header, Error> {
    if !data.starts_with(INTRO) {
        return Err(Error::NotAgeFile);
    }
    if !data.starts_with(VERSION_LINE) {
        return Err(if data.len() < VERSION_LINE.len() { Error::Truncated } else { Error::Header("unsupported version") });
    }
    let mut at = VERSION_LINE.len();
    let mut stanzas = Vec::new();
    loop {
        let start = at;
        let (l, next) = line(data, at)?;
        at = next;
        if let Some(rest) = l.strip_prefix(b"-> ") {
            let text = std::str::from_utf8(rest).map_err(|_| Error::Header("stanza line is not ASCII"))?;
            let args: Vec<String> = text.split(' ').map(String::from).collect();
            if args.iter().any(|a| a.is_empty() || !a.bytes().all(|b| (33..=126).contains(&b))) {
                return Err(Error::Header("invalid stanza argument"));
            }
            let mut b64 = Vec::new();
            loop {
                let (l, next) = line(data, at)?;
                at = next;
                if l.len() > COLUMNS || !b64_line(l) {
                    return Err(Error::Header("invalid stanza body line"));
                }
                b64.extend_from_slice(l);
                if l.len() < COLUMNS {
                    break;
                }
            }
            let body = B64.decode(&b64).map_err(|_| Error::Header("stanza body is not canonical base64"))?;
            stanzas.push(Stanza { args, body });
        } else if let Some(rest) = l.strip_prefix(b"--- ") {
            if stanzas.is_empty() {
                return Err(Error::Header("no recipient stanza"));
            }
            let mac = B64.decode(rest).map_err(|_| Error::Header("MAC is not canonical base64"))?;
            if mac.len() != 32 {
                return Err(Error::Header("MAC is not 32 bytes"));
            }
            return Ok(Header { stanzas, mac, mac_len: start + 3, payload_at: at });
        } else {
            return Err(Error::Header("unexpected line"));
        }
    }
}

/// The header text up to and including `---` (what the MAC covers).
pub(crate) fn encode_without_mac(stanzas: &[Stanza]) -> Vec<u8> {
    let mut out = VERSION_LINE.to_vec();
    for s in stanzas {
        out.extend_from_slice(b"-> ");
        out.extend_from_slice(s.args.join(" ").as_bytes());
        out.push(b'\n');
        let body = B64.encode(&s.body);
        let mut chunks = body.as_bytes().chunks(COLUMNS).peekable();
        let mut last_full = body.is_empty();
        while let Some(c) = chunks.next() {
            out.extend_from_slice(c);
            out.push(b'\n');
            last_full = chunks.peek().is_none() && c.len() == COLUMNS;
        }
        // A body ends with a line shorter than 64 columns, so a full last line takes an
        // empty one after it (and an empty body is one empty line).
        if last_full {
            out.push(b'\n');
        }
    }
    out.extend_from_slice(b"---");
    out
}

pub(crate) fn b64(data: &[u8]) -> String {
    B64.encode(data)
}

pub(crate) fn unb64(s: &str) -> Option<Vec<u8>> {
    B64.decode(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stanza_bodies_round_trip_at_every_length_around_a_line() {
        for n in [0, 1, 47, 48, 49, 96] {
            let s = Stanza { args: vec!["t".into(), "a".into()], body: (0..n as u8).collect() };
            let mut h = encode_without_mac(std::slice::from_ref(&s));
            h.extend_from_slice(format!(" {}\n", b64(&[0; 32])).as_bytes());
            let parsed = parse(&h).unwrap_or_else(|e| panic!("{n}: {e}"));
            assert_eq!(parsed.stanzas, vec![s]);
            assert_eq!(parsed.payload_at, h.len());
        }
    }
}
