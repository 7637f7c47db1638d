//! The envelope form `{"type","data","source"?,"event_id"?}` of `POST /events`
//! and of each `publish -` line, and the `TYPE JSON` pair of `publish`.

use super::DoorError;
use crate::event::{Event, json_kind};
use crate::strict_json;
use serde_json::{Map, Value};

fn invalid(m: impl Into<String>) -> DoorError {
    DoorError::Invalid(m.into())
}

/// Reads an envelope: `body` is its JSON text, `id_header` an
/// `Idempotency-Key` given beside it (the same as the body's `event_id`, if
/// both are given). The caller's id becomes the event's id.
pub fn envelope(body: &[u8], id_header: Option<&str>) -> Result<Event, DoorError> {
    let v: Value =
        strict_json::from_slice(body).map_err(|e| DoorError::Malformed(e.to_string()))?;
    let Value::Object(mut m) = v else {
        return Err(invalid(format!(
            "the body must be a JSON object {{\"type\",\"data\",\"source\"?,\"event_id\"?}}, got {}",
            json_kind(&v)
        )));
    };
    let ty = match m.remove("type") {
        Some(Value::String(t)) => t,
        Some(other) => {
            return Err(invalid(format!(
                "`type` must be a string, got {}",
                json_kind(&other)
            )));
        }
        None => return Err(invalid("missing field `type`")),
    };
    let data = m
        .remove("data")
        .ok_or_else(|| invalid("missing field `data`"))?;
    let source = optional_string(&mut m, "source")?;
    let body_id = optional_string(&mut m, "event_id")?;
    let id = match (id_header, body_id) {
        (Some(h), Some(b)) if h != b => {
            return Err(invalid(
                "the Idempotency-Key header and the body's `event_id` differ; send one, or the same",
            ));
        }
        (h, b) => h.map(str::to_string).or(b),
    };
    if let Some(k) = m.keys().next() {
        return Err(invalid(format!(
            "unknown field `{k}` (expected type, data, source, event_id)"
        )));
    }
    let mut event = from_parts(&ty, data, source.as_deref())?;
    if let Some(id) = id {
        event.event_id = id;
    }
    Ok(event)
}

/// Reads one `publish -` line: an envelope in UTF-8.
pub fn line(line: &[u8]) -> Result<Event, DoorError> {
    std::str::from_utf8(line).map_err(|_| DoorError::Malformed("not valid UTF-8".into()))?;
    envelope(line, None).map_err(|e| match e {
        DoorError::Malformed(m) => DoorError::Malformed(format!("invalid JSON: {m}")),
        other => other,
    })
}

/// Builds the event of a type, its data (a JSON object) and a source.
pub fn from_parts(event_type: &str, data: Value, source: Option<&str>) -> Result<Event, DoorError> {
    crate::event::validate_type(event_type).map_err(|m| invalid(format!("invalid type: {m}")))?;
    if !data.is_object() {
        return Err(invalid(format!(
            "`data` must be a JSON object, got {}",
            json_kind(&data)
        )));
    }
    let event = Event::new(event_type, data);
    Ok(match source {
        Some(s) => event.with_source(s),
        None => event,
    })
}

/// The member `key` of `m`, removed: a string, or absent (`null` counts as absent).
fn optional_string(m: &mut Map<String, Value>, key: &str) -> Result<Option<String>, DoorError> {
    match m.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(invalid(format!(
            "`{key}` must be a string, got {}",
            json_kind(&other)
        ))),
    }
}
