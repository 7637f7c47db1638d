//! `risk_alert`: a security, performance, compliance or financial risk was detected.
//!
//! Payload (as specified): `alert_id`, `risk_type` (`security` | `performance` |
//! `compliance` | `financial`), `severity` (`low` | `medium` | `high` | `critical`),
//! `title`, `risk_score` (0 to 1) — required; `description`, `affected_resources`,
//! `detected_at` (RFC 3339), `source_system`, `mitigation_steps`, `metadata` —
//! optional; other fields are kept.
//!
//! - **Severity first**: with [`builtin_priority`](super::builtin_priority) as the
//!   bus's priority rule, critical alerts travel in the priority lane, so a flood of
//!   low alerts cannot delay them.
//! - **Escalation** (when `escalation_enabled`): a high alert, or any below
//!   critical with `risk_score >= 0.8`, is escalated to the next severity (low →
//!   medium → high → critical); a critical one is already at the top and is not.
//!   On escalation a `risk_escalated` event is published on the bus
//!   (`{alert_id, title, severity, escalated_to, risk_score, reason, alert_event_id}`)
//!   and the next severity's webhook is notified too.
//! - **Mitigation**: each step is run by the executor registered for its name
//!   ([`RiskAlertHandler::register_mitigation`]) and recorded as `executed` or
//!   `failed`; a step with no executor is logged and recorded as `skipped`.
//! - **Dashboard**: `risk_alerts/dashboard.json`, rewritten atomically (at most every
//!   200 ms, and at the end): `open_alerts` (one per `alert_id`, most severe first),
//!   `counts_by_severity`, `counts_by_type` (of the open alerts), `highest_risk_score`,
//!   `alerts_received`, `escalations`, `alerts_resolved`, `last_update`. It is
//!   loaded again on start. Each open alert carries its description, affected
//!   resources and mitigation results.
//! - **Resolution**: a `risk_resolved` event (`{alert_id, resolved_by?, note?,
//!   resolved_at?}`, published by `POST /api/v1/risks/{alert_id}/resolve`) removes
//!   the alert from the dashboard; this handler is subscribed to both types.
//! - **Webhooks**: `{CRITICAL,HIGH,MEDIUM,LOW}_ALERT_WEBHOOK_URL` by severity, with
//!   `DEFAULT_RISK_WEBHOOK_URL` as the fallback.
//!
//! # `risk_alerts/risk_alerts.jsonl`
//!
//! `timestamp`, `event_id`, `status`, `reason`, `alert_id`, `severity`, `risk_type`,
//! `risk_score`, `title`, `escalated_to` (or null), `mitigation` (list of `{step,
//! status, detail}`), `webhooks` (list of routes and delivery ids). A resolution's
//! line has `event_type: "risk_resolved"`, `alert_id`, `was_open`, `resolved_by`
//! and `note`.

mod dashboard;
mod mitigation;
mod payload;

pub use dashboard::{DASHBOARD_INTERVAL, Dashboard, OpenAlert};
pub use mitigation::{MitigationExecutor, MitigationFn};
pub use payload::{RiskAlert, RiskResolution, RiskType, Severity};

use super::common::{Context, HandleError, SetupError, append, log_line};
use crate::bus::{EventBus, WeakEventBus};
use crate::event::Event;
use crate::handler::{Handler, HandlerError};
use crate::jsonl::JsonlWriter;
use async_trait::async_trait;
use dashboard::DashboardBook;
use serde_json::{Map, Value, json};
use std::sync::{PoisonError, RwLock};

/// The specification's `RiskAlertHandler`.
pub struct RiskAlertHandler {
    /// Escalate high and critical alerts and those scoring 0.8 or more.
    pub escalation_enabled: bool,
    ctx: Context,
    /// Where escalations are published; weak, so the bus that holds this
    /// handler is not kept alive by it. Set once, at construction or by
    /// [`publish_escalations_on`](Self::publish_escalations_on).
    bus: std::sync::OnceLock<WeakEventBus>,
    log: JsonlWriter,
    mitigation: RwLock<MitigationExecutor>,
    /// The dashboard; writes its last changes when the handler is dropped.
    dash: DashboardBook,
}

