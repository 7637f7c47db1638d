//! What a request must show before the server spends anything on it, so that
//! hostile or slow clients cannot take the server's capacity (docs/http-api.md,
//! "Limits").
//!
//! In order, for every request but `GET /healthz` (which is answered at once,
//! holds no slot and reads no body):
//!
//! 1. **Credentials from the headers.** A route that needs `PM_API_TOKEN` is
//!    refused with 401 and `Connection: close` before any body byte is read;
//!    `/webhooks/incoming` must carry a signature header of the right shape (for
//!    Standard Webhooks, a timestamp within the tolerance) — the signature
//!    itself needs the body and is checked after it.
//! 2. **The body, under its own deadline.** A `Content-Length` over the limit
//!    is refused at once (413). Otherwise the body is read whole within
//!    `body_timeout` (408 and the connection closed when it is late), before the
//!    handler's own time limit starts. Unauthenticated bodies are read
//!    `max_pending_bodies` at a time; past that the answer is 503 at once.
//! 3. **A handler slot.** `max_concurrency` slots are shared; `reserved` more
//!    are kept for requests that showed the token, so an operator gets through
//!    while anonymous clients hold every shared slot. The handler then runs
//!    under `--request-timeout`.
//!
//! JSON content types are the one rule for request bodies of `/events` and
//! `/api/v1`: a non-empty body must be `application/json` (or `…+json`).

pub use super::limits::{Admission, ClientAddr, ClientIp, Limits, is_json};
use crate::server::error::ApiError;
use crate::server::state::{AppState, authorize};
use axum::body::Body;
use axum::extract::Request;
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// How a route authenticates.
enum Door {
    /// Nothing to show (the page, `/openapi.json`, sign-in).
    Open,
    /// `PM_API_TOKEN` (or the session cookie) when it is set.
    Token,
    /// A signature over the body (`/webhooks/incoming`).
    Signature,
}

fn door(path: &str, token_set: bool) -> Door {
    match path {
        "/webhooks/incoming" => Door::Signature,
        "/events" => Door::Token,
        "/metrics" | "/subscribers" if token_set => Door::Token,
        "/api/v1/session" => Door::Open,
        p if p.starts_with("/api/v1/") => Door::Token,
        _ => Door::Open,
    }
}

/// An answer that also closes the connection: the client's unread body is not
/// worth reading, and the slot is freed at once.
fn closing(e: ApiError) -> Response {
    e.closing().into_response()
}

/// Lets `req` in as the module docs say, and runs it; called by `serve`'s one
/// middleware after the checks every request passes.
pub async fn admit(s: &Arc<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path == "/healthz" {
        return next.run(req).await;
    }
    let token_set = s.token().is_some();
    let authenticated = token_set && authorize(s, req.headers()).is_ok();
    match door(path, token_set) {
        Door::Token if token_set && !authenticated => {
            return closing(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong bearer token (Authorization: Bearer $PM_API_TOKEN)",
            ));
        }
        Door::Signature => {
            let headers = req.headers();
            if let Err(e) = s
                .incoming
                .precheck(|k| headers.get(k).and_then(|v| v.to_str().ok()))
            {
                return closing(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_signature",
                    e.to_string(),
                ));
            }
        }
        Door::Token | Door::Open => {}
    }
    let json_rule = path == "/events" || path.starts_with("/api/v1/");
    let (parts, body) = req.into_parts();
    let req = match read_body(&s.admission, &parts, body, authenticated, json_rule).await {
        Ok(body) => Request::from_parts(parts, body),
        Err(refused) => return refused,
    };
    // A handler slot: a shared one, or, for an authenticated request, a reserved
    // one when the shared ones are taken.
    let a = &s.admission;
    let _slot = if authenticated {
        tokio::select! {
            biased;
            p = a.shared.clone().acquire_owned() => p,
            p = a.reserved.clone().acquire_owned() => p,
        }
    } else {
        a.shared.clone().acquire_owned().await
    };
    // The handler's own time starts now that its body is in.
    match tokio::time::timeout(s.request_timeout(), next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "the request took longer than the time limit (serve --request-timeout)",
        )
        .into_response(),
    }
}

/// Reads the whole body under the body deadline, or answers why not.
async fn read_body(
    a: &Admission,
    parts: &axum::http::request::Parts,
    body: Body,
    authenticated: bool,
    json_rule: bool,
) -> Result<Body, Response> {
    use http_body::Body as _;
    if body.size_hint().exact() == Some(0) {
        return Ok(body);
    }
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > a.limits.max_body as u64) {
        return Err(too_large());
    }
    let writes = matches!(
        parts.method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    if json_rule && writes {
        let ct = parts
            .headers
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or("(not text)"));
        // A body is coming (the size hint is not zero): it must say it is JSON.
        if declared != Some(0) && !ct.is_some_and(is_json) {
            return Err(closing(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "send the body as JSON with Content-Type: application/json (got {})",
                    ct.map_or("no Content-Type".to_string(), |c| format!("{c:?}"))
                ),
            )));
        }
    }
    let _permit = if authenticated {
        None
    } else {
        match a.bodies.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                return Err(closing(
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "busy",
                        "too many request bodies are being received; try again",
                    )
                    .retry_after(1),
                ));
            }
        }
    };
    match tokio::time::timeout(
        a.limits.body_timeout,
        axum::body::to_bytes(body, a.limits.max_body),
    )
    .await
    {
        Ok(Ok(bytes)) => Ok(Body::from(bytes)),
        Ok(Err(e)) => {
            let too_big = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_big {
                Err(too_large())
            } else {
                Err(closing(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "unreadable_body",
                    format!("the body could not be read: {e}"),
                )))
            }
        }
        Err(_) => Err(closing(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the body did not arrive within {} s (serve --body-timeout)",
                a.limits.body_timeout.as_secs_f64()
            ),
        ))),
    }
}

fn too_large() -> Response {
    closing(ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "the body is larger than the limit (PM_MAX_BODY_BYTES)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/cloudevents+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/x-www-form-urlencoded"));
        assert!(!is_json("application/jsonx"));
    }
}
