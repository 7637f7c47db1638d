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
//!   `alerts_received`, `escalations`, `last_update`. It is loaded again on start.
//! - **Webhooks**: `{CRITICAL,HIGH,MEDIUM,LOW}_ALERT_WEBHOOK_URL` by severity, with
//!   `DEFAULT_RISK_WEBHOOK_URL` as the fallback.
//!
//! # `risk_alerts/risk_alerts.jsonl`
//!
//! `timestamp`, `event_id`, `status`, `reason`, `alert_id`, `severity`, `risk_type`,
//! `risk_score`, `title`, `escalated_to` (or null), `mitigation` (list of `{step,
//! status, detail}`), `webhooks` (list of routes and delivery ids).

use super::{
    Context, HandleError, SetupError, append, check_time, decode, extra_fields, log_line,
    now_rfc3339, one_of, write_atomic,
};
use crate::bus::{EventBus, WeakEventBus};
use crate::event::Event;
use crate::handler::{Handler, HandlerError};
use crate::jsonl::JsonlWriter;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// Kind of risk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RiskType {
    /// Security.
    Security,
    /// Performance.
    Performance,
    /// Compliance.
    Compliance,
    /// Financial.
    Financial,
}

one_of!(RiskType { Security => "security", Performance => "performance", Compliance => "compliance", Financial => "financial" });

/// How bad it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Low.
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
    /// Critical.
    Critical,
}

one_of!(Severity { Low => "low", Medium => "medium", High => "high", Critical => "critical" });

impl Severity {
    /// The severity name as in the payload.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
    /// The next severity up (critical stays critical).
    pub fn next(self) -> Severity {
        match self {
            Severity::Low => Severity::Medium,
            Severity::Medium => Severity::High,
            Severity::High | Severity::Critical => Severity::Critical,
        }
    }
}

/// The `risk_alert` payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RiskAlert {
    /// Alert id.
    pub alert_id: String,
    /// Kind of risk.
    pub risk_type: RiskType,
    /// Severity.
    pub severity: Severity,
    /// Short description.
    pub title: String,
    /// Long description.
    #[serde(default)]
    pub description: String,
    /// Affected resources.
    #[serde(default)]
    pub affected_resources: Vec<String>,
    /// Score from 0 to 1.
    pub risk_score: f64,
    /// When it was detected (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detected_at: Option<String>,
    /// Detecting system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_system: Option<String>,
    /// Steps to mitigate.
    #[serde(default)]
    pub mitigation_steps: Vec<String>,
    /// Metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// Fields the specification does not name, kept.
    #[serde(flatten, skip_deserializing)]
    pub extra: Map<String, Value>,
}

impl RiskAlert {
    /// Decodes and checks a payload.
    pub fn parse(data: &Value) -> Result<Self, HandleError> {
        let mut a: RiskAlert = decode("risk_alert", data)?;
        a.extra = extra_fields(
            data,
            &[
                "alert_id",
                "risk_type",
                "severity",
                "title",
                "description",
                "affected_resources",
                "risk_score",
                "detected_at",
                "source_system",
                "mitigation_steps",
                "metadata",
            ],
        );
        let bad = |m: String| HandleError::invalid("risk_alert", m);
        if a.alert_id.trim().is_empty() {
            return Err(bad("data.alert_id: must not be empty".into()));
        }
        if !(0.0..=1.0).contains(&a.risk_score) {
            return Err(bad(format!(
                "data.risk_score: expected a number from 0 to 1, got {}",
                a.risk_score
            )));
        }
        check_time("detected_at", &a.detected_at).map_err(bad)?;
        Ok(a)
    }
}

/// A mitigation step's implementation: gets the alert, returns what it did or why it failed.
pub type MitigationFn = Arc<dyn Fn(&RiskAlert) -> Result<String, String> + Send + Sync>;

/// The registered mitigation step implementations, by step name.
#[derive(Default, Clone)]
pub struct MitigationExecutor {
    steps: HashMap<String, MitigationFn>,
}

