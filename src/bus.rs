//! The [`EventBus`]: subscribe handlers, start, publish, stop.
//!
//! # How an event travels
//!
//! 1. `publish` validates the event and takes one unit of capacity (a permit
//!    of a semaphore of `queue_capacity` units): when none is free it waits
//!    (backpressure), `try_publish` fails with [`BusError::QueueFull`].
//! 2. The event is written to the main event log (write-ahead); only then is
//!    it handed to the transport, and `publish` returns its id.
//! 3. The dispatcher task takes events from the transport (priority lane
//!    first), picks the subscriptions whose type (or `"*"`) and filter match,
//!    and spawns a task that runs those handlers concurrently, each under the
//!    handler timeout and with panics caught. Under load it takes up to 32 ready
//!    events at once and gives them one task (their handlers still run
//!    concurrently, interleaved); an idle bus spawns one task per event. At most
//!    `concurrency` events are in handlers at once.
//! 4. When every handler of the event is done, the event is acknowledged and
//!    its capacity unit is released.
//!
//! Events published *from inside a handler* do not wait for capacity (a
//! handler waiting for capacity that only handlers can free would deadlock the
//! bus) and are still accepted while the bus is stopping, so a handler's
//! follow-up events are never lost to a shutdown.
//!
//! # Stopping
//!
//! `stop` refuses new publishes from outside, waits for publishes under way,
//! then for every accepted event (and every event its handlers publish) to be
//! handled, then closes the transport, waits for the dispatcher, and syncs and
//! closes the event log.

use crate::config::{Config, FsyncPolicy};
use crate::error::{BusError, LogError};
use crate::event::{Event, EventId};
use crate::handler::{Filter, Handler};
use crate::idempotency::{Accepted, RecentIds};
use crate::journal::{self, EventLog};
use crate::recovery::{self, Ledger};
use crate::transport::{Ack, Consumer, Delivery, MemoryTransport, Permit, Priority, Transport};
use futures_util::FutureExt;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::task::Poll;
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

/// Identifies one subscription, for [`EventBus::unsubscribe`].
pub type SubscriptionId = u64;

/// The event type that subscribes to every type.
pub const WILDCARD: &str = "*";

/// Decides the lane of an event (see [`Priority`]).
pub type PriorityRule = Arc<dyn Fn(&Event) -> Priority + Send + Sync + 'static>;

tokio::task_local! {
    /// Set while a handler runs: publishes made from it skip the capacity wait.
    static IN_HANDLER: ();
}

struct Subscription {
    id: SubscriptionId,
    filter: Option<Filter>,
    handler: Arc<dyn Handler>,
}

impl Subscription {
    fn accepts(&self, e: &Event) -> bool {
        self.filter.as_ref().is_none_or(|f| f(e))
    }
}

/// The subscription table; replaced whole on every change (copy on write) so
/// the dispatcher reads it without holding a lock while it works. Each type's
/// list already includes the wildcard subscriptions, so a dispatch is one
/// lookup and one reference-count increment.
#[derive(Default, Clone)]
struct Table {
    /// Subscriptions made per type (without the wildcard ones).
    own: HashMap<String, Vec<Arc<Subscription>>>,
    /// `"*"` subscriptions.
    wildcard: Vec<Arc<Subscription>>,
    /// What dispatch reads: per type, its own subscriptions then the wildcard ones.
    lists: HashMap<String, SubList>,
    /// What dispatch reads for a type with no subscription of its own.
    wildcard_list: SubList,
}

type SubList = Arc<[Arc<Subscription>]>;

impl Table {
    fn rebuild(&mut self) {
        self.wildcard_list = self.wildcard.iter().cloned().collect();
        self.lists = self
            .own
            .iter()
            .map(|(t, own)| {
                (
                    t.clone(),
                    own.iter().chain(&self.wildcard).cloned().collect(),
                )
            })
            .collect();
    }
}

/// Counters of a bus since it was built; see [`EventBus::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BusStats {
    /// Events accepted (logged and queued).
    pub published: u64,
    /// Events taken by the dispatcher.
    pub dispatched: u64,
    /// Events no subscription matched.
    pub unhandled: u64,
    /// Handler runs that returned `Ok`.
    pub handled: u64,
    /// Handler runs that returned `Err`.
    pub failed: u64,
    /// Handler runs that panicked.
    pub panicked: u64,
    /// Handler runs stopped at the handler timeout.
    pub timed_out: u64,
    /// Events dispatched again at start because a crash left them unhandled.
    pub redelivered: u64,
}

