//! The [`Event`]: the unit everything in pm-events moves around.
//!
//! An event is a type name, a JSON object payload and three pieces of envelope
//! (timestamp, id, source). Its JSON form is as specified:
//! `{"type","data","timestamp","event_id","source"}`; the main event log stores
//! exactly that object, one per line.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::{SystemTime, UNIX_EPOCH};

/// The identifier of an event: a UUID in its hyphenated text form (see [`minted`]), or an id a caller supplied.
pub type EventId = String;

/// The `source` every event gets unless its publisher says otherwise.
pub const DEFAULT_SOURCE: &str = "personal-manager";

/// Longest accepted event type name, in bytes.
pub const MAX_TYPE_LEN: usize = 128;

/// One event: what happened (`event_type`), its payload (`data`), when
/// (`timestamp`, Unix seconds), which one (`event_id`) and who said so (`source`).
///
/// ```
/// use pm_events::Event;
/// use serde_json::json;
///
/// let e = Event::new("file_change", json!({"file_path": "/tmp/a.txt"}));
/// assert_eq!(e.event_type, "file_change");
/// assert_eq!(e.source, "personal-manager");
/// assert_eq!(e.to_value()["type"], "file_change");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Event type identifier (`file_change`, `report_ready`, `risk_alert`, or any custom name).
    #[serde(rename = "type")]
    pub event_type: String,
    /// Event payload: a JSON object.
    pub data: Value,
    /// Unix timestamp in seconds (with fraction) at which the event was created.
    pub timestamp: f64,
    /// Unique event identifier (a UUID, see [`minted`]; or an id a caller supplied).
    pub event_id: EventId,
    /// The system that produced the event.
    #[serde(default = "default_source")]
    pub source: String,
    /// Set on an event dispatched again after a crash (it was accepted, but not
    /// recorded as handled, before the process died): its handlers may have run
    /// for it already. Not part of the JSON form.
    #[serde(skip)]
    pub redelivered: bool,
    /// The W3C `traceparent` of the event's trace: the one it arrived with, then
    /// that of its `publish` span (see [`crate::telemetry`]). Not part of the JSON form.
    #[serde(skip)]
    pub trace: Option<String>,
}

fn default_source() -> String {
    DEFAULT_SOURCE.to_string()
}

/// The ids [`Event::new`] makes: UUIDs (version 8, RFC 9562) of a random
/// 60-bit nonce drawn once per process and a 62-bit counter. Unique as a
/// random UUID is, and recognisable: the bus tells an id this process made
/// from any other by its nonce, and remembers the ones it accepted in a
/// bitmap of counters instead of a hash index ([`crate::idempotency`]).
///
/// The counter, offset by a random start and scrambled by a multiplication
/// (invertible modulo 2^62), comes first, so consecutive ids differ in their leading characters, which
/// is what `tail`, the page and the logs show of an id.
pub mod minted {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    static COUNTER: AtomicU64 = AtomicU64::new(0);

    const BITS62: u64 = (1 << 62) - 1;
    /// An odd multiplier (so invertible modulo 2^62), and its inverse.
    const SCRAMBLE: u64 = 0x9E37_79B9_7F4A_7C15 & BITS62;
    const UNSCRAMBLE: u64 = inverse(SCRAMBLE);

    /// The inverse of odd `k` modulo 2^62 (Newton's iteration doubles the
    /// correct bits each step: 6 steps give 64).
    const fn inverse(k: u64) -> u64 {
        let mut x = k;
        let mut i = 0;
        while i < 6 {
            x = x.wrapping_mul(2u64.wrapping_sub(k.wrapping_mul(x)));
            i += 1;
        }
        x & BITS62
    }

    /// The process's nonce (60 bits) and the start its counter is offset by
    /// (62 bits), so no two processes' first ids look alike either.
    fn nonce() -> u64 {
        key().0
    }

    fn key() -> (u64, u64) {
        static KEY: OnceLock<(u64, u64)> = OnceLock::new();
        *KEY.get_or_init(|| {
            let (a, b) = uuid::Uuid::new_v4().as_u64_pair();
            (a >> 4, b & BITS62)
        })
    }

