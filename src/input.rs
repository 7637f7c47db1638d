//! Events typed in by a person or piped in by a program: the CLI's `TYPE JSON`
//! pair and the JSON Lines of `publish -`, one `{"type","data","source"?}` object
//! per line. Both refuse what the server's door refuses: a repeated key, a
//! payload of a built-in type that its handler could only refuse (naming the
//! field), an invalid type name.

use crate::event::Event;
use crate::strict_json;
use serde_json::Value;

/// Builds and checks one event.
pub fn build_event(event_type: &str, data: Value, source: Option<&str>) -> Result<Event, String> {
    crate::event::validate_type(event_type).map_err(|m| format!("invalid TYPE: {m}"))?;
    if !data.is_object() {
        return Err(format!(
            "the event data must be a JSON object, got {}",
            crate::event::json_kind(&data)
        ));
    }
    crate::handlers::validate_builtin(event_type, &data).map_err(|e| e.to_string())?;
    let mut event = Event::new(event_type, data);
    if let Some(s) = source {
        event = event.with_source(s);
    }
    event.validate()?;
    Ok(event)
}

/// Parses one stdin line `{"type","data","source"?}` (repeated keys refused).
pub fn parse_line(line: &[u8]) -> Result<Event, String> {
    let line = std::str::from_utf8(line).map_err(|_| "not valid UTF-8".to_string())?;
    let v: Value = strict_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(mut m) = v else {
        return Err("expected a JSON object {\"type\",\"data\",\"source\"?}".into());
    };
    let ty = match m.remove("type") {
        Some(Value::String(t)) => t,
        Some(_) => return Err("`type` must be a string".into()),
        None => return Err("missing field `type`".into()),
    };
    let data = m.remove("data").ok_or("missing field `data`")?;
    let source = match m.remove("source") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err("`source` must be a string".into()),
    };
    if let Some(k) = m.keys().next() {
        return Err(format!("unknown field `{k}` (expected type, data, source)"));
    }
    build_event(&ty, data, source.as_deref())
}
