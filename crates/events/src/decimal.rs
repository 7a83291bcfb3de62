//! The one exact-decimal parser: every JSON spelling of a number → an `i128` at a column's scale,
//! or a reason. Used by bronze (typed decimal columns, schema hints) and silver (the contract's
//! `dbu`). Never goes through a binary float: the digits are read as text and scaled by moving
//! the decimal point.
//!
//! Accepted: JSON numbers (`12.5`, `-0.000000007`, `7e-9`, `1.5E+3`, `12345678.123456789`) and the
//! same inside a JSON string (`"2.25"`, `" 7E-9 "`, `"+1.5"`), whose surrounding whitespace is
//! ignored. Rejected with a reason: anything else (`"abc"`, `true`, `NaN`, `1.2.3`), a value that
//! would need more fractional digits than the scale (`0.0000000001` at scale 9: never rounded),
//! and a value with more than `precision` digits at that scale.

use std::fmt;

/// Why a value is not an exact decimal of the column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecimalError {
    /// Not a number, nor a string holding one.
    NotANumber,
    /// Exact only with more than `scale` fractional digits (would need rounding).
    Inexact { scale: i8 },
    /// More than `precision` digits at the column's scale.
    Overflow { precision: u8, scale: i8 },
}

impl fmt::Display for DecimalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecimalError::NotANumber => f.write_str("not a number"),
            DecimalError::Inexact { scale } => {
                write!(f, "needs more than {scale} fractional digits (never rounded)")
            }
            DecimalError::Overflow { precision, scale } => {
                write!(f, "more than {precision} digits at scale {scale}")
            }
        }
    }
}

/// Parses raw JSON text (a number, or a string holding one) as an exact decimal of
/// `decimal(precision, scale)`: the unscaled value, i.e. `value × 10^scale`.
pub fn parse(raw: &str, precision: u8, scale: i8) -> Result<i128, DecimalError> {
    let raw = raw.trim();
    if let Some(inner) = raw.strip_prefix('"') {
        let inner = inner.strip_suffix('"').ok_or(DecimalError::NotANumber)?;
        if inner.contains('\\') {
            // Escapes in a number string are odd but valid JSON: decode them first.
            let s: String = serde_json::from_str(raw).map_err(|_| DecimalError::NotANumber)?;
            return parse_text(s.trim(), precision, scale, true);
        }
        return parse_text(inner.trim(), precision, scale, true);
    }
    parse_text(raw, precision, scale, false)
}

