//! The specification's built-in handlers, as the engine's: `FileChangeHandler`,
//! `ReportReadyHandler`, `RiskAlertHandler`, `WebhookHandler`.
//!
//! Each is configured from the environment as the binary is (log directory,
//! SMTP, the webhook route variables and `WEBHOOK_SIGNATURE_SECRET`). Their
//! `handle_*` methods may be awaited directly; subscribed on a bus
//! (`bus.subscribe("file_change", h.handle_file_change)`) they run in the
//! engine itself, with no Python in between.

use crate::awaitable::drive;
use crate::convert::to_py;
use crate::event::PyEvent;
use pm_events::Config;
use pm_events::handlers::{
    Context, FileChangeHandler, ReportReadyHandler, RiskAlertHandler, mail::Mailer,
};
use pm_events::webhook::WebhookHandler;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::system::config;

/// The built-in handlers' context for `cfg`, with the process's delivery (see
/// [`crate::system`]), when any route or endpoint is configured.
fn context(py: Python<'_>, cfg: &Config) -> PyResult<Context> {
    let mut ctx = Context::from_config(cfg);
    ctx.webhooks = crate::system::webhooks(py, cfg, false)?;
    Ok(ctx)
}

fn setup_error(e: impl std::error::Error + 'static) -> PyErr {
    crate::errors::ConfigError::new_err(pm_events::error::chain(&e))
}

/// The engine's event of a Python `Event`.
fn event_of(py: Python<'_>, event: &Bound<'_, PyEvent>) -> PyResult<pm_events::Event> {
    event.borrow().to_event(py)
}

fn line_to_py(py: Python<'_>, line: serde_json::Value) -> PyResult<Py<PyAny>> {
    Ok(to_py(py, &line)?.unbind())
}

fn handle_error(e: pm_events::handlers::HandleError) -> PyErr {
    PyValueError::new_err(pm_events::error::chain(&e))
}

/// Records file changes: `FileChangeHandler(log_changes=True)`.
#[pyclass(name = "FileChangeHandler", module = "pm.events._native")]
pub struct PyFileChangeHandler(pub(crate) Arc<FileChangeHandler>);

#[pymethods]
impl PyFileChangeHandler {
    #[new]
    #[pyo3(signature = (log_changes=true))]
    fn new(py: Python<'_>, log_changes: bool) -> PyResult<Self> {
        Ok(Self(Arc::new(
            FileChangeHandler::with_context(log_changes, context(py, &config()?)?)
                .map_err(setup_error)?,
        )))
    }

    /// Whether changes are written to `file_changes/file_changes.jsonl`.
    #[getter]
    fn log_changes(&self) -> bool {
        self.0.log_changes
    }

    /// `await h.handle_file_change(event)`: the log line written (a dict); a
    /// `ValueError` naming the field for an invalid payload.
    fn handle_file_change(
        &self,
        py: Python<'_>,
        event: &Bound<'_, PyEvent>,
    ) -> PyResult<Py<PyAny>> {
        let (h, e) = (self.0.clone(), event_of(py, event)?);
        drive(
            py,
            async move { h.handle_file_change(&e).await.map_err(handle_error) },
            line_to_py,
        )
    }
}

/// Validates and distributes reports: `ReportReadyHandler(auto_distribute=True)`.
#[pyclass(name = "ReportReadyHandler", module = "pm.events._native")]
pub struct PyReportReadyHandler(pub(crate) Arc<ReportReadyHandler>);

#[pymethods]
impl PyReportReadyHandler {
    #[new]
    #[pyo3(signature = (auto_distribute=true))]
    fn new(py: Python<'_>, auto_distribute: bool) -> PyResult<Self> {
        let cfg = config()?;
        let mailer = Mailer::from_config(&cfg).map_err(setup_error)?;
        Ok(Self(Arc::new(
            ReportReadyHandler::with_context(auto_distribute, context(py, &cfg)?, mailer)
                .map_err(setup_error)?,
        )))
    }

    /// Whether reports are mailed to their recipients.
    #[getter]
    fn auto_distribute(&self) -> bool {
        self.0.auto_distribute
    }

    /// `await h.handle_report_ready(event)`: the log line written (a dict).
    fn handle_report_ready(
        &self,
        py: Python<'_>,
        event: &Bound<'_, PyEvent>,
    ) -> PyResult<Py<PyAny>> {
        let (h, e) = (self.0.clone(), event_of(py, event)?);
        drive(
            py,
            async move { h.handle_report_ready(&e).await.map_err(handle_error) },
            line_to_py,
        )
    }
}

/// Escalates, mitigates and tracks risk alerts: `RiskAlertHandler(escalation_enabled=True)`.
#[pyclass(name = "RiskAlertHandler", module = "pm.events._native")]
pub struct PyRiskAlertHandler(pub(crate) Arc<RiskAlertHandler>);

#[pymethods]
impl PyRiskAlertHandler {
    #[new]
    #[pyo3(signature = (escalation_enabled=true))]
    fn new(py: Python<'_>, escalation_enabled: bool) -> PyResult<Self> {
        Ok(Self(Arc::new(
            RiskAlertHandler::with_context(escalation_enabled, context(py, &config()?)?, None)
                .map_err(setup_error)?,
        )))
    }