#[derive(Default)]
struct Counters {
    redelivered: AtomicU64,
    published: AtomicU64,
    dispatched: AtomicU64,
    unhandled: AtomicU64,
    handled: AtomicU64,
    failed: AtomicU64,
    panicked: AtomicU64,
    timed_out: AtomicU64,
}

#[derive(Clone)]
struct Settings {
    log_dir: Option<PathBuf>,
    fsync: FsyncPolicy,
    capacity: usize,
    handler_timeout: Duration,
    concurrency: usize,
    /// Report per-type counters and latencies through the `metrics` facade.
    metrics: bool,
}

/// What exists while the bus runs; shared by publishers, the dispatcher and `stop`.
struct Run {
    /// The write-ahead log; `None` when the bus runs without one.
    log: Option<EventLog>,
    /// `queue_capacity` units; a publisher holds one from before the event is
    /// logged until its handlers are done (memory transport).
    permits: Arc<Semaphore>,
    /// Capacity for events published from inside handlers: never waited on.
    overflow: Arc<Semaphore>,
    /// Publishes from outside under way; `stop` waits for them after refusing new ones.
    publishers: TaskTracker,
    /// The runtime the bus was started on, for `publish_sync`.
    runtime: tokio::runtime::Handle,
    /// This run's record of finished events (log on, in-process transport);
    /// the dispatcher writes to it, `stop` closes it.
    ledger: Option<Arc<Ledger>>,
    /// The recovery plan, handed here by the feeder once every recovered event
    /// is queued; `stop` finishes it (moves the checkpoint) when all are done.
    recovered: std::sync::Mutex<Option<recovery::Plan>>,
    /// The ids accepted recently, for idempotent publishes (`publish_once`).
    recent: Arc<RecentIds>,
}

enum State {
    Idle,
    Running {
        run: Arc<Run>,
        dispatcher: JoinHandle<()>,
    },
    Stopping(Arc<Run>),
}

struct Inner {
    settings: Settings,
    transport: Arc<dyn Transport>,
    priority: Option<PriorityRule>,
    table: RwLock<Arc<Table>>,
    next_id: AtomicU64,
    state: RwLock<State>,
    /// Serializes `start` and `stop`.
    lifecycle: tokio::sync::Mutex<()>,
    /// Events not finished yet: with a local transport, from acceptance; with a
    /// remote one, from when the dispatcher takes them.
    inflight: AtomicUsize,
    /// Whether the transport is in-process (see [`Transport::is_local`]).
    local: bool,
    /// Woken when `inflight` drops to zero; `stop` waits on it.
    idle: Notify,
    stats: Counters,
}

/// The event bus. Cheap to clone: clones share one bus.
///
/// ```
/// use pm_events::{Event, EventBus};
/// use serde_json::json;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let bus = EventBus::builder().log_dir(dir.path()).build();
/// bus.subscribe("file_change", |event: Event| async move {
///     println!("changed: {}", event.data["file_path"]);
///     Ok::<(), std::io::Error>(())
/// });
/// bus.start().await?;
/// let id = bus.publish("file_change", json!({"file_path": "/tmp/a.txt"})).await?;
/// bus.stop().await?; // every accepted event is handled before this returns
/// assert!(std::fs::read_to_string(bus.get_log_file())?.contains(&id));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<Inner>,
}

/// A publishing handle that does not keep the bus alive: what a handler that
/// publishes follow-up events holds (a handler holding the [`EventBus`] that
/// holds it would be an `Arc` cycle, and neither would ever be dropped).
///
/// ```
/// # use pm_events::EventBus; use serde_json::json;
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = EventBus::builder().without_log().build();
/// let handle = bus.downgrade();
/// bus.start().await?;
/// handle.publish("follow_up", json!({})).await?;
/// bus.stop().await?;
/// drop(bus);
/// assert!(handle.publish("follow_up", json!({})).await.is_err()); // the bus is gone
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct WeakEventBus {
    inner: std::sync::Weak<Inner>,
}

impl WeakEventBus {
    /// Publishes on the bus if it still exists (see [`EventBus::publish`]);
    /// [`BusError::NotRunning`] once it was dropped.
    pub async fn publish(
        &self,
        event: impl Into<EventOrType>,
        data: impl Into<Option<Value>>,
    ) -> Result<EventId, BusError> {
        match self.inner.upgrade() {
            Some(inner) => EventBus { inner }.publish(event, data).await,
            None => Err(BusError::NotRunning("dropped")),
        }
    }
}

/// What `publish` takes as its first argument: an event type or a whole [`Event`].
pub enum EventOrType {
    /// A type name; the bus builds the event.
    Type(String),
    /// A built event.
    Event(Event),
}