impl MitigationExecutor {
    /// Registers `f` for the step `name`.
    pub fn register(
        &mut self,
        name: impl Into<String>,
        f: impl Fn(&RiskAlert) -> Result<String, String> + Send + Sync + 'static,
    ) {
        self.steps.insert(name.into(), Arc::new(f));
    }

    /// Runs every step of `alert`: `{step, status: executed | failed | skipped, detail}`.
    pub fn run(&self, alert: &RiskAlert) -> Vec<Value> {
        alert
            .mitigation_steps
            .iter()
            .map(|step| match self.steps.get(step) {
                Some(f) => match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(alert))) {
                    Ok(Ok(detail)) => json!({"step": step, "status": "executed", "detail": detail}),
                    Ok(Err(e)) => json!({"step": step, "status": "failed", "detail": e}),
                    Err(_) => json!({"step": step, "status": "failed", "detail": "the executor panicked"}),
                },
                None => {
                    tracing::info!(alert_id = %alert.alert_id, step = %step, "mitigation step logged (no executor registered)");
                    json!({"step": step, "status": "skipped", "detail": "no executor registered; logged only"})
                }
            })
            .collect()
    }
}

/// One open alert on the dashboard.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenAlert {
    /// Alert id.
    pub alert_id: String,
    /// Severity.
    pub severity: Severity,
    /// Kind.
    pub risk_type: RiskType,
    /// Title.
    pub title: String,
    /// Score.
    pub risk_score: f64,
    /// Detected at.
    pub detected_at: Option<String>,
    /// Escalated to this severity, if escalated.
    pub escalated_to: Option<Severity>,
    /// Last event about it.
    pub event_id: String,
}

/// The risk dashboard (`risk_alerts/dashboard.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Dashboard {
    /// Open alerts, most severe (then highest score) first.
    pub open_alerts: Vec<OpenAlert>,
    /// Open alerts per severity.
    pub counts_by_severity: BTreeMap<String, u64>,
    /// Open alerts per risk type.
    pub counts_by_type: BTreeMap<String, u64>,
    /// Highest score among open alerts.
    pub highest_risk_score: f64,
    /// Alert events received (valid ones).
    pub alerts_received: u64,
    /// Escalations made.
    pub escalations: u64,
    /// When it last changed (RFC 3339).
    pub last_update: Option<String>,
}

/// The dashboard as this process sees it, and what it changed since it last
/// merged its changes into the file.
///
/// Several processes may handle alerts on one log directory, so the file is
/// never simply overwritten with one process's view: a write takes the file's
/// lock (`dashboard.json.lock`), reads what is there, adds this process's
/// changes (its alerts replace those of the same `alert_id`; its counts are
/// added), writes the result atomically and lets go.
struct DashState {
    /// The view: the file as last merged, plus the changes since.
    open: BTreeMap<String, OpenAlert>,
    received: u64,
    escalations: u64,
    last_update: Option<String>,
    /// Changes not yet in the file.
    delta: DashDelta,
    /// When the last write of the file ended.
    last_write: Option<Instant>,
    /// A delayed write is scheduled.
    flush_scheduled: bool,
    /// A write is under way (on some thread); no other starts meanwhile.
    writing: bool,
}

/// This process's changes to the dashboard since its last write.
#[derive(Default)]
struct DashDelta {
    alerts: BTreeMap<String, OpenAlert>,
    received: u64,
    escalations: u64,
}

impl DashDelta {
    fn is_empty(&self) -> bool {
        self.alerts.is_empty() && self.received == 0 && self.escalations == 0
    }
}

/// How often the dashboard file is rewritten at most.
pub const DASHBOARD_INTERVAL: Duration = Duration::from_millis(200);

