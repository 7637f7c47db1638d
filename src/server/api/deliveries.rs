//! `/api/v1/deliveries`: the deliveries with their status, one with its attempts,
//! and sending a dead one again.

use super::common::{bad, internal, limit, not_found, page, params};
use crate::server::error::ApiError;
use crate::server::state::AppState;
use crate::webhook::RetryError;
use crate::webhook::history::{self, DeliveryStatus, Query};
use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;

/// `GET /api/v1/deliveries?endpoint_id=&event_id=&status=&limit=&cursor=`, newest first.
pub async fn list(
    State(s): State<Arc<AppState>>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let mut q = params(
        q.as_deref(),
        &["endpoint_id", "event_id", "status", "limit", "cursor"],
    )?;
    let status = match q.remove("status") {
        Some(st) => Some(DeliveryStatus::parse(&st).ok_or_else(|| {
            bad(
                "invalid_query",
                format!("status: {st:?} is not one of pending, delivered, failed, dead"),
            )
        })?),
        None => None,
    };
    let query = Query {
        endpoint_id: q.remove("endpoint_id"),
        event_id: q.remove("event_id"),
        status,
        limit: Some(limit(q.get("limit").map(String::as_str))?),
        cursor: q.remove("cursor"),
    };
    let engine = s.webhooks.engine().clone();
    let log_dir = s.log_dir.clone();
    let (data, next) =
        tokio::task::spawn_blocking(move || history::list(engine.outbox(), &log_dir, &query))
            .await
            .map_err(|e| internal(&e))??;
    Ok(Json(page(data, next)))
}

/// `GET /api/v1/deliveries/{id}`: the delivery and its `attempt_log`.
pub async fn show(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let engine = s.webhooks.engine().clone();
    let log_dir = s.log_dir.clone();
    let wanted = id.clone();
    let found =
        tokio::task::spawn_blocking(move || history::get(engine.outbox(), &log_dir, &wanted))
            .await
            .map_err(|e| internal(&e))??;
    let (view, attempts) = found.ok_or_else(|| not_found(format!("no delivery {id}")))?;
    let mut v = json!(view);
    if let Value::Object(m) = &mut v {
        m.insert("attempt_log".into(), json!(attempts));
    }
    Ok(Json(v))
}

/// `POST /api/v1/deliveries/{id}/retry`: a dead delivery goes out again, with a
/// fresh retry budget.
pub async fn retry(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match s.webhooks.engine().retry(&id).await {
        Ok(r) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({"id": r.id, "status": "pending"})),
        )
            .into_response()),
        Err(e @ RetryError::Pending(_)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "pending",
            e.to_string(),
        )),
        Err(e @ RetryError::NotDead(_)) => Err(not_found(e.to_string())),
        Err(RetryError::Outbox(e)) => Err(internal(&e)),
    }
}
