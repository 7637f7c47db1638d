//! The Python process's running system, from the library's one builder
//! (`pm_events::app`): every `EventBus()` is made by it (on NATS JetStream with
//! `PM_NATS_URL`), and one delivery engine per process — endpoints attached,
//! started, pending deliveries resumed — is shared by every bus, every built-in
//! handler and `WebhookHandler()`.

use crate::awaitable::runtime;
use pm_events::app::{self, Role};
use pm_events::webhook::WebhookHandler;
use pm_events::{Config, EventBus, WeakEventBus};
use pyo3::prelude::*;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

/// The process's delivery; made on first use (see [`webhooks`]), shut down at exit.
static SHARED: Mutex<Option<Arc<WebhookHandler>>> = Mutex::new(None);

/// The engines of `WebhookHandler(max_retries=...)` with settings of their own;
/// shut down at exit like the shared one.
static OWN: Mutex<Vec<Arc<WebhookHandler>>> = Mutex::new(Vec::new());

/// How long interpreter exit waits for the engine to finish its attempts in flight.
const ENGINE_EXIT_WAIT: Duration = Duration::from_secs(5);

fn setup_error(e: impl std::error::Error + 'static) -> PyErr {
    crate::errors::ConfigError::new_err(pm_events::error::chain(&e))
}

/// The configuration of the environment.
pub fn config() -> PyResult<Config> {
    Config::from_env().map_err(setup_error)
}

/// The process's webhook handler for `cfg`: made (endpoints opened, engine
/// attached and started) on first use when any route, endpoint or outbox
/// exists, or when `force` (a `WebhookHandler()` needs one). `None` when
/// nothing is configured and nothing forces it.
pub fn webhooks(
    py: Python<'_>,
    cfg: &Config,
    force: bool,
) -> PyResult<Option<Arc<WebhookHandler>>> {
    // Without the GIL: the engine's start logs through Python's `logging`.
    py.detach(|| shared_webhooks(cfg, force))
}

/// [`webhooks`], on a thread that does not hold the GIL.
fn shared_webhooks(cfg: &Config, force: bool) -> PyResult<Option<Arc<WebhookHandler>>> {
    let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(h) = &*shared {
        return Ok(Some(h.clone()));
    }
    let made = open(cfg, force)?;
    if let Some(h) = &made {
        *shared = Some(h.clone());
    }
    Ok(made)
}

/// A webhook handler of its own for `cfg` (settings other than the process's),
/// started like the shared one.
pub fn own_webhooks(py: Python<'_>, cfg: &Config) -> PyResult<Arc<WebhookHandler>> {
    let h = py.detach(|| open(cfg, true))?.ok_or_else(|| {
        crate::errors::ConfigError::new_err("the webhook handler could not be made")
    })?;
    OWN.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(h.clone());
    Ok(h)
}

fn open(cfg: &Config, force: bool) -> PyResult<Option<Arc<WebhookHandler>>> {
    let cfg = cfg.clone();
    runtime()
        .block_on(async move {
            let endpoints = app::open_endpoints(&cfg).await?;
            let h =
                app::open_webhooks(&cfg, Role::Embedded, &endpoints, None, force, false).await?;
            if let Some(h) = &h {
                // An endpoint disabled by the engine is announced on the global bus.
                h.engine().on_endpoint_disabled(|event| {
                    if let Some(bus) = GLOBAL_BUS.get().cloned() {
                        tokio::spawn(async move {
                            if let Err(e) = bus.publish(event, None).await {
                                tracing::warn!(error = %e, "cannot publish endpoint_disabled");
                            }
                        });
                    }
                })?;
            }
            Ok::<_, app::AppError>(h)
        })
        .map_err(setup_error)
}

/// The global bus (`get_event_bus()`) and how many of its subscriptions on `*`
/// are the system's; made on first use. Endpoint announcements go to it.
static GLOBAL: Mutex<Option<(EventBus, usize)>> = Mutex::new(None);

/// Where endpoint announcements go, once the global bus exists.
static GLOBAL_BUS: OnceLock<WeakEventBus> = OnceLock::new();

/// The process-wide bus (the engine's side of `get_event_bus()`), made on
/// first use from the environment, and how many of its subscriptions on `*`
/// are the system's. The library's `pm_events::get_event_bus` is the same bus.
pub fn global_bus(py: Python<'_>) -> PyResult<(EventBus, usize)> {
    // Without the GIL: making it starts the engine, which logs through Python.
    py.detach(|| {
        let mut global = GLOBAL.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(g) = &*global {
            return Ok(g.clone());
        }
        let made = new_bus_detached()?;
        let _ = GLOBAL_BUS.set(made.0.downgrade());
        let _ = pm_events::set_event_bus(made.0.clone());
        *global = Some(made.clone());
        Ok(made)
    })
}

/// A new bus for the environment, with the process's delivery subscribed
/// (the fan-out to the endpoints and the route variables): returns it and how
/// many of its subscriptions on `*` are the system's.
pub fn new_bus(py: Python<'_>) -> PyResult<(EventBus, usize)> {
    py.detach(new_bus_detached)
}

/// [`new_bus`], on a thread that does not hold the GIL.
fn new_bus_detached() -> PyResult<(EventBus, usize)> {
    let cfg = config()?;
    let builder = {
        let cfg = cfg.clone();
        runtime()
            .block_on(async move { app::bus_builder(&cfg, Role::Embedded).await })
            .map_err(setup_error)?
    };
    let bus = builder.build();
    let system = match shared_webhooks(&cfg, false)? {
        Some(h) => app::connect(&bus, &h).len(),
        None => 0,
    };
    Ok((bus, system))
}

/// Stops the shared engine at interpreter exit (what is pending stays in the
/// outbox for the next start).
pub fn shutdown() {
    let mut engines = std::mem::take(&mut *OWN.lock().unwrap_or_else(PoisonError::into_inner));
    engines.extend(SHARED.lock().unwrap_or_else(PoisonError::into_inner).take());
    runtime().block_on(async move {
        let all = async {
            for h in &engines {
                h.engine().shutdown().await;
            }
        };
        let _ = tokio::time::timeout(ENGINE_EXIT_WAIT, all).await;
    });
}
