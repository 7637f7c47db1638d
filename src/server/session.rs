//! The dashboard's session: a cookie signed with a key derived from
//! `PM_API_TOKEN`, and the throttle that slows down wrong sign-ins per client.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::net::IpAddr;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

/// The cookie's name.
pub const COOKIE: &str = "pm_session";

/// How long a session lasts.
pub const SESSION_SECS: i64 = 12 * 3600;

/// What the MAC covers besides the expiry, so it is of no use as another MAC.
pub(crate) const DOMAIN: &[u8] = b"pm-events dashboard session v1:";

pub(crate) fn mac(token: &[u8], expiry: i64) -> Option<Hmac<Sha256>> {
    let mut m = Hmac::<Sha256>::new_from_slice(token).ok()?;
    m.update(DOMAIN);
    m.update(expiry.to_string().as_bytes());
    Some(m)
}

/// A new cookie value for `token`, ending `SESSION_SECS` from now.
pub(crate) fn issue(token: &[u8]) -> Option<String> {
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

/// Wrong sign-ins a client may make before it is slowed down.
pub(crate) const FREE_FAILURES: u32 = 5;

/// The longest a client is made to wait between wrong sign-ins.
pub(crate) const MAX_WAIT_SECS: u64 = 60;

/// Clients remembered at most; past that, those not slowed down are forgotten.
pub(crate) const MAX_CLIENTS: usize = 10_000;

/// Wrong sign-ins per client address. After `FREE_FAILURES`, each next try
/// waits twice as long as the one before (1 s, 2 s, 4 s … at most
/// `MAX_WAIT_SECS`); a try before then is answered 429 with `Retry-After`,
/// without looking at the token. A right token forgets the client. Owned by
/// the server's `AppState`.
#[derive(Default)]
pub struct SignInThrottle {
    pub(crate) failures: std::sync::Mutex<std::collections::HashMap<IpAddr, (u32, Instant)>>,
}

impl SignInThrottle {
    /// `Err(seconds to wait)` when `client` must wait before its next try.
    pub(crate) fn check(&self, client: IpAddr) -> Result<(), u64> {
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

    pub(crate) fn failed(&self, client: IpAddr) {
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

    pub(crate) fn succeeded(&self, client: IpAddr) {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&client);
    }
}

pub(crate) fn wait_secs(failures: u32) -> u64 {
    1u64.checked_shl(failures.saturating_sub(FREE_FAILURES))
        .unwrap_or(MAX_WAIT_SECS)
        .min(MAX_WAIT_SECS)
}

pub(crate) fn with_cookie(cookie: String) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
