//! `/api/v1/events`: events from the log, newest first, and one event with its
//! handler outcomes and deliveries.

use super::common::{bad, internal, limit, not_found, page, params, when};
use crate::server::error::ApiError;
use crate::server::state::AppState;
use crate::webhook::history::{self, Query};
use crate::{Event, journal, jsonl};
use axum::Json;
use axum::extract::{Path, RawQuery, State};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

/// `GET /api/v1/events?type=&since=&until=&limit=&cursor=`: newest first; the
/// cursor is the last event id of the previous page.
pub async fn list(
    State(s): State<Arc<AppState>>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let q = params(q.as_deref(), &["type", "since", "until", "limit", "cursor"])?;
    let since = q
        .get("since")
        .map(|v| when("since", v))
        .transpose()?
        .unwrap_or(0.0);
    let until = q
        .get("until")
        .map(|v| when("until", v))
        .transpose()?
        .unwrap_or(f64::MAX);
    if since > until {
        return Err(bad("invalid_query", "since: later than until"));
    }
    let limit = limit(q.get("limit").map(String::as_str))?;
    let ty = q.get("type").cloned();
    let cursor = q.get("cursor").cloned();
    let log_dir = s.log_dir.clone();
    let (data, next) = tokio::task::spawn_blocking(move || {
        // The newest `limit + 1` before the cursor, in one pass over the range.
        let mut keep: VecDeque<Event> = VecDeque::with_capacity(limit + 1);
        let mut met = cursor.is_none();
        for e in journal::iter_range(&log_dir, since, until) {
            let e = e?;
            if cursor.as_deref() == Some(e.event_id.as_str()) {
                met = true;
                break;
            }
            if ty.as_deref().is_some_and(|t| t != e.event_type) {
                continue;
            }
            if keep.len() == limit + 1 {
                keep.pop_front();
            }
            keep.push_back(e);
        }
        if !met {
            return Ok(Err(bad(
                "invalid_query",
                format!(
                    "cursor: no event {:?} in the range (pass the next_cursor of a previous page)",
                    cursor.unwrap_or_default()
                ),
            )));
        }
        let more = keep.len() > limit;
        if more {
            keep.pop_front();
        }
        let data: Vec<Value> = keep.iter().rev().map(Event::to_value).collect();
        let next = more.then(|| keep.front().map(|e| e.event_id.clone()).unwrap_or_default());
        Ok::<_, crate::error::LogError>(Ok((data, next)))
    })
    .await
    .map_err(|e| internal(&e))?
    .map_err(|e| internal(&e))??;
    Ok(Json(page(data, next)))
}

/// The handler log lines of `event_id`, with the handler's name.
fn handler_outcomes(log_dir: &std::path::Path, event_id: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for (handler, rel) in crate::handlers::HANDLER_LOGS {
        for line in jsonl::iter_rotated::<Value>(&log_dir.join(rel)) {
            if line.get("event_id").and_then(Value::as_str) == Some(event_id) {
                out.push(json!({"handler": handler, "log": rel, "line": line}));
            }
        }
    }
    out
}

/// `GET /api/v1/events/{id}`: `{"event", "handlers", "deliveries"}`.
pub async fn show(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let log_dir: PathBuf = s.log_dir.clone();
    let engine = s.webhooks.engine().clone();
    let wanted = id.clone();
    let found = tokio::task::spawn_blocking(move || {
        let mut event = None;
        for e in journal::iter_range(&log_dir, 0.0, f64::MAX) {
            let e = e?;
            if e.event_id == wanted {
                event = Some(e);
            }
        }
        let Some(event) = event else {
            return Ok::<_, anyhow::Error>(None);
        };
        let handlers = handler_outcomes(&log_dir, &wanted);
        let query = Query {
            event_id: Some(wanted.clone()),
            limit: Some(history::MAX_LIMIT),
            ..Query::default()
        };
        let (deliveries, _) = history::list(engine.outbox(), &log_dir, &query)?;
        Ok(Some(
            json!({"event": event.to_value(), "handlers": handlers, "deliveries": deliveries}),
        ))
    })
    .await
    .map_err(|e| internal(&e))?
    .map_err(|e| internal(e.as_ref()))?;
    found
        .map(Json)
        .ok_or_else(|| not_found(format!("no event {id} in the event log")))
}
