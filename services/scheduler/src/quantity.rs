//! Kubernetes resource quantities ("100m", "0.5", "128Mi", "1G", "1e3") read exactly.
//!
//! A quantity is a decimal number followed by an optional suffix: a binary SI suffix (`Ki`
//! … `Ei`, powers of 1024), a decimal SI suffix (`n u m k M G T P E`) or a decimal exponent
//! (`e3`, `E-2`). Values are computed with integers and rounded up, as `Quantity.Value()`
//! and `MilliValue()` do in Kubernetes, so "0.5m" of cpu is 1 millicore.

/// A quantity that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("{0:?} is not a quantity (a number with an optional suffix, like 100m, 0.5, 128Mi, 1G or 1e3)")]
    Malformed(String),
    #[error("{0:?} is too large")]
    TooLarge(String),
}

/// The quantity in thousandths of its unit, rounded up (cpu: millicores).
pub fn milli_value(quantity: &str) -> Result<i64, QuantityError> {
    Exact::parse(quantity)?.scaled(-3).ok_or_else(|| QuantityError::TooLarge(quantity.to_owned()))
}

/// The quantity in its unit, rounded up (memory: bytes).
pub fn value(quantity: &str) -> Result<i64, QuantityError> {
    Exact::parse(quantity)?.scaled(0).ok_or_else(|| QuantityError::TooLarge(quantity.to_owned()))
}

/// `±mantissa × 10^exp10 × 1024^pow1024`, exactly as written.
struct Exact {
    negative: bool,
    mantissa: u128,
    exp10: i32,
    pow1024: u32,
}

impl Exact {
    fn parse(text: &str) -> Result<Self, QuantityError> {
        let malformed = || QuantityError::Malformed(text.to_owned());
        let too_large = || QuantityError::TooLarge(text.to_owned());
        let (negative, rest) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        let number_len = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
        let (number, suffix) = rest.split_at(number_len);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
            return Err(malformed());
        }
        let mut mantissa: u128 = 0;
        for digit in whole.bytes().chain(fraction.bytes()) {
            mantissa = mantissa
                .checked_mul(10)
                .and_then(|m| m.checked_add(u128::from(digit - b'0')))
                .ok_or_else(too_large)?;
        }
        let mut exp10 = -i32::try_from(fraction.len()).map_err(|_| too_large())?;
        let mut pow1024 = 0;
        match suffix {
            "" => {}
            "n" => exp10 -= 9,
            "u" => exp10 -= 6,
            "m" => exp10 -= 3,
            "k" => exp10 += 3,
            "M" => exp10 += 6,
            "G" => exp10 += 9,
            "T" => exp10 += 12,
            "P" => exp10 += 15,
            "E" => exp10 += 18,
            "Ki" => pow1024 = 1,
            "Mi" => pow1024 = 2,
            "Gi" => pow1024 = 3,
            "Ti" => pow1024 = 4,
            "Pi" => pow1024 = 5,
            "Ei" => pow1024 = 6,
            _ => {
                let exponent = suffix.strip_prefix(['e', 'E']).ok_or_else(malformed)?;
                let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(malformed());
                }
                let exponent: i32 = exponent.parse().map_err(|_| too_large())?;
                exp10 = exp10.checked_add(exponent).ok_or_else(too_large)?;
            }
        }
        Ok(Exact { negative, mantissa, exp10, pow1024 })
    }

    /// The value in units of `10^scale`, rounded up in magnitude; `None` if it overflows i64.
    fn scaled(&self, scale: i32) -> Option<i64> {
        let mut magnitude = self.mantissa.checked_mul(1u128 << (10 * self.pow1024))?;
        let exp = self.exp10.checked_sub(scale)?;
        if magnitude != 0 {
            if exp >= 0 {
                magnitude = magnitude.checked_mul(10u128.checked_pow(exp.unsigned_abs())?)?;
            } else {
                magnitude = match 10u128.checked_pow(exp.unsigned_abs()) {
                    Some(divisor) => magnitude.div_ceil(divisor),
                    None => 1, // smaller than one unit: rounds up to one
                };
            }
        }
        let magnitude = i64::try_from(magnitude).ok()?;
        Some(if self.negative { -magnitude } else { magnitude })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_in_millicores() {
        for (text, want) in [
            ("100m", 100),
            ("0.5", 500),
            ("2", 2000),
            (".25", 250),
            ("1.", 1000),
            ("0.0001", 1), // rounds up
            ("0.5m", 1),
            ("1e3", 1_000_000),
            ("1E-3", 1),
            ("1k", 1_000_000),
            ("+3", 3000),
            ("-1", -1000),
            ("0", 0),
            ("0m", 0),
            ("250000000n", 250),
            ("250000n", 1), // a quarter millicore rounds up
            ("1500u", 2),
        ] {
            assert_eq!(milli_value(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn memory_in_bytes() {
        for (text, want) in [
            ("128Mi", 128 << 20),
            ("1Gi", 1 << 30),
            ("32Gi", 32 << 30),
            ("1G", 1_000_000_000),
            ("1e3", 1000),
            ("1.5Gi", 3 << 29),
            ("1Ki", 1024),
            ("1Ei", 1 << 60),
            ("129e6", 129_000_000),
            ("1.5", 2), // rounds up
            ("100m", 1),
            ("8E", 8_000_000_000_000_000_000),
        ] {
            assert_eq!(value(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn malformed() {
        for text in ["", "m", "Mi", "1 Mi", "1mi", "1KI", "1.2.3", "abc", "1e", "1e+", "1x", "--1", "1Gi0", "1e3.5"] {
            assert_eq!(value(text), Err(QuantityError::Malformed(text.to_owned())), "{text}");
        }
    }

    #[test]
    fn too_large() {
        for text in ["16Ei", "1e19", "99999999999999999999999999999999999999999", "1e99999999999"] {
            assert_eq!(value(text), Err(QuantityError::TooLarge(text.to_owned())), "{text}");
        }
        assert_eq!(milli_value("10E"), Err(QuantityError::TooLarge("10E".to_owned())));
    }
}