    /// Whether high alerts (and those scoring 0.8 or more) are escalated.
    #[getter]
    fn escalation_enabled(&self) -> bool {
        self.0.escalation_enabled
    }

    /// `await h.handle_risk_alert(event)`: the log line written (a dict).
    fn handle_risk_alert(&self, py: Python<'_>, event: &Bound<'_, PyEvent>) -> PyResult<Py<PyAny>> {
        let (h, e) = (self.0.clone(), event_of(py, event)?);
        drive(
            py,
            async move { h.handle_risk_alert(&e).await.map_err(handle_error) },
            line_to_py,
        )
    }

    /// The risk dashboard as a dict (`risk_alerts/dashboard.json`).
    fn dashboard<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let d = serde_json::to_value(self.0.dashboard())
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        to_py(py, &d)
    }
}

/// Sends and receives signed webhooks: `WebhookHandler(max_retries=...)`.
#[pyclass(name = "WebhookHandler", module = "pm.events._native")]
pub struct PyWebhookHandler(pub(crate) Arc<WebhookHandler>, u32);

fn bool_to_py(py: Python<'_>, b: bool) -> PyResult<Py<PyAny>> {
    Ok(pyo3::types::PyBool::new(py, b)
        .to_owned()
        .into_any()
        .unbind())
}

fn delivery_to_py(py: Python<'_>, id: Option<String>) -> PyResult<Py<PyAny>> {
    Ok(match id {
        Some(id) => pyo3::types::PyString::new(py, &id).into_any().unbind(),
        None => py.None(),
    })
}

/// `payload` as bytes: `bytes` as they are, `str` as UTF-8.
fn payload_bytes(payload: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    if let Ok(b) = payload.cast::<PyBytes>() {
        return Ok(b.as_bytes().to_vec());
    }
    payload
        .extract::<String>()
        .map(String::into_bytes)
        .map_err(|_| pyo3::exceptions::PyTypeError::new_err("payload: expected bytes or str"))
}

#[pymethods]
impl PyWebhookHandler {
    /// `max_retries`: retries after the first attempt (default `PM_WEBHOOK_MAX_RETRIES`, else 5).
    #[new]
    #[pyo3(signature = (max_retries=None))]
    fn new(py: Python<'_>, max_retries: Option<u32>) -> PyResult<Self> {
        let mut cfg = config()?;
        let h = match max_retries {
            // Other settings than the process's: an engine of its own, started the same way.
            Some(n) if n != cfg.webhook_max_retries => {
                cfg.webhook_max_retries = n;
                crate::system::own_webhooks(py, &cfg)?
            }
            _ => crate::system::webhooks(py, &cfg, true)?.ok_or_else(|| {
                crate::errors::ConfigError::new_err("the webhook handler could not be made")
            })?,
        };
        Ok(Self(h, cfg.webhook_max_retries))
    }

    /// Retries after the first attempt.
    #[getter]
    fn max_retries(&self) -> u32 {
        self.1
    }

    /// `await h.handle_webhook_trigger(event)`: queues the event's webhook if a
    /// route is configured for its type; the delivery id, or `None`.
    fn handle_webhook_trigger(
        &self,
        py: Python<'_>,
        event: &Bound<'_, PyEvent>,
    ) -> PyResult<Py<PyAny>> {
        let (h, e) = (self.0.clone(), event_of(py, event)?);
        drive(
            py,
            async move {
                h.handle_webhook_trigger(&e)
                    .await
                    .map_err(|e| crate::errors::PmEventsError::new_err(pm_events::error::chain(&e)))
            },
            delivery_to_py,
        )
    }

    /// `await h.handle_incoming_webhook(payload, signature, headers)`: `True` once a
    /// validly signed webhook is published on the global bus (`get_event_bus()`),
    /// `False` (nothing published) for a bad signature or payload. `payload` is
    /// the body, `bytes` or `str`; `signature` the `X-Webhook-Signature` value;
    /// `headers` the request's (Standard Webhooks headers are checked too).
    #[pyo3(signature = (payload, signature=None, headers=None))]
    fn handle_incoming_webhook(
        &self,
        py: Python<'_>,
        payload: &Bound<'_, PyAny>,
        signature: Option<String>,
        headers: Option<BTreeMap<String, String>>,
    ) -> PyResult<Py<PyAny>> {
        let body = payload_bytes(payload)?;
        let bus = crate::system::global_bus(py)?.0;
        let h = self.0.clone();
        let headers = headers.unwrap_or_default();
        drive(
            py,
            async move {
                match h
                    .handle_incoming_webhook(&bus, &body, signature.as_deref(), &headers)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(e) => {
                        tracing::warn!(error = %pm_events::error::chain(&e), "incoming webhook refused");
                        Ok(false)
                    }
                }
            },
            bool_to_py,
        )
    }

    /// Whether `signature` (`sha256=<hex>`) is the HMAC-SHA256 of `payload` under
    /// `WEBHOOK_SIGNATURE_SECRET` (compared in constant time).
    fn verify_webhook_signature(
        &self,
        payload: &Bound<'_, PyAny>,
        signature: &str,
    ) -> PyResult<bool> {
        Ok(self
            .0
            .verify_webhook_signature(&payload_bytes(payload)?, signature))
    }
}
