//! `/api/v1/session`: the dashboard's sign-in. The page posts the API token once
//! and gets an `HttpOnly`, `SameSite=Strict` cookie that `/api/v1/*` and
//! `/events` accept as well as the bearer header, so the token is kept neither
//! in the page nor in a URL (an `EventSource` cannot send headers).
//!
//! The cookie is `pm_session=<expiry>.<mac>`: the Unix time it ends and an
//! HMAC-SHA256 of that time keyed with the token. Nothing is stored on the
//! server, every node that has the token accepts it, and changing the token ends
//! every session.

use super::{bad, object};
use crate::server::admission::ClientIp;
use crate::server::{ApiError, AppState, Body};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use std::net::IpAddr;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// The cookie's name.
pub const COOKIE: &str = "pm_session";

/// How long a session lasts.
pub const SESSION_SECS: i64 = 12 * 3600;

/// What the MAC covers besides the expiry, so it is of no use as another MAC.
const DOMAIN: &[u8] = b"pm-events dashboard session v1:";

fn mac(token: &[u8], expiry: i64) -> Option<Hmac<Sha256>> {
    let mut m = Hmac::<Sha256>::new_from_slice(token).ok()?;
    m.update(DOMAIN);
    m.update(expiry.to_string().as_bytes());
    Some(m)
}

/// A new cookie value for `token`, ending `SESSION_SECS` from now.
fn issue(token: &[u8]) -> Option<String> {
    let expiry = chrono::Utc::now().timestamp() + SESSION_SECS;
    let tag = mac(token, expiry)?.finalize().into_bytes();
    Some(format!("{expiry}.{}", hex::encode(tag)))
}

/// Whether the request carries a live session cookie made with `token`.
pub fn valid(token: &[u8], headers: &HeaderMap) -> bool {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .any(|value| {
            let Some((expiry, tag)) = value.split_once('.') else {
                return false;
            };
            let (Ok(expiry), Ok(tag)) = (expiry.parse::<i64>(), hex::decode(tag)) else {
                return false;
            };
            expiry > chrono::Utc::now().timestamp()
                && mac(token, expiry).is_some_and(|m| m.verify_slice(&tag).is_ok())
        })
}

/// `GET /api/v1/session`: `{"token_required", "signed_in"}`. Always 200, so the
/// page can ask before it has signed in.
pub async fn status(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Json<Value> {
    let signed_in = match s.token() {
        None => true,
        Some(t) => valid(t.expose().as_bytes(), &headers),
    };
    Json(json!({"token_required": s.token().is_some(), "signed_in": signed_in}))
}

/// Wrong sign-ins a client may make before it is slowed down.
const FREE_FAILURES: u32 = 5;

/// The longest a client is made to wait between wrong sign-ins.
const MAX_WAIT_SECS: u64 = 60;

/// Clients remembered at most; past that, those not slowed down are forgotten.
const MAX_CLIENTS: usize = 10_000;

/// Wrong sign-ins per client address. After [`FREE_FAILURES`], each next try
/// waits twice as long as the one before (1 s, 2 s, 4 s … at most
/// [`MAX_WAIT_SECS`]); a try before then is answered 429 with `Retry-After`,
/// without looking at the token. A right token forgets the client. Owned by
/// the server's `AppState`.
#[derive(Default)]
pub struct SignInThrottle {
    failures: std::sync::Mutex<std::collections::HashMap<IpAddr, (u32, Instant)>>,
}

impl SignInThrottle {
    /// `Err(seconds to wait)` when `client` must wait before its next try.
    fn check(&self, client: IpAddr) -> Result<(), u64> {
        let map = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        match map.get(&client) {
            Some(&(n, last)) if n >= FREE_FAILURES => {
                let wait = Duration::from_secs(wait_secs(n));
                let ready = last + wait;
                let now = Instant::now();
                if now < ready {
                    Err((ready - now).as_secs().max(1))
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    fn failed(&self, client: IpAddr) {
        let mut map = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_CLIENTS && !map.contains_key(&client) {
            let now = Instant::now();
            map.retain(|_, (n, last)| {
                *n >= FREE_FAILURES && now < *last + Duration::from_secs(wait_secs(*n))
            });
        }
        let e = map.entry(client).or_insert((0, Instant::now()));
        e.0 = e.0.saturating_add(1);
        e.1 = Instant::now();
    }

    fn succeeded(&self, client: IpAddr) {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&client);
    }
}

fn wait_secs(failures: u32) -> u64 {
    1u64.checked_shl(failures.saturating_sub(FREE_FAILURES))
        .unwrap_or(MAX_WAIT_SECS)
        .min(MAX_WAIT_SECS)
}

/// `POST /api/v1/session` with `{"token"}`: 204 with the cookie, 401 for a wrong
/// token, 429 while a client that gave wrong ones must wait ([`SignInThrottle`]),
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

fn with_cookie(cookie: String) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
