//! The HTTP server (`pm-events serve`): the router of every route
//! (docs/http-api.md) — incoming webhooks, `POST /events`, `/api/v1` with the
//! live stream, health, subscribers, Prometheus metrics, the OpenAPI document
//! and the dashboard page — its shared state, its errors and extractors, the
//! admission of each request (credentials, body deadline, slots), the origin
//! check, and the connection loop with its limits. The `serve` command binds,
//! builds the state over a running system ([`crate::app`]) and calls
//! [`serve_http`]; tests may drive [`router`] in process.
//!
//! - [`admission`]: what a request must show, and the limits it passes, before a handler runs.
//! - [`origin`]: the `Origin` and `Sec-Fetch-Site` check of browser writes.
//! - [`api`]: `/api/v1` (events, endpoints, deliveries, risks, the session, the live stream).
//! - [`page`]: the dashboard's HTML, CSS and JavaScript, compiled in.

pub mod admission;
pub mod api;
pub mod error;
pub mod limits;
pub mod origin;
pub mod page;
pub mod session;
pub mod state;
pub mod stream_hub;
use crate::door::{self, DoorError};
use crate::webhook::incoming::{IncomingError, IncomingOutcome};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use error::lower_headers;
pub use error::{ApiError, Body};
use serde_json::{Value, json};
pub use state::AppState;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

async fn incoming(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    match s
        .incoming
        .handle(&s.bus, &body, &lower_headers(&headers))
        .await
    {
        Ok(IncomingOutcome::Published(id)) => {
            Ok((StatusCode::ACCEPTED, Json(json!({"event_id": id}))).into_response())
        }
        Ok(IncomingOutcome::Duplicate(id)) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({"event_id": id, "duplicate": true})),
        )
            .into_response()),
        Err(IncomingError::Unauthorized(e)) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_signature",
            e.to_string(),
        )),
        Err(IncomingError::Door(DoorError::Malformed(m) | DoorError::Invalid(m))) => {
            Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_payload", m))
        }
        Err(IncomingError::Door(e)) => Err(ApiError::from_door(e)),
    }
}

async fn publish(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let id_header = match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(k)) => Some(k),
        Some(Err(_)) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_event",
                "the Idempotency-Key header is not visible ASCII",
            ));
        }
    };
    let mut event = door::envelope(&body, id_header).map_err(ApiError::from_door)?;
    // A trace the caller started is continued.
    event.trace = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(crate::telemetry::valid_traceparent);
    let a = s
        .door
        .admit(&s.bus, event, false)
        .await
        .map_err(ApiError::from_door)?;
    let body = if a.duplicate {
        json!({"event_id": a.event_id, "duplicate": true})
    } else {
        json!({"event_id": a.event_id})
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

async fn healthz(State(s): State<Arc<AppState>>) -> Response {
    let ready = s.bus.is_running() && !s.stopping.load(Ordering::Acquire);
    let body = json!({"status": if ready { "ok" } else { "stopping" }, "node": s.node, "queue_len": s.bus.queue_len(), "capacity": s.bus.capacity(), "streams": s.stream.open_streams()});
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn subscribers(State(s): State<Arc<AppState>>) -> Json<Value> {
    Json(json!(s.bus.get_subscribers()))
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    metrics::gauge!("pm_events_queue_depth").set(s.bus.queue_len() as f64);
    let st = s.bus.stats();
    metrics::gauge!("pm_events_bus_published").set(st.published as f64);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route; see GET /openapi.json",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method; see GET /openapi.json",
    )
}

/// Refuses new requests while stopping and what another site's page could send
/// (`origin.rs`), marks every answer `nosniff` (and
/// `/api/v1` answers `no-store`: some carry secrets), counts answers by status.
async fn guard(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req.uri().path().to_string();
    let browser_check = if route == "/webhooks/incoming" {
        Ok(())
    } else {
        origin::check(s.token.is_some(), req.method(), req.headers())
    };
    let mut resp = if s.stopping.load(Ordering::Acquire) {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        )
        .into_response()
    } else if let Err(refused) = browser_check {
        refused.into_response()
    } else {
        caught(admission::admit(&s, req, next)).await
    };
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if route.starts_with("/api/v1/") || route == "/events" {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    let route = match route.as_str() {
        "/webhooks/incoming" | "/events" | "/healthz" | "/metrics" | "/subscribers"
        | "/openapi.json" | "/" => route,
        r if r.starts_with("/ui/") => "/ui".into(),
        r if r.starts_with("/api/v1/") => api::route_label(r).into(),
        _ => "other".into(),
    };
    metrics::counter!("pm_events_http_requests_total", "route" => route, "status" => resp.status().as_u16().to_string()).increment(1);
    resp
}

/// The answer of `handling`, or 500 (JSON) if it panicked, instead of a
/// dropped connection; the panic hook ([`log_panics`]) logs it in one line.
pub async fn caught(handling: impl std::future::Future<Output = Response>) -> Response {
    use futures_util::FutureExt as _;
    match std::panic::AssertUnwindSafe(handling).catch_unwind().await {
        Ok(r) => r,
        Err(_) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the request failed inside the server; the server log has the cause",
        )
        .into_response(),
    }
}