impl From<&str> for EventOrType {
    fn from(s: &str) -> Self {
        EventOrType::Type(s.to_string())
    }
}
impl From<String> for EventOrType {
    fn from(s: String) -> Self {
        EventOrType::Type(s)
    }
}
impl From<&String> for EventOrType {
    fn from(s: &String) -> Self {
        EventOrType::Type(s.clone())
    }
}
impl From<Event> for EventOrType {
    fn from(e: Event) -> Self {
        EventOrType::Event(e)
    }
}

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

static GLOBAL: OnceLock<EventBus> = OnceLock::new();

/// The process-wide bus. The first call builds it from the environment
/// ([`Config::from_env`]; on an invalid value it logs the error and uses the
/// defaults) unless [`set_event_bus`] installed one before.
pub fn get_event_bus() -> &'static EventBus {
    GLOBAL.get_or_init(|| match Config::from_env() {
        Ok(c) => EventBus::builder().config(&c).build(),
        Err(e) => {
            tracing::error!(error = %crate::error::chain(&e), "invalid configuration; the global event bus uses the defaults");
            EventBus::new()
        }
    })
}

/// Installs `bus` as the process-wide bus; fails (returning it) if one is set already.
pub fn set_event_bus(bus: EventBus) -> Result<(), EventBus> {
    GLOBAL.set(bus)
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}
fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
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

    /// A bus configured from the environment (DESIGN.md section 8).
    pub fn from_env() -> Result<Self, crate::error::ConfigError> {
        Ok(Self::builder().config(&Config::from_env()?).build())
    }

    /// Registers `handler` for `event_type` (`"*"` for every type).
    pub fn subscribe(&self, event_type: &str, handler: impl Handler) -> SubscriptionId {
        self.add(event_type, None, Arc::new(handler))
    }

    /// Registers `handler` for the events of `event_type` that `filter` accepts;
    /// the others are never copied to it.
    pub fn subscribe_filtered(
        &self,
        event_type: &str,
        filter: impl Fn(&Event) -> bool + Send + Sync + 'static,
        handler: impl Handler,
    ) -> SubscriptionId {
        self.add(event_type, Some(Arc::new(filter)), Arc::new(handler))
    }

    /// Registers a shared handler for the events of `event_type` that `filter` accepts.
    pub fn subscribe_arc_filtered(
        &self,
        event_type: &str,
        filter: impl Fn(&Event) -> bool + Send + Sync + 'static,
        handler: Arc<dyn Handler>,
    ) -> SubscriptionId {
        self.add(event_type, Some(Arc::new(filter)), handler)
    }

    /// Registers a shared handler (one value subscribed to several types).
    pub fn subscribe_arc(&self, event_type: &str, handler: Arc<dyn Handler>) -> SubscriptionId {
        self.add(event_type, None, handler)
    }

    fn add(
        &self,
        event_type: &str,
        filter: Option<Filter>,
        handler: Arc<dyn Handler>,
    ) -> SubscriptionId {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let sub = Arc::new(Subscription {
            id,
            filter,
            handler,
        });
        let mut guard = write(&self.inner.table);
        let table = Arc::make_mut(&mut guard);
        if event_type == WILDCARD {
            table.wildcard.push(sub);
        } else {
            table
                .own
                .entry(event_type.to_string())
                .or_default()
                .push(sub);
        }
        table.rebuild();
        id
    }

    /// Removes the subscription `id` of `event_type`; `false` if there was none.
    /// Events already dispatched to it still finish.
    pub fn unsubscribe(&self, event_type: &str, id: SubscriptionId) -> bool {
        let mut guard = write(&self.inner.table);
        let table = Arc::make_mut(&mut guard);
        let list = if event_type == WILDCARD {
            Some(&mut table.wildcard)
        } else {
            table.own.get_mut(event_type)
        };
        let Some(list) = list else { return false };
        let before = list.len();
        list.retain(|s| s.id != id);
        let removed = list.len() != before;
        if list.is_empty() && event_type != WILDCARD {
            table.own.remove(event_type);
        }
        table.rebuild();
        removed
    }

    /// Handler counts by event type (`"*"` for wildcard subscriptions).
    pub fn get_subscribers(&self) -> BTreeMap<String, usize> {
        let table = read(&self.inner.table).clone();
        let mut out: BTreeMap<String, usize> = table
            .own
            .iter()
            .map(|(k, v)| (k.clone(), v.len()))
            .collect();
        if !table.wildcard.is_empty() {
            out.insert(WILDCARD.to_string(), table.wildcard.len());
        }
        out
    }

    /// Today's event log file (where the next accepted event goes).
    pub fn get_log_file(&self) -> PathBuf {
        let dir = self
            .inner
            .settings
            .log_dir
            .clone()
            .unwrap_or_else(|| Config::default().log_dir);
        journal::day_path(&dir, journal::today())
    }

    /// The log directory, or `None` when the bus runs without a log.
    pub fn log_dir(&self) -> Option<&std::path::Path> {
        self.inner.settings.log_dir.as_deref()
    }

    /// Events accepted and waiting for the dispatcher.
    pub fn queue_len(&self) -> usize {
        self.inner.transport.queue_len()
    }

    /// The configured queue capacity.
    pub fn capacity(&self) -> usize {
        self.inner.settings.capacity
    }

    /// A handle that publishes on this bus without keeping it alive (for
    /// handlers that publish follow-up events).
    pub fn downgrade(&self) -> WeakEventBus {
        WeakEventBus {
            inner: Arc::downgrade(&self.inner),
        }
    }

    /// Whether the bus is running (started and not stopping).
    pub fn is_running(&self) -> bool {
        matches!(*read(&self.inner.state), State::Running { .. })
    }

    /// A snapshot of the bus's counters.
    pub fn stats(&self) -> BusStats {
        let s = &self.inner.stats;
        BusStats {
            published: s.published.load(Ordering::Relaxed),
            dispatched: s.dispatched.load(Ordering::Relaxed),
            unhandled: s.unhandled.load(Ordering::Relaxed),
            handled: s.handled.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            panicked: s.panicked.load(Ordering::Relaxed),
            timed_out: s.timed_out.load(Ordering::Relaxed),
            redelivered: s.redelivered.load(Ordering::Relaxed),
        }
    }

    /// Starts the bus: opens the event log and the transport and spawns the
    /// dispatcher on the current tokio runtime.
    pub async fn start(&self) -> Result<(), BusError> {
        let _lc = self.inner.lifecycle.lock().await;
        if !matches!(*read(&self.inner.state), State::Idle) {
            return Err(BusError::AlreadyRunning);
        }
        let s = &self.inner.settings;
        let log = match &s.log_dir {
            Some(dir) => Some(EventLog::open(dir.clone(), s.fsync)?),
            None => None,
        };
        // The log is the queue of record: with an in-process queue, record what is
        // done, and dispatch again what a crash left unhandled (crate::recovery).
        let (ledger, plan) = match (&s.log_dir, self.inner.local) {
            (Some(dir), true) => {
                let dir = dir.clone();
                let (ledger, plan) = tokio::task::spawn_blocking(move || recovery::start(&dir))
                    .await
                    .map_err(|e| {
                        LogError::io(
                            "plan the recovery of",
                            "the event log",
                            std::io::Error::other(e),
                        )
                    })??;
                (Some(Arc::new(ledger)), plan)
            }
            _ => (None, None),
        };
        let consumer = self.inner.transport.open().await?;
        let run = Arc::new(Run {
            log,
            permits: Arc::new(Semaphore::new(s.capacity)),
            overflow: Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)),
            publishers: TaskTracker::new(),
            runtime: tokio::runtime::Handle::current(),
            ledger: ledger.clone(),
            recovered: std::sync::Mutex::new(None),
            recent: RecentIds::start(s.log_dir.as_deref()),
        });
        let dispatcher = tokio::spawn(dispatch_loop(
            self.inner.clone(),
            consumer,
            Arc::new(Semaphore::new(s.concurrency)),
            ledger,
        ));
        if let Some(plan) = plan {
            run.publishers
                .spawn(feed_recovered(self.clone(), run.clone(), plan));
        }
        *write(&self.inner.state) = State::Running { run, dispatcher };
        tracing::debug!(transport = self.inner.transport.name(), "event bus started");
        Ok(())
    }

    /// Stops the bus gracefully: every accepted event is handled, and the log
    /// synced and closed, before this returns. Stopping a bus that is not
    /// running does nothing.
    pub async fn stop(&self) -> Result<(), BusError> {
        let _lc = self.inner.lifecycle.lock().await;
        let (run, dispatcher) = {
            let mut st = write(&self.inner.state);
            match std::mem::replace(&mut *st, State::Idle) {
                State::Running { run, dispatcher } => {
                    *st = State::Stopping(run.clone());
                    (run, dispatcher)
                }
                other => {
                    *st = other;
                    return Ok(());
                }
            }
        };
        run.publishers.close();
        run.publishers.wait().await;
        if self.inner.local {
            // Every accepted event (and its follow-ups) is handled, then the queue closes.
            self.wait_idle().await;
            self.inner.transport.close();
            if let Err(e) = dispatcher.await {
                tracing::error!(error = %crate::error::chain(&e), "event bus dispatcher ended abnormally");
            }
        } else {
            // Remote queue: stop taking events, finish (and acknowledge) those taken;
            // the rest stays on the server for the other consumers or the next start.
            self.inner.transport.close();
            if let Err(e) = dispatcher.await {
                tracing::error!(error = %crate::error::chain(&e), "event bus dispatcher ended abnormally");
            }
            self.wait_idle().await;
        }
        if let Some(log) = &run.log {
            log.close().await;
        }
        if let Some(ledger) = run.ledger.clone() {
            let plan = run
                .recovered
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            // Every event is done: write the last ids, move the checkpoint.
            let finish = tokio::task::spawn_blocking(move || {
                ledger.close();
                if let Some(plan) = plan {
                    plan.finish();
                }
                ledger.checkpoint_at_end();
            });
            if finish.await.is_err() {
                tracing::error!("moving the recovery checkpoint failed");
            }
        }
        *write(&self.inner.state) = State::Idle;
        tracing::debug!("event bus stopped");
        Ok(())
    }

    /// Waits until no event counted in `inflight` remains.
    async fn wait_idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.inner.inflight.load(Ordering::SeqCst) == 0 {
                break;
            }
            notified.await;
        }
    }

    /// The running state for a publish: the run, plus a token `stop` waits for.
    fn enter(
        &self,
    ) -> Result<
        (
            Arc<Run>,
            Option<tokio_util::task::task_tracker::TaskTrackerToken>,
        ),
        BusError,
    > {
        let in_handler = IN_HANDLER.try_with(|_| ()).is_ok();
        match &*read(&self.inner.state) {
            State::Running { run, .. } => {
                let token = (!in_handler).then(|| run.publishers.token());
                Ok((run.clone(), token))
            }
            State::Stopping(run) if in_handler => Ok((run.clone(), None)),
            State::Stopping(_) => Err(BusError::NotRunning("stopping")),
            State::Idle => Err(BusError::NotRunning("not started")),
        }
    }

    /// Publishes an event: either a type and its data, or a built [`Event`]
    /// (whose data `data`, when `Some`, replaces). Waits while the queue is full;
    /// returns the event id once the event is in the event log and queued.
    ///
    /// ```
    /// # use pm_events::EventBus; use serde_json::json;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let bus = EventBus::builder().without_log().build();
    /// assert!(bus.publish("deployment", json!({"service": "api"})).await.is_err()); // not started
    /// bus.start().await?;
    /// let id = bus.publish("deployment", json!({"service": "api", "status": "success"})).await?;
    /// assert_eq!(id.len(), 36);
    /// bus.stop().await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish(
        &self,
        event: impl Into<EventOrType>,
        data: impl Into<Option<Value>>,
    ) -> Result<EventId, BusError> {
        match event.into() {
            // A built event may carry an id accepted before: publish it once.
            EventOrType::Event(e) => {
                let e = make_event(EventOrType::Event(e), data.into());
                self.publish_once(e).await.map(|a| a.event_id)
            }
            t @ EventOrType::Type(_) => self.publish_event(make_event(t, data.into())).await,
        }
    }

    /// Publishes `event` unless an event with its `event_id` was accepted in the
    /// last 24 hours (see [`crate::idempotency`]): then it returns that id with
    /// `duplicate: true` and does nothing. Waits while the queue is full.
    pub async fn publish_once(&self, event: Event) -> Result<Accepted, BusError> {
        self.publish_once_inner(event, true).await
    }

    /// Like [`publish_once`](Self::publish_once), with
    /// [`BusError::QueueFull`] instead of waiting when the queue is full.
    pub async fn try_publish_once(&self, event: Event) -> Result<Accepted, BusError> {
        self.publish_once_inner(event, false).await
    }

    async fn publish_once_inner(&self, event: Event, wait: bool) -> Result<Accepted, BusError> {
        event.validate().map_err(BusError::InvalidEvent)?;
        let run = self.enter()?.0;
        let id = event.event_id.clone();
        run.recent
            .once(&id, async || {
                if wait {
                    self.publish_event(event).await.map(|_| ())
                } else {
                    self.try_publish(event, None).await.map(|_| ())
                }
            })
            .await
    }

    /// Publishes a built event without looking for an earlier one with its id
    /// (the fast path for events whose id was just made; see
    /// [`publish_once`](Self::publish_once) for ids that come from outside).
    pub async fn publish_event(&self, event: Event) -> Result<EventId, BusError> {
        event.validate().map_err(BusError::InvalidEvent)?;
        let (run, _token) = self.enter()?;
        let permit = if IN_HANDLER.try_with(|_| ()).is_ok() {
            run.overflow.clone().try_acquire_owned().ok()
        } else {
            None
        };
        let permit = match permit {
            Some(p) => p,
            None => run
                .permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| BusError::NotRunning("stopping"))?,
        };
        self.accept(&run, event, permit).await
    }

    /// Publishes without waiting for capacity: [`BusError::QueueFull`] when the queue is full.
    pub async fn try_publish(
        &self,
        event: impl Into<EventOrType>,
        data: impl Into<Option<Value>>,
    ) -> Result<EventId, BusError> {
        let event = make_event(event.into(), data.into());
        event.validate().map_err(BusError::InvalidEvent)?;
        let (run, _token) = self.enter()?;
        let permit = run
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| BusError::QueueFull {
                capacity: self.inner.settings.capacity,
            })?;
        self.accept(&run, event, permit).await
    }

    /// Publishes from code that is not async (a plain thread): blocks until the
    /// event is accepted. Inside an async runtime it refuses with
    /// [`BusError::SyncInAsync`] instead of blocking the runtime.
    pub fn publish_sync(
        &self,
        event: impl Into<EventOrType>,
        data: impl Into<Option<Value>>,
    ) -> Result<EventId, BusError> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(BusError::SyncInAsync);
        }
        let runtime = self.enter()?.0.runtime.clone();
        runtime.block_on(self.publish(event, data))
    }

    /// Publishes several events in order, logging them together (one hand-off
    /// to the log writer per chunk). All are validated first: one invalid event
    /// rejects the batch before anything is accepted.
    pub async fn publish_batch(
        &self,
        events: impl IntoIterator<Item = Event>,
    ) -> Result<Vec<EventId>, BusError> {
        let events: Vec<Event> = events.into_iter().collect();
        for (i, e) in events.iter().enumerate() {
            e.validate()
                .map_err(|m| BusError::InvalidEvent(format!("event #{}: {m}", i + 1)))?;
        }
        let (run, _token) = self.enter()?;
        let chunk_len = self.inner.settings.capacity.clamp(1, 1024);
        let mut ids = Vec::with_capacity(events.len());
        let mut rest = events.into_iter().peekable();
        while rest.peek().is_some() {
            let chunk: Vec<Event> = rest.by_ref().take(chunk_len).collect();
            let permit = run
                .permits
                .clone()
                .acquire_many_owned(chunk.len() as u32)
                .await
                .map_err(|_| BusError::NotRunning("stopping"))?;
            if let Some(log) = &run.log {
                log.append_batch(&chunk).await?;
            }
            ids.extend(chunk.iter().map(|e| e.event_id.clone()));
            self.enqueue_batch(chunk, permit).await?;
        }
        Ok(ids)
    }

    /// Hands logged events to the transport in order, `permit` holding one
    /// unit of capacity per event.
    async fn enqueue_batch(&self, chunk: Vec<Event>, mut permit: Permit) -> Result<(), BusError> {
        let mut parts = Vec::with_capacity(chunk.len());
        for _ in 1..chunk.len() {
            parts.extend(permit.split(1));
        }
        parts.push(permit);
        if parts.len() != chunk.len() {
            return Err(crate::transport::TransportError::Other(
                "capacity accounting error".into(),
            )
            .into());
        }
        let items: Vec<_> = chunk
            .into_iter()
            .zip(parts)
            .map(|(e, p)| {
                let prio = self.priority_of(&e);
                (e, prio, p)
            })
            .collect();
        let n = items.len();
        let counted = if self.inner.local { n } else { 0 };
        self.inner.inflight.fetch_add(counted, Ordering::SeqCst);
        if let Err(e) = self.inner.transport.publish_batch(items).await {
            self.inner.inflight.fetch_sub(counted, Ordering::SeqCst);
            self.inner.idle.notify_waiters();
            return Err(BusError::Transport(e));
        }
        self.inner
            .stats
            .published
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(())
    }

    fn priority_of(&self, e: &Event) -> Priority {
        self.inner
            .priority
            .as_ref()
            .map_or(Priority::Normal, |r| r(e))
    }

    async fn accept(&self, run: &Run, event: Event, permit: Permit) -> Result<EventId, BusError> {
        if let Some(log) = &run.log {
            log.append(&event).await?;
        }
        self.enqueue(event, permit).await
    }

    /// Hands a logged event to the transport (its line is in the event log already).
    async fn enqueue(&self, event: Event, permit: Permit) -> Result<EventId, BusError> {
        let id = event.event_id.clone();
        let ty = self
            .inner
            .settings
            .metrics
            .then(|| event.event_type.clone());
        let prio = self.priority_of(&event);
        if self.inner.local {
            self.inner.inflight.fetch_add(1, Ordering::SeqCst);
        }
        if let Err(e) = self.inner.transport.publish(event, prio, permit).await {
            if self.inner.local {
                finish_one(&self.inner);
            }
            tracing::error!(event_id = %id, error = %crate::error::chain(&e), "event logged but the transport refused it");
            return Err(BusError::Transport(e));
        }
        self.inner.stats.published.fetch_add(1, Ordering::Relaxed);
        if self.inner.settings.metrics {
            metrics::counter!("pm_events_published_total", "type" => ty.unwrap_or_default())
                .increment(1);
        }
        Ok(id)
    }
}

