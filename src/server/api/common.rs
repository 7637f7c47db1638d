//! What the `/api/v1` handlers share: reading a JSON object body, query
//! parameters, times and pages, and the errors they answer.

use crate::endpoint::EndpointError;
use crate::server::error::{ApiError, Body};
use crate::strict_json;
use axum::http::StatusCode;
use serde_json::{Map, Value};

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
