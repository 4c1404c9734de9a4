//! ASCII armor: strict PEM-like base64 (padded, 64 columns) between the age labels.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use crate::error::Error;

pub(crate) const BEGIN: &str = "-----BEGIN AGE ENCRYPTED FILE-----";
pub(crate) const END: &str = "-----END AGE ENCRYPTED FILE-----";
const COLUMNS: usize = 64;

/// Whether `data` (leading whitespace allowed) is armored.
pub fn is_armored(data: &[u8]) -> bool {
    data.trim_ascii_start().starts_with(BEGIN.as_bytes())
}

pub(crate) fn encode(binary: &[u8]) -> String {
    let b64 = B64.encode(binary);
    let mut out = String::with_capacity(b64.len() + b64.len() / COLUMNS + BEGIN.len() + END.len() + 4);
    out.push_str(BEGIN);
    out.push('\n');
    for c in b64.as_bytes().chunks(COLUMNS) {
        out.push_str(std::str::from_utf8(c).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(END);
    out.push('\n');
    out
}

/// The binary file inside an armor. Whitespace around it is allowed, and `\r\n` line ends.
pub(crate) fn decode(data: &[u8]) -> Result<Vec<u8>, Error> {
    let text = std::str::from_utf8(data.trim_ascii()).map_err(|_| Error::Armor("not ASCII"))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    if lines.next() != Some(BEGIN) {
        return Err(Error::Armor("no BEGIN AGE ENCRYPTED FILE line"));
    }
    let mut b64 = String::new();
    let mut ended = false;
    let mut short = false;
    for l in lines {
        if l == END {
            ended = true;
            break;
        }
        if short || l.is_empty() || l.len() > COLUMNS {
            return Err(Error::Armor("lines must be 64 columns, the last one at most"));
        }
        short = l.len() < COLUMNS;
        b64.push_str(l);
    }
    if !ended {
        return Err(Error::Truncated);
    }
    if text.len() > text.find(END).map_or(0, |i| i + END.len()) {
        return Err(Error::Armor("data after the END line"));
    }
    B64.decode(b64).map_err(|_| Error::Armor("invalid base64"))
}
