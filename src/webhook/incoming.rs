//! Incoming webhooks: verify, parse and publish what external services send
//! (the specification's `handle_incoming_webhook`, and `POST /webhooks/incoming`).
//!
//! **Signature** (required; checked over the raw body before anything is parsed):
//! Standard Webhooks headers (`webhook-id`, `webhook-timestamp`, `webhook-signature`,
//! timestamp within the tolerance, several signatures and secrets accepted), or the
//! specification's `X-Webhook-Signature: sha256=<hex>`.
//!
//! **Body**, by content type:
//! - `application/json`: the specification's payload, `{"event_type", "data", "event_id"?,
//!   "timestamp"?, "source"?, "signature"?}` (what pm-events itself sends);
//! - `application/cloudevents+json`: a CloudEvents 1.0 event in structured mode;
//! - CloudEvents binary mode: `ce-specversion`, `ce-id`, `ce-source`, `ce-type`
//!   (`ce-time`) headers and the event data as a JSON body. With `ce-specversion`
//!   present and no `Content-Type` at all (as the CloudEvents SDKs send JSON
//!   data), the body is read as JSON.
//!
//! Every body is parsed with [`crate::strict_json`]: a repeated key
//! is refused. An admission check given with [`IncomingWebhooks::with_admission`]
//! (the server's: built-in payloads valid, paths and addresses allowed) runs on
//! the parsed event before it is published.
//!
//! A CloudEvents `type` becomes the event type; `data` becomes the event data (a
//! value that is not a JSON object is wrapped as `{"value": ...}`); `id` becomes the
//! event id; `source` the source.
//!
//! **Replays**: the event's id is the CloudEvents `id` of a CloudEvent, else
//! the `webhook-id` (Standard Webhooks), else the body's `event_id`, so a webhook
//! delivered again is a repeat of an event id, and the bus's idempotent publish
//! ([`crate::idempotency`]: 24 h, across restarts, one memory for every entry
//! point) acknowledges it as a duplicate without publishing it again.

use super::sign::{self, DEFAULT_TOLERANCE, VerifyError, verify_hex_signature, verify_standard};
use crate::bus::EventBus;
use crate::error::BusError;
use crate::event::{Event, EventId, json_kind, now_unix};
use crate::secret::Secret;
use crate::strict_json;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Why an incoming webhook was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IncomingError {
    /// No valid signature (missing, malformed, wrong, expired).
    #[error("signature refused: {0}")]
    Unauthorized(#[from] VerifyError),
    /// The content type is not one this endpoint reads.
    #[error(
        "unsupported content type {0:?}: send application/json, application/cloudevents+json, or CloudEvents binary mode (ce-* headers) with a JSON body"
    )]
    UnsupportedMediaType(String),
    /// The body is not a valid payload; the message names the problem.
    #[error("{0}")]
    BadRequest(String),
    /// The admission check refused the event (its error is the source).
    #[error(transparent)]
    Refused(Box<dyn std::error::Error + Send + Sync>),
    /// The bus refused the event.
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// What became of an accepted incoming webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncomingOutcome {
    /// Published on the bus.
    Published(EventId),
    /// Seen before (same id): acknowledged, not published again.
    Duplicate(EventId),
}

/// An admission check: refuses an event before it is published.
pub type Admission =
    Arc<dyn Fn(&Event) -> Result<(), Box<dyn std::error::Error + Send + Sync>> + Send + Sync>;

/// Verifies and publishes incoming webhooks.
pub struct IncomingWebhooks {
    secrets: Vec<Secret>,
    tolerance: Duration,
    admission: Option<Admission>,
}

fn bad(m: impl Into<String>) -> IncomingError {
    IncomingError::BadRequest(m.into())
}

