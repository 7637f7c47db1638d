//! The built-in handlers of the specification's three event types (docs/events.md).
//!
//! - [`FileChangeHandler`] (`file_change`) → `file_changes/file_changes.jsonl`
//! - [`ReportReadyHandler`] (`report_ready`) → `reports/report_generations.jsonl`, e-mail
//! - [`RiskAlertHandler`] (`risk_alert`, `risk_resolved`) → `risk_alerts/risk_alerts.jsonl`,
//!   `dashboard.json`
//!
//! Each validates its payload as a typed serde struct (unknown fields are kept);
//! an invalid payload is logged with `"status":"invalid"` and the reason, does not
//! reach webhooks, and is returned as the handler's error (counted by the bus).
//! [`register_builtins`] subscribes all three on a bus in one call.
//!
//! Every handler log line holds `timestamp` (RFC 3339), `event_id`, `status`
//! (`ok`, `invalid` or `error`) and, unless `ok`, `reason`; the fields of each
//! handler follow and are documented in its module.

pub mod access;
pub mod common;
pub mod file_change;
pub mod mail;
pub mod report_ready;
pub mod risk_alert;

pub use access::{Access, FileRoots};
pub use common::{BUILTIN_TYPES, Context, HANDLER_LOGS, HandleError, SetupError};
pub use file_change::{FileChange, FileChangeHandler};
pub use report_ready::ReportReadyHandler;
pub use risk_alert::{MitigationExecutor, RiskAlertHandler};

use crate::bus::EventBus;
use crate::config::Config;
use crate::event::Event;
use crate::transport::Priority;
use crate::webhook::WebhookHandler;
use serde_json::Value;
use std::sync::Arc;

/// Why an event from outside is refused where it enters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// A built-in payload that its handler could only refuse; names the field.
    #[error(transparent)]
    Invalid(#[from] HandleError),
    /// A path or address these access rules do not allow; names the field and setting.
    #[error("{0}")]
    NotAllowed(String),
}

/// The door check of an event from outside: its built-in payload is valid
/// ([`validate_builtin`]) and its paths and mail recipients are allowed by `access`.
pub fn admit(event: &Event, access: &Access) -> Result<(), Refusal> {
    let data = &event.data;
    validate_builtin(&event.event_type, data)?;
    let path_field = match event.event_type.as_str() {
        "file_change" => Some("file_path"),
        "report_ready" => Some("report_path"),
        _ => None,
    };
    if let Some(field) = path_field
        && let Some(path) = data.get(field).and_then(Value::as_str)
    {
        access
            .check_path(&format!("data.{field}"), path)
            .map_err(Refusal::NotAllowed)?;
    }
    if event.event_type == "report_ready"
        && let Some(list) = data.get("recipients").and_then(Value::as_array)
    {
        for (i, r) in list.iter().enumerate() {
            if let Some(r) = r.as_str() {
                access
                    .check_recipient(&format!("data.recipients[{i}]"), r)
                    .map_err(Refusal::NotAllowed)?;
            }
        }
    }
    Ok(())
}

/// The CLI's door (`publish`): built-in payloads must be valid (see [`crate::door`]).
pub fn operator_door() -> crate::door::Door {
    crate::door::Door::with_rules(std::sync::Arc::new(|e: &Event| {
        validate_builtin(&e.event_type, &e.data)
            .map_err(|x| Box::new(Refusal::Invalid(x)) as crate::door::BoxError)
    }))
}

/// The server's door: built-in payloads valid, and their paths and mail
/// recipients allowed by `access` ([`admit`]).
pub fn server_door(access: Access) -> crate::door::Door {
    crate::door::Door::with_rules(std::sync::Arc::new(move |e: &Event| {
        admit(e, &access).map_err(|r| Box::new(r) as crate::door::BoxError)
    }))
}

/// Checks the payload of a built-in type (`file_change`, `report_ready`,
/// `risk_alert`) as it enters from outside; other types pass. The file system
/// is not looked at: what can only be known when handling is the handler's.
///
/// ```
/// use serde_json::json;
/// let e = pm_events::handlers::validate_builtin("risk_alert", &json!({
///     "alert_id": "a", "risk_type": "security", "severity": 5, "title": "t", "risk_score": 0.5,
/// })).unwrap_err();
/// assert_eq!(
///     e.to_string(),
///     "invalid risk_alert payload: data.severity: expected one of low, medium, high, critical, got 5"
/// );
/// ```
pub fn validate_builtin(event_type: &str, data: &Value) -> Result<(), HandleError> {
    match event_type {
        "file_change" => FileChange::parse(data).map(|_| ()),
        "report_ready" => report_ready::ReportReady::check(data).map(|_| ()),
        "risk_alert" => risk_alert::RiskAlert::parse(data).map(|_| ()),
        "risk_resolved" => risk_alert::RiskResolution::parse(data).map(|_| ()),
        _ => Ok(()),
    }
}

/// The priority rule of the built-in types: critical risk alerts take the priority lane.
pub fn builtin_priority(e: &Event) -> Priority {
    if e.event_type == "risk_alert"
        && e.data.get("severity").and_then(Value::as_str) == Some("critical")
    {
        Priority::High
    } else {
        Priority::Normal
    }
}

/// The three built-in handlers, as registered by [`register_builtins`].
pub struct Builtins {
    /// `file_change`.
    pub file_change: Arc<FileChangeHandler>,
    /// `report_ready`.
    pub report_ready: Arc<ReportReadyHandler>,
    /// `risk_alert`.
    pub risk_alert: Arc<RiskAlertHandler>,
}

/// Builds the three built-in handlers from `config` (log directory, SMTP, auto
/// distribution) under the `access` rules and subscribes them on `bus`. With `webhooks`, each triggers
/// its webhook; subscribe the webhook handler itself only for the other types
/// (see [`BUILTIN_TYPES`]) so no event is delivered twice.
pub fn register_builtins(
    bus: &EventBus,
    config: &Config,
    webhooks: Option<Arc<WebhookHandler>>,
    access: Access,
) -> Result<Builtins, SetupError> {
    let mut ctx = Context::from_config(config).with_access(access);
    ctx.webhooks = webhooks;
    let file_change = Arc::new(FileChangeHandler::with_context(true, ctx.clone())?);
    let report_ready = Arc::new(ReportReadyHandler::with_context(
        config.report_auto_distribute,
        ctx.clone(),
        mail::Mailer::from_config(config)?,
    )?);
    let risk_alert = Arc::new(RiskAlertHandler::with_context(true, ctx, Some(bus))?);
    bus.subscribe_arc("file_change", file_change.clone());
    bus.subscribe_arc("report_ready", report_ready.clone());
    bus.subscribe_arc("risk_alert", risk_alert.clone());
    bus.subscribe_arc("risk_resolved", risk_alert.clone());
    Ok(Builtins {
        file_change,
        report_ready,
        risk_alert,
    })
}