fn make_event(first: EventOrType, data: Option<Value>) -> Event {
    match first {
        EventOrType::Type(t) => {
            Event::new(t, data.unwrap_or_else(|| Value::Object(Default::default())))
        }
        EventOrType::Event(mut e) => {
            if let Some(d) = data {
                e.data = d;
            }
            e
        }
    }
}

fn finish_one(inner: &Inner) {
    if inner.inflight.fetch_sub(1, Ordering::SeqCst) == 1 {
        inner.idle.notify_waiters();
    }
}

/// The subscriptions that take `e`: its type's list, narrowed by filters
/// (a new list is built only when a filter says no).
fn matching(inner: &Inner, e: &Event) -> SubList {
    let list = {
        let table = read(&inner.table);
        table
            .lists
            .get(&e.event_type)
            .unwrap_or(&table.wildcard_list)
            .clone()
    };
    if list.iter().all(|s| s.accepts(e)) {
        list
    } else {
        list.iter().filter(|s| s.accepts(e)).cloned().collect()
    }
}

/// Calls [`finish_one`] when dropped: a handler task that ends in any way
/// (even cancelled at runtime shutdown) still counts as finished for `stop`.
struct Finished(Arc<Inner>);

impl Drop for Finished {
    fn drop(&mut self) {
        finish_one(&self.0);
    }
}

