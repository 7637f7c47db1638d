//! The one way to make a running system from a [`Config`]: the bus (embedded,
//! or on NATS JetStream with `PM_NATS_URL`), the built-in handlers, the
//! endpoints (managed ones and those of the route variables), the delivery
//! engine attached and started (pending deliveries resumed), and the wiring
//! between them — and stopping it all in order.
//!
//! Every entrance gets its system here: the binary's commands, the benches,
//! the tests and the Python package, so that what works from one works from
//! every one. Nothing else connects these pieces.
//!
//! ```no_run
//! # async fn run() -> Result<(), pm_events::app::AppError> {
//! use pm_events::{Config, app::App};
//! let cfg = Config::from_env()?;
//! let app = App::builder(&cfg).build().await?; // bus not started yet: subscribe first
//! app.bus.start().await?;
//! app.bus.publish("deployment", serde_json::json!({"service": "api"})).await?;
//! let report = app.stop(std::time::Duration::from_secs(30)).await?;
//! # Ok(()) }
//! ```
//!
//! Stopping order ([`App::stop`]): the bus (every accepted event handled), the
//! risk dashboard's file, then the deliveries this run queued (waited for up to
//! a limit; what is still pending stays in the outbox), then the engine.

use crate::endpoint::Endpoints;
use crate::endpoint::guard::NetGuard;
use crate::error::{BusError, ConfigError};
use crate::handlers::{
    Access, BUILTIN_TYPES, Builtins, SetupError, builtin_priority, register_builtins,
};
use crate::transport::{NatsTransport, TransportError};
use crate::webhook::jetstream::JetStreamQueue;
use crate::webhook::{
    DeliveryConfig, EndpointFanOut, Routes, WaitOutcome, WebhookEngine, WebhookError,
    WebhookHandler,
};
use crate::{Config, EventBus, WeakEventBus};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Why a running system could not be made or stopped; each cause is its source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// The settings cannot work together (the message says which to change).
    #[error("{0}")]
    Usage(String),
    /// The log directory cannot be created.
    #[error("cannot create the log directory {} (--log-dir or PM_LOG_DIR)", path.display())]
    LogDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A setting is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The bus failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// NATS could not be reached or set up.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The endpoints could not be opened.
    #[error(transparent)]
    Endpoints(#[from] crate::endpoint::EndpointError),
    /// The delivery engine could not be opened or used.
    #[error(transparent)]
    Webhooks(#[from] WebhookError),
    /// A built-in handler could not be set up.
    #[error(transparent)]
    Handlers(#[from] SetupError),
    /// A task of the stop sequence ended abnormally.
    #[error("stopping: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// What kind of process the system runs in; it decides who delivers and what is watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A command that publishes and ends (`publish`, `watch`, `replay`): the
    /// deliveries it queues are remembered, so that [`App::stop`] can wait for
    /// them; with NATS it only queues deliveries (any node sends them).
    Command,
    /// A long-running server (`serve`): metrics on, endpoint changes made by
    /// other processes followed, events' paths held to `PM_FILE_ROOTS`, and with
    /// NATS it takes deliveries from the shared work queue.
    Server,
    /// A library embedded in another program (the Python package): endpoint
    /// changes followed; with NATS it only queues deliveries.
    Embedded,
}

/// How to make an [`App`]; see [`App::builder`].
pub struct AppBuilder {
    cfg: Config,
    role: Role,
    log: bool,
    builtins: bool,
    always_webhooks: bool,
}

impl AppBuilder {
    /// The process is a long-running server ([`Role::Server`]).
    pub fn server(mut self) -> Self {
        self.role = Role::Server;
        self
    }

    /// The process embeds the library ([`Role::Embedded`]).
    pub fn embedded(mut self) -> Self {
        self.role = Role::Embedded;
        self
    }

    /// No event log: for replaying events that are in it already.
    pub fn without_log(mut self) -> Self {
        self.log = false;
        self
    }

    /// The built-in handlers are not subscribed (the Python package's
    /// `EventBus()` has no subscribers of its own: its users subscribe them).
    pub fn without_builtins(mut self) -> Self {
        self.builtins = false;
        self
    }

    /// Opens the delivery engine even when no route or endpoint exists yet, and
    /// with NATS takes deliveries from the work queue (the single-process demo).
    pub fn always_webhooks(mut self) -> Self {
        self.always_webhooks = true;
        self
    }

    /// Builds the system. The bus is not started: subscribe, then `app.bus.start()`.
    pub async fn build(self) -> Result<App, AppError> {
        let cfg = &self.cfg;
        check_signing(cfg)?;
        let bus = bus_builder(cfg, self.role).await?;
        let bus = if self.log { bus } else { bus.without_log() }.build();
        let endpoints = open_endpoints(cfg).await?;
        let force = self.always_webhooks || self.role == Role::Server;
        let webhooks = open_webhooks(
            cfg,
            self.role,
            &endpoints,
            Some(bus.downgrade()),
            force,
            self.always_webhooks,
        )
        .await?;
        let builtins = if self.builtins {
            // Events reach `serve` over HTTP: their paths must lie under PM_FILE_ROOTS.
            let access = match self.role {
                Role::Server => Access::server(cfg)?,
                Role::Command | Role::Embedded => Access::operator(cfg),
            };
            Some(register_builtins(&bus, cfg, webhooks.clone(), access)?)
        } else {
            None
        };
        if let Some(h) = &webhooks {
            connect(&bus, h);
        }
        Ok(App {
            bus,
            builtins,
            webhooks,
            endpoints,
            log_dir: cfg.log_dir.clone(),
        })
    }
}

/// A running system: the bus, its built-in handlers and its webhook delivery.
/// Owned by the entrance that built it, which stops it with [`App::stop`].
pub struct App {
    /// The bus (critical risk alerts in the priority lane).
    pub bus: EventBus,
    /// The built-in handlers, when subscribed.
    pub builtins: Option<Builtins>,
    /// The webhook handler and its engine (started), when any route or
    /// endpoint exists: the built-in handlers trigger it for their types, it is
    /// subscribed for every other type, and the fan-out to the endpoints is
    /// subscribed on `*`.
    pub webhooks: Option<Arc<WebhookHandler>>,
    /// The endpoints: managed ones (in the log directory, or in JetStream KV with
    /// `PM_NATS_URL`) and those of the route variables.
    pub endpoints: Endpoints,
    /// The log directory (for messages that point at its files).
    pub log_dir: PathBuf,
}

/// What [`App::stop`] found about the deliveries of the run.
#[derive(Debug, Default)]
pub struct StopReport {
    /// Deliveries put in the JetStream work queue (any node sends them).
    pub handed_off: usize,
    /// Deliveries asked for that existed already, so nothing was sent again.
    pub repeats: usize,
    /// What became of the deliveries this run queued, if any were.
    pub outcome: Option<WaitOutcome>,
}

impl App {
    /// How to make a running system for `cfg` (a one-shot command by default).
    pub fn builder(cfg: &Config) -> AppBuilder {
        AppBuilder {
            cfg: cfg.clone(),
            role: Role::Command,
            log: true,
            builtins: true,
            always_webhooks: false,
        }
    }

    /// Stops the bus (every accepted event handled), writes the risk dashboard,
    /// then waits up to `wait` for the deliveries this run queued, then stops the
    /// engine (what is still pending stays in the outbox).
    pub async fn stop(self, wait: Duration) -> Result<StopReport, AppError> {
        self.bus.stop().await?;
        if let Some(b) = &self.builtins {
            // Every alert handled is on the dashboard file, whoever still holds the handler.
            let risks = b.risk_alert.clone();
            tokio::task::spawn_blocking(move || risks.flush_dashboard()).await?;
        }
        let Some(h) = self.webhooks else {
            return Ok(StopReport::default());
        };
        let ids = h.take_queued();
        let report = StopReport {
            handed_off: h.take_handed_off(),
            repeats: h.take_repeats(),
            outcome: if ids.is_empty() {
                None
            } else {
                Some(h.engine().wait(&ids, wait).await?)
            },
        };
        h.engine().shutdown().await;
        Ok(report)
    }
}

/// A route variable without a signing secret is found now, not when the first
/// routed event is handled and refused.
fn check_signing(cfg: &Config) -> Result<(), AppError> {
    match cfg.webhook_urls.keys().next() {
        Some(route) if cfg.webhook_secrets.is_empty() && !cfg.allow_unsigned => {
            Err(AppError::Usage(format!(
                "{route} is set but WEBHOOK_SIGNATURE_SECRET is not: set a signing secret, or PM_ALLOW_UNSIGNED=1 to send webhooks unsigned"
            )))
        }
        _ => Ok(()),
    }
}

/// The bus of `cfg` (not built): its settings, the built-in priority rule, and
/// with `PM_NATS_URL` the JetStream transport shared by `PM_CONSUMER_GROUP`.
pub async fn bus_builder(cfg: &Config, role: Role) -> Result<crate::EventBusBuilder, AppError> {
    let mut builder = EventBus::builder()
        .config(cfg)
        .priority(builtin_priority)
        .metrics(role == Role::Server);
    if let Some(url) = &cfg.nats_url {
        let ack_wait = cfg.handler_timeout + Duration::from_secs(30);
        let t = NatsTransport::connect(url, &cfg.consumer_group, ack_wait).await?;
        builder = builder.transport(Arc::new(t));
    }
    Ok(builder)
}

/// Creates the log directory (mode 0700) if it is missing, so that a directory
/// that cannot be created is reported by the name the user gave, not by that of
/// a subfolder.
pub fn ensure_log_dir(cfg: &Config) -> Result<(), AppError> {
    crate::private_files::create_dir_all(&cfg.log_dir).map_err(|source| AppError::LogDir {
        path: cfg.log_dir.clone(),
        source,
    })
}

/// The endpoints of `cfg`: in the JetStream KV bucket `PM_ENDPOINTS` with
/// `PM_NATS_URL`, else in `<log dir>/webhooks/endpoints.sqlite3`; beside them the
/// read-only endpoints of the route variables.
pub async fn open_endpoints(cfg: &Config) -> Result<Endpoints, AppError> {
    ensure_log_dir(cfg)?;
    let routes = Routes::from_config(cfg);
    let guard = NetGuard::new(cfg.endpoint_allow_nets.clone());
    Ok(match &cfg.nats_url {
        Some(url) => {
            let store = crate::endpoint::kv::KvStore::connect(url).await?;
            Endpoints::open(Box::new(store), &routes, guard).await?
        }
        None => Endpoints::open_local(&cfg.log_dir, &routes, guard).await?,
    })
}

/// The delivery engine of the log directory with `endpoints` attached, not
/// started: for the commands that manage deliveries (`deliveries`, `webhooks`,
/// `endpoints test`), which start it only when this process delivers.
pub fn open_engine(cfg: &Config, endpoints: &Endpoints) -> Result<WebhookEngine, AppError> {
    let engine = WebhookEngine::open(DeliveryConfig::from_config(cfg), &cfg.webhook_secrets)?;
    engine.attach_endpoints(endpoints.clone())?;
    Ok(engine)
}

/// Whether the log directory has an outbox (deliveries may be pending in it).
fn has_outbox(cfg: &Config) -> bool {
    cfg.log_dir.join("webhooks").join("outbox.sqlite3").exists()
}

/// The webhook handler of `cfg` with its engine attached to `endpoints` and
/// started (pending deliveries resumed), when any route or endpoint exists,
/// or an outbox from an earlier run, or `force`. An endpoint the engine
/// disables (410 Gone) is announced as `endpoint_disabled` on `announce`.
/// `takes_queue`: with NATS, this process takes deliveries from the work
/// queue even if it is not a server.
pub async fn open_webhooks(
    cfg: &Config,
    role: Role,
    endpoints: &Endpoints,
    announce: Option<WeakEventBus>,
    force: bool,
    takes_queue: bool,
) -> Result<Option<Arc<WebhookHandler>>, AppError> {
    let wanted = force || !cfg.webhook_urls.is_empty() || !endpoints.is_empty() || has_outbox(cfg);
    if !wanted {
        return Ok(None);
    }
    let h = WebhookHandler::from_config(cfg)?;
    h.engine().attach_endpoints(endpoints.clone())?;
    if let Some(weak) = announce {
        h.engine().on_endpoint_disabled(move |event| {
            let weak = weak.clone();
            tokio::spawn(async move {
                if let Err(e) = weak.publish(event, None).await {
                    tracing::warn!(error = %e, "cannot publish endpoint_disabled");
                }
            });
        })?;
    }
    if role != Role::Command {
        // Endpoints created or changed by the CLI or another node reach it.
        endpoints.watch();
    }
    let h = if role == Role::Command {
        h.track_deliveries()
    } else {
        h
    };
    if let Some(url) = &cfg.nats_url {
        // Deliveries are a JetStream work queue any node delivers from. A node
        // may hold a delivery while up to 8 per endpoint wait before it.
        let ack_wait = cfg.webhook_timeout * 9 + Duration::from_secs(30);
        let q = JetStreamQueue::connect(url, ack_wait).await?;
        h.engine()
            .use_jetstream(q, role == Role::Server || takes_queue)?;
    }
    h.engine().start()?;
    Ok(Some(Arc::new(h)))
}

/// Subscribes the delivery of `webhooks` on `bus`: the fan-out to the endpoints
/// on `*`, and the route variables' handler for the types the built-in handlers
/// do not route themselves. Returns the two subscriptions.
pub fn connect(bus: &EventBus, webhooks: &Arc<WebhookHandler>) -> [crate::SubscriptionId; 2] {
    [
        bus.subscribe_arc("*", Arc::new(EndpointFanOut(webhooks.clone()))),
        bus.subscribe_arc_filtered(
            "*",
            |e| !BUILTIN_TYPES.contains(&e.event_type.as_str()),
            webhooks.clone(),
        ),
    ]
}
