//! Resource quantities as Kubernetes writes them ("500m", "2", "1Gi", "1.5G"),
//! parsed by one helper that every component uses.

use std::fmt;

/// A parsed quantity, held in thousandths of the unit (milli-units), so that
/// CPU ("250m") and memory ("1Gi") share one exact representation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Quantity {
    milli: i128,
}

/// Why a quantity string is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid quantity {input:?}: {reason}")]
pub struct QuantityError {
    input: String,
    reason: &'static str,
}

impl Quantity {
    /// A quantity of `milli` thousandths.
    pub const fn from_milli(milli: i128) -> Self {
        Self { milli }
    }

    /// A whole number of units.
    pub const fn from_units(units: i64) -> Self {
        Self {
            milli: units as i128 * 1000,
        }
    }

    /// Parses Kubernetes' quantity syntax: a decimal number and an optional
    /// suffix (m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei) or exponent (1e3).
    pub fn parse(input: &str) -> Result<Self, QuantityError> {
        let err = |reason| QuantityError {
            input: input.to_owned(),
            reason,
        };
        let s = input.trim();
        if s.is_empty() {
            return Err(err("empty"));
        }
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
            .unwrap_or(s.len());
        let (number, suffix) = s.split_at(split);
        let (num, den) = parse_decimal(number).ok_or_else(|| err("not a decimal number"))?;
        // value = num / den * multiplier, in milli-units.
        let (mul_num, mul_den): (i128, i128) = match suffix {
            "" => (1000, 1),
            "m" => (1, 1),
            "k" => (1000 * 1000, 1),
            "M" => (1000 * 1_000_000, 1),
            "G" => (1000 * 1_000_000_000, 1),
            "T" => (1000 * 1_000_000_000_000, 1),
            "P" => (1000 * 1_000_000_000_000_000, 1),
            "E" => (1000 * 1_000_000_000_000_000_000, 1),
            "Ki" => (1000 << 10, 1),
            "Mi" => (1000 << 20, 1),
            "Gi" => (1000 << 30, 1),
            "Ti" => (1000 << 40, 1),
            "Pi" => (1000 << 50, 1),
            "Ei" => (1000 << 60, 1),
            other => {
                let exp = other
                    .strip_prefix('e')
                    .or_else(|| other.strip_prefix('E'))
                    .ok_or_else(|| err("unknown suffix"))?;
                let exp: i32 = exp.parse().map_err(|_| err("bad exponent"))?;
                if !(-3..=18).contains(&exp) {
                    return Err(err("exponent out of range"));
                }
                if exp >= 0 {
                    (1000 * 10i128.pow(exp as u32), 1)
                } else {
                    (1000, 10i128.pow((-exp) as u32))
                }
            }
        };
        let total = num.checked_mul(mul_num).ok_or_else(|| err("too large"))?;
        let den = den.checked_mul(mul_den).ok_or_else(|| err("too precise"))?;
        // Round up to whole milli-units, as Kubernetes does.
        let milli = if total >= 0 {
            (total + den - 1) / den
        } else {
            total / den
        };
        // Beyond this no canonical form fits the 20 integer digits the
        // parser reads back (and no resource comes near it).
        if milli.unsigned_abs() >= MAX_UNITS * 1000 {
            return Err(err("too large: at most 10^20 (100E)"));
        }
        Ok(Self { milli })
    }

    /// Value in milli-units (CPU millicores).
    pub const fn milli(&self) -> i128 {
        self.milli
    }

    /// Value in whole units, rounded up (bytes, pods).
    pub const fn value(&self) -> i128 {
        if self.milli >= 0 {
            (self.milli + 999) / 1000
        } else {
            self.milli / 1000
        }
    }

    /// Whether the quantity is zero.
    pub const fn is_zero(&self) -> bool {
        self.milli == 0
    }
}

impl std::ops::Add for Quantity {
    type Output = Quantity;
    fn add(self, rhs: Self) -> Self {
        Self {
            milli: self.milli + rhs.milli,
        }
    }
}