/// Most ready events one handler task takes at once. At most 30: up to that
/// many, `join_all` polls its futures in place; above, it allocates a task
/// node per future (a `FuturesOrdered`), which costs more than the handlers.
const BURST: usize = 30;

async fn dispatch_loop(
    inner: Arc<Inner>,
    mut consumer: Box<dyn Consumer>,
    slots: Arc<Semaphore>,
    ledger: Option<Arc<Ledger>>,
) {
    // A burst never needs more slots than exist (`concurrency` may be below BURST).
    let max_burst = BURST.min(inner.settings.concurrency).max(1);
    let mut burst: Vec<(Delivery, SubList)> = Vec::with_capacity(max_burst);
    while let Some(first) = consumer.next().await {
        // Take what else is ready now: under load, one task runs a burst of events
        // (their handlers still concurrent); when idle, a burst is one event.
        let mut next = Some(first);
        while let Some(delivery) = next {
            inner.stats.dispatched.fetch_add(1, Ordering::Relaxed);
            if !inner.local {
                // Remote events are counted from when this process takes them.
                inner.inflight.fetch_add(1, Ordering::SeqCst);
            }
            let subs = matching(&inner, &delivery.event);
            if subs.is_empty() {
                inner.stats.unhandled.fetch_add(1, Ordering::Relaxed);
                if let Some(l) = &ledger {
                    l.done(&delivery.event.event_id);
                }
                ack(delivery).await;
                finish_one(&inner);
            } else {
                burst.push((delivery, subs));
            }
            next = if burst.len() < max_burst {
                consumer.try_next()
            } else {
                None
            };
        }
        if burst.is_empty() {
            continue;
        }
        let Ok(slot) = slots.clone().acquire_many_owned(burst.len() as u32).await else {
            break;
        };
        let items = std::mem::replace(&mut burst, Vec::with_capacity(max_burst));
        let inner2 = inner.clone();
        let ledger2 = ledger.clone();
        // Made before the spawn: they count the events finished even if the task never runs.
        let done: Vec<Finished> = items.iter().map(|_| Finished(inner.clone())).collect();
        tokio::spawn(async move {
            if items.len() == 1 {
                for (d, subs) in items {
                    run_handlers(&inner2, d, subs, ledger2.as_deref()).await;
                }
            } else {
                futures_util::future::join_all(
                    items
                        .into_iter()
                        .map(|(d, subs)| run_handlers(&inner2, d, subs, ledger2.as_deref())),
                )
                .await;
            }
            drop(slot);
            drop(done);
        });
    }
}

