//! The running application shared by the commands that publish in-process: the
//! bus with the built-in handlers and, when any webhook route is configured, the
//! webhook handler.

use anyhow::Result;
use pm_events::endpoint::Endpoints;
use pm_events::handlers::{Access, BUILTIN_TYPES, Builtins, builtin_priority, register_builtins};
use pm_events::transport::NatsTransport;
use pm_events::webhook::jetstream::JetStreamQueue;
use pm_events::webhook::{WaitOutcome, WebhookHandler};
use pm_events::{Config, EventBus};
use std::sync::Arc;
use std::time::Duration;

/// The bus, its built-in handlers and its webhook handler.
pub struct App {
    /// The bus (critical risk alerts in the priority lane).
    pub bus: EventBus,
    /// The built-in handlers.
    pub builtins: Builtins,
    /// The webhook handler, when routes exist: the built-in handlers trigger it
    /// for their types, and it is subscribed for every other type.
    pub webhooks: Option<Arc<WebhookHandler>>,
    /// The endpoints: managed ones (in the log directory, or in JetStream KV with
    /// `PM_NATS_URL`) and those of the route variables.
    pub endpoints: Endpoints,
    /// The log directory (for messages that point at its files).
    pub log_dir: std::path::PathBuf,
}

impl App {
    /// Builds the bus (not started: subscribe, then `app.bus.start()`); opens and
    /// starts the webhook engine when a route is configured (or `always_webhooks`).
    pub async fn open(cfg: &Config, always_webhooks: bool) -> Result<App> {
        Self::build(cfg, always_webhooks, false, true).await
    }

    /// Like `open`, for a long-running server: metrics on, and the deliveries
    /// queued are not remembered for a final wait.
    pub async fn open_server(cfg: &Config) -> Result<App> {
        Self::build(cfg, false, true, true).await
    }

    /// Like `open`, for replaying logged events: no event log (they are in it already).
    pub async fn open_replay(cfg: &Config) -> Result<App> {
        Self::build(cfg, false, false, false).await
    }

    async fn build(cfg: &Config, always_webhooks: bool, server: bool, log: bool) -> Result<App> {
        let mut builder = EventBus::builder()
            .config(cfg)
            .priority(builtin_priority)
            .metrics(server);
        if let Some(url) = &cfg.nats_url {
            // Scale-out: events go through NATS JetStream, shared by PM_CONSUMER_GROUP.
            let ack_wait = cfg.handler_timeout + Duration::from_secs(30);
            let t = NatsTransport::connect(url, &cfg.consumer_group, ack_wait).await?;
            builder = builder.transport(Arc::new(t));
        }
        if let Some(route) = cfg.webhook_urls.keys().next()
            && cfg.webhook_secrets.is_empty()
            && !cfg.allow_unsigned
        {
            // Found now, not when the first routed event is handled and refused.
            return Err(crate::UsageError(format!(
                "{route} is set but WEBHOOK_SIGNATURE_SECRET is not: set a signing secret, or PM_ALLOW_UNSIGNED=1 to send webhooks unsigned"
            ))
            .into());
        }
        let bus = if log { builder } else { builder.without_log() }.build();
        let endpoints = open_endpoints(cfg).await?;
        let webhooks =
            if always_webhooks || server || !cfg.webhook_urls.is_empty() || !endpoints.is_empty() {
                let h = WebhookHandler::from_config(cfg)?;
                h.engine().attach_endpoints(endpoints.clone())?;
                // An endpoint the engine disables (410 Gone) is announced on the bus.
                let weak = bus.downgrade();
                h.engine().on_endpoint_disabled(move |event| {
                    let weak = weak.clone();
                    tokio::spawn(async move {
                        if let Err(e) = weak.publish(event, None).await {
                            tracing::warn!(error = %e, "cannot publish endpoint_disabled");
                        }
                    });
                })?;
                if server {
                    // Endpoints created or changed by the CLI or another node reach it.
                    endpoints.watch();
                }
                let h = Arc::new(if server { h } else { h.track_deliveries() });
                if let Some(url) = &cfg.nats_url {
                    // Scale-out: deliveries are a JetStream work queue any node delivers from.
                    // A node may hold a delivery while up to 8 per endpoint wait before it.
                    let ack_wait = cfg.webhook_timeout * 9 + Duration::from_secs(30);
                    let q = JetStreamQueue::connect(url, ack_wait).await?;
                    // `serve` nodes take deliveries from the queue, and so does the (single-
                    // process) demo; the other commands only queue.
                    h.engine().use_jetstream(q, server || always_webhooks)?;
                }
                h.engine().start()?;
                Some(h)
            } else {
                None
            };
        // Events reach `serve` over HTTP: their paths must lie under PM_FILE_ROOTS.
        let access = if server {
            Access::server(cfg)?
        } else {
            Access::operator(cfg)
        };
        let builtins = register_builtins(&bus, cfg, webhooks.clone(), access)?;
        if let Some(h) = &webhooks {
            bus.subscribe_arc("*", Arc::new(pm_events::webhook::EndpointFanOut(h.clone())));
            bus.subscribe_arc_filtered(
                "*",
                |e| !BUILTIN_TYPES.contains(&e.event_type.as_str()),
                h.clone(),
            );
        }
        Ok(App {
            bus,
            builtins,
            webhooks,
            endpoints,
            log_dir: cfg.log_dir.clone(),
        })
    }