/// `[sign] digits [. digits] [(e|E) [sign] digits]`; a leading `+`, `.5` and `5.` only inside a
/// string (JSON numbers have none of them).
fn parse_text(s: &str, precision: u8, scale: i8, quoted: bool) -> Result<i128, DecimalError> {
    let b = s.as_bytes();
    let mut i = 0;
    let neg = match b.first() {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') if quoted => {
            i += 1;
            false
        }
        _ => false,
    };
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let int = &s[int_start..i];
    let mut frac = "";
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let f = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        frac = &s[f..i];
        if frac.is_empty() && !quoted {
            return Err(DecimalError::NotANumber);
        }
    }
    if int.is_empty() && (frac.is_empty() || !quoted) {
        return Err(DecimalError::NotANumber);
    }
    // JSON numbers have no leading zeros ("012"); strings may.
    if !quoted && int.len() > 1 && int.starts_with('0') {
        return Err(DecimalError::NotANumber);
    }
    let mut exp: i64 = 0;
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        let eneg = match b.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let e = i;
        while i < b.len() && b[i].is_ascii_digit() {
            // Saturates: an exponent beyond ±10^15 is zero or out of range either way.
            exp = (exp * 10 + (b[i] - b'0') as i64).min(1_000_000_000_000_000);
            i += 1;
        }
        if e == i {
            return Err(DecimalError::NotANumber);
        }
        if eneg {
            exp = -exp;
        }
    }
    if i != b.len() {
        return Err(DecimalError::NotANumber);
    }
    // value = digits × 10^(exp − frac.len()); unscaled = digits × 10^(exp − frac.len() + scale).
    let digits = int.bytes().chain(frac.bytes());
    let all: Vec<u8> = digits.skip_while(|d| *d == b'0').collect();
    let trailing = all.iter().rev().take_while(|d| **d == b'0').count();
    let sig = &all[..all.len() - trailing];
    if sig.is_empty() {
        return Ok(0);
    }
    let shift = exp - frac.len() as i64 + trailing as i64 + scale as i64;
    if shift < 0 {
        return Err(DecimalError::Inexact { scale });
    }
    let overflow = DecimalError::Overflow { precision, scale };
    if sig.len() as i64 + shift > precision as i64 {
        return Err(overflow);
    }
    let mut v: i128 = 0;
    for d in sig {
        v = v.checked_mul(10).and_then(|v| v.checked_add((d - b'0') as i128)).ok_or(overflow.clone())?;
    }
    for _ in 0..shift {
        v = v.checked_mul(10).ok_or(overflow.clone())?;
    }
    Ok(if neg { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_spelling_of_an_exact_value_parses_and_the_rest_has_a_reason() {
        let p = |s| parse(s, 38, 9);
        assert_eq!(p("0.000000007"), Ok(7));
        assert_eq!(p("7e-9"), Ok(7));
        assert_eq!(p("7E-9"), Ok(7));
        assert_eq!(p("70E-10"), Ok(7));
        assert_eq!(p("1.5E+3"), Ok(1_500_000_000_000));
        assert_eq!(p("\"2.25\""), Ok(2_250_000_000));
        assert_eq!(p("\" +2.25 \""), Ok(2_250_000_000));
        assert_eq!(p("\".5\""), Ok(500_000_000));
        assert_eq!(p("-12.5"), Ok(-12_500_000_000));
        assert_eq!(p("12345678.123456789"), Ok(12_345_678_123_456_789));
        assert_eq!(p("0"), Ok(0));
        assert_eq!(p("-0.0e-99999999999999999999"), Ok(0));
        assert_eq!(p("1.1000000000000"), Ok(1_100_000_000));
        assert_eq!(p("0.0000000001"), Err(DecimalError::Inexact { scale: 9 }));
        assert_eq!(p("1e-10"), Err(DecimalError::Inexact { scale: 9 }));
        assert_eq!(p("1e30"), Err(DecimalError::Overflow { precision: 38, scale: 9 }));
        assert_eq!(
            p("99999999999999999999999999999.999999999"),
            Ok(99_999_999_999_999_999_999_999_999_999_999_999_999)
        );
        assert!(p("100000000000000000000000000000").is_err());
        for bad in
            ["\"abc\"", "true", "null", "NaN", "1.2.3", "+1", ".5", "5.", "012", "1e", "--1", "\"\"", "1_000", "0x10"]
        {
            assert_eq!(p(bad), Err(DecimalError::NotANumber), "{bad}");
        }
        assert_eq!(parse("123.45", 4, 2), Err(DecimalError::Overflow { precision: 4, scale: 2 }));
        assert_eq!(parse("12.34", 4, 2), Ok(1234));
        assert_eq!(parse("1200", 4, -2), Ok(12));
        assert_eq!(parse("1250", 4, -2), Err(DecimalError::Inexact { scale: -2 }));
    }

    /// The spellings a producer may use for `v × 10^-s`.
    fn spellings(v: i128, s: u32) -> Vec<String> {
        let neg = v < 0;
        let digits = v.unsigned_abs().to_string();
        let sign = if neg { "-" } else { "" };
        let plain = if s == 0 {
            digits.clone()
        } else {
            let padded = format!("{:0>width$}", digits, width = s as usize + 1);
            let (i, f) = padded.split_at(padded.len() - s as usize);
            format!("{i}.{f}")
        };
        let first = &digits[..1];
        let rest = &digits[1..];
        let sci_exp = digits.len() as i64 - 1 - s as i64;
        let sci = if rest.is_empty() { format!("{first}e{sci_exp}") } else { format!("{first}.{rest}E{sci_exp:+}") };
        vec![
            format!("{sign}{plain}"),
            if s == 0 { format!("{sign}{plain}.000") } else { format!("{sign}{plain}000") },
            format!("{sign}{digits}e-{s}"),
            format!("{sign}{digits}E-{s}"),
            format!("{sign}{sci}"),
            format!("\"{sign}{plain}\""),
            format!("\" {sign}{sci} \""),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Any decimal with up to 38 digits and scale ≤ 9, in any spelling, parses exactly.
        #[test]
        fn any_exact_decimal_in_any_spelling_parses_exactly(
            s in 0u32..=9,
            digits in 1usize..=38,
            seed in any::<u128>(),
            neg in any::<bool>(),
        ) {
            // Unscaled at the column's scale 9, the value has digits + (9 − s) digits: keep ≤ 38.
            let digits = digits.min(38 - (9 - s as usize)).max(1);
            let v = (seed % 10u128.pow(digits as u32)) as i128;
            let v = if neg { -v } else { v };
            let want = v * 10i128.pow(9 - s);
            for sp in spellings(v, s) {
                prop_assert_eq!(parse(&sp, 38, 9), Ok(want), "spelling {}", sp);
            }
        }

        /// Never a panic, and whatever parses is what rust_decimal reads from the same plain text.
        #[test]
        fn arbitrary_text_never_panics(t in "[-+0-9.eE\" ]{0,50}") {
            if let Ok(v) = parse(&t, 38, 9) {
                let s = t.trim().trim_matches('"').trim();
                if let Ok(d) = rust_decimal::Decimal::from_str_exact(s) {
                    let d = d.normalize();
                    let m = d.mantissa() * 10i128.pow(9 - d.scale().min(9));
                    prop_assert_eq!(m, v);
                }
            }
        }
    }
}
