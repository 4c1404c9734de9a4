//! Bech32 (BIP 173, the original checksum constant 1) as age uses it: no length limit,
//! one case throughout.

const CHARSET: &[u8; 32] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";

fn polymod(values: impl Iterator<Item = u8>) -> u32 {
    const GEN: [u32; 5] = [0x3b6a57b2, 0x26508e6d, 0x1ea119fa, 0x3d4233dd, 0x2a1462b3];
    let mut chk: u32 = 1;
    for v in values {
        let top = chk >> 25;
        chk = ((chk & 0x1ff_ffff) << 5) ^ u32::from(v);
        for (i, g) in GEN.iter().enumerate() {
            if (top >> i) & 1 == 1 {
                chk ^= g;
            }
        }
    }
    chk
}

fn hrp_expand(hrp: &[u8]) -> impl Iterator<Item = u8> + '_ {
    hrp.iter().map(|c| c >> 5).chain(std::iter::once(0)).chain(hrp.iter().map(|c| c & 31))
}

/// Regroup bits: 8 → 5 (with padding) or 5 → 8 (padding must be zero and short).
fn convert(data: &[u8], from: u32, to: u32, pad: bool) -> Option<Vec<u8>> {
    let (mut acc, mut bits, mut out) = (0u32, 0u32, Vec::new());
    let max = (1u32 << to) - 1;
    for &v in data {
        acc = (acc << from) | u32::from(v);
        bits += from;
        while bits >= to {
            bits -= to;
            out.push(((acc >> bits) & max) as u8);
        }
    }
    if pad {
        if bits > 0 {
            out.push(((acc << (to - bits)) & max) as u8);
        }
    } else if bits >= from || (acc << (to - bits)) & max != 0 {
        return None;
    }
    Some(out)
}

/// Encode `data` under `hrp`, in lower case (the caller upper-cases secret keys).
pub(crate) fn encode(hrp: &str, data: &[u8]) -> String {
    let hrp = hrp.to_ascii_lowercase();
    let five = convert(data, 8, 5, true).expect("padding allowed");
    let chk = polymod(hrp_expand(hrp.as_bytes()).chain(five.iter().copied()).chain([0u8; 6])) ^ 1;
    let mut s = hrp;
    s.push('1');
    s.extend(five.iter().map(|&v| CHARSET[usize::from(v)] as char));
    s.extend((0..6).map(|i| CHARSET[((chk >> (5 * (5 - i))) & 31) as usize] as char));
    s
}

/// Decode a Bech32 string: `(hrp in lower case, data)`, or why not.
pub(crate) fn decode(s: &str) -> Result<(String, Vec<u8>), &'static str> {
    if !s.is_ascii() {
        return Err("not ASCII");
    }
    if s.bytes().any(|b| b.is_ascii_lowercase()) && s.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("mixed case");
    }
    let s = s.to_ascii_lowercase();
    let pos = s.rfind('1').ok_or("no separator")?;
    if pos == 0 || pos + 7 > s.len() {
        return Err("too short");
    }
    let (hrp, rest) = (&s[..pos], &s[pos + 1..]);
    if hrp.bytes().any(|b| !(33..=126).contains(&b)) {
        return Err("invalid prefix");
    }
    let values = rest.bytes().map(|c| CHARSET.iter().position(|&x| x == c).map(|p| p as u8)).collect::<Option<Vec<u8>>>().ok_or("invalid character")?;
    if polymod(hrp_expand(hrp.as_bytes()).chain(values.iter().copied())) != 1 {
        return Err("invalid checksum");
    }
    let data = convert(&values[..values.len() - 6], 5, 8, false).ok_or("invalid padding")?;
    Ok((hrp.to_string(), data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bip173_vectors_and_round_trip() {
        // Valid checksums from BIP 173.
        for s in ["A12UEL5L", "a12uel5l", "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw", "split1checkupstagehandshakeupstreamerranterredcaperred2y9e3w"] {
            decode(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        }
        assert_eq!(decode("A1G7SGD8"), Err("invalid checksum"));
        assert_eq!(decode("A12UeL5L"), Err("mixed case"));
        assert_eq!(decode("pzry9x0s0muk"), Err("no separator"));
        let data: Vec<u8> = (0..32).collect();
        let s = encode("age", &data);
        assert_eq!(decode(&s).unwrap(), ("age".to_string(), data));
    }
}
