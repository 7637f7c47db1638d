//! What the built-in handlers share: their context (log directory, webhook
//! handler, access rules), their errors, the helpers that read payloads and
//! write their log lines.

use super::access::Access;
use crate::config::Config;
use crate::event::Event;
use crate::jsonl::JsonlWriter;
use crate::webhook::{Route, WebhookHandler};
use chrono::{SecondsFormat, Utc};
use serde_json::{Map, Value};
use std::path::PathBuf;
use std::sync::Arc;

/// The built-in event types.
pub const BUILTIN_TYPES: [&str; 3] = ["file_change", "report_ready", "risk_alert"];

/// Errors setting a handler up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::error::ConfigError),
    /// A log file could not be opened.
    #[error(transparent)]
    Log(#[from] crate::error::LogError),
    /// The webhook engine could not be opened.
    #[error(transparent)]
    Webhook(#[from] crate::webhook::WebhookError),
    /// The mailer could not be set up.
    #[error("mail: {0}")]
    Mail(String),
}

/// Why a built-in handler refused or failed an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandleError {
    /// The payload is invalid; the message names the field.
    #[error("invalid {event_type} payload: {reason}")]
    Invalid {
        /// The event type.
        event_type: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The event was valid but handling it failed (I/O, ...).
    #[error("{0}")]
    Failed(String),
}

impl HandleError {
    pub(crate) fn invalid(event_type: &'static str, reason: impl Into<String>) -> Self {
        HandleError::Invalid {
            event_type,
            reason: reason.into(),
        }
    }
}

/// The built-in handlers' own logs under the log directory: (handler, file),
/// one line per event handled, with its `event_id` and `status`.
pub const HANDLER_LOGS: [(&str, &str); 3] = [
    ("FileChangeHandler", "file_changes/file_changes.jsonl"),
    ("ReportReadyHandler", "reports/report_generations.jsonl"),
    ("RiskAlertHandler", "risk_alerts/risk_alerts.jsonl"),
];

/// What the built-in handlers share: where they log, and the webhook handler.
#[derive(Clone)]
pub struct Context {
    /// Root of the logs.
    pub log_dir: PathBuf,
    /// Rotation size of the handler logs.
    pub log_max_bytes: u64,
    /// Rotated files kept.
    pub log_keep: usize,
    /// Sync policy.
    pub fsync: crate::config::FsyncPolicy,
    /// Where webhooks go; `None`: no webhooks.
    pub webhooks: Option<Arc<WebhookHandler>>,
    /// Sender of report e-mail (`PM_MAIL_FROM`).
    pub mail_from: String,
    /// Which files and mailboxes the events' paths and addresses may reach.
    pub access: Access,
}

impl Context {
    /// The context of `config`, without webhooks.
    pub fn from_config(config: &Config) -> Self {
        Context {
            log_dir: config.log_dir.clone(),
            log_max_bytes: config.log_max_bytes,
            log_keep: config.log_keep,
            fsync: config.fsync,
            webhooks: None,
            mail_from: config.mail_from.clone(),
            access: Access::operator(config),
        }
    }

    /// The same context under other access rules (e.g. [`Access::server`]).
    pub fn with_access(mut self, access: Access) -> Self {
        self.access = access;
        self
    }

    /// The same context, delivering webhooks through `w`.
    pub fn with_webhooks(mut self, w: Arc<WebhookHandler>) -> Self {
        self.webhooks = Some(w);
        self
    }

    pub(crate) fn writer(&self, rel: &str) -> Result<JsonlWriter, SetupError> {
        Ok(JsonlWriter::open(
            self.log_dir.join(rel),
            self.log_max_bytes,
            self.log_keep,
            self.fsync,
        )?)
    }

    /// Queues `event` for its own route (see [`Routes::for_event`](crate::webhook::Routes::for_event)).
    pub(crate) async fn deliver_routed(&self, event: &Event) -> Value {
        let route = self
            .webhooks
            .as_ref()
            .and_then(|w| w.routes().for_event(event));
        self.deliver(event, route).await
    }

    /// Queues `event` for `route` (if webhooks are on); the delivery id, or the error as text.
    pub(crate) async fn deliver(&self, event: &Event, route: Option<Route>) -> Value {
        let (Some(w), Some(route)) = (&self.webhooks, route) else {
            return Value::Null;
        };
        match w.trigger(event, &route).await {
            Ok(id) => serde_json::json!({"route": route.name, "delivery_id": id}),
            Err(e) => serde_json::json!({"route": route.name, "error": crate::error::chain(&e)}),
        }
    }
}

/// Current time in RFC 3339 (UTC, milliseconds).
pub(crate) fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Builds a handler log line: `timestamp`, `event_id`, `status`, `reason`, then `fields`.
pub(crate) fn log_line(
    event: &Event,
    status: &str,
    reason: Option<&str>,
    fields: Map<String, Value>,
) -> Value {
    let mut m = Map::new();
    m.insert("timestamp".into(), now_rfc3339().into());
    m.insert("event_id".into(), event.event_id.clone().into());
    m.insert("status".into(), status.into());
    if let Some(r) = reason {
        m.insert("reason".into(), r.into());
    }
    m.extend(fields);
    Value::Object(m)
}

/// Appends `line` to `log`, reporting (not failing on) an I/O error.
pub(crate) fn append(log: &JsonlWriter, line: &Value) {
    if let Err(e) = log.append(line) {
        tracing::error!(path = %log.path().display(), error = %crate::error::chain(&e), "cannot write a handler log line");
    }
}

/// Writes `bytes` to `path` atomically (temporary file, then rename).
pub(crate) fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    crate::private_files::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Checks an optional RFC 3339 time field.
pub(crate) fn check_time(field: &str, v: &Option<String>) -> Result<(), String> {
    match v {
        Some(t) if chrono::DateTime::parse_from_rfc3339(t).is_err() => Err(format!(
            "data.{field}: expected an RFC 3339 time (2025-01-15T10:30:00Z), got {}",
            shown(&Value::String(t.clone()))
        )),
        _ => Ok(()),
    }
}

/// A JSON value as an error message shows it: its JSON text, cut at 60 characters.
pub(crate) fn shown(v: &Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(60) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text,
    }
}

