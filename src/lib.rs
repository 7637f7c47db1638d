//! # pm-events
//!
//! The event system of the Personal Manager: an async event bus whose every
//! accepted event is written ahead to a JSON Lines log, with handlers that run
//! concurrently and in isolation.
//!
//! ```
//! use pm_events::{Event, EventBus};
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let bus = EventBus::builder().log_dir(dir.path()).build();
//! bus.subscribe("deployment", |e: Event| async move {
//!     println!("Deployment {}: {}", e.data["status"], e.data["service"]);
//!     Ok::<(), std::convert::Infallible>(())
//! });
//! bus.start().await?;
//! bus.publish("deployment", json!({"service": "api-gateway", "status": "success"})).await?;
//! bus.stop().await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - [`event`]: the [`Event`] type and its JSON form.
//! - [`bus`]: the [`EventBus`] — subscriptions, dispatch, backpressure, start/stop.
//! - [`handlers`]: the built-in `file_change`, `report_ready` and `risk_alert` handlers.
//! - [`door`]: every entrance's form (`POST /events`, incoming webhooks, the CLI, `publish -`
//!   lines) read into one event and admitted in one place.
//! - [`server`] (feature `server`, on by default): the HTTP server of `pm-events serve` —
//!   router, API, dashboard page, admission and connection limits.
//! - [`app`]: the one builder of a running system (bus, built-ins, endpoints, delivery).
//! - [`handler`]: the [`Handler`] trait (implemented by async closures) and filters.
//! - [`transport`]: the queue behind the bus (`memory`, the embedded default; `nats`, NATS JetStream).
//! - [`journal`]: the write-ahead main event log `events/events_YYYYMMDD.log`, and its readers.
//! - [`idempotency`]: an event published twice with one `event_id` is accepted once.
//! - [`recovery`]: which accepted events are done, and dispatching the others again after a crash.
//! - [`private_files`]: files created 0600 and directories 0700: they hold payloads, URLs and secrets.
//! - [`jsonl`]: the shared JSON Lines writer (size rotation) and reader of the handler logs.
//! - [`webhook`]: outgoing webhooks — signing, routing, the durable outbox, delivery
//!   (and, with NATS, the JetStream work queue of deliveries).
//! - [`config`]: settings from the environment, validated once.
//! - [`redact`]: URLs as they may be shown (no credentials, no query).
//! - [`secret`]: secrets that never print themselves, and their signing keys.
//! - [`query`]: the HTTP API's query strings: unknown and repeated names refused, `limit` in range.
//! - [`timespec`]: durations and points in time as users write them, parsed without panicking.
//! - [`strict_json`]: the JSON parser of untrusted input (duplicate keys refused, paths named).
//! - [`error`]: the error types of each area.
//!
//! The binary `pm-events` (in `src/bin/pm-events/`) is a thin CLI over this crate.

pub mod app;
pub mod bus;
pub mod config;
pub mod door;
pub mod endpoint;
pub mod error;
pub mod event;
pub mod handler;
pub mod handlers;
pub mod idempotency;
pub mod journal;
pub mod jsonl;
pub mod private_files;
pub mod query;
pub mod recovery;
pub mod redact;
pub mod secret;
#[cfg(feature = "server")]
pub mod server;
pub mod strict_json;
pub mod telemetry;
pub mod timespec;
pub mod transport;
pub mod webhook;

pub use bus::{
    BusStats, EventBus, EventBusBuilder, PublishAck, SubscriptionId, WeakEventBus, get_event_bus,
    set_event_bus,
};
pub use config::{Config, FsyncPolicy};
pub use error::{BusError, ConfigError, LogError};
pub use event::{Event, EventId};
pub use handler::{Handler, HandlerError};
pub use transport::Priority;