/// The specification's `RiskAlertHandler`.
pub struct RiskAlertHandler {
    /// Escalate high and critical alerts and those scoring 0.8 or more.
    pub escalation_enabled: bool,
    ctx: Context,
    /// Where escalations are published; weak, so the bus that holds this
    /// handler is not kept alive by it.
    bus: Option<WeakEventBus>,
    log: JsonlWriter,
    mitigation: RwLock<MitigationExecutor>,
    dashboard_path: PathBuf,
    dash: Arc<Mutex<DashState>>,
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
        let dashboard_path = ctx.log_dir.join("risk_alerts/dashboard.json");
        let loaded: Dashboard = std::fs::read(&dashboard_path)
            .ok()
            .and_then(|b| match serde_json::from_slice(&b) {
                Ok(d) => Some(d),
                Err(e) => {
                    tracing::warn!(path = %dashboard_path.display(), error = %crate::error::chain(&e), "unreadable risk dashboard; starting a new one");
                    None
                }
            })
            .unwrap_or_default();
        let dash = DashState {
            open: loaded
                .open_alerts
                .into_iter()
                .map(|a| (a.alert_id.clone(), a))
                .collect(),
            received: loaded.alerts_received,
            escalations: loaded.escalations,
            last_update: loaded.last_update,
            delta: DashDelta::default(),
            last_write: None,
            flush_scheduled: false,
            writing: false,
        };
        Ok(RiskAlertHandler {
            escalation_enabled,
            ctx,
            bus: bus.map(EventBus::downgrade),
            log,
            mitigation: RwLock::new(MitigationExecutor::default()),
            dashboard_path,
            dash: Arc::new(Mutex::new(dash)),
        })
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

    /// The dashboard as it is now.
    pub fn dashboard(&self) -> Dashboard {
        render(&self.dash.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Writes the dashboard file now if it changed.
    pub fn flush_dashboard(&self) {
        write_dashboard(&self.dash, &self.dashboard_path);
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

        if let (Some(next), Some(bus)) = (escalated_to, &self.bus) {
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

        self.update_dashboard(&alert, escalated_to, event);

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

    fn update_dashboard(&self, a: &RiskAlert, escalated_to: Option<Severity>, event: &Event) {
        let write_now = {
            let mut d = self.dash.lock().unwrap_or_else(PoisonError::into_inner);
            let escalated = u64::from(escalated_to.is_some());
            d.received += 1;
            d.escalations += escalated;
            d.delta.received += 1;
            d.delta.escalations += escalated;
            let open = OpenAlert {
                alert_id: a.alert_id.clone(),
                severity: a.severity,
                risk_type: a.risk_type,
                title: a.title.clone(),
                risk_score: a.risk_score,
                detected_at: a.detected_at.clone(),
                escalated_to,
                event_id: event.event_id.clone(),
            };
            d.open.insert(a.alert_id.clone(), open.clone());
            d.delta.alerts.insert(a.alert_id.clone(), open);
            d.last_update = Some(now_rfc3339());
            // The interval counts from the end of the last write, and a write
            // never starts while another runs: a large dashboard takes a while to
            // merge, and a write per alert would make handling quadratic.
            let due = !d.writing
                && d.last_write
                    .is_none_or(|t| t.elapsed() >= DASHBOARD_INTERVAL);
            if !due && !d.flush_scheduled {
                // Write the last changes once the interval has passed.
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    d.flush_scheduled = true;
                    let (dash, path) = (self.dash.clone(), self.dashboard_path.clone());
                    rt.spawn(async move {
                        loop {
                            tokio::time::sleep(DASHBOARD_INTERVAL).await;
                            let (dash, path) = (dash.clone(), path.clone());
                            let wrote =
                                tokio::task::spawn_blocking(move || write_dashboard(&dash, &path))
                                    .await;
                            if !matches!(wrote, Ok(false)) {
                                break;
                            }
                        }
                    });
                }
            }
            due
        };
        if write_now {
            write_dashboard(&self.dash, &self.dashboard_path);
        }
    }
}

fn render(d: &DashState) -> Dashboard {
    let mut open: Vec<OpenAlert> = d.open.values().cloned().collect();
    open.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(b.risk_score.total_cmp(&a.risk_score))
            .then(a.alert_id.cmp(&b.alert_id))
    });
    let mut by_sev = BTreeMap::new();
    let mut by_type = BTreeMap::new();
    let mut max: f64 = 0.0;
    for a in &open {
        *by_sev.entry(a.severity.as_str().to_string()).or_insert(0) += 1;
        let t = serde_json::to_value(a.risk_type)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        *by_type.entry(t).or_insert(0) += 1;
        max = max.max(a.risk_score);
    }
    Dashboard {
        open_alerts: open,
        counts_by_severity: by_sev,
        counts_by_type: by_type,
        highest_risk_score: max,
        alerts_received: d.received,
        escalations: d.escalations,
        last_update: d.last_update.clone(),
    }
}

/// Merges this process's changes into the dashboard file (see [`DashState`]);
/// `false` when another write is under way (nothing done: try again later).
fn write_dashboard(dash: &Mutex<DashState>, path: &std::path::Path) -> bool {
    let delta = {
        let mut d = dash.lock().unwrap_or_else(PoisonError::into_inner);
        if d.writing {
            return false;
        }
        d.flush_scheduled = false;
        if d.delta.is_empty() {
            return true;
        }
        d.writing = true;
        std::mem::take(&mut d.delta)
    };
    let result = merge_into_file(path, &delta);
    let mut d = dash.lock().unwrap_or_else(PoisonError::into_inner);
    d.writing = false;
    d.last_write = Some(Instant::now());
    match result {
        Ok(merged) => {
            // The view becomes the file, plus what changed while it was written.
            if d.delta.is_empty() {
                d.last_update = merged.last_update.clone();
            }
            let mut open: BTreeMap<String, OpenAlert> = merged
                .open_alerts
                .into_iter()
                .map(|a| (a.alert_id.clone(), a))
                .collect();
            open.extend(d.delta.alerts.iter().map(|(k, v)| (k.clone(), v.clone())));
            d.open = open;
            d.received = merged.alerts_received + d.delta.received;
            d.escalations = merged.escalations + d.delta.escalations;
        }
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot write the risk dashboard");
            // Keep the changes for the next write.
            for (k, v) in delta.alerts {
                d.delta.alerts.entry(k).or_insert(v);
            }
            d.delta.received += delta.received;
            d.delta.escalations += delta.escalations;
        }
    }
    true
}