/// Decodes a payload into `T`. The error names the field path and what was
/// expected: `data.severity: expected one of low, medium, high, critical, got 5`.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    event_type: &'static str,
    data: &Value,
) -> Result<T, HandleError> {
    serde_path_to_error::deserialize(data).map_err(|e| {
        let path = crate::strict_json::path_text(e.path());
        HandleError::invalid(
            event_type,
            field_message(&path, &e.into_inner().to_string()),
        )
    })
}

/// serde's message at `path` (inside `data`), reworded to name the field first.
fn field_message(path: &str, message: &str) -> String {
    let at = |p: &str| {
        if p.is_empty() {
            "data".to_string()
        } else {
            format!("data.{p}")
        }
    };
    if let Some(rest) = message.strip_prefix("missing field `")
        && let Some(field) = rest.strip_suffix('`')
    {
        let p = if path.is_empty() {
            field.to_string()
        } else {
            format!("{path}.{field}")
        };
        return format!("{}: required field is missing", at(&p));
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some((got, expected)) = rest.split_once(", expected ")
        {
            return format!(
                "{}: expected {expected}, got {}",
                at(path),
                got.replace('`', "")
            );
        }
    }
    format!("{}: {message}", at(path))
}

/// The other fields of a payload: those of `data` not in `known`.
pub(crate) fn extra_fields(data: &Value, known: &[&str]) -> Map<String, Value> {
    data.as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| !known.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// Implements `Deserialize` for a payload enum of fixed names, refusing anything
/// else with `expected one of a, b, c, got <value>`.
macro_rules! one_of {
    ($ty:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let v = <serde_json::Value as serde::Deserialize>::deserialize(d)?;
                match v.as_str() {
                    $(Some($name) => Ok($ty::$variant),)+
                    _ => Err(<D::Error as serde::de::Error>::custom(format_args!(
                        "expected one of {}, got {}",
                        [$($name),+].join(", "),
                        crate::handlers::common::shown(&v)
                    ))),
                }
            }
        }
    };
}
pub(crate) use one_of;
