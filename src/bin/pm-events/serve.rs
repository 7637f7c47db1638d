//! `pm-events serve`: binds, builds the server's state over a running system,
//! and serves until Ctrl-C or SIGTERM; the server itself is the library's
//! [`pm_events::server`] (docs/http-api.md).

use crate::app::shutdown_signal;
use crate::cli::{UsageError, say};
use anyhow::{Context as _, Result};
use metrics_exporter_prometheus::PrometheusBuilder;
use pm_events::Config;
use pm_events::server::admission::Limits;
use pm_events::server::api::stream::StreamLimits;
use pm_events::server::{AppState, ConnLimits, listen, log_panics, router, serve_http};
use pm_events::timespec::parse_duration;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

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
    pm_events::server::api::stream::feed(&state);
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
        s2.begin_shutdown();
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
