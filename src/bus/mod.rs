//! The [`EventBus`]: subscribe handlers, start, publish, stop.
//!
//! One concept per file: `builder` (settings), `subscriptions` (who
//! receives what), `publish` (acceptance: write-ahead, then the transport),
//! `pipeline` (many publishes in flight), `dispatch` (running handlers),
//! `recovery_feed` (what a crash left unhandled), `stats`, `global`
//! (the process-wide bus) and `lifecycle` (start, and the shutdown order).
//!
//! # How an event travels
//!
//! 1. `publish` validates the event and takes one unit of capacity (a permit
//!    of a semaphore of `queue_capacity` units): when none is free it waits
//!    (backpressure), `try_publish` fails with [`BusError::QueueFull`](crate::BusError::QueueFull).
//! 2. The event is written to the main event log (write-ahead); only then is
//!    it handed to the transport, and `publish` returns its id. A pipelined
//!    publish stages the event and returns at once; the pipeline writer writes
//!    what is staged in one call and then hands it over.
//! 3. The dispatcher task takes events from the transport (priority lane
//!    first), picks the subscriptions whose type (or `"*"`) and filter match,
//!    and spawns a task that runs those handlers concurrently, each under the
//!    handler timeout and with panics caught. Under load it takes up to 30 ready
//!    events at once and gives them one task (their handlers still run
//!    concurrently, interleaved); an idle bus spawns one task per event. At most
//!    `concurrency` events are in handlers at once.
//! 4. When every handler of the event is done, the event is recorded as done
//!    in the recovery ledger, acknowledged, and its capacity unit released.
//!
//! Events published *from inside a handler* do not wait for capacity (a
//! handler waiting for capacity that only handlers can free would deadlock the
//! bus) and are still accepted while the bus is stopping, so a handler's
//! follow-up events are never lost to a shutdown.
//!
//! # Who owns what
//!
//! `Inner` is shared by every clone of the bus and by the dispatcher; a
//! [`WeakEventBus`] does not keep it alive. `Run` exists from `start` to the
//! end of `stop`: publishers clone its `Arc` for the length of one publish, the
//! dispatcher, the recovery feeder and the pipeline writer hold it until they
//! end, and `stop` drops the last reference when it returns to `Idle`.
//!
//! # The shutdown order
//!
//! `stop` (in `lifecycle`) does, in this order:
//! 1. refuse publishes from outside (state `Stopping`; handlers may still publish);
//! 2. wait for the publishes under way, pipelined ones until they are written,
//!    and for the recovery feeder;
//! 3. in-process queue: wait until every accepted event, and every follow-up its
//!    handlers publish, is handled; then close the transport and wait for the
//!    dispatcher. Remote queue: close the transport first (stop taking events),
//!    wait for the dispatcher, then for the events it took;
//! 4. end the pipeline writer (nothing is staged any more);
//! 5. sync and close the event log;
//! 6. close the recovery ledger (its last ids written) and move the checkpoint.

use crate::config::{Config, FsyncPolicy};
use crate::idempotency::RecentIds;
use crate::journal::{self, EventLog};
use crate::recovery::{self, Ledger};
use crate::transport::Transport;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

mod builder;
mod dispatch;
mod global;
mod lifecycle;
mod pipeline;
mod publish;
mod recovery_feed;
mod stats;
mod subscriptions;

pub use builder::{EventBusBuilder, PriorityRule};
pub use global::{get_event_bus, set_event_bus};
pub use pipeline::{MAX_BATCH as PIPELINE_MAX_BATCH, PublishAck};
pub use publish::{EventOrType, WeakEventBus};
pub use recovery_feed::TAKEOVER_INTERVAL;
pub use stats::BusStats;
use stats::Counters;
use subscriptions::Table;
pub use subscriptions::{SubscriptionId, WILDCARD};

tokio::task_local! {
    /// Set while a handler runs: publishes made from it skip the capacity wait.
    static IN_HANDLER: ();
}

#[derive(Clone)]
/// What the builder set; read-only once built.
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
    /// Ends the recovery task; cancelled by `stop` first.
    cancel_recovery: tokio_util::sync::CancellationToken,
    /// Pipelined publishes staged for the writer task (see the `pipeline` module).
    pipeline: pipeline::Pipeline,
}

/// Where the bus is in its life; behind `Inner::state`, written only by
/// `start` and `stop` (which `Inner::lifecycle` serializes).
enum State {
    Idle,
    Running {
        run: Arc<Run>,
        dispatcher: JoinHandle<()>,
    },
    Stopping(Arc<Run>),
}

/// The bus itself, shared by its clones and its tasks (see the module docs).
struct Inner {
    settings: Settings,
    transport: Arc<dyn Transport>,
    priority: Option<PriorityRule>,
    /// Replaced whole by `subscribe`/`unsubscribe`; the dispatcher clones the
    /// `Arc` and reads it without the lock.
    table: RwLock<Arc<Table>>,
    /// The next [`SubscriptionId`].
    next_id: AtomicU64,
    /// Read by every publish (to enter the run), written by `start` and `stop`.
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
    /// Redelivered events whose handlers all finished; written by the
    /// dispatcher's tasks, read by the recovery task to know a plan is done.
    recovered_done: AtomicU64,
    /// Relaxed counters, written by publishers and handler tasks.
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

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
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
    /// A snapshot of the bus's counters.
    pub fn stats(&self) -> BusStats {
        self.inner.stats.snapshot()
    }

    /// A bus configured from the environment (docs/configuration.md).
    pub fn from_env() -> Result<Self, crate::error::ConfigError> {
        Ok(Self::builder().config(&Config::from_env()?).build())
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
}
