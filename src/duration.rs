//! Durations as flags write them ("500ms", "30s", "5m", "1h"; a bare number
//! is seconds), parsed by one helper every command shares.

use std::time::Duration;

/// Parses a non-negative duration; the error says what is accepted.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let not_a_duration = || format!("{s:?} is not a duration like 500ms, 30s or 5m");
    let unit_nanos: u128 = match unit {
        "ms" => 1_000_000,
        "s" | "" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use ms, s, m or h")),
    };
    // Exact decimal arithmetic: "72000000217ms" is that many milliseconds.
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() || frac.contains('.') {
        return Err(not_a_duration());
    }
    let too_long = || format!("{s:?} is too long a duration");
    let whole: u128 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| too_long())?
    };
    // Digits past the nanosecond are dropped.
    let frac = frac.get(..frac.len().min(12)).unwrap_or_default();
    let frac_value: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| not_a_duration())?
    };
    let scale = 10u128.pow(frac.len() as u32);
    let nanos = whole
        .checked_mul(unit_nanos)
        .and_then(|n| n.checked_add(frac_value * unit_nanos / scale))
        .ok_or_else(too_long)?;
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| too_long())?;
    Ok(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_refuse_the_rest() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        for bad in ["-5s", "5d", "", "1e400h", "99999999999999999999999h", "."] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