/// Makes a panic one log line (with where it happened), instead of a
/// backtrace on stderr; `guard` answers the request 500.
pub fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(at = %at, "panic: {what}");
    }));
}

/// The HTTP application over `state`.
pub fn router(state: Arc<AppState>, max_body: usize) -> Router {
    Router::new()
        .route("/webhooks/incoming", post(incoming))
        .route("/events", post(publish))
        .route("/healthz", get(healthz))
        .route("/subscribers", get(subscribers))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .merge(page::router())
        .merge(api::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // One middleware for every request: the checks every answer passes,
        // then (admission.rs) the credentials, the body, a handler slot and its
        // time limit, with a panic answered 500.
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// A listener on `bind` whose queue of connections not yet accepted holds
/// `backlog` (the kernel caps it at `net.core.somaxconn`): a burst of
/// connections as large as the connection limit waits there instead of having
/// its SYNs dropped, which would make every client in it, `/healthz` probes
/// included, wait a second for the retry.
pub fn listen(bind: SocketAddr, backlog: usize) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if bind.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(bind)?;
    socket.listen(u32::try_from(backlog).unwrap_or(u32::MAX).max(128))
}

/// The limits on connections that keep slow or idle clients from holding the server.
pub struct ConnLimits {
    /// Open connections at most; the next is accepted when one closes.
    pub max_connections: usize,
    /// Time to send a request's headers (for each request of a connection).
    pub header_timeout: Duration,
}

/// Serves `app` on `listener` with hyper's HTTP/1 connection handling until
/// `shutdown` completes, then lets open requests finish (at most 10 s).
///
/// Each connection holds a permit of a semaphore of `max_connections`
/// (acquired before `accept`, dropped with the connection's task), and hyper
/// closes a connection whose request headers have not all arrived within
/// `header_timeout` — a client trickling its headers, or one holding a
/// kept-alive connection idle, cannot keep a file descriptor for long.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: ConnLimits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;
    let max = limits.max_connections.max(1);
    let permits = Arc::new(tokio::sync::Semaphore::new(max));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    // Under pressure (more than half the connections open), a new connection
    // gets a shorter time for its headers and between its requests, so idle
    // and trickling clients give their slots back sooner.
    let mut pressed = http.clone();
    pressed.header_read_timeout((limits.header_timeout / 4).min(Duration::from_secs(2)));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and the like: wait a moment instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let builder = if permits.available_permits() < max / 2 {
            &pressed
        } else {
            &http
        };
        let client = admission::ClientAddr(peer);
        let service = tower::ServiceBuilder::new()
            .map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(client);
                req
            })
            .service(app.clone());
        let conn =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("open connections did not finish within 10 s; closing them");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_request_is_answered_500_in_json() {
        let r = caught(async {
            if std::hint::black_box(true) {
                panic!("a test panic");
            }
            StatusCode::OK.into_response()
        })
        .await;
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(r.into_body(), 1 << 16)
            .await
            .unwrap_or_default();
        let v: Value = serde_json::from_slice(&body).unwrap_or_default();
        assert_eq!(v["error"], "internal");
    }
}
