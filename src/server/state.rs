//! What every request shares: the bus, the door, the admission limits, the
//! token, the delivery engine, the endpoints, the live stream, the risks — and
//! the token check.

use crate::app::{App, AppError};
use crate::config::Secret;
use crate::door::Door;
use crate::handlers::Access;
use crate::server::error::ApiError;
use crate::server::limits::Limits;
use crate::server::stream_hub::StreamLimits;
use crate::webhook::incoming::IncomingWebhooks;
use crate::{Config, EventBus};
use axum::http::{HeaderMap, StatusCode, header};
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use subtle::ConstantTimeEq;

/// Shared by every request.
pub struct AppState {
    pub(crate) bus: EventBus,
    /// Verifies and publishes incoming webhooks.
    pub(crate) incoming: IncomingWebhooks,
    /// The door of events from outside (`POST /events` and incoming webhooks).
    pub(crate) door: Door,
    /// Credentials, body deadline and handler slots (`admission.rs`).
    pub(crate) admission: crate::server::limits::Admission,
    pub(crate) token: Option<Secret>,
    pub(crate) metrics: PrometheusHandle,
    /// Set once shutdown began: new requests get 503.
    pub(crate) stopping: AtomicBool,
    pub(crate) timeout: Duration,
    /// `PM_NODE_ID`, reported by `/healthz`.
    pub(crate) node: String,
    /// The webhook handler (fan-out, the delivery engine), for `/api/v1`.
    pub(crate) webhooks: Arc<crate::webhook::WebhookHandler>,
    /// The endpoints, for `/api/v1/endpoints`.
    pub(crate) endpoints: crate::endpoint::Endpoints,
    /// Where the logs are, for `/api/v1/events` and `/api/v1/deliveries`.
    pub(crate) log_dir: std::path::PathBuf,
    /// Accepted events and delivery outcomes, for `/api/v1/stream`.
    pub(crate) stream: Arc<crate::server::stream_hub::StreamHub>,
    /// Wrong dashboard sign-ins per client, to slow guessing down.
    pub(crate) sign_ins: crate::server::session::SignInThrottle,
    /// The risk handler, whose dashboard `/api/v1/risks` shows.
    pub(crate) risks: Arc<crate::handlers::RiskAlertHandler>,
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
            None => crate::server::session::valid(token.expose().as_bytes(), headers),
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

impl AppState {
    /// Begins the shutdown: `/healthz` answers 503 and the live streams end,
    /// so load balancers and pages let go while open requests finish.
    pub fn begin_shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        self.stream.close();
        tracing::info!("shutting down: no new requests; draining the bus");
    }

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
        webhooks: Arc<crate::webhook::WebhookHandler>,
        cfg: &Config,
        metrics: PrometheusHandle,
        timeout: Duration,
        limits: Limits,
        streams: StreamLimits,
    ) -> Result<Arc<Self>, AppError> {
        let door = crate::handlers::server_door(Access::server(cfg)?);
        Ok(Arc::new(AppState {
            bus: app.bus.clone(),
            incoming: IncomingWebhooks::new(cfg.webhook_secrets.clone()).with_door(door.clone()),
            door,
            admission: crate::server::limits::Admission::new(limits),
            token: cfg.api_token.clone(),
            metrics,
            stopping: AtomicBool::new(false),
            timeout,
            node: cfg.node_id.clone(),
            webhooks,
            endpoints: app.endpoints.clone(),
            log_dir: cfg.log_dir.clone(),
            stream: Arc::new(crate::server::stream_hub::StreamHub::new(streams)),
            risks: app
                .builtins
                .as_ref()
                .ok_or_else(|| AppError::Usage("the server needs the built-in handlers".into()))?
                .risk_alert
                .clone(),
            sign_ins: Default::default(),
        }))
    }
}
