//! The bus's own state: the [`EventBus`] handle and what it shares (`Inner`),
//! the settings, the run (`Run`, from `start` to the end of `stop`) and the
//! life cycle's state; the other modules of the bus add its behaviour.

use super::staging::Pipeline;
use super::stats::{BusStats, Counters};
use super::table::Table;
use crate::config::{Config, FsyncPolicy};
use crate::event::Event;
use crate::idempotency::RecentIds;
use crate::journal::{self, EventLog};
use crate::recovery::{self, Ledger};
use crate::transport::Priority;
use crate::transport::Transport;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

/// Decides the lane of an event (see [`Priority`]).
pub type PriorityRule = Arc<dyn Fn(&Event) -> Priority + Send + Sync + 'static>;

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
    pub(super) inner: std::sync::Weak<Inner>,
}

tokio::task_local! {
    /// Set while a handler runs: publishes made from it skip the capacity wait.
    pub(super) static IN_HANDLER: ();
}

#[derive(Clone)]
/// What the builder set; read-only once built.
pub(super) struct Settings {
    pub(super) log_dir: Option<PathBuf>,
    pub(super) fsync: FsyncPolicy,
    pub(super) capacity: usize,
    pub(super) handler_timeout: Duration,
    pub(super) concurrency: usize,
    /// Report per-type counters and latencies through the `metrics` facade.
    pub(super) metrics: bool,
}

/// What exists while the bus runs; shared by publishers, the dispatcher and `stop`.
pub(super) struct Run {
    /// The write-ahead log; `None` when the bus runs without one.
    pub(super) log: Option<EventLog>,
    /// `queue_capacity` units; a publisher holds one from before the event is
    /// logged until its handlers are done (memory transport).
    pub(super) permits: Arc<Semaphore>,
    /// Capacity for events published from inside handlers: never waited on.
    pub(super) overflow: Arc<Semaphore>,
    /// Publishes from outside under way; `stop` waits for them after refusing new ones.
    pub(super) publishers: TaskTracker,
    /// The runtime the bus was started on, for `publish_sync`.
    pub(super) runtime: tokio::runtime::Handle,
    /// This run's record of finished events (log on, in-process transport);
    /// the dispatcher writes to it, `stop` closes it.
    pub(super) ledger: Option<Arc<Ledger>>,
    /// The recovery plan, handed here by the feeder once every recovered event
    /// is queued; `stop` finishes it (moves the checkpoint) when all are done.
    pub(super) recovered: std::sync::Mutex<Option<recovery::Plan>>,
    /// The ids accepted recently, for idempotent publishes (`publish_once`).
    pub(super) recent: Arc<RecentIds>,
    /// Ends the recovery task; cancelled by `stop` first.
    pub(super) cancel_recovery: tokio_util::sync::CancellationToken,
    /// Pipelined publishes staged for the writer task (see the `pipeline` module).
    pub(super) pipeline: Pipeline,
}

/// Where the bus is in its life; behind `Inner::state`, written only by
/// `start` and `stop` (which `Inner::lifecycle` serializes).
pub(super) enum State {
    Idle,
    Running {
        run: Arc<Run>,
        dispatcher: JoinHandle<()>,
    },
    Stopping(Arc<Run>),
}

/// The bus itself, shared by its clones and its tasks (see the module docs).
pub(super) struct Inner {
    pub(super) settings: Settings,
    pub(super) transport: Arc<dyn Transport>,
    pub(super) priority: Option<PriorityRule>,
    /// Replaced whole by `subscribe`/`unsubscribe`; the dispatcher clones the
    /// `Arc` and reads it without the lock.
    pub(super) table: RwLock<Arc<Table>>,
    /// The next [`SubscriptionId`].
    pub(super) next_id: AtomicU64,
    /// Read by every publish (to enter the run), written by `start` and `stop`.
    pub(super) state: RwLock<State>,
    /// Serializes `start` and `stop`.
    pub(super) lifecycle: tokio::sync::Mutex<()>,
    /// Events not finished yet: with a local transport, from acceptance; with a
    /// remote one, from when the dispatcher takes them.
    pub(super) inflight: AtomicUsize,
    /// Whether the transport is in-process (see [`Transport::is_local`]).
    pub(super) local: bool,
    /// Woken when `inflight` drops to zero; `stop` waits on it.
    pub(super) idle: Notify,
    /// Redelivered events whose handlers all finished; written by the
    /// dispatcher's tasks, read by the recovery task to know a plan is done.
    pub(super) recovered_done: AtomicU64,
    /// Relaxed counters, written by publishers and handler tasks.
    pub(super) stats: Counters,
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
    pub(super) inner: Arc<Inner>,
}

pub(super) fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

pub(super) fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

impl EventBus {
    /// A snapshot of the bus's counters.
    pub fn stats(&self) -> BusStats {
        self.inner.stats.snapshot()
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
