//! `/api/v1`: endpoints, deliveries, events, the live stream, the risk dashboard
//! and the dashboard page's session (docs/http-api.md).
//!
//! Every route but `/api/v1/session` needs `Authorization: Bearer $PM_API_TOKEN`,
//! or the session cookie, when the token is set.
//! Lists answer `{"data": [...], "next_cursor": "..."|null}`; pass `cursor` to get the
//! next page. Errors are `{"error","message"}` as on the other routes; a refused
//! field is named in the message (`filter.data.size.$gt: expected a number or a string`).

pub mod deliveries;
pub mod endpoints;
pub mod events;
pub mod risks;
pub mod session;
pub mod stream;

use crate::endpoint::EndpointError;
use crate::server::{ApiError, AppState, Body};
use crate::strict_json;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde_json::{Map, Value};
use std::sync::Arc;

/// The `/api/v1` routes. The token is checked before routing, from the headers
/// alone (`admission.rs`); `/api/v1/session`, where a token is given, is exempt.
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/api/v1/endpoints",
            get(endpoints::list).post(endpoints::create),
        )
        .route(
            "/api/v1/endpoints/{id}",
            get(endpoints::show)
                .patch(endpoints::update)
                .delete(endpoints::remove),
        )
        .route("/api/v1/endpoints/{id}/secret", get(endpoints::secret))
        .route(
            "/api/v1/endpoints/{id}/secret/rotate",
            post(endpoints::rotate),
        )
        .route("/api/v1/endpoints/{id}/test", post(endpoints::test))
        .route("/api/v1/endpoints/{id}/recover", post(endpoints::recover))
        .route("/api/v1/deliveries", get(deliveries::list))
        .route("/api/v1/deliveries/{id}", get(deliveries::show))
        .route("/api/v1/deliveries/{id}/retry", post(deliveries::retry))
        .route("/api/v1/events", get(events::list))
        .route("/api/v1/events/{id}", get(events::show))
        .route("/api/v1/stream", get(stream::stream))
        .route("/api/v1/risks", get(risks::dashboard))
        .route("/api/v1/risks/{alert_id}/resolve", post(risks::resolve))
        .route(
            "/api/v1/session",
            get(session::status)
                .post(session::sign_in)
                .delete(session::sign_out),
        )
}

/// The metrics label of an `/api/v1` path: its route with `{id}` for ids.
pub fn route_label(path: &str) -> &'static str {
    let parts: Vec<&str> = path.trim_start_matches("/api/v1/").split('/').collect();
    match parts.as_slice() {
        ["endpoints"] => "/api/v1/endpoints",
        ["endpoints", _] => "/api/v1/endpoints/{id}",
        ["endpoints", _, "secret"] => "/api/v1/endpoints/{id}/secret",
        ["endpoints", _, "secret", "rotate"] => "/api/v1/endpoints/{id}/secret/rotate",
        ["endpoints", _, "test"] => "/api/v1/endpoints/{id}/test",
        ["endpoints", _, "recover"] => "/api/v1/endpoints/{id}/recover",
        ["deliveries"] => "/api/v1/deliveries",
        ["deliveries", _] => "/api/v1/deliveries/{id}",
        ["deliveries", _, "retry"] => "/api/v1/deliveries/{id}/retry",
        ["events"] => "/api/v1/events",
        ["events", _] => "/api/v1/events/{id}",
        ["stream"] => "/api/v1/stream",
        ["risks"] => "/api/v1/risks",
        ["risks", _, "resolve"] => "/api/v1/risks/{alert_id}/resolve",
        ["session"] => "/api/v1/session",
        _ => "other",
    }
}

/// A JSON object body (duplicate keys refused); an empty body is `{}`.
pub fn object(body: &Body) -> Result<Map<String, Value>, ApiError> {
    if body.bytes().iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match strict_json::from_slice(body.bytes()) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(bad(
            "invalid_body",
            format!(
                "expected a JSON object, got {}",
                crate::event::json_kind(&other)
            ),
        )),
        Err(e) => Err(bad("invalid_json", e.to_string())),
    }
}

/// A 400 answer.
pub fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

/// A 404 answer.
pub fn not_found(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
}

/// A 500 answer for a failure of the server's own storage.
pub fn internal(e: &(dyn std::error::Error + 'static)) -> ApiError {
    tracing::error!(error = %crate::error::chain(e), "API request failed");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        crate::error::chain(e),
    )
}

impl From<EndpointError> for ApiError {
    fn from(e: EndpointError) -> Self {
        match &e {
            EndpointError::NotFound(_) => not_found(e.to_string()),
            EndpointError::ReadOnly(_) => {
                ApiError::new(StatusCode::CONFLICT, "read_only", e.to_string())
            }
            EndpointError::Invalid(_) => bad("invalid_field", e.to_string()),
            _ => internal(&e),
        }
    }
}

impl From<crate::webhook::WebhookError> for ApiError {
    fn from(e: crate::webhook::WebhookError) -> Self {
        if let crate::webhook::WebhookError::UnknownCursor(_) = e {
            return bad("invalid_query", e.to_string());
        }
        internal(&e)
    }
}

/// A time given in a query or body: RFC 3339, a date, or a duration ago (`90m`).
pub fn when(field: &str, v: &str) -> Result<f64, ApiError> {
    crate::timespec::parse_when(v, crate::event::now_unix())
        .map_err(|e| bad("invalid_field", format!("{field}: {e}")))
}

/// The `limit` of a list: 1 to 1000, default 50.
pub fn limit(v: Option<&str>) -> Result<usize, ApiError> {
    crate::query::limit(v).map_err(|e| bad("invalid_field", e.0))
}

/// The parameters of a query string, refusing names not in `allowed` and repeats.
pub fn params(
    raw: Option<&str>,
    allowed: &[&str],
) -> Result<std::collections::HashMap<String, String>, ApiError> {
    crate::query::params(raw, allowed).map_err(|e| bad("invalid_query", e.0))
}

/// A list page.
pub fn page<T: serde::Serialize>(data: Vec<T>, next: Option<String>) -> Value {
    serde_json::json!({"data": data, "next_cursor": next})
}