/// The signature headers a request presents.
enum Presented<'h> {
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature`.
    Standard {
        id: &'h str,
        timestamp: &'h str,
        sig: &'h str,
    },
    /// `X-Webhook-Signature: sha256=<hex>`.
    Hex(&'h str),
}

impl IncomingWebhooks {
    /// Accepts webhooks signed with any of `secrets`.
    pub fn new(secrets: Vec<Secret>) -> Self {
        IncomingWebhooks {
            secrets,
            tolerance: DEFAULT_TOLERANCE,
            admission: None,
        }
    }

    /// Runs `check` on every parsed event before publishing it; its error refuses the webhook.
    pub fn with_admission(mut self, check: Admission) -> Self {
        self.admission = Some(check);
        self
    }

    /// Another timestamp tolerance for Standard Webhooks (default 5 minutes).
    pub fn with_tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// Checks the signature of `body` given `headers` (names lower-case).
    pub fn verify(
        &self,
        body: &[u8],
        headers: &BTreeMap<String, String>,
    ) -> Result<(), VerifyError> {
        let now = now_unix().floor() as i64;
        match self.presented(|k| headers.get(k).map(String::as_str))? {
            Presented::Standard { id, timestamp, sig } => {
                verify_standard(&self.secrets, id, timestamp, body, sig, now, self.tolerance)
            }
            Presented::Hex(sig) => verify_hex_signature(&self.secrets, body, sig),
        }
    }

    /// What the headers alone show, before any body byte is read: a secret to
    /// verify with, and a signature header of the right shape (for Standard
    /// Webhooks, an id and a timestamp within the tolerance). A request that
    /// fails here cannot pass [`verify`](Self::verify), so the server answers
    /// 401 without reading its body. `header` looks a header up by its
    /// lower-case name.
    pub fn precheck<'h>(
        &self,
        header: impl Fn(&str) -> Option<&'h str>,
    ) -> Result<(), VerifyError> {
        match self.presented(header)? {
            Presented::Standard { id, timestamp, sig } => sign::standard_headers(
                &self.secrets,
                id,
                timestamp,
                sig,
                now_unix().floor() as i64,
                self.tolerance,
            )
            .map(drop),
            Presented::Hex(sig) => sign::hex_signature_header(&self.secrets, sig).map(drop),
        }
    }

    /// Which signature scheme the headers use, and its header values; refused
    /// when this server has no secret or the request carries no signature.
    fn presented<'h>(
        &self,
        h: impl Fn(&str) -> Option<&'h str>,
    ) -> Result<Presented<'h>, VerifyError> {
        if self.secrets.is_empty() {
            return Err(VerifyError::Missing(
                "secret on this server (WEBHOOK_SIGNATURE_SECRET is not set), so no webhook can be verified",
            ));
        }
        match (h("webhook-signature"), h("x-webhook-signature")) {
            (Some(sig), _) => Ok(Presented::Standard {
                id: h("webhook-id").unwrap_or(""),
                timestamp: h("webhook-timestamp").unwrap_or(""),
                sig,
            }),
            (None, Some(sig)) => Ok(Presented::Hex(sig)),
            (None, None) => Err(VerifyError::Missing(
                "signature: send X-Webhook-Signature, or webhook-id, webhook-timestamp and webhook-signature",
            )),
        }
    }

    /// Verifies, parses and publishes one incoming webhook (see the module docs).
    pub async fn handle(
        &self,
        bus: &EventBus,
        body: &[u8],
        headers: &BTreeMap<String, String>,
    ) -> Result<IncomingOutcome, IncomingError> {
        self.verify(body, headers)?;
        let (mut event, _) = parse(body, headers)?;
        event.validate().map_err(bad)?;
        // A trace the sender started is continued.
        event.trace = headers
            .get("traceparent")
            .and_then(|v| crate::telemetry::valid_traceparent(v));
        if let Some(check) = &self.admission {
            check(&event).map_err(IncomingError::Refused)?;
        }
        // A CloudEvent keeps its own id; otherwise a Standard Webhooks message's
        // id is its event's id (before the body's `event_id`).
        let cloud_event = headers.contains_key("ce-specversion")
            || media_type(headers) == "application/cloudevents+json";
        if let Some(id) = headers.get("webhook-id").filter(|_| !cloud_event) {
            crate::event::validate_id("webhook-id", id).map_err(bad)?;
            event.event_id = id.clone();
        }
        let accepted = bus.try_publish_once(event).await?;
        Ok(if accepted.duplicate {
            IncomingOutcome::Duplicate(accepted.event_id)
        } else {
            IncomingOutcome::Published(accepted.event_id)
        })
    }
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

/// Parses a verified body into an event and its replay key.
pub fn parse(
    body: &[u8],
    headers: &BTreeMap<String, String>,
) -> Result<(Event, Option<String>), IncomingError> {
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
        event.event_id = id.clone();
        if let Some(t) = headers.get("ce-time") {
            event.timestamp = rfc3339_secs(t)?;
        }
        return Ok((event, Some(id)));
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
        event.event_id = id.clone();
        if let Some(t) = string(&m, "time")? {
            event.timestamp = rfc3339_secs(&t)?;
        }
        return Ok((event, Some(id)));
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
    let key = string(&m, "event_id")?;
    if let Some(id) = &key {
        event.event_id = id.clone();
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
    Ok((event, key))
}
