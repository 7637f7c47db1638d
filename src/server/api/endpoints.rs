//! `/api/v1/endpoints`: list, create, show, change, remove, the secret and its
//! rotation, a test delivery, and recovery of failed deliveries.

use super::common::{bad, limit, object, page, params, when};
use crate::Event;
use crate::endpoint::{DEFAULT_OVERLAP, Endpoint, EndpointError};
use crate::server::error::{ApiError, Body};
use crate::server::state::AppState;
use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// The longest rotation overlap: 7 days.
const MAX_OVERLAP_SECS: u64 = 7 * 24 * 3600;

/// `GET /api/v1/endpoints?limit=&cursor=`: environment endpoints first, then by id,
/// each with its `health` as in `GET /api/v1/endpoints/{id}`.
pub async fn list(
    State(s): State<Arc<AppState>>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let q = params(q.as_deref(), &["limit", "cursor"])?;
    let limit = limit(q.get("limit").map(String::as_str))?;
    let all = s.endpoints.list();
    let start = match q.get("cursor") {
        Some(c) => all
            .iter()
            .position(|e| &e.id == c)
            .map(|i| i + 1)
            .ok_or_else(|| bad("invalid_query", format!("cursor: no endpoint {c}")))?,
        None => 0,
    };
    let rest = &all[start.min(all.len())..];
    let engine = s.webhooks.engine();
    let shown: Vec<Value> = rest
        .iter()
        .take(limit)
        .map(|e| merged(json!(e), json!({"health": engine.health(&e.id)})))
        .collect();
    let next = (rest.len() > limit).then(|| {
        rest.get(limit.saturating_sub(1))
            .map(|e| e.id.clone())
            .unwrap_or_default()
    });
    Ok(Json(page(shown, next)))
}

/// `POST /api/v1/endpoints`: 201 with the endpoint and its `secret` (or `public_key`).
pub async fn create(State(s): State<Arc<AppState>>, body: Body) -> Result<Response, ApiError> {
    let fields = object(&body)?;
    let (ep, secret) = s.endpoints.create(&fields).await?;
    tracing::info!(endpoint = %ep.id, url = %crate::webhook::delivery::redact_url(&ep.url), "endpoint created");
    Ok((StatusCode::CREATED, Json(merged(json!(ep), secret))).into_response())
}

/// `GET /api/v1/endpoints/{id}`: the endpoint and its `health` (this server's figures
/// of the last hour and its breaker).
pub async fn show(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let ep = s
        .endpoints
        .get(&id)
        .ok_or_else(|| ApiError::from(EndpointError::NotFound(id.clone())))?;
    let health = s.webhooks.engine().health(&id);
    Ok(Json(merged(json!(ep), json!({ "health": health }))))
}

/// `PATCH /api/v1/endpoints/{id}`: the fields given change; `null` unsets.
pub async fn update(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<Endpoint>, ApiError> {
    let fields = object(&body)?;
    Ok(Json(s.endpoints.update(&id, &fields).await?))
}

/// `DELETE /api/v1/endpoints/{id}`: its pending deliveries become dead letters.
pub async fn remove(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let ep = s.endpoints.remove(&id).await?;
    let dead = s.webhooks.engine().endpoint_removed(&ep.id).await?;
    tracing::info!(endpoint = %ep.id, dead_lettered = dead, "endpoint removed");
    Ok(Json(
        json!({"id": ep.id, "deleted": true, "dead_lettered": dead}),
    ))
}

/// `GET /api/v1/endpoints/{id}/secret`.
pub async fn secret(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(s.endpoints.secret(&id).await?))
}

/// `POST /api/v1/endpoints/{id}/secret/rotate` `{"overlap_secs"?}`: the new secret;
/// the old one keeps signing for the overlap (default 24 h).
pub async fn rotate(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let fields = object(&body)?;
    let mut overlap = DEFAULT_OVERLAP;
    for (k, v) in &fields {
        match (k.as_str(), v.as_u64()) {
            ("overlap_secs", Some(n)) if n <= MAX_OVERLAP_SECS => overlap = Duration::from_secs(n),
            ("overlap_secs", _) => {
                return Err(bad(
                    "invalid_field",
                    format!(
                        "overlap_secs: expected a whole number of seconds from 0 to {MAX_OVERLAP_SECS}"
                    ),
                ));
            }
            _ => {
                return Err(bad(
                    "invalid_field",
                    format!("{k}: unknown field (expected overlap_secs)"),
                ));
            }
        }
    }
    let secret = s.endpoints.rotate(&id, overlap).await?;
    let until = chrono::Utc::now() + chrono::Duration::seconds(overlap.as_secs() as i64);
    Ok(Json(merged(
        secret,
        json!({"previous_valid_until": until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)}),
    )))
}

/// `a` with the members of `b` added.
fn merged(mut a: Value, b: Value) -> Value {
    if let (Value::Object(m), Value::Object(x)) = (&mut a, b) {
        m.extend(x);
    }
    a
}

/// `POST /api/v1/endpoints/{id}/test`: a signed `endpoint_test` event to this endpoint only.
pub async fn test(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let m = match s.endpoints.managed(&id) {
        Some(m) => m,
        None if s.endpoints.get(&id).is_some() => {
            return Err(EndpointError::ReadOnly(id).into());
        }
        None => return Err(EndpointError::NotFound(id).into()),
    };
    let event = Event::new(
        "endpoint_test",
        json!({"endpoint_id": id, "message": "a test delivery from pm-events"}),
    );
    let delivery = s.webhooks.trigger_endpoint(&event, &m).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"event_id": event.event_id, "delivery_id": delivery})),
    )
        .into_response())
}

/// `POST /api/v1/endpoints/{id}/recover` `{"since","until"?}`: its dead deliveries
/// created in that range go out again.
pub async fn recover(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    if s.endpoints.get(&id).is_none() {
        return Err(EndpointError::NotFound(id).into());
    }
    let fields = object(&body)?;
    let (mut since, mut until) = (None, f64::MAX);
    for (k, v) in &fields {
        let text = v.as_str().ok_or_else(|| {
            bad(
                "invalid_field",
                format!("{k}: expected a time (RFC 3339 or a duration ago, 90m)"),
            )
        })?;
        match k.as_str() {
            "since" => since = Some(when("since", text)?),
            "until" => until = when("until", text)?,
            _ => {
                return Err(bad(
                    "invalid_field",
                    format!("{k}: unknown field (expected since, until)"),
                ));
            }
        }
    }
    let since = since.ok_or_else(|| bad("invalid_field", "since: required"))?;
    let n = s.webhooks.engine().recover(&id, since, until).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"recovered": n}))).into_response())
}