impl RiskAlertHandler {
    /// The specification's `RiskAlertHandler(escalation_enabled=...)`, configured from the
    /// environment, without webhooks and without a bus to publish escalations on.
    pub fn new(escalation_enabled: bool) -> Result<Self, SetupError> {
        Self::with_context(
            escalation_enabled,
            Context::from_config(&crate::Config::from_env()?),
            None,
        )
    }

    /// A handler writing under `ctx`, publishing `risk_escalated` on `bus`.
    pub fn with_context(
        escalation_enabled: bool,
        ctx: Context,
        bus: Option<&EventBus>,
    ) -> Result<Self, SetupError> {
        let log = ctx.writer("risk_alerts/risk_alerts.jsonl")?;
        let dash = DashboardBook::open(ctx.log_dir.join("risk_alerts/dashboard.json"));
        Ok(RiskAlertHandler {
            escalation_enabled,
            ctx,
            bus: bus
                .map(|b| std::sync::OnceLock::from(b.downgrade()))
                .unwrap_or_default(),
            log,
            mitigation: RwLock::new(MitigationExecutor::default()),
            dash,
        })
    }

    /// Publishes escalations on `bus` from now on, if no bus was given before
    /// (the bus a handler made with [`new`](Self::new) is subscribed on); `false`
    /// if one was.
    pub fn publish_escalations_on(&self, bus: &EventBus) -> bool {
        self.bus.set(bus.downgrade()).is_ok()
    }

    /// Registers the implementation of the mitigation step `name`.
    pub fn register_mitigation(
        &self,
        name: impl Into<String>,
        f: impl Fn(&RiskAlert) -> Result<String, String> + Send + Sync + 'static,
    ) {
        self.mitigation
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .register(name, f);
    }

    /// The dashboard as this process sees it: the file as last merged, plus what
    /// this handler changed since.
    pub fn dashboard(&self) -> Dashboard {
        self.dash.view()
    }

    /// The dashboard file as it is now (other processes on the log directory
    /// included), plus this handler's changes not yet written.
    pub fn current_dashboard(&self) -> Dashboard {
        self.dash.current()
    }

    /// A receiver told of every change this handler makes to the dashboard.
    pub fn watch_dashboard(&self) -> tokio::sync::watch::Receiver<u64> {
        self.dash.watch()
    }

    /// Writes the dashboard file now if it changed.
    pub fn flush_dashboard(&self) {
        self.dash.flush();
    }

    /// Handles `risk_resolved`: removes the alert from the dashboard and logs it.
    pub fn handle_risk_resolved(&self, event: &Event) -> Result<Value, HandleError> {
        let r = match RiskResolution::parse(&event.data) {
            Ok(r) => r,
            Err(e) => {
                let mut f = Map::new();
                f.insert("event_type".into(), "risk_resolved".into());
                f.insert("data".into(), event.data.clone());
                append(
                    &self.log,
                    &log_line(event, "invalid", Some(&e.to_string()), f),
                );
                return Err(e);
            }
        };
        let was_open = self.dash.resolve(&r.alert_id);
        let mut fields = Map::new();
        fields.insert("event_type".into(), "risk_resolved".into());
        fields.insert("alert_id".into(), r.alert_id.clone().into());
        fields.insert("was_open".into(), was_open.into());
        fields.insert("resolved_by".into(), r.resolved_by.clone().into());
        fields.insert("note".into(), r.note.clone().into());
        let line = log_line(event, "ok", None, fields);
        append(&self.log, &line);
        Ok(line)
    }

