//! The JSON parser for untrusted input: every HTTP body, CLI argument and stdin
//! line goes through [`from_slice`] instead of `serde_json::from_slice`.
//!
//! It is serde_json's parser with one rule more: **an object may not repeat a
//! key.** serde_json keeps the last of repeated keys, so
//! `{"type":"deployment","type":"risk_alert"}` would silently become a
//! `risk_alert`; two readers of the same bytes (a proxy that keeps the first,
//! pm-events that keeps the last) could disagree about what an event is. Here
//! such input is refused, naming the key and where it is:
//!
//! ```
//! let e = pm_events::strict_json::from_slice(br#"{"data":{"a":1,"a":2}}"#).unwrap_err();
//! assert_eq!(e.to_string(), "data: duplicate key \"a\" at line 1 column 18");
//! assert!(pm_events::strict_json::from_slice(br#"{"a":{"b":[1,2]}}"#).is_ok());
//! ```
//!
//! Nesting is limited by serde_json's recursion limit (128 levels), so a deeply
//! nested body is an error, not a stack overflow.

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// Why bytes are not acceptable JSON: the position (a dotted path inside the
/// document, empty at the top) and serde_json's message with line and column.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", if path.is_empty() { String::new() } else { format!("{path}: ") })]
pub struct JsonError {
    /// Where in the document: `data.items[2]`, or empty for the top level.
    pub path: String,
    /// What is wrong, with line and column.
    pub message: String,
}

/// Parses `bytes` as one JSON document, refusing repeated object keys.
pub fn from_slice(bytes: &[u8]) -> Result<Value, JsonError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = serde_path_to_error::deserialize(&mut de).map(|StrictValue(v)| v);
    let value = parsed.map_err(|e| JsonError {
        path: path_text(e.path()),
        message: e.into_inner().to_string(),
    })?;
    de.end().map_err(|e| JsonError {
        path: String::new(),
        message: e.to_string(),
    })?;
    Ok(value)
}

/// Parses `text` as one JSON document, refusing repeated object keys.
pub fn from_str(text: &str) -> Result<Value, JsonError> {
    from_slice(text.as_bytes())
}

/// A serde_path_to_error path as `a.b[0].c`; empty for the top level.
pub fn path_text(path: &serde_path_to_error::Path) -> String {
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            serde_path_to_error::Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            serde_path_to_error::Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            serde_path_to_error::Segment::Enum { variant } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(variant);
            }
            serde_path_to_error::Segment::Unknown => {}
        }
    }
    out
}

/// A `Value` whose objects were checked for repeated keys while parsing.
struct StrictValue(Value);

impl<'de> de::Deserialize<'de> for StrictValue {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(StrictVisitor)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(StrictValue(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicate key {key:?}")));
            }
            let StrictValue(v) = map.next_value_seed(ValueSeed)?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

struct ValueSeed;

impl<'de> DeserializeSeed<'de> for ValueSeed {
    type Value = StrictValue;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<StrictValue, D::Error> {
        de::Deserialize::deserialize(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_what_serde_json_parses() {
        let text = r#"{"a":[1,-2,3.5,true,null,"x",{"b":{}}],"c":"\u00e9"}"#;
        assert_eq!(
            from_str(text).unwrap(),
            serde_json::from_str::<Value>(text).unwrap()
        );
        assert_eq!(from_str("12").unwrap(), json!(12));
    }

    #[test]
    fn refuses_repeated_keys_at_any_depth_naming_them() {
        let e = from_str(r#"{"type":"deployment","type":"risk_alert"}"#).unwrap_err();
        assert_eq!(e.path, "");
        assert!(e.message.starts_with("duplicate key \"type\""), "{e}");
        let e = from_str(r#"{"data":{"items":[{"k":1,"k":1}]}}"#).unwrap_err();
        assert_eq!(e.path, "data.items[0]");
        assert!(e.to_string().contains("duplicate key \"k\""), "{e}");
    }

    #[test]
    fn refuses_trailing_bytes_and_deep_nesting() {
        assert!(from_str(r#"{"a":1} x"#).is_err());
        assert!(from_str(&"[".repeat(10_000)).is_err());
        assert!(from_str("").is_err());
    }
}
