//! I-JSON parsing (RFC 7493), which JCS (RFC 8785) requires of its input: an object with the same
//! member name twice is refused. serde_json's `Value` keeps the last duplicate silently, so a saved
//! response with a fake `"score": 0.01` placed before the real one would verify while a naive reader
//! shows the fake: parsing here goes through a visitor that fails on the second occurrence.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Parses JSON text, refusing a duplicated member name in any object, however deeply nested.
/// The error (a `serde_json::Error`, with line and column) names the duplicated key.
pub fn parse_without_duplicate_keys(text: &str) -> Result<Value, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let value = StrictValue.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

/// A `Value` seed whose objects refuse duplicate member names.
struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Value, E> {
        Number::from_f64(value)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number is not finite"))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut sequence: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = sequence.next_element_seed(StrictValue)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut members: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(name) = members.next_key::<String>()? {
            if object.contains_key(&name) {
                return Err(de::Error::custom(format_args!(
                    "duplicate key `{name}`: the same member name twice in one object is not \
                     I-JSON (RFC 8785 requires it), so which value was signed is ambiguous"
                )));
            }
            let value = members.next_value_seed(StrictValue)?;
            object.insert(name, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_as_serde_json_does() {
        let text = r#"{"a": [1, -2, 0.8123456789, 1e-7, "x\u00e9", null, true], "b": {"c": {}}}"#;
        assert_eq!(
            parse_without_duplicate_keys(text).unwrap(),
            serde_json::from_str::<Value>(text).unwrap()
        );
    }

    #[test]
    fn a_duplicate_key_is_refused_at_any_depth_naming_it() {
        for text in [
            r#"{"score": 0.01, "score": 0.9}"#,
            r#"{"data": {"comparison": {"result": {"score": 0.01, "passed": true, "score": 0.9}}}}"#,
            r#"[{"ok": 1}, {"score": 1, "score": 1}]"#,
        ] {
            let error = parse_without_duplicate_keys(text).unwrap_err().to_string();
            assert!(error.contains("duplicate key `score`"), "{error}");
        }
        // The same name in sibling objects is fine.
        parse_without_duplicate_keys(r#"{"a": {"score": 1}, "b": {"score": 2}}"#).unwrap();
    }

    #[test]
    fn trailing_garbage_is_refused() {
        assert!(parse_without_duplicate_keys(r#"{"a": 1} {"a": 2}"#).is_err());
    }
}