    /// The specification's `handle_risk_alert(event)`.
    pub async fn handle_risk_alert(&self, event: &Event) -> Result<Value, HandleError> {
        let alert = match RiskAlert::parse(&event.data) {
            Ok(a) => a,
            Err(e) => {
                let mut f = Map::new();
                f.insert("data".into(), event.data.clone());
                append(
                    &self.log,
                    &log_line(event, "invalid", Some(&e.to_string()), f),
                );
                return Err(e);
            }
        };
        // Critical is the top: a critical alert is acted on at once (the
        // priority lane), not escalated to itself.
        let escalate = self.escalation_enabled
            && alert.severity < Severity::Critical
            && (alert.severity >= Severity::High || alert.risk_score >= 0.8);
        let escalated_to = escalate.then(|| alert.severity.next());
        let mitigation = self
            .mitigation
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .run(&alert);

        // Webhooks: the alert's severity route, and on escalation the next one's too.
        let mut webhooks = Vec::new();
        if let Some(w) = &self.ctx.webhooks {
            let primary = w.routes().for_severity(alert.severity.as_str());
            let primary_url = primary.as_ref().map(|r| r.url.clone());
            webhooks.push(self.ctx.deliver(event, primary).await);
            if let Some(next) = escalated_to {
                let up = w
                    .routes()
                    .for_severity(next.as_str())
                    .filter(|r| Some(&r.url) != primary_url.as_ref());
                if up.is_some() {
                    webhooks.push(self.ctx.deliver(event, up).await);
                }
            }
        }
        webhooks.retain(|v| !v.is_null());

        if let (Some(next), Some(bus)) = (escalated_to, self.bus.get()) {
            let reason = if alert.severity >= Severity::High {
                format!("severity {}", alert.severity.as_str())
            } else {
                format!("risk_score {} >= 0.8", alert.risk_score)
            };
            let escalation = json!({
                "alert_id": alert.alert_id, "title": alert.title, "severity": alert.severity,
                "escalated_to": next, "risk_score": alert.risk_score, "reason": reason,
                "alert_event_id": event.event_id,
            });
            if let Err(e) = bus.publish("risk_escalated", escalation).await {
                tracing::error!(alert_id = %alert.alert_id, error = %crate::error::chain(&e), "cannot publish risk_escalated");
            }
        }

        self.update_dashboard(&alert, escalated_to, mitigation.clone(), event);

        let mut fields = Map::new();
        fields.insert("alert_id".into(), alert.alert_id.clone().into());
        fields.insert("severity".into(), alert.severity.as_str().into());
        fields.insert(
            "risk_type".into(),
            serde_json::to_value(alert.risk_type).unwrap_or(Value::Null),
        );
        fields.insert("risk_score".into(), alert.risk_score.into());
        fields.insert("title".into(), alert.title.clone().into());
        fields.insert(
            "escalated_to".into(),
            escalated_to
                .map(|s| Value::from(s.as_str()))
                .unwrap_or(Value::Null),
        );
        fields.insert("mitigation".into(), Value::Array(mitigation));
        fields.insert("webhooks".into(), Value::Array(webhooks));
        let line = log_line(event, "ok", None, fields);
        append(&self.log, &line);
        Ok(line)
    }

    fn update_dashboard(
        &self,
        a: &RiskAlert,
        escalated_to: Option<Severity>,
        mitigation: Vec<Value>,
        event: &Event,
    ) {
        self.dash.record_alert(OpenAlert {
            alert_id: a.alert_id.clone(),
            severity: a.severity,
            risk_type: a.risk_type,
            title: a.title.clone(),
            description: a.description.clone(),
            risk_score: a.risk_score,
            affected_resources: a.affected_resources.clone(),
            detected_at: a.detected_at.clone(),
            escalated_to,
            mitigation,
            event_id: event.event_id.clone(),
        });
    }
}

#[async_trait]
impl Handler for RiskAlertHandler {
    async fn handle(&self, event: Event) -> Result<(), HandlerError> {
        if event.event_type == "risk_resolved" {
            self.handle_risk_resolved(&event)?;
        } else {
            self.handle_risk_alert(&event).await?;
        }
        Ok(())
    }

    fn name(&self) -> &str {
        "RiskAlertHandler"
    }
}
