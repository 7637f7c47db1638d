//! `/api/v1/risks`: the risk dashboard, and resolving an open alert.
//!
//! Resolving goes through the bus like any other change: the route publishes a
//! `risk_resolved` event (written ahead to the event log, delivered to the
//! endpoints that take it) and the risk handler removes the alert when it handles
//! that event. The route waits a moment for that, so the page can show the
//! dashboard without the alert as soon as the answer comes.

use super::common::{bad, object, params};
use crate::server::error::{ApiError, Body};
use crate::server::state::AppState;
use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// How long the resolve route waits for the handler to remove the alert.
const RESOLVE_WAIT: Duration = Duration::from_secs(5);

/// `GET /api/v1/risks`: `risk_alerts/dashboard.json` as it is now, with what this
/// server handled since it was last written.
pub async fn dashboard(
    State(s): State<Arc<AppState>>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    params(q.as_deref(), &[])?;
    let risks = s.risks.clone();
    let d = tokio::task::spawn_blocking(move || risks.current_dashboard())
        .await
        .map_err(|e| super::common::internal(&e))?;
    Ok(Json(json!(d)))
}

/// `POST /api/v1/risks/{alert_id}/resolve` with `{"note"?, "resolved_by"?}`:
/// publishes `risk_resolved`; 200 `{"event_id","alert_id","resolved":true}` once
/// the alert is off the dashboard, 202 with `"resolved":false` when it is still
/// being handled after a few seconds (a long queue, or another node of the
/// consumer group took the event); 404 when the alert is not open.
pub async fn resolve(
    State(s): State<Arc<AppState>>,
    Path(alert_id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let mut fields = object(&body)?;
    let mut text = |name: &str| -> Result<Option<String>, ApiError> {
        match fields.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(v)) if v.len() <= 4096 => Ok(Some(v)),
            Some(Value::String(_)) => Err(bad(
                "invalid_field",
                format!("{name}: longer than 4096 bytes"),
            )),
            Some(_) => Err(bad("invalid_field", format!("{name}: expected a string"))),
        }
    };
    let note = text("note")?;
    let resolved_by = text("resolved_by")?.unwrap_or_else(|| "api".into());
    if let Some(k) = fields.keys().next() {
        return Err(bad(
            "invalid_field",
            format!("{k}: unknown field (expected note, resolved_by)"),
        ));
    }
    let risks = s.risks.clone();
    let current = tokio::task::spawn_blocking(move || risks.current_dashboard())
        .await
        .map_err(|e| super::common::internal(&e))?;
    let Some(alert) = current.open_alerts.iter().find(|a| a.alert_id == alert_id) else {
        return Err(super::common::not_found(format!(
            "no open risk alert {alert_id:?} on the dashboard"
        )));
    };
    let mut changes = s.risks.watch_dashboard();
    let data = json!({
        "alert_id": alert_id,
        "resolved_by": resolved_by,
        "note": note,
        "resolved_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "title": alert.title,
        "severity": alert.severity,
    });
    let event_id = s.bus.try_publish("risk_resolved", Some(data)).await?;
    // Every change of the handler's dashboard wakes this; the file is read
    // again (it is small), since the alert may have come from another process.
    let deadline = tokio::time::Instant::now() + RESOLVE_WAIT;
    let mut resolved = false;
    while !resolved {
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => {
                resolved = !s
                    .risks
                    .current_dashboard()
                    .open_alerts
                    .iter()
                    .any(|a| a.alert_id == alert_id);
            }
            Ok(Err(_)) | Err(_) => break,
        }
    }
    let status = if resolved {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((
        status,
        Json(json!({"event_id": event_id, "alert_id": alert_id, "resolved": resolved})),
    )
        .into_response())
}