    /// The next id.
    pub fn next() -> uuid::Uuid {
        let c = COUNTER.fetch_add(1, Ordering::Relaxed) & BITS62;
        let (n, start) = key();
        let s = c.wrapping_add(start).wrapping_mul(SCRAMBLE) & BITS62;
        // s: 48 bits, 12 bits (after the version nibble), 2 bits; then the
        // nonce: 4 bits (after the variant bits) and 56 bits.
        let mut b = [0u8; 16];
        b[0..6].copy_from_slice(&(s >> 14).to_be_bytes()[2..8]);
        b[6] = ((s >> 10) & 0x0f) as u8;
        b[7] = ((s >> 2) & 0xff) as u8;
        b[8] = (((s & 0x3) << 4) | (n >> 56)) as u8;
        b[9..16].copy_from_slice(&n.to_be_bytes()[1..8]);
        uuid::Builder::from_custom_bytes(b).into_uuid()
    }

    /// The counter of `id` when this process made it; `None` for any other id.
    pub fn counter_of(id: &str) -> Option<u64> {
        if id.len() != 36 {
            return None;
        }
        let u = uuid::Uuid::try_parse(id).ok()?;
        if u.get_version_num() != 8 {
            return None;
        }
        let b = u.as_bytes();
        let mut lo = [0u8; 8];
        lo[1..8].copy_from_slice(&b[9..16]);
        let n = (u64::from(b[8] & 0x0f) << 56) | u64::from_be_bytes(lo);
        if n != nonce() {
            return None;
        }
        let mut hi = [0u8; 8];
        hi[2..8].copy_from_slice(&b[0..6]);
        let s = (u64::from_be_bytes(hi) << 14)
            | (u64::from(b[6] & 0x0f) << 10)
            | (u64::from(b[7]) << 2)
            | u64::from((b[8] >> 4) & 0x3);
        Some(s.wrapping_mul(UNSCRAMBLE).wrapping_sub(key().1) & BITS62)
    }

    /// How many ids this process has made: an id of this process with a
    /// counter at or above it was not made yet.
    pub fn made() -> u64 {
        COUNTER.load(Ordering::Relaxed)
    }
}

/// The current time as Unix seconds with a fraction.
pub fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Event {
    /// A new event of `event_type` carrying `data`, stamped now, with a fresh
    /// id ([`minted`]: a UUID) and the default source `"personal-manager"`.
    pub fn new(event_type: impl Into<String>, data: Value) -> Self {
        Event {
            event_type: event_type.into(),
            data,
            timestamp: now_unix(),
            event_id: minted::next().to_string(),
            source: DEFAULT_SOURCE.to_string(),
            redelivered: false,
            trace: None,
        }
    }

    /// The same event with another `source`.
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }

    /// The event as a JSON object (the specification's `to_dict`).
    pub fn to_value(&self) -> Value {
        serde_json::json!({
            "type": self.event_type,
            "data": self.data,
            "timestamp": self.timestamp,
            "event_id": self.event_id,
            "source": self.source,
        })
    }

    /// The event as a compact JSON string (the specification's `to_json`).
    pub fn to_json(&self) -> String {
        // Serializing a struct of strings, a float and a `Value` cannot fail,
        // except for a non-finite timestamp, which `validate` rejects; fall back
        // to the Value form, which writes such a float as `null`.
        serde_json::to_string(self).unwrap_or_else(|_| self.to_value().to_string())
    }

    /// Checks what every transport and log relies on: a type name as
    /// [`validate_type`] defines it, an object payload, a finite timestamp,
    /// and a non-empty id and source.
    pub fn validate(&self) -> Result<(), String> {
        validate_type(&self.event_type)?;
        if !self.data.is_object() {
            return Err(format!(
                "event data must be a JSON object, got {}",
                json_kind(&self.data)
            ));
        }
        if !self.timestamp.is_finite() || self.timestamp < 0.0 {
            return Err("timestamp must be a finite, non-negative number of seconds".into());
        }
        validate_id("event_id", &self.event_id)?;
        if self.source.is_empty() || self.source.len() > 256 {
            return Err("source must be 1 to 256 characters".into());
        }
        Ok(())
    }
}