async fn ack(delivery: Delivery) {
    let Delivery { event, ack, .. } = delivery;
    acknowledge(ack, &event.event_id).await;
}

async fn acknowledge(ack: Ack, event_id: &str) {
    if let Err(e) = ack.done().await {
        tracing::error!(%event_id, error = %crate::error::chain(&e), "acknowledging an event failed; it may be delivered again");
    }
}

async fn run_handlers(inner: &Inner, delivery: Delivery, subs: SubList, ledger: Option<&Ledger>) {
    let Delivery { event, ack, .. } = delivery;
    let meta = (event.event_id.clone(), event.event_type.clone());
    if let [only] = &*subs {
        run_one(inner, only, event, &meta).await;
    } else {
        futures_util::future::join_all(
            subs.iter().map(|s| run_one(inner, s, event.clone(), &meta)),
        )
        .await;
    }
    if let Some(l) = ledger {
        l.done(&meta.0);
    }
    acknowledge(ack, &meta.0).await;
}

/// Queues the events a crash left unhandled (read by a blocking thread, in log
/// order), each waiting for capacity like a publish; then hands the plan to
/// `stop`, which moves the checkpoint once they are all done.
async fn feed_recovered(bus: EventBus, run: Arc<Run>, plan: recovery::Plan) {
    const CHUNK: usize = 256;
    let chunk_len = CHUNK.min(bus.inner.settings.capacity).max(1);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Event>>(8);
    let reader = tokio::task::spawn_blocking(move || {
        let mut chunk = Vec::with_capacity(chunk_len);
        let n = plan.for_each_pending(|e| {
            chunk.push(e);
            chunk.len() < chunk_len
                || tx
                    .blocking_send(std::mem::replace(&mut chunk, Vec::with_capacity(chunk_len)))
                    .is_ok()
        });
        if n.is_some() && !chunk.is_empty() && tx.blocking_send(chunk).is_err() {
            return (plan, None);
        }
        (plan, n)
    });
    let mut fed = 0u64;
    while let Some(chunk) = rx.recv().await {
        let Ok(permit) = run
            .permits
            .clone()
            .acquire_many_owned(chunk.len() as u32)
            .await
        else {
            break;
        };
        let n = chunk.len() as u64;
        if let Err(e) = bus.enqueue_batch(chunk, permit).await {
            tracing::error!(error = %crate::error::chain(&e), "cannot dispatch recovered events; they are recovered at the next start");
            return;
        }
        fed += n;
        bus.inner.stats.redelivered.fetch_add(n, Ordering::Relaxed);
        if bus.inner.settings.metrics {
            metrics::counter!("pm_events_redelivered_total").increment(n);
        }
    }
    match reader.await {
        Ok((plan, Some(_))) => {
            if fed > 0 {
                tracing::info!(
                    events = fed,
                    "dispatched again the events a crash left unhandled"
                );
            }
            *run.recovered.lock().unwrap_or_else(PoisonError::into_inner) = Some(plan);
        }
        Ok((_, None)) => {}
        Err(e) => tracing::error!(error = %e, "the recovery reader failed"),
    }
}

