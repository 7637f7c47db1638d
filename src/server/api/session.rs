//! `/api/v1/session`: the dashboard's sign-in. The page posts the API token once
//! and gets an `HttpOnly`, `SameSite=Strict` cookie that `/api/v1/*` and
//! `/events` accept as well as the bearer header, so the token is kept neither
//! in the page nor in a URL (an `EventSource` cannot send headers).
//!
//! The cookie is `pm_session=<expiry>.<mac>`: the Unix time it ends and an
//! HMAC-SHA256 of that time keyed with the token. Nothing is stored on the
//! server, every node that has the token accepts it, and changing the token ends
//! every session.

use super::common::{bad, object};
use crate::server::error::{ApiError, Body};
use crate::server::limits::ClientIp;
use crate::server::session::{COOKIE, SESSION_SECS, issue, valid, with_cookie};
use crate::server::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// `GET /api/v1/session`: `{"token_required", "signed_in"}`. Always 200, so the
/// page can ask before it has signed in.
pub async fn status(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Json<Value> {
    let signed_in = match s.token() {
        None => true,
        Some(t) => valid(t.expose().as_bytes(), &headers),
    };
    Json(json!({"token_required": s.token().is_some(), "signed_in": signed_in}))
}

/// `POST /api/v1/session` with `{"token"}`: 204 with the cookie, 401 for a wrong
/// token, 429 while a client that gave wrong ones must wait ([`SignInThrottle`](crate::server::session::SignInThrottle)),
/// 409 when the server has no token (nothing to sign in to).
pub async fn sign_in(
    State(s): State<Arc<AppState>>,
    ClientIp(client): ClientIp,
    body: Body,
) -> Result<Response, ApiError> {
    if let Err(wait) = s.sign_ins.check(client) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_sign_ins",
            format!("too many wrong tokens from {client}; try again in {wait} s"),
        )
        .retry_after(u32::try_from(wait).unwrap_or(u32::MAX)));
    }
    let mut fields = object(&body)?;
    let given = match fields.remove("token") {
        Some(Value::String(t)) => t,
        Some(_) => return Err(bad("invalid_field", "token: expected a string")),
        None => return Err(bad("invalid_field", "token: missing")),
    };
    if let Some(k) = fields.keys().next() {
        return Err(bad(
            "invalid_field",
            format!("{k}: unknown field (expected token)"),
        ));
    }
    let Some(token) = s.token() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_token",
            "PM_API_TOKEN is not set: the API needs no sign-in (and answers on loopback only)",
        ));
    };
    if !bool::from(given.as_bytes().ct_eq(token.expose().as_bytes())) {
        s.sign_ins.failed(client);
        tracing::warn!(client = %client, "dashboard sign-in with a wrong token");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "wrong token (the value of PM_API_TOKEN)",
        ));
    }
    s.sign_ins.succeeded(client);
    let value = issue(token.expose().as_bytes()).ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "cannot make a session",
        )
    })?;
    Ok(with_cookie(format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECS}"
    )))
}

/// `DELETE /api/v1/session`: 204, and the cookie is cleared.
pub async fn sign_out() -> Response {
    with_cookie(format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
    ))
}
