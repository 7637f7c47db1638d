//! The dashboard page (`GET /`): one HTML file, one stylesheet and one script,
//! compiled into the binary. The page holds no data of its own; it reads and
//! changes everything through `/api/v1` (docs/dashboard.md).
//!
//! The assets are served with a strict Content-Security-Policy (only this
//! server, no inline script), so nothing the page shows — event data included —
//! can load from elsewhere or run as script.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;

/// The page.
pub const INDEX_HTML: &str = include_str!("index.html");
/// Its stylesheet.
pub const APP_CSS: &str = include_str!("app.css");
/// Its script.
pub const APP_JS: &str = include_str!("app.js");

/// Only this server, for everything; no inline script, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The routes of the page: `/`, `/ui/app.css`, `/ui/app.js`.
pub fn router<S: Send + Sync + 'static>() -> Router<Arc<S>> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // The assets change only with the binary; a reload after an upgrade is
    // checked with the server.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}