/// The one rule for event type names: 1 to [`MAX_TYPE_LEN`] characters of
/// letters, digits, `_`, `-` and `.`, with no empty part between dots
/// (CloudEvents types such as `com.example.order.created`). A type becomes a
/// NATS subject (each dot-separated part a token) and, upper-cased with `.`
/// and `-` as `_`, the suffix of its `PM_WEBHOOK_URL_<TYPE>` variable.
pub fn validate_type(event_type: &str) -> Result<(), String> {
    if event_type.is_empty() {
        return Err("event type must not be empty".into());
    }
    if event_type.len() > MAX_TYPE_LEN {
        return Err(format!(
            "event type is {} bytes long; the limit is {MAX_TYPE_LEN}",
            event_type.len()
        ));
    }
    if let Some(c) = event_type
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-' || *c == '.'))
    {
        return Err(format!(
            "event type {event_type:?} contains {c:?}; use letters, digits, '_', '-' and '.'"
        ));
    }
    if event_type.starts_with('.') || event_type.ends_with('.') || event_type.contains("..") {
        return Err(format!(
            "event type {event_type:?} has an empty part between dots"
        ));
    }
    Ok(())
}

/// The longest id accepted, in characters.
pub const MAX_ID_LEN: usize = 256;

/// The one rule for ids that reach a file, a header or a subject (an event's
/// `event_id`, an `Idempotency-Key`, an incoming `webhook-id` or CloudEvents
/// `id`): 1 to [`MAX_ID_LEN`] visible ASCII characters, `!` (0x21) to `~`
/// (0x7E) — no space, no control character, no newline that could split a line
/// of a log or a header. `field` names the id in the error.
pub fn validate_id(field: &str, id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(format!(
            "{field}: must be 1 to {MAX_ID_LEN} characters, got {}",
            id.len()
        ));
    }
    if let Some((i, c)) = id.char_indices().find(|(_, c)| !('!'..='~').contains(c)) {
        return Err(format!(
            "{field}: contains {c:?} at byte {i}; an id is visible ASCII characters ('!' to '~')"
        ));
    }
    Ok(())
}

/// A short name for the kind of a JSON value, for error messages.
pub fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_round_trip_uses_the_specified_field_names() {
        let e = Event::new("deployment", json!({"service": "api"}));
        let text = e.to_json();
        let v: Value = serde_json::from_str(&text).unwrap();
        for k in ["type", "data", "timestamp", "event_id", "source"] {
            assert!(v.get(k).is_some(), "missing {k} in {text}");
        }
        let back: Event = serde_json::from_str(&text).unwrap();
        assert_eq!(back, e);
        assert_eq!(e.to_value(), v);
    }

    #[test]
    fn ids_are_unique_uuids_this_process_recognises() {
        let a = Event::new("x", json!({}));
        let b = Event::new("x", json!({}));
        assert_ne!(a.event_id, b.event_id);
        let u = uuid::Uuid::parse_str(&a.event_id).unwrap();
        assert_eq!(u.get_version_num(), 8);
        assert_eq!(u.get_variant(), uuid::Variant::RFC4122);
        let (ca, cb) = (
            minted::counter_of(&a.event_id).unwrap(),
            minted::counter_of(&b.event_id).unwrap(),
        );
        assert!(cb > ca && cb < minted::made());
        // Consecutive ids differ in what `tail` shows of them.
        assert_ne!(a.event_id[..8], b.event_id[..8]);
        // Anyone else's UUID is not one of ours.
        assert_eq!(minted::counter_of(&uuid::Uuid::new_v4().to_string()), None);
        assert_eq!(minted::counter_of("order-1"), None);
    }

    #[test]
    fn validation_names_the_problem() {
        assert!(validate_type("file_change").is_ok());
        assert!(validate_type("").unwrap_err().contains("empty"));
        assert!(validate_type("com.example.created").is_ok());
        assert!(validate_type("a..b").unwrap_err().contains("empty part"));
        assert!(validate_type("a b").unwrap_err().contains("' '"));
        assert!(
            validate_type(&"x".repeat(200))
                .unwrap_err()
                .contains("limit")
        );
        let e = Event::new("x", json!([1]));
        assert!(e.validate().unwrap_err().contains("an array"));
    }

    #[test]
    fn ids_are_visible_ascii() {
        for bad in [
            "",
            "line1\nline2",
            "a\rb",
            "nul\0",
            "with space",
            "é",
            "\u{202e}x",
        ] {
            let mut e = Event::new("x", serde_json::json!({}));
            e.event_id = bad.into();
            let err = e.validate().unwrap_err();
            assert!(err.starts_with("event_id"), "{bad:?}: {err}");
        }
        let mut e = Event::new("x", serde_json::json!({}));
        e.event_id = "a".repeat(257);
        assert!(e.validate().is_err());
        e.event_id = "msg_2Kx:9/a+b=c~!".into();
        assert!(e.validate().is_ok());
    }
}
