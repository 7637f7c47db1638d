//! [`EventBusBuilder`]: the settings of a bus before it is built.

use super::shared::{EventBus, Inner, PriorityRule, Settings, State};
use super::stats::Counters;
use super::table::Table;
use crate::config::{Config, FsyncPolicy};
use crate::event::Event;
use crate::transport::{MemoryTransport, Priority, Transport};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};

/// Builds an [`EventBus`] with settings other than the defaults.
pub struct EventBusBuilder {
    settings: Settings,
    transport: Option<Arc<dyn Transport>>,
    priority: Option<PriorityRule>,
}

impl Default for EventBusBuilder {
    fn default() -> Self {
        let c = Config::default();
        EventBusBuilder {
            settings: Settings {
                log_dir: Some(c.log_dir),
                fsync: c.fsync,
                capacity: c.queue_capacity,
                handler_timeout: c.handler_timeout,
                concurrency: 512,
                metrics: false,
            },
            transport: None,
            priority: None,
        }
    }
}

impl EventBusBuilder {
    /// Takes the log directory, queue capacity, handler timeout and fsync policy from `config`.
    pub fn config(mut self, config: &Config) -> Self {
        self.settings.log_dir = Some(config.log_dir.clone());
        self.settings.capacity = config.queue_capacity;
        self.settings.handler_timeout = config.handler_timeout;
        self.settings.fsync = config.fsync;
        self
    }
    /// Writes the event log under `dir` (default `./logs`).
    pub fn log_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.settings.log_dir = Some(dir.into());
        self
    }
    /// Runs without the main event log (events are not persisted).
    pub fn without_log(mut self) -> Self {
        self.settings.log_dir = None;
        self
    }
    /// When the event log syncs to disk (default `batch`).
    pub fn fsync(mut self, policy: FsyncPolicy) -> Self {
        self.settings.fsync = policy;
        self
    }
    /// Events accepted and not yet handled, at most (default 10,000; at least 1).
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.settings.capacity = n.clamp(1, Semaphore::MAX_PERMITS);
        self
    }
    /// Time limit of one handler on one event (default 30 s).
    pub fn handler_timeout(mut self, d: Duration) -> Self {
        self.settings.handler_timeout = d;
        self
    }
    /// Events whose handlers may run at the same time (default 512; at least 1).
    /// With 1, each handler sees events one at a time in dispatch order.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.settings.concurrency = n.clamp(1, Semaphore::MAX_PERMITS);
        self
    }
    /// The transport between publishers and the dispatcher (default: in-process).
    pub fn transport(mut self, t: Arc<dyn Transport>) -> Self {
        self.transport = Some(t);
        self
    }
    /// Decides which events travel in the priority lane.
    pub fn priority(mut self, rule: impl Fn(&Event) -> Priority + Send + Sync + 'static) -> Self {
        self.priority = Some(Arc::new(rule));
        self
    }
    /// Reports, through the `metrics` facade (for a Prometheus exporter):
    /// `pm_events_published_total{type}`, `pm_events_handled_total{type,outcome}`
    /// (`ok`, `error`, `panic`, `timeout`) and the histogram
    /// `pm_events_handler_duration_seconds{type}`. Off by default (it costs a
    /// label per event).
    pub fn metrics(mut self, on: bool) -> Self {
        self.settings.metrics = on;
        self
    }

    /// Builds the bus (not started).
    pub fn build(self) -> EventBus {
        let transport = self
            .transport
            .unwrap_or_else(|| Arc::new(MemoryTransport::new()));
        EventBus {
            inner: Arc::new(Inner {
                settings: self.settings,
                local: transport.is_local(),
                transport,
                priority: self.priority,
                table: RwLock::new(Arc::new(Table::default())),
                next_id: AtomicU64::new(1),
                state: RwLock::new(State::Idle),
                lifecycle: tokio::sync::Mutex::new(()),
                inflight: AtomicUsize::new(0),
                idle: Notify::new(),
                recovered_done: AtomicU64::new(0),
                stats: Counters::default(),
            }),
        }
    }
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    /// A bus with the default settings (log under `./logs`, capacity 10,000, 30 s handler timeout).
    pub fn new() -> Self {
        EventBusBuilder::default().build()
    }

    /// A builder for other settings.
    pub fn builder() -> EventBusBuilder {
        EventBusBuilder::default()
    }

    /// A bus configured from the environment (docs/configuration.md).
    pub fn from_env() -> Result<Self, crate::error::ConfigError> {
        Ok(Self::builder().config(&Config::from_env()?).build())
    }
}
