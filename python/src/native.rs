//! The engine's own handler behind a built-in handler's method: subscribing
//! `FileChangeHandler().handle_file_change` runs the engine's handler, with no
//! Python in between.

use crate::handlers::{
    PyFileChangeHandler, PyReportReadyHandler, PyRiskAlertHandler, PyWebhookHandler,
};
use pm_events::EventBus;
use pm_events::handler::Handler;
use pyo3::prelude::*;
use std::sync::Arc;

/// The engine's handler behind `callable` when it is a built-in handler's method
/// (`FileChangeHandler().handle_file_change` and the like); a risk handler then
/// publishes its escalations on `bus`.
pub fn native_handler(
    callable: &Bound<'_, PyAny>,
    bus: &EventBus,
) -> PyResult<Option<Arc<dyn Handler>>> {
    let (Ok(owner), Ok(name)) = (
        callable.getattr("__self__"),
        callable
            .getattr("__name__")
            .and_then(|n| n.extract::<String>()),
    ) else {
        return Ok(None);
    };
    Ok(match name.as_str() {
        "handle_file_change" => owner
            .cast::<PyFileChangeHandler>()
            .ok()
            .map(|h| h.borrow().0.clone() as Arc<dyn Handler>),
        "handle_report_ready" => owner
            .cast::<PyReportReadyHandler>()
            .ok()
            .map(|h| h.borrow().0.clone() as Arc<dyn Handler>),
        "handle_risk_alert" => owner.cast::<PyRiskAlertHandler>().ok().map(|h| {
            let h = h.borrow().0.clone();
            h.publish_escalations_on(bus);
            h as Arc<dyn Handler>
        }),
        "handle_webhook_trigger" => owner
            .cast::<PyWebhookHandler>()
            .ok()
            .map(|h| h.borrow().0.clone() as Arc<dyn Handler>),
        _ => None,
    })
}