impl std::ops::Sub for Quantity {
    type Output = Quantity;
    fn sub(self, rhs: Self) -> Self {
        Self {
            milli: self.milli - rhs.milli,
        }
    }
}

impl std::ops::AddAssign for Quantity {
    fn add_assign(&mut self, rhs: Self) {
        self.milli += rhs.milli;
    }
}

impl std::ops::SubAssign for Quantity {
    fn sub_assign(&mut self, rhs: Self) {
        self.milli -= rhs.milli;
    }
}

impl std::iter::Sum for Quantity {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Quantity::default(), |a, b| a + b)
    }
}

/// Largest magnitude a quantity may have, in units (exclusive).
const MAX_UNITS: u128 = 100_000_000_000_000_000_000;

impl fmt::Display for Quantity {
    /// Canonical form: whole units when exact, binary suffixes for exact
    /// multiples of 1024, milli-units otherwise (a decimal fraction when
    /// milli-units would need more than the 20 digits the parser reads).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.milli % 1000 != 0 {
            if self.milli.unsigned_abs() < MAX_UNITS {
                return write!(f, "{}m", self.milli);
            }
            let sign = if self.milli < 0 { "-" } else { "" };
            let abs = self.milli.unsigned_abs();
            let frac = format!("{:03}", abs % 1000);
            return write!(f, "{sign}{}.{}", abs / 1000, frac.trim_end_matches('0'));
        }
        let units = self.milli / 1000;
        if units != 0 {
            for (shift, suffix) in [
                (60, "Ei"),
                (50, "Pi"),
                (40, "Ti"),
                (30, "Gi"),
                (20, "Mi"),
                (10, "Ki"),
            ] {
                let m = 1i128 << shift;
                if units % m == 0 && units.abs() >= m {
                    return write!(f, "{}{}", units / m, suffix);
                }
            }
        }
        write!(f, "{units}")
    }
}

impl std::str::FromStr for Quantity {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Parses "12.5" into (125, 10); sign allowed.
fn parse_decimal(s: &str) -> Option<(i128, i128)> {
    let (neg, s) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if s.is_empty() || s == "." {
        return None;
    }
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if !int.chars().all(|c| c.is_ascii_digit()) || !frac.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    if frac.len() > 9 || int.len() > 20 {
        return None;
    }
    let digits = format!("{int}{frac}");
    let mut num: i128 = digits.parse().ok()?;
    if neg {
        num = -num;
    }
    Some((num, 10i128.pow(frac.len() as u32)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_quantities() {
        let cases = [
            ("500m", 500),
            ("1", 1000),
            ("0.5", 500),
            ("2.25", 2250),
            ("1k", 1_000_000),
            ("1Ki", 1_024_000),
            ("1Mi", 1000 << 20),
            ("1Gi", 1000i128 << 30),
            ("1.5Gi", 1500i128 << 30),
            ("1G", 1_000_000_000_000),
            ("1e3", 1_000_000),
            ("0", 0),
            ("100M", 100_000_000_000),
        ];
        for (s, milli) in cases {
            assert_eq!(Quantity::parse(s).unwrap().milli(), milli, "{s}");
        }
    }

    #[test]
    fn rejects_malformed_quantities() {
        for s in ["", "abc", "1Zi", "1..2", "m", "1e99", "--1"] {
            assert!(Quantity::parse(s).is_err(), "{s} should fail");
        }
    }

    #[test]
    fn rounds_sub_milli_up_and_displays_canonically() {
        assert_eq!(Quantity::parse("0.0001").unwrap().milli(), 1);
        assert_eq!(Quantity::parse("1Gi").unwrap().to_string(), "1Gi");
        assert_eq!(Quantity::parse("250m").unwrap().to_string(), "250m");
        assert_eq!(Quantity::parse("3").unwrap().to_string(), "3");
        assert_eq!(Quantity::parse("1.5").unwrap().value(), 2);
    }
}
