//! The errors the server answers (`{"error","message"}` with a status) and the
//! body extractor that answers size and read errors as JSON.

use crate::BusError;
use crate::door::DoorError;
use crate::error::chain;
use crate::handlers::Refusal;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::collections::BTreeMap;

/// An error answer: status plus JSON `{"error","message"}`.
pub struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) error: &'static str,
    pub(crate) message: String,
    pub(crate) retry_after: Option<u32>,
    /// Whether the answer closes the connection.
    pub(crate) close: bool,
}

impl ApiError {
    /// An answer with `status`, the code `error` and `message`.
    pub(crate) fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            error,
            message: message.into(),
            retry_after: None,
            close: false,
        }
    }
}

impl ApiError {
    /// The same answer with `Retry-After: secs`.
    pub(crate) fn retry_after(mut self, secs: u32) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// The same answer with `Connection: close`: the connection is not kept.
    pub(crate) fn closing(mut self) -> Self {
        self.close = true;
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            Json(json!({"error": self.error, "message": self.message})),
        )
            .into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.close {
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        r
    }
}

impl From<BusError> for ApiError {
    fn from(e: BusError) -> Self {
        match e {
            BusError::QueueFull { .. } => ApiError {
                retry_after: Some(1),
                ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "queue_full", e.to_string())
            },
            BusError::InvalidEvent(m) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_event", m),
            BusError::Log(ref l) if l.is_storage_full() => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "storage_full",
                format!("{}; the event was not accepted", chain(&e)),
            ),
            BusError::NotRunning(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is shutting down",
            ),
            other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", chain(&other)),
        }
    }
}

impl ApiError {
    /// The answer to a refusal of the door (`POST /events`' error codes).
    pub fn from_door(e: DoorError) -> ApiError {
        match e {
            DoorError::Malformed(m) => ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", m),
            DoorError::Invalid(m) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_event", m),
            e @ DoorError::UnsupportedMediaType(_) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                e.to_string(),
            ),
            DoorError::Refused(r) => match r.downcast::<Refusal>() {
                Ok(r) => (*r).into(),
                Err(other) => {
                    ApiError::new(StatusCode::BAD_REQUEST, "not_allowed", other.to_string())
                }
            },
            DoorError::Bus(e) => e.into(),
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Invalid(e) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_payload", e.to_string())
            }
            other => ApiError::new(StatusCode::BAD_REQUEST, "not_allowed", other.to_string()),
        }
    }
}

/// The body, with size-limit and read errors answered as JSON.
pub struct Body(pub(crate) Bytes);

impl Body {
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Bytes::from_request(req, state).await {
            Ok(b) => Ok(Body(b)),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the body is larger than the limit (PM_MAX_BODY_BYTES)",
            )),
            Err(e) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "unreadable_body",
                e.body_text(),
            )),
        }
    }
}

/// The headers with lower-case names, as the incoming-webhook checks take them.
pub(crate) fn lower_headers(h: &HeaderMap) -> BTreeMap<String, String> {
    h.iter()
        .filter_map(|(k, v)| {
            v.to_str()
                .ok()
                .map(|v| (k.as_str().to_ascii_lowercase(), v.to_string()))
        })
        .collect()
}
