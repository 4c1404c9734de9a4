//! Just enough DER and PEM handling to rewrite the names of a certificate produced by rcgen
//! (whose `DistinguishedName` cannot hold several entries of one type, e.g. several O's).

use crate::TlsError;

/// DER tag of a SEQUENCE.
pub(crate) const SEQUENCE: u8 = 0x30;
/// DER tag of a SET.
pub(crate) const SET: u8 = 0x31;
/// DER tag of a BIT STRING.
pub(crate) const BIT_STRING: u8 = 0x03;
/// DER tag of a UTF8String.
pub(crate) const UTF8_STRING: u8 = 0x0c;
/// DER encoding (tag, length, value) of the OID 2.5.4.3 (commonName).
pub(crate) const OID_COMMON_NAME: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x03];
/// DER encoding (tag, length, value) of the OID 2.5.4.10 (organizationName).
pub(crate) const OID_ORGANIZATION: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x0a];

/// One parsed TLV element.
pub(crate) struct Tlv<'a> {
    /// The (single-byte) tag.
    pub tag: u8,
    /// The value bytes.
    pub content: &'a [u8],
    /// The whole encoding: tag, length and value.
    pub whole: &'a [u8],
}

/// Reads one TLV element (single-byte tag, definite length) from the front of `input`, returning
/// it and the remaining input.
pub(crate) fn read(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), TlsError> {
    let (&tag, rest) = input.split_first().ok_or(TlsError::Der("truncated tag"))?;
    if tag & 0x1f == 0x1f {
        return Err(TlsError::Der("multi-byte tags are not supported"));
    }
    let (&first, mut rest) = rest
        .split_first()
        .ok_or(TlsError::Der("truncated length"))?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return Err(TlsError::Der("unsupported length encoding"));
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return Err(TlsError::Der("truncated value"));
    }
    let header = input.len() - rest.len();
    let tlv = Tlv {
        tag,
        content: &rest[..len],
        whole: &input[..header + len],
    };
    Ok((tlv, &rest[len..]))
}

/// Reads a sequence of TLV elements filling all of `input`.
pub(crate) fn read_all(mut input: &[u8]) -> Result<Vec<Tlv<'_>>, TlsError> {
    let mut out = Vec::new();
    while !input.is_empty() {
        let (tlv, rest) = read(input)?;
        out.push(tlv);
        input = rest;
    }
    Ok(out)
}

/// Encodes one TLV element.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// Encodes an X.501 Name: one RDN per organization (in order), then the common name, all as
/// UTF8String (the order Go's `pkix.Name` uses).
pub(crate) fn name(common_name: &str, organizations: &[&str]) -> Vec<u8> {
    let attribute = |oid: &[u8], value: &str| {
        let atv = tlv(
            SEQUENCE,
            &[oid, &tlv(UTF8_STRING, value.as_bytes())].concat(),
        );
        tlv(SET, &atv)
    };
    let mut rdns = Vec::new();
    for org in organizations {
        rdns.extend(attribute(OID_ORGANIZATION, org));
    }
    rdns.extend(attribute(OID_COMMON_NAME, common_name));
    tlv(SEQUENCE, &rdns)
}

/// PEM-encodes `der` with the given label (64-column base64).
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = Vec::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let symbols = [
            ALPHABET[(n >> 18) as usize & 63],
            ALPHABET[(n >> 12) as usize & 63],
            if chunk.len() > 1 {
                ALPHABET[(n >> 6) as usize & 63]
            } else {
                b'='
            },
            if chunk.len() > 2 {
                ALPHABET[n as usize & 63]
            } else {
                b'='
            },
        ];
        b64.extend_from_slice(&symbols);
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.chunks(64) {
        // The alphabet is ASCII.
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tlv_roundtrip_short_and_long_lengths() {
        for len in [0usize, 1, 127, 128, 255, 256, 70_000] {
            let content = vec![0xab; len];
            let encoded = tlv(SEQUENCE, &content);
            let (parsed, rest) = read(&encoded).unwrap();
            assert!(rest.is_empty());
            assert_eq!(parsed.tag, SEQUENCE);
            assert_eq!(parsed.content, &content[..]);
            assert_eq!(parsed.whole, &encoded[..]);
        }
    }

    #[test]
    fn pem_encode_matches_rustls_pemfile() {
        for len in [1usize, 2, 3, 47, 48, 49, 100] {
            let der: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let pem = pem_encode("CERTIFICATE", &der);
            let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(certs.len(), 1, "len {len}");
            assert_eq!(certs[0].as_ref(), &der[..], "len {len}");
        }
    }
}
