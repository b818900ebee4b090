//! The JSON Canonicalization Scheme (JCS, RFC 8785): the byte form that faceproof signs.
//!
//! JCS is chosen because verifiers exist in most languages: objects with members sorted by the
//! UTF-16 code units of their names, no whitespace, strings escaped as ECMAScript's
//! `JSON.stringify` does, and numbers written as ECMAScript's `Number.prototype.toString` writes
//! an IEEE 754 double (shortest digits that read back to the same double). A saved response can be
//! re-read, re-indented or re-ordered and still yields the same bytes.

use serde_json::Value;

use crate::SigningError;

/// The name of this serialization in `signature.canonicalization`.
pub const CANONICALIZATION: &str = "jcs-rfc8785";

/// Integers above this magnitude cannot be held exactly by a double, so JCS cannot write them.
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// The canonical bytes of a JSON value.
pub fn canonicalize(value: &Value) -> Result<Vec<u8>, SigningError> {
    let mut out = String::new();
    write_value(value, &mut out)?;
    Ok(out.into_bytes())
}

fn write_value(value: &Value, out: &mut String) -> Result<(), SigningError> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(number) => out.push_str(&format_number(number)?),
        Value::String(text) => write_string(text, out),
        Value::Array(items) => {
            out.push('[');
            for (position, item) in items.iter().enumerate() {
                if position > 0 {
                    out.push(',');
                }
                write_value(item, out)?;
            }
            out.push(']');
        }
        Value::Object(members) => {
            let mut sorted: Vec<(&String, &Value)> = members.iter().collect();
            sorted.sort_by(|(a, _), (b, _)| a.encode_utf16().cmp(b.encode_utf16()));
            out.push('{');
            for (position, (name, member)) in sorted.into_iter().enumerate() {
                if position > 0 {
                    out.push(',');
                }
                write_string(name, out);
                out.push(':');
                write_value(member, out)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

/// Escapes as ECMAScript's `JSON.stringify`: the two-character forms where they exist, `\u00xx`
/// (lowercase hex) for other control characters, everything else as UTF-8.
fn write_string(text: &str, out: &mut String) {
    out.push('"');
    for character in text.chars() {
        match character {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            control if u32::from(control) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", u32::from(control)));
            }
            other => out.push(other),
        }
    }
    out.push('"');
}

fn format_number(number: &serde_json::Number) -> Result<String, SigningError> {
    if let Some(unsigned) = number.as_u64() {
        if unsigned > MAX_SAFE_INTEGER {
            return Err(SigningError::NumberOutOfRange(number.to_string()));
        }
        return Ok(unsigned.to_string());
    }
    if let Some(signed) = number.as_i64() {
        if signed.unsigned_abs() > MAX_SAFE_INTEGER {
            return Err(SigningError::NumberOutOfRange(number.to_string()));
        }
        return Ok(signed.to_string());
    }
    let double = number
        .as_f64()
        .ok_or_else(|| SigningError::NumberOutOfRange(number.to_string()))?;
    format_double(double)
}

/// ECMAScript `Number.prototype.toString` for a finite double (ECMA-262, Number::toString).
pub fn format_double(value: f64) -> Result<String, SigningError> {
    if !value.is_finite() {
        return Err(SigningError::NonFiniteNumber);
    }
    if value == 0.0 {
        // Both +0 and -0 are written "0".
        return Ok("0".to_owned());
    }
    if value < 0.0 {
        return Ok(format!("-{}", format_double(-value)?));
    }
    // Rust's `{:e}` gives the shortest digits that round-trip, e.g. "1.2345e-5" or "5e0".
    let scientific = format!("{value:e}");
    let (mantissa, exponent) = scientific
        .split_once('e')
        .ok_or(SigningError::NonFiniteNumber)?;
    let exponent: i32 = exponent
        .parse()
        .map_err(|_| SigningError::NonFiniteNumber)?;
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    // value = 0.d1 d2 ... dk x 10^n in ECMA-262's terms.
    let k = i32::try_from(digits.len()).map_err(|_| SigningError::NonFiniteNumber)?;
    let n = exponent + 1;
    let formatted = if k <= n && n <= 21 {
        format!("{digits}{}", "0".repeat(usize_from(n - k)))
    } else if 0 < n && n <= 21 {
        let (integer, fraction) = digits.split_at(usize_from(n));
        format!("{integer}.{fraction}")
    } else if -6 < n && n <= 0 {
        format!("0.{}{digits}", "0".repeat(usize_from(-n)))
    } else {
        let sign = if n - 1 < 0 { '-' } else { '+' };
        let (first, rest) = digits.split_at(1);
        let magnitude = (n - 1).abs();
        if rest.is_empty() {
            format!("{first}e{sign}{magnitude}")
        } else {
            format!("{first}.{rest}e{sign}{magnitude}")
        }
    };
    Ok(formatted)
}

/// Callers only pass non-negative values (checked by the branch conditions above).
fn usize_from(value: i32) -> usize {
    usize::try_from(value).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn number(value: f64) -> String {
        format_double(value).expect("finite")
    }

    #[test]
    fn numbers_follow_ecmascript() {
        // Test vectors from RFC 8785 appendix B and ECMA-262.
        assert_eq!(number(0.0), "0");
        assert_eq!(number(-0.0), "0");
        assert_eq!(number(1.0), "1");
        assert_eq!(number(-1.5), "-1.5");
        assert_eq!(number(4.5), "4.5");
        assert_eq!(number(0.002), "0.002");
        assert_eq!(number(0.000001), "0.000001");
        assert_eq!(number(1e-7), "1e-7");
        assert_eq!(number(1e21), "1e+21");
        assert_eq!(number(1e20), "100000000000000000000");
        assert_eq!(number(123456789012345680000.0), "123456789012345680000");
        assert_eq!(number(333333333.3333333), "333333333.3333333");
        assert_eq!(number(9007199254740992.0), "9007199254740992");
        assert_eq!(number(5e-324), "5e-324");
        assert_eq!(number(1.7976931348623157e308), "1.7976931348623157e+308");
        assert_eq!(number(1.2345e-10), "1.2345e-10");
        assert_eq!(number(0.1 + 0.2), "0.30000000000000004");
        assert!(format_double(f64::NAN).is_err());
        assert!(format_double(f64::INFINITY).is_err());
    }

    #[test]
    fn numbers_read_back_to_the_same_double() {
        for value in [
            0.8123456789,
            1e-5,
            10f64.powf(-5.0 * 0.67),
            0.6,
            123.0,
            7e22,
        ] {
            let text = number(value);
            assert_eq!(text.parse::<f64>().expect("parses"), value, "{text}");
        }
    }

    #[test]
    fn objects_are_sorted_and_compact() {
        let value = json!({"b": [1, 2.5, "x"], "a": {"d": null, "c": true}, "é": "\u{1}\"\n"});
        let bytes = canonicalize(&value).expect("canonical");
        assert_eq!(
            String::from_utf8(bytes).expect("utf8"),
            r#"{"a":{"c":true,"d":null},"b":[1,2.5,"x"],"é":"\u0001\"\n"}"#
        );
    }

    #[test]
    fn member_order_uses_utf16_code_units() {
        // U+10000 is a surrogate pair (0xD800..) and sorts before U+FFFD in UTF-16 although its
        // UTF-8 bytes sort after.
        let value = json!({"\u{fffd}": 1, "\u{10000}": 2});
        let text = String::from_utf8(canonicalize(&value).expect("canonical")).expect("utf8");
        assert_eq!(text, "{\"\u{10000}\":2,\"\u{fffd}\":1}");
    }

    #[test]
    fn integers_beyond_doubles_are_refused() {
        assert!(canonicalize(&json!(9007199254740993u64)).is_err());
        assert_eq!(canonicalize(&json!(-42)).expect("small"), b"-42");
    }

    #[test]
    fn reformatted_json_gives_the_same_bytes() {
        let compact: Value =
            serde_json::from_str(r#"{"s":0.8125,"i":1.0,"n":[1e2]}"#).expect("json");
        let spaced: Value =
            serde_json::from_str("{ \"n\": [ 100 ],\n \"i\": 1, \"s\": 8.125e-1 }").expect("json");
        assert_eq!(
            canonicalize(&compact).expect("a"),
            canonicalize(&spaced).expect("b")
        );
    }
}