async fn run_one(inner: &Inner, sub: &Subscription, event: Event, meta: &(String, String)) {
    let (event_id, event_type) = meta;
    let fut = IN_HANDLER.scope(
        (),
        AssertUnwindSafe(sub.handler.handle(event)).catch_unwind(),
    );
    let c = &inner.stats;
    let started = inner.settings.metrics.then(std::time::Instant::now);
    // Most handlers finish at their first poll: the timer (and its clock read)
    // is only set up for one that has to wait.
    let mut fut = std::pin::pin!(fut);
    let result = match std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
        Poll::Ready(r) => Ok(r),
        Poll::Pending => tokio::time::timeout(inner.settings.handler_timeout, fut).await,
    };
    if let Some(t) = started {
        let outcome = match &result {
            Ok(Ok(Ok(()))) => "ok",
            Ok(Ok(Err(_))) => "error",
            Ok(Err(_)) => "panic",
            Err(_) => "timeout",
        };
        metrics::counter!("pm_events_handled_total", "type" => event_type.clone(), "outcome" => outcome)
            .increment(1);
        metrics::histogram!("pm_events_handler_duration_seconds", "type" => event_type.clone())
            .record(t.elapsed().as_secs_f64());
    }
    match result {
        Ok(Ok(Ok(()))) => {
            c.handled.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Ok(Err(e))) => {
            c.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%event_id, %event_type, handler = sub.handler.name(), error = %crate::error::chain(&*e), "handler failed");
        }
        Ok(Err(panic)) => {
            c.panicked.fetch_add(1, Ordering::Relaxed);
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".into());
            tracing::error!(%event_id, %event_type, handler = sub.handler.name(), panic = %msg, "handler panicked");
        }
        Err(_) => {
            c.timed_out.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%event_id, %event_type, handler = sub.handler.name(), timeout_ms = inner.settings.handler_timeout.as_millis() as u64, "handler timed out");
        }
    }
}
