//! `pm-events serve`: the HTTP face — incoming webhooks, the publish API, health,
//! subscribers, Prometheus metrics and the OpenAPI document (docs/http-api.md).

use crate::admission::Limits;
use crate::api::stream::StreamLimits;
use crate::app::shutdown_signal;
use crate::{UsageError, say};
use anyhow::{Context as _, Result};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use pm_events::app::App;
use pm_events::config::Secret;
use pm_events::door::{self, Door, DoorError};
use pm_events::error::chain;
use pm_events::handlers::{Access, Refusal};
use pm_events::timespec::parse_duration;
use pm_events::webhook::incoming::{IncomingError, IncomingOutcome, IncomingWebhooks};
use pm_events::{BusError, Config, EventBus};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use subtle::ConstantTimeEq;

/// Arguments of `serve`.
#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on: host (or IP) and port (overrides PM_BIND; default
    /// 127.0.0.1:8787; port 0 picks a free one).
    #[arg(long, value_name = "ADDR", value_parser = pm_events::config::resolve_bind)]
    bind: Option<SocketAddr>,
    /// Time limit of one request's handling, once its body has arrived.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    request_timeout: Duration,
    /// Requests handled at once (more wait); /healthz is not counted.
    #[arg(long, default_value_t = Limits::default().max_concurrency)]
    max_concurrency: usize,
    /// Handler slots kept, beyond --max-concurrency, for requests that show PM_API_TOKEN.
    #[arg(long, default_value_t = Limits::default().reserved)]
    reserved: usize,
    /// Open connections at most; more wait in the listen backlog until one closes.
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// Time a client has to send a request's headers (and an idle kept-alive
    /// connection its next request) before the connection is closed; a quarter
    /// of it (at most 2 s) once more than half of --max-connections are open.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    header_timeout: Duration,
    /// Time a request's whole body has to arrive, before the handler's own time starts.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    body_timeout: Duration,
    /// Bodies of unauthenticated requests (incoming webhooks; every request when
    /// PM_API_TOKEN is not set) read at once; more are answered 503 at once.
    #[arg(long, default_value_t = Limits::default().max_pending_bodies)]
    max_pending_bodies: usize,
    /// Live streams (GET /api/v1/stream) open at once (at most half of --max-connections).
    #[arg(long, default_value_t = StreamLimits::default().total)]
    max_streams: usize,
    /// Live streams open at once from one client address.
    #[arg(long, default_value_t = StreamLimits::default().per_client)]
    max_streams_per_client: usize,
}

/// Shared by every request.
pub struct AppState {
    pub(crate) bus: EventBus,
    /// Verifies and publishes incoming webhooks.
    pub(crate) incoming: IncomingWebhooks,
    /// The door of events from outside (`POST /events` and incoming webhooks).
    pub(crate) door: Door,
    /// Credentials, body deadline and handler slots (`admission.rs`).
    pub(crate) admission: crate::admission::Admission,
    token: Option<Secret>,
    metrics: PrometheusHandle,
    /// Set once shutdown began: new requests get 503.
    stopping: AtomicBool,
    timeout: Duration,
    /// `PM_NODE_ID`, reported by `/healthz`.
    node: String,
    /// The webhook handler (fan-out, the delivery engine), for `/api/v1`.
    pub(crate) webhooks: Arc<pm_events::webhook::WebhookHandler>,
    /// The endpoints, for `/api/v1/endpoints`.
    pub(crate) endpoints: pm_events::endpoint::Endpoints,
    /// Where the logs are, for `/api/v1/events` and `/api/v1/deliveries`.
    pub(crate) log_dir: std::path::PathBuf,
    /// Accepted events and delivery outcomes, for `/api/v1/stream`.
    pub(crate) stream: Arc<crate::api::stream::StreamHub>,
    /// Wrong dashboard sign-ins per client, to slow guessing down.
    pub(crate) sign_ins: crate::api::session::SignInThrottle,
    /// The risk handler, whose dashboard `/api/v1/risks` shows.
    pub(crate) risks: Arc<pm_events::handlers::RiskAlertHandler>,
}

/// An error answer: status plus JSON `{"error","message"}`.
pub struct ApiError {
    status: StatusCode,
    error: &'static str,
    message: String,
    retry_after: Option<u32>,
    /// Whether the answer closes the connection.
    close: bool,
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
            other => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                other.to_string(),
            ),
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
pub struct Body(Bytes);

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
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            e.to_string(),
        )),
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
        .and_then(pm_events::telemetry::valid_traceparent);
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

