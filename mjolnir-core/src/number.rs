//! JavaScript's conversions between numbers and strings, for the template language.
//!
//! Built on serde_json's float formatting and parsing rather than core's `f64` `Display`
//! and `FromStr`: serde_json's are linked into the browser runtime anyway, and core's
//! parser alone, with its table, made the wasm much larger (docs/client.md, "Shipped
//! size", which also measures the `ryu-js` crate against this). (Core's
//! formatting stays linked all the same: serde's error messages print floats with it.)
//! JavaScript's rules also differ from Rust's `Display`: `String(1e-7)` is `"1e-7"` and
//! `String(1e21)` is `"1e+21"`, where Rust writes every digit.

use serde_json::Number;

/// `String(f)`: the shortest digits that read back as `f`, laid out as ECMAScript's
/// Number::toString says.
pub fn to_js_string(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    if f == 0.0 {
        // Negative zero too: String(-0) is "0".
        return "0".into();
    }
    let shortest = Number::from_f64(f.abs()).expect("finite").to_string();
    let (digits, point) = decimal(&shortest);
    let mut out = String::with_capacity(digits.len() + 8);
    if f < 0.0 {
        out.push('-');
    }
    // The value is 0.DIGITS × 10^point; `k` digits.
    let k = digits.len() as i32;
    if k <= point && point <= 21 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (point - k) as usize));
    } else if 0 < point && point <= 21 {
        out.push_str(&digits[..point as usize]);
        out.push('.');
        out.push_str(&digits[point as usize..]);
    } else if -6 < point && point <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-point) as usize));
        out.push_str(&digits);
    } else {
        out.push_str(&digits[..1]);
        if k > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let e = point - 1;
        out.push('e');
        out.push(if e < 0 { '-' } else { '+' });
        out.push_str(&e.unsigned_abs().to_string());
    }
    out
}

/// Splits a positive number as serde_json writes it (`123.45`, `1e21`, `1.5e-7`, `100.0`)
/// into its significant digits, without leading or trailing zeros, and the position of the
/// decimal point relative to them.
fn decimal(text: &str) -> (String, i32) {
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.trim_start_matches('+').parse::<i32>().unwrap_or(0)),
        None => (text, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all: String = int.chars().chain(frac.chars()).collect();
    let leading = all.len() - all.trim_start_matches('0').len();
    let digits = all.trim_matches('0').to_owned();
    let point = int.len() as i32 - leading as i32 + exponent;
    (digits, point)
}

/// `Number(s)` for decimal text: surrounding whitespace, an optional sign, digits with an
/// optional point and exponent, or `Infinity`. Anything else (hex literals included) is NaN.
pub fn from_js_string(s: &str) -> f64 {
    let s = s.trim();
    if s.is_empty() {
        return 0.0;
    }
    let (negative, body) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let magnitude = if body == "Infinity" {
        f64::INFINITY
    } else {
        match json_number(body) {
            // serde_json refuses only magnitudes beyond f64's range, which JavaScript
            // reads as Infinity.
            Some(json) => serde_json::from_str::<f64>(&json).unwrap_or(f64::INFINITY),
            None => f64::NAN,
        }
    };
    if negative { -magnitude } else { magnitude }
}

/// Rewrites an unsigned JavaScript decimal literal (`007`, `.5`, `5.`, `1E3`) in JSON's
/// stricter grammar, or `None` when it is not one.
fn json_number(body: &str) -> Option<String> {
    let (mantissa, exponent) = match body.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (body, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all_digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !all_digits(int) || !all_digits(frac) {
        return None;
    }
    let mut json = String::with_capacity(body.len() + 2);
    let int = int.trim_start_matches('0');
    json.push_str(if int.is_empty() { "0" } else { int });
    if !frac.is_empty() {
        json.push('.');
        json.push_str(frac);
    }
    if let Some(e) = exponent {
        let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
        if digits.is_empty() || !all_digits(digits) {
            return None;
        }
        json.push('e');
        json.push_str(e);
    }
    Some(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_print_as_javascript_prints_them() {
        let cases: &[(f64, &str)] = &[
            (100.0, "100"),
            (0.5, "0.5"),
            (-2.25, "-2.25"),
            (0.1 + 0.2, "0.30000000000000004"),
            (420.41, "420.41"),
            (1e21, "1e+21"),
            (1.5e21, "1.5e+21"),
            (1e20, "100000000000000000000"),
            (123456789012345680000.0, "123456789012345680000"),
            (1e-6, "0.000001"),
            (1.5e-6, "0.0000015"),
            (1e-7, "1e-7"),
            (-1.25e-7, "-1.25e-7"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (-0.0, "0"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
        ];
        for &(f, want) in cases {
            assert_eq!(to_js_string(f), want, "String({f:e})");
        }
    }

    #[test]
    fn strings_read_as_javascript_reads_them() {
        let cases: &[(&str, f64)] = &[
            ("42", 42.0),
            ("  -3.5\n", -3.5),
            ("+7", 7.0),
            ("007", 7.0),
            (".5", 0.5),
            ("5.", 5.0),
            ("1E3", 1000.0),
            ("2.5e-3", 0.0025),
            ("1e400", f64::INFINITY),
            ("-Infinity", f64::NEG_INFINITY),
            ("", 0.0),
            ("0.1", 0.1),
            ("420.40999999999997", 420.40999999999997),
        ];
        for &(s, want) in cases {
            assert_eq!(from_js_string(s), want, "Number({s:?})");
        }
        for s in [
            "abc", "1.2.3", ".", "e5", "1e", "1e+", "--1", "0x10", "inf", "NaN", "1 2",
        ] {
            assert!(from_js_string(s).is_nan(), "Number({s:?}) is NaN");
        }
    }

    proptest::proptest! {
        /// Every finite double survives a trip through its JavaScript string.
        #[test]
        fn printing_then_reading_gives_the_same_number(bits in proptest::prelude::any::<u64>()) {
            let f = f64::from_bits(bits);
            if f.is_finite() {
                proptest::prop_assert_eq!(from_js_string(&to_js_string(f)), if f == 0.0 { 0.0 } else { f });
            }
        }
    }
}