/// Under the file's lock: reads the dashboard, adds `delta`, writes it; the result.
fn merge_into_file(path: &std::path::Path, delta: &DashDelta) -> std::io::Result<Dashboard> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::path::PathBuf::from(lock_path))?;
    lock.lock()?;
    let on_disk: Dashboard = match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), error = %e, "unreadable risk dashboard; starting a new one");
            Dashboard::default()
        }),
        Err(_) => Dashboard::default(),
    };
    let mut state = DashState {
        open: on_disk
            .open_alerts
            .into_iter()
            .map(|a| (a.alert_id.clone(), a))
            .collect(),
        received: on_disk.alerts_received + delta.received,
        escalations: on_disk.escalations + delta.escalations,
        last_update: Some(now_rfc3339()),
        delta: DashDelta::default(),
        last_write: None,
        flush_scheduled: false,
        writing: false,
    };
    state
        .open
        .extend(delta.alerts.iter().map(|(k, v)| (k.clone(), v.clone())));
    let merged = render(&state);
    let written = serde_json::to_vec_pretty(&merged)
        .map_err(std::io::Error::other)
        .and_then(|bytes| write_atomic(path, &bytes));
    let _ = lock.unlock();
    written.map(|()| merged)
}

impl Drop for RiskAlertHandler {
    fn drop(&mut self) {
        write_dashboard(&self.dash, &self.dashboard_path);
    }
}

#[async_trait]
impl Handler for RiskAlertHandler {
    async fn handle(&self, event: Event) -> Result<(), HandlerError> {
        self.handle_risk_alert(&event).await?;
        Ok(())
    }

    fn name(&self) -> &str {
        "RiskAlertHandler"
    }
}