/// Checks `Authorization: Bearer $PM_API_TOKEN` (constant time), or the
/// dashboard's session cookie, when a token is set.
pub(crate) fn authorize(s: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if let Some(token) = &s.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = match given {
            Some(g) => bool::from(g.as_bytes().ct_eq(token.expose().as_bytes())),
            None => crate::api::session::valid(token.expose().as_bytes(), headers),
        };
        if !ok {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong bearer token (Authorization: Bearer $PM_API_TOKEN)",
            ));
        }
    }
    Ok(())
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
        crate::origin::check(s.token.is_some(), req.method(), req.headers())
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
        caught(crate::admission::admit(&s, req, next)).await
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
        r if r.starts_with("/api/v1/") => crate::api::route_label(r).into(),
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
        .merge(crate::page::router())
        .merge(crate::api::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // One middleware for every request: the checks every answer passes,
        // then (admission.rs) the credentials, the body, a handler slot and its
        // time limit, with a panic answered 500.
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

impl AppState {
    /// `PM_API_TOKEN`, if set.
    pub(crate) fn token(&self) -> Option<&Secret> {
        self.token.as_ref()
    }

    /// The time limit of a request's handling (`--request-timeout`).
    pub(crate) fn request_timeout(&self) -> Duration {
        self.timeout
    }

    /// The state of a server over `app`, whose bus is started, delivering through `webhooks`.
    pub fn new(
        app: &App,
        webhooks: Arc<pm_events::webhook::WebhookHandler>,
        cfg: &Config,
        metrics: PrometheusHandle,
        timeout: Duration,
        limits: Limits,
        streams: StreamLimits,
    ) -> anyhow::Result<Arc<Self>> {
        let door = pm_events::handlers::server_door(Access::server(cfg)?);
        Ok(Arc::new(AppState {
            bus: app.bus.clone(),
            incoming: IncomingWebhooks::new(cfg.webhook_secrets.clone()).with_door(door.clone()),
            door,
            admission: crate::admission::Admission::new(limits),
            token: cfg.api_token.clone(),
            metrics,
            stopping: AtomicBool::new(false),
            timeout,
            node: cfg.node_id.clone(),
            webhooks,
            endpoints: app.endpoints.clone(),
            log_dir: cfg.log_dir.clone(),
            stream: Arc::new(crate::api::stream::StreamHub::new(streams)),
            risks: app
                .builtins
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("the built-in handlers are not subscribed"))?
                .risk_alert
                .clone(),
            sign_ins: Default::default(),
        }))
    }
}

/// Runs `serve` until Ctrl-C or SIGTERM.
pub async fn run(cfg: Config, args: Args) -> Result<ExitCode> {
    let bind = args.bind.unwrap_or(cfg.bind);
    if !bind.ip().is_loopback() && cfg.api_token.is_none() {
        return Err(UsageError(format!(
            "refusing to listen on {bind} (not a loopback address) without PM_API_TOKEN set"
        ))
        .into());
    }
    // Bound first: a port in use is reported before anything else starts.
    let listener = listen(bind, args.max_connections).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            " (another program listens there: choose another with --bind or PM_BIND)"
        } else {
            ""
        };
        UsageError(format!("cannot listen on {bind}: {e}{hint}"))
    })?;
    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .context("install the Prometheus recorder")?;
    let app = crate::app::open_server(&cfg).await?;
    let bus = app.bus.clone();
    bus.start().await?;
    let webhooks = app
        .webhooks
        .clone()
        .context("the server's webhook engine is missing")?;
    let limits = Limits {
        body_timeout: args.body_timeout,
        max_body: cfg.max_body_bytes,
        max_pending_bodies: args.max_pending_bodies,
        max_concurrency: args.max_concurrency,
        reserved: args.reserved,
    };
    // Streams stay below the connection limit: at most half of it.
    let streams = StreamLimits {
        total: args.max_streams.min(args.max_connections / 2).max(1),
        per_client: args.max_streams_per_client,
    };
    log_panics();
    let state = AppState::new(
        &app,
        webhooks,
        &cfg,
        metrics,
        args.request_timeout,
        limits,
        streams,
    )?;
    crate::api::stream::feed(&state);
    let local = listener.local_addr()?;
    say!("pm-events listening on http://{local}");
    if cfg.webhook_secrets.is_empty() {
        tracing::warn!(
            "WEBHOOK_SIGNATURE_SECRET is not set: POST /webhooks/incoming answers 401 to everything"
        );
    }
    let app_router = router(state.clone(), cfg.max_body_bytes);
    let limits = ConnLimits {
        max_connections: args.max_connections,
        header_timeout: args.header_timeout,
    };
    let s2 = state.clone();
    serve_http(listener, app_router, limits, async move {
        shutdown_signal().await;
        s2.stopping.store(true, Ordering::Release);
        s2.stream.close();
        tracing::info!("shutting down: no new requests; draining the bus");
    })
    .await;
    // Every accepted event is handled and logged before this returns.
    let outcome = crate::app::stop(app, Duration::from_secs(5)).await?;
    let st = bus.stats();
    eprintln!(
        "pm-events stopped: {} events published, {} handler runs ok, {} failed{}",
        st.published,
        st.handled,
        st.failed + st.panicked + st.timed_out,
        outcome
            .map(|o| format!(
                ", webhooks {} delivered, {} pending in the outbox",
                o.delivered, o.pending
            ))
            .unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
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
        let client = crate::admission::ClientAddr(peer);
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
