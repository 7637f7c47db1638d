//! The forms an incoming webhook's body takes, read into an [`Event`]:
//!
//! - `application/json`: the specification's payload, `{"event_type", "data", "event_id"?,
//!   "timestamp"?, "source"?, "signature"?}` (what pm-events itself sends);
//! - `application/cloudevents+json`: a CloudEvents 1.0 event in structured mode;
//! - CloudEvents binary mode: `ce-specversion`, `ce-id`, `ce-source`, `ce-type`
//!   (`ce-time`) headers and the event data as a JSON body. With `ce-specversion`
//!   present and no `Content-Type` at all (as the CloudEvents SDKs send JSON
//!   data), the body is read as JSON.
//!
//! Every body is parsed with [`crate::strict_json`]: a repeated key is refused.
//! A CloudEvents `type` becomes the event type; `data` becomes the event data (a
//! value that is not a JSON object is wrapped as `{"value": ...}`); `id` becomes the
//! event id; `source` the source.
//!
//! The event's id is the CloudEvents `id` of a CloudEvent, else the
//! `webhook-id` (Standard Webhooks), else the body's `event_id`: a webhook
//! delivered again is a repeat of an event id, which the bus accepts once.

use super::DoorError as IncomingError;
use crate::event::{Event, json_kind};
use crate::strict_json;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

fn bad(m: impl Into<String>) -> IncomingError {
    IncomingError::Invalid(m.into())
}

/// The event of a verified incoming webhook: its body read by its form, its id
/// as the module docs say, the sender's trace continued.
pub fn event(body: &[u8], headers: &BTreeMap<String, String>) -> Result<Event, IncomingError> {
    let mut event = parse(body, headers)?;
    let cloud_event = headers.contains_key("ce-specversion")
        || media_type(headers) == "application/cloudevents+json";
    if let Some(id) = headers.get("webhook-id").filter(|_| !cloud_event) {
        crate::event::validate_id("webhook-id", id).map_err(bad)?;
        event.event_id = id.clone();
    }
    event.trace = headers
        .get("traceparent")
        .and_then(|v| crate::telemetry::valid_traceparent(v));
    Ok(event)
}

/// The media type of `content-type` (lower-case, without parameters); empty when absent.
pub fn media_type(headers: &BTreeMap<String, String>) -> String {
    headers
        .get("content-type")
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

fn object_data(v: Value) -> Value {
    match v {
        Value::Object(_) => v,
        Value::Null => Value::Object(Map::new()),
        other => {
            let mut m = Map::new();
            m.insert("value".into(), other);
            Value::Object(m)
        }
    }
}

fn rfc3339_secs(t: &str) -> Result<f64, IncomingError> {
    chrono::DateTime::parse_from_rfc3339(t)
        .map(|d| d.timestamp_micros() as f64 / 1e6)
        .map_err(|_| bad(format!("`time` is not an RFC 3339 time: {t:?}")))
}

/// Parses a verified body into an event (a CloudEvent's `id`, or the body's
/// `event_id`, becomes its id).
pub fn parse(body: &[u8], headers: &BTreeMap<String, String>) -> Result<Event, IncomingError> {
    let media = media_type(headers);
    if headers.contains_key("ce-specversion") {
        // CloudEvents binary mode: attributes in headers, data in the body.
        // No content type at all: the SDKs' JSON data.
        if !(media.is_empty() || media == "application/json" || media.ends_with("+json")) {
            return Err(IncomingError::UnsupportedMediaType(media));
        }
        let h = |k: &str| {
            headers
                .get(k)
                .filter(|v| !v.is_empty())
                .cloned()
                .ok_or_else(|| bad(format!("missing CloudEvents header `{k}`")))
        };
        if h("ce-specversion")? != "1.0" {
            return Err(bad("unsupported CloudEvents `specversion` (expected 1.0)"));
        }
        let data: Value = if body.is_empty() {
            Value::Null
        } else {
            strict_json::from_slice(body).map_err(|e| bad(format!("malformed JSON body: {e}")))?
        };
        let id = h("ce-id")?;
        let mut event = Event::new(h("ce-type")?, object_data(data)).with_source(h("ce-source")?);
        event.event_id = id;
        if let Some(t) = headers.get("ce-time") {
            event.timestamp = rfc3339_secs(t)?;
        }
        return Ok(event);
    }
    let v: Value = match media.as_str() {
        "application/json" | "application/cloudevents+json" => {
            strict_json::from_slice(body).map_err(|e| bad(format!("malformed JSON: {e}")))?
        }
        _ => return Err(IncomingError::UnsupportedMediaType(media)),
    };
    let Value::Object(mut m) = v else {
        return Err(bad(format!(
            "the body must be a JSON object, got {}",
            json_kind(&v)
        )));
    };
    let string = |m: &Map<String, Value>, k: &str| -> Result<Option<String>, IncomingError> {
        match m.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(bad(format!(
                "`{k}` must be a string, got {}",
                json_kind(other)
            ))),
        }
    };
    if media == "application/cloudevents+json" {
        let need = |m: &Map<String, Value>, k: &str| {
            string(m, k)?.ok_or_else(|| bad(format!("missing CloudEvents attribute `{k}`")))
        };
        if need(&m, "specversion")? != "1.0" {
            return Err(bad("unsupported CloudEvents `specversion` (expected 1.0)"));
        }
        let id = need(&m, "id")?;
        let mut event = Event::new(
            need(&m, "type")?,
            object_data(m.remove("data").unwrap_or(Value::Null)),
        )
        .with_source(need(&m, "source")?);
        event.event_id = id;
        if let Some(t) = string(&m, "time")? {
            event.timestamp = rfc3339_secs(&t)?;
        }
        return Ok(event);
    }
    // The specification's payload.
    let event_type = string(&m, "event_type")?.ok_or_else(|| bad("missing field `event_type`"))?;
    let data = match m.remove("data") {
        Some(d @ Value::Object(_)) => d,
        Some(other) => {
            return Err(bad(format!(
                "`data` must be a JSON object, got {}",
                json_kind(&other)
            )));
        }
        None => return Err(bad("missing field `data`")),
    };
    let mut event = Event::new(event_type, data);
    if let Some(id) = string(&m, "event_id")? {
        event.event_id = id;
    }
    if let Some(src) = string(&m, "source")? {
        event.source = src;
    }
    match m.get("timestamp") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) => event.timestamp = n.as_f64().unwrap_or(event.timestamp),
        Some(other) => {
            return Err(bad(format!(
                "`timestamp` must be a number, got {}",
                json_kind(other)
            )));
        }
    }
    Ok(event)
}
