//! Incoming webhooks: verify, parse and publish what external services send
//! (the seed's `handle_incoming_webhook`, and `POST /webhooks/incoming`).
//!
//! **Signature** (required; checked over the raw body before anything is parsed):
//! Standard Webhooks headers (`webhook-id`, `webhook-timestamp`, `webhook-signature`,
//! timestamp within the tolerance, several signatures and secrets accepted), or the
//! seed's `X-Webhook-Signature: sha256=<hex>`.
//!
//! **Body**, by content type:
//! - `application/json`: the seed's payload, `{"event_type", "data", "event_id"?,
//!   "timestamp"?, "source"?, "signature"?}` (what pm-events itself sends);
//! - `application/cloudevents+json`: a CloudEvents 1.0 event in structured mode;
//! - CloudEvents binary mode: `ce-specversion`, `ce-id`, `ce-source`, `ce-type`
//!   (`ce-time`) headers and the event data as a JSON body.
//!
//! A CloudEvents `type` becomes the event type; `data` becomes the event data (a
//! value that is not a JSON object is wrapped as `{"value": ...}`); `id` becomes the
//! event id; `source` the source.
//!
//! **Replays**: the `webhook-id`, CloudEvents `id` or body `event_id` of every
//! accepted webhook is remembered for [`RETENTION`] (at most [`MAX_REMEMBERED`]
//! ids, oldest forgotten first); a webhook carrying one already seen is
//! acknowledged as a duplicate and not published again.

use super::sign::{DEFAULT_TOLERANCE, VerifyError, verify_seed, verify_standard};
use crate::bus::EventBus;
use crate::config::Secret;
use crate::error::BusError;
use crate::event::{Event, EventId, json_kind, now_unix};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an accepted id is remembered.
pub const RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Most ids remembered.
pub const MAX_REMEMBERED: usize = 100_000;

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

/// Remembered ids, bounded in number and age.
#[derive(Default)]
struct Seen {
    order: VecDeque<(Instant, String)>,
    ids: HashMap<String, EventId>,
}

impl Seen {
    fn purge(&mut self) {
        while let Some((at, id)) = self.order.front() {
            if at.elapsed() > RETENTION || self.order.len() > MAX_REMEMBERED {
                self.ids.remove(id);
                self.order.pop_front();
            } else {
                break;
            }
        }
    }
}

/// Verifies and publishes incoming webhooks.
pub struct IncomingWebhooks {
    secrets: Vec<Secret>,
    tolerance: Duration,
    seen: Mutex<Seen>,
}

fn bad(m: impl Into<String>) -> IncomingError {
    IncomingError::BadRequest(m.into())
}

impl IncomingWebhooks {
    /// Accepts webhooks signed with any of `secrets`.
    pub fn new(secrets: Vec<Secret>) -> Self {
        IncomingWebhooks {
            secrets,
            tolerance: DEFAULT_TOLERANCE,
            seen: Mutex::new(Seen::default()),
        }
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
        if self.secrets.is_empty() {
            return Err(VerifyError::Missing(
                "secret on this server (WEBHOOK_SIGNATURE_SECRET is not set), so no webhook can be verified",
            ));
        }
        let h = |k: &str| headers.get(k).map(String::as_str);
        match (h("webhook-signature"), h("x-webhook-signature")) {
            (Some(sig), _) => verify_standard(
                &self.secrets,
                h("webhook-id").unwrap_or(""),
                h("webhook-timestamp").unwrap_or(""),
                body,
                sig,
                now_unix().floor() as i64,
                self.tolerance,
            ),
            (None, Some(sig)) => verify_seed(&self.secrets, body, sig),
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
        let (event, key) = parse(body, headers)?;
        event.validate().map_err(bad)?;
        let key = headers.get("webhook-id").cloned().or(key);
        if let Some(k) = &key {
            let mut seen = self
                .seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            seen.purge();
            if let Some(first) = seen.ids.get(k) {
                return Ok(IncomingOutcome::Duplicate(first.clone()));
            }
        }
        let id = bus.try_publish(event, None).await?;
        if let Some(k) = key {
            let mut seen = self
                .seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            seen.ids.insert(k.clone(), id.clone());
            seen.order.push_back((Instant::now(), k));
            seen.purge();
        }
        Ok(IncomingOutcome::Published(id))
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
        if media != "application/json" && !media.ends_with("+json") {
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
            serde_json::from_slice(body).map_err(|e| bad(format!("malformed JSON body: {e}")))?
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
            serde_json::from_slice(body).map_err(|e| bad(format!("malformed JSON: {e}")))?
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
    // The seed's payload.
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