    /// Stops the bus (every accepted event handled), then waits up to `wait` for
    /// the deliveries the handlers queued, then stops the engine (what is still
    /// pending stays in the outbox). Returns the delivery outcome, if any were queued.
    pub async fn stop(self, wait: Duration) -> Result<Option<WaitOutcome>> {
        self.bus.stop().await?;
        // Every alert handled is on the dashboard file, whoever still holds the handler.
        let risks = self.builtins.risk_alert.clone();
        tokio::task::spawn_blocking(move || risks.flush_dashboard()).await?;
        let Some(h) = self.webhooks else {
            return Ok(None);
        };
        let handed_off = h.take_handed_off();
        if handed_off > 0 {
            eprintln!(
                "webhooks: {handed_off} queued in the JetStream work queue {} (delivered by whichever node takes them)",
                pm_events::webhook::jetstream::STREAM
            );
        }
        let repeats = h.take_repeats();
        if repeats > 0 {
            eprintln!(
                "webhooks: {repeats} not sent again (the endpoint has that event's delivery already; `pm-events deliveries retry ID` sends one again)"
            );
        }
        let ids = h.take_queued();
        let outcome = if ids.is_empty() {
            None
        } else {
            Some(h.engine().wait(&ids, wait).await?)
        };
        h.engine().shutdown().await;
        Ok(outcome)
    }
}

/// Creates the log directory (mode 0700) if it is missing, so that a directory
/// that cannot be created is reported by the name the user gave, not by that of
/// a subfolder. Called once the command's arguments are known to be good.
pub fn ensure_log_dir(cfg: &Config) -> Result<()> {
    pm_events::private_files::create_dir_all(&cfg.log_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot create the log directory {} (--log-dir or PM_LOG_DIR): {e}",
            cfg.log_dir.display()
        )
    })
}

/// The endpoints of `cfg`: in the JetStream KV bucket `PM_ENDPOINTS` with
/// `PM_NATS_URL`, else in `<log dir>/webhooks/endpoints.sqlite3`.
pub async fn open_endpoints(cfg: &Config) -> Result<Endpoints> {
    ensure_log_dir(cfg)?;
    let routes = pm_events::webhook::Routes::from_config(cfg);
    let guard = pm_events::endpoint::guard::NetGuard::new(cfg.endpoint_allow_nets.clone());
    Ok(match &cfg.nats_url {
        Some(url) => {
            let store = pm_events::endpoint::kv::KvStore::connect(url).await?;
            Endpoints::open(Box::new(store), &routes, guard).await?
        }
        None => Endpoints::open_local(&cfg.log_dir, &routes, guard).await?,
    })
}

/// One line about what became of the deliveries, on stderr.
pub fn report(outcome: Option<WaitOutcome>, log_dir: &std::path::Path) -> bool {
    let Some(o) = outcome else { return true };
    let mut msg = format!("webhooks: {} delivered", o.delivered);
    if o.dead > 0 {
        msg.push_str(&format!(
            ", {} failed for good (see {}; `pm-events webhooks redeliver --all`)",
            o.dead,
            log_dir.join("webhooks/dead_letters.jsonl").display()
        ));
    }
    if o.pending > 0 {
        msg.push_str(&format!(
            ", {} still pending in the outbox (delivered on the next start, or by `pm-events webhooks deliver`)",
            o.pending
        ));
    }
    eprintln!("{msg}");
    o.dead == 0
}

/// Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// A short human summary of an event's data, by type.
pub fn describe(e: &pm_events::Event) -> String {
    let d = &e.data;
    let s = |k: &str| d.get(k).and_then(|v| v.as_str()).unwrap_or("-").to_string();
    match e.event_type.as_str() {
        "file_change" => format!("{} {}", s("change_type"), s("file_path")),
        "report_ready" => format!(
            "{} {} ({}) {}",
            s("report_type"),
            s("report_id"),
            s("report_format"),
            s("report_path")
        ),
        "risk_alert" => format!(
            "{} {} {}: {}",
            s("severity"),
            s("risk_type"),
            s("alert_id"),
            s("title")
        ),
        "risk_escalated" => format!("{} escalated to {}", s("alert_id"), s("escalated_to")),
        _ => {
            let text = d.to_string();
            if text.chars().count() > 100 {
                format!("{}…", text.chars().take(100).collect::<String>())
            } else {
                text
            }
        }
    }
}
