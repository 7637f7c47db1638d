//! `/api/v1`: endpoints, deliveries, events, the live stream, the risk dashboard
//! and the dashboard page's session (docs/http-api.md).
//!
//! Every route but `/api/v1/session` needs `Authorization: Bearer $PM_API_TOKEN`,
//! or the session cookie, when the token is set.
//! Lists answer `{"data": [...], "next_cursor": "..."|null}`; pass `cursor` to get the
//! next page. Errors are `{"error","message"}` as on the other routes; a refused
//! field is named in the message (`filter.data.size.$gt: expected a number or a string`).

pub mod common;
pub mod deliveries;
pub mod endpoints;
pub mod events;
pub mod risks;
pub mod session;
pub mod stream;
use crate::server::state::AppState;
use axum::Router;
use axum::routing::{get, post};
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
