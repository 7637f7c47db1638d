//! The delivery engine: signs, sends, retries and records outgoing webhooks.
//!
//! - **One HTTP client** (connection reuse), a timeout on every request.
//! - **Per-endpoint bound**: each origin (`scheme://host:port`) has a semaphore of
//!   `per_endpoint` permits; a slow endpoint holds only its own permits, so the
//!   others go on.
//! - **Retries**: 2xx is success; 408, 429, 5xx and network errors are retried after
//!   `base × 2^(retry−1)` ± 20 % jitter, capped at 5 minutes; a longer `Retry-After`
//!   (seconds or HTTP date, at most one hour) wins. Other 4xx are final; 410 Gone is
//!   reported as such. After `max_retries` retries a delivery is dead.
//! - **Durability**: every delivery is in the [`Outbox`] before it
//!   is sent. Only one process per log directory delivers (it holds
//!   `webhooks/outbox.lock`); other processes only insert, and the owner picks their
//!   rows up within a second. A stopped or crashed owner leaves its rows pending for
//!   the next one.
//! - **Bounded memory**: at most [`DeliveryConfig::window`] deliveries per endpoint
//!   are held in memory (queued, in flight, or waiting for a retry); a backlog
//!   beyond that waits in the outbox, oldest first, and is taken as room is made
//!   (at half the window), so a dead endpoint's backlog neither fills the memory
//!   nor holds up the other endpoints.
//! - **Scale-out**: with a [`JetStreamQueue`] attached ([`WebhookEngine::use_jetstream`];
//!   the CLI does it when `PM_NATS_URL` is set), deliveries are queued in JetStream
//!   instead of the outbox and any node's engine delivers them (see [`super::jetstream`]).
//!
//! # `webhooks/webhook_attempts.jsonl`
//!
//! One line per attempt: `timestamp` (RFC 3339), `delivery_id`, `event_id`,
//! `event_type`, `route` (the variable), `url` (credentials and query removed),
//! `attempt` (1 = first try), `status` (HTTP status or null), `error` (network error
//! or null), `duration_ms`, `outcome` (`delivered`, `retry`, `failed` = final 4xx,
//! `gone` = 410, `dead` = retries exhausted), `next_retry_at` (RFC 3339 or null),
//! `node` (`PM_NODE_ID` of the process that made the attempt).
//!
//! # `webhooks/dead_letters.jsonl`
//!
//! One line per delivery that failed for good: `timestamp`, `delivery_id`, `event_id`,
//! `event_type`, `route`, `url` (redacted), `attempts`, `reason`, `node`. The delivery also
//! stays in the outbox (state `dead`) for `pm-events webhooks redeliver`.
//!
//! No secret is written to either file: signatures are computed per attempt and
//! never logged.

use super::WebhookError;
use super::jetstream::JetStreamQueue;
use super::outbox::{DeliveryRecord, DeliveryState, Outbox, Pick};
use super::route::Route;
use super::sign::Signer;
use crate::config::{Config, FsyncPolicy};
use crate::event::{Event, now_unix};
use crate::jsonl::JsonlWriter;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Settings of the delivery engine.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Retries after the first attempt (`WEBHOOK_MAX_RETRIES`).
    pub max_retries: u32,
    /// Time limit of one attempt (`WEBHOOK_TIMEOUT_SECS`).
    pub timeout: Duration,
    /// Base of the backoff (`WEBHOOK_BACKOFF_BASE_MS`).
    pub backoff_base: Duration,
    /// Longest backoff (5 minutes).
    pub backoff_cap: Duration,
    /// Concurrent requests per endpoint (`PM_WEBHOOK_CONCURRENCY`).
    pub per_endpoint: usize,
    /// Deliver without a signature when no secret is set (`PM_ALLOW_UNSIGNED`).
    pub allow_unsigned: bool,
    /// Log directory: the outbox and the logs live in `<log dir>/webhooks/`.
    pub log_dir: PathBuf,
    /// Sync policy of the outbox and logs.
    pub fsync: FsyncPolicy,
    /// Handler log rotation size and count.
    pub log_max_bytes: u64,
    /// Rotated files kept.
    pub log_keep: usize,
    /// This process's name in the attempt and dead-letter logs (`PM_NODE_ID`,
    /// default the host name): with NATS, any node may make an attempt.
    pub node: String,
    /// Most deliveries of one endpoint held in memory at once (queued, in flight
    /// or waiting for a retry); the others wait in the outbox until room is made
    /// ([`DEFAULT_WINDOW`]).
    pub window: usize,
}

/// Default of [`DeliveryConfig::window`]: about 10 MB of memory per endpoint.
pub const DEFAULT_WINDOW: usize = 4096;

/// Longest `Retry-After` honoured.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// How much of a receiver's answer body is read (and dropped) to keep its
/// connection for reuse; a longer body closes the connection instead.
const DRAIN_LIMIT: usize = 64 * 1024;

impl DeliveryConfig {
    /// The engine settings of `config`.
    pub fn from_config(c: &Config) -> Self {
        DeliveryConfig {
            max_retries: c.webhook_max_retries,
            timeout: c.webhook_timeout,
            backoff_base: c.webhook_backoff_base,
            backoff_cap: Duration::from_secs(300),
            per_endpoint: c.webhook_concurrency,
            allow_unsigned: c.allow_unsigned,
            log_dir: c.log_dir.clone(),
            fsync: c.fsync,
            log_max_bytes: c.log_max_bytes,
            log_keep: c.log_keep,
            node: c.node_id.clone(),
            window: DEFAULT_WINDOW,
        }
    }
}

/// The wait before retry number `retry` (1-based): `base × 2^(retry−1)`, capped,
/// times `1 + 0.2 × jitter` with `jitter` in `[-1, 1]`, never above the cap.
pub fn backoff(retry: u32, base: Duration, cap: Duration, jitter: f64) -> Duration {
    let exp = 2f64.powi(retry.saturating_sub(1).min(62) as i32);
    let raw = (base.as_secs_f64() * exp).min(cap.as_secs_f64());
    Duration::from_secs_f64((raw * (1.0 + 0.2 * jitter.clamp(-1.0, 1.0))).min(cap.as_secs_f64()))
}

/// Parses `Retry-After`: delay-seconds or an HTTP date; capped at [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let v = value.trim();
    let d = if let Ok(secs) = v.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let when = DateTime::parse_from_rfc2822(v).ok()?.with_timezone(&Utc);
        (when - now).to_std().unwrap_or(Duration::ZERO)
    };
    Some(d.min(MAX_RETRY_AFTER))
}

/// `url` without user info and query, for logs.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let had_query = u.query().is_some();
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            let mut s = u.to_string();
            if had_query {
                s.push_str("?…");
            }
            s
        }
        Err(_) => "<invalid url>".into(),
    }
}

fn rfc3339(t: f64) -> String {
    DateTime::<Utc>::from_timestamp_micros((t * 1e6) as i64)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

#[derive(Serialize)]
struct AttemptLine<'a> {
    timestamp: String,
    delivery_id: &'a str,
    event_id: &'a str,
    event_type: &'a str,
    route: &'a str,
    url: String,
    attempt: u32,
    status: Option<u16>,
    error: Option<String>,
    duration_ms: f64,
    outcome: &'static str,
    next_retry_at: Option<String>,
    node: &'a str,
}

#[derive(Serialize)]
struct DeadLine<'a> {
    timestamp: String,
    delivery_id: &'a str,
    event_id: &'a str,
    event_type: &'a str,
    route: &'a str,
    url: String,
    attempts: u32,
    reason: &'a str,
    node: &'a str,
}

/// How many of a set of deliveries ended which way; see [`WebhookEngine::wait`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WaitOutcome {
    /// Delivered (gone from the outbox).
    pub delivered: usize,
    /// Dead letters.
    pub dead: usize,
    /// Still pending when the wait ended.
    pub pending: usize,
}

/// The deliveries due at one endpoint (origin), and how many workers drain them.
/// At most `per_endpoint` workers run per endpoint, so a slow endpoint ties up
/// only its own workers, and a backlog is plain data, not parked tasks.
#[derive(Default)]
struct Endpoint {
    queue: Mutex<EndpointQueue>,
}

#[derive(Default)]
struct EndpointQueue {
    items: std::collections::VecDeque<DeliveryRecord>,
    workers: usize,
    /// Deliveries of this endpoint in this process's care (at most the window).
    held: usize,
    /// A delivery was left in the outbox because the window was full.
    spilled: bool,
}

struct EngineInner {
    cfg: DeliveryConfig,
    signer: Option<Signer>,
    client: reqwest::Client,
    outbox: Outbox,
    attempts: JsonlWriter,
    dead: JsonlWriter,
    /// One queue per endpoint origin, created on first use.
    endpoints: Mutex<HashMap<String, Arc<Endpoint>>>,
    /// Deliveries with a task in this process, so the poller does not start a second one.
    active: Mutex<HashSet<String>>,
    /// Every delivery task and the poller; `shutdown` waits for them.
    tasks: TaskTracker,
    /// Tells sleeping deliveries and the poller to stop (they stay pending).
    cancel: CancellationToken,
    /// The outbox lock file, held while this process is the one that delivers.
    owner: Option<File>,
    /// Woken whenever a delivery settles (delivered or dead).
    settled: Notify,
    /// Wakes the outbox poller: an endpoint that left deliveries in the outbox
    /// has room again, or a poll stopped before it took all it could.
    refill: Notify,
    /// Outcomes of the deliveries queued with `enqueue_watched` (`None` while
    /// pending), so `wait` needs no database scan for them; `wait` removes them.
    watched: Mutex<HashMap<String, Option<bool>>>,
    /// Deliveries settled in this process lately, whose removal (or dead mark) the
    /// outbox writer may not have committed yet: `resume` must not send them again.
    /// (Delivery id → number of its outbox update and whether it was delivered;
    /// forgotten once that update is done.) `wait` counts them from here.
    settled_recently: Mutex<HashMap<String, (u64, bool)>>,
    /// What each destination URL resolves to (parsed once: URLs are few, attempts many).
    targets: Mutex<HashMap<String, Arc<Target>>>,
    /// Waits for a few deliveries, which want news of every settlement (see `release`).
    eager_waiters: std::sync::atomic::AtomicUsize,
    /// Watched deliveries not settled yet (of every waiter).
    watched_pending: std::sync::atomic::AtomicUsize,
    /// The JetStream work queue, when deliveries are shared by the nodes of a NATS cluster.
    jetstream: std::sync::OnceLock<(JetStreamQueue, bool)>,
    /// The JetStream messages of the deliveries this process holds, by delivery id:
    /// acknowledged when the delivery settles, handed back for a retry or at shutdown.
    js_held: Mutex<HashMap<String, async_nats::jetstream::Message>>,
}

/// What became of one attempt.
enum Attempted {
    /// Delivered (`true`) or dead (`false`), with the number of its outbox update.
    Settled(bool, u64),
    /// To be retried here at `next_at`.
    Retry,
    /// Handed back to the JetStream work queue for a later retry (by any node).
    HandedBack,
}

/// A destination URL, resolved once.
struct Target {
    /// The queue of the URL's origin.
    endpoint: Arc<Endpoint>,
    /// The parsed URL (`None`: unparsable; the request then fails with the parser's error).
    url: Option<reqwest::Url>,
    /// The URL without credentials or query, for the logs.
    redacted: String,
}

/// Counts a waiter among the engine's eager ones while it lives.
struct EagerWaiter<'a>(Option<&'a std::sync::atomic::AtomicUsize>);

impl<'a> EagerWaiter<'a> {
    fn new(count: &'a std::sync::atomic::AtomicUsize, eager: bool) -> Self {
        if eager {
            count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        EagerWaiter(eager.then_some(count))
    }
}

impl Drop for EagerWaiter<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.0 {
            c.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        }
    }
}

/// The delivery engine. Cheap to clone.
#[derive(Clone)]
pub struct WebhookEngine {
    inner: Arc<EngineInner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl WebhookEngine {
    /// Opens the outbox and logs under `<log dir>/webhooks/` and builds the HTTP client.
    /// Signs with `secrets[0]`; with no secret, delivery is refused unless allowed.
    pub fn open(
        cfg: DeliveryConfig,
        secrets: &[crate::config::Secret],
    ) -> Result<Self, WebhookError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = cfg.log_dir.join("webhooks");
        let outbox = Outbox::open(dir.join("outbox.sqlite3"), cfg.fsync)?;
        let attempts = JsonlWriter::open(
            dir.join("webhook_attempts.jsonl"),
            cfg.log_max_bytes,
            cfg.log_keep,
            cfg.fsync,
        )?;
        let dead = JsonlWriter::open(
            dir.join("dead_letters.jsonl"),
            cfg.log_max_bytes,
            cfg.log_keep,
            cfg.fsync,
        )?;
        let lock_path = dir.join("outbox.lock");
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| WebhookError::outbox(format!("open {}", lock_path.display()), e))?;
        let owner = match lock_file.try_lock() {
            Ok(()) => Some(lock_file),
            Err(std::fs::TryLockError::WouldBlock) => {
                tracing::info!(
                    "another pm-events process delivers webhooks for this log directory; this one only queues them"
                );
                None
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(WebhookError::outbox(
                    format!("lock {}", lock_path.display()),
                    e,
                ));
            }
        };
        let signer = match secrets.first() {
            Some(s) => Some(
                Signer::new(s).map_err(|e| WebhookError::config("WEBHOOK_SIGNATURE_SECRET", e))?,
            ),
            None => None,
        };
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(cfg.per_endpoint.max(1))
            // A webhook goes to the URL configured, nowhere else: a 3xx answer is a
            // final failure (as with GitHub's and Stripe's webhooks).
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("pm-events/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| WebhookError::config("HTTP client", e))?;
        Ok(WebhookEngine {
            inner: Arc::new(EngineInner {
                cfg,
                signer,
                client,
                outbox,
                attempts,
                dead,
                endpoints: Mutex::new(HashMap::new()),
                active: Mutex::new(HashSet::new()),
                tasks: TaskTracker::new(),
                cancel: CancellationToken::new(),
                owner,
                settled: Notify::new(),
                refill: Notify::new(),
                watched: Mutex::new(HashMap::new()),
                targets: Mutex::new(HashMap::new()),
                eager_waiters: std::sync::atomic::AtomicUsize::new(0),
                settled_recently: Mutex::new(HashMap::new()),
                watched_pending: std::sync::atomic::AtomicUsize::new(0),
                jetstream: std::sync::OnceLock::new(),
                js_held: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Whether this process delivers (owns the outbox) or only queues.
    pub fn is_owner(&self) -> bool {
        self.inner.owner.is_some()
    }

    /// The outbox.
    pub fn outbox(&self) -> &Outbox {
        &self.inner.outbox
    }

    /// The engine's settings.
    pub fn config(&self) -> &DeliveryConfig {
        &self.inner.cfg
    }

    /// Queues new deliveries in the JetStream work queue `q` instead of the outbox;
    /// with `take`, [`start`](Self::start) (in the process that delivers) also takes
    /// deliveries from it — long-running nodes should, short-lived commands should
    /// not (what they take and leave at exit counts as a delivery in JetStream).
    /// Call before `start`; a second queue is refused.
    pub fn use_jetstream(&self, q: JetStreamQueue, take: bool) -> Result<(), WebhookError> {
        self.inner
            .jetstream
            .set((q, take))
            .map_err(|_| WebhookError::config_state("a JetStream queue is attached already"))
    }

    /// Whether deliveries go through a JetStream work queue.
    pub fn uses_jetstream(&self) -> bool {
        self.inner.jetstream.get().is_some()
    }

    /// Whether this process takes deliveries from the JetStream work queue.
    pub fn takes_from_queue(&self) -> bool {
        self.is_owner() && self.inner.jetstream.get().is_some_and(|(_, take)| *take)
    }

    /// Starts delivering: resumes every pending delivery of the outbox and watches
    /// it for rows other processes add; with a JetStream queue, takes deliveries
    /// from it too. Does nothing in a process that only queues.
    pub fn start(&self) -> Result<usize, WebhookError> {
        if !self.is_owner() {
            return Ok(0);
        }
        if self.takes_from_queue() {
            let me = self.clone();
            self.inner
                .tasks
                .spawn(async move { me.consume_jetstream().await });
        }
        let resumed = self.resume(true)?;
        if resumed > 0 {
            tracing::info!(resumed, "resuming pending webhook deliveries");
        }
        let me = self.clone();
        self.inner.tasks.spawn(async move {
            loop {
                let full = tokio::select! {
                    _ = me.inner.cancel.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => true,
                    _ = me.inner.refill.notified() => false,
                };
                if let Err(e) = me.resume(full) {
                    tracing::error!(error = %crate::error::chain(&e), "cannot read the webhook outbox");
                }
            }
        });
        Ok(resumed)
    }

    /// Takes deliveries from the JetStream work queue into the endpoint queues
    /// until the engine stops.
    async fn consume_jetstream(&self) {
        let Some((q, _)) = self.inner.jetstream.get() else {
            return;
        };
        // The consumer holds at most this many deliveries (of every node) at once.
        let max_held = (self.inner.cfg.per_endpoint.max(1) * 8).max(64);
        let q = q.clone();
        let mut messages = crate::transport::nats::Messages::new(
            "webhook work queue",
            Box::new(move || {
                let q = q.clone();
                Box::pin(async move { q.messages(max_held).await })
            }),
        );
        while let Some(msg) = messages.next(&self.inner.cancel).await {
            self.take(msg).await;
        }
    }

    /// Puts a delivery taken from the work queue in its endpoint's queue.
    async fn take(&self, msg: async_nats::jetstream::Message) {
        let r = match super::jetstream::record_of(&msg) {
            Ok(r) => r,
            Err(e) => {
                // Not a delivery of ours: acknowledge it so it is not redelivered forever.
                tracing::warn!(subject = %msg.subject, error = %e, "undecodable message on the webhook work queue skipped");
                let _ = msg.ack().await;
                return;
            }
        };
        // A message given again while this process still holds it (its ack_wait ran
        // out) keeps its one task here; the newest handle acknowledges it.
        lock(&self.inner.js_held).insert(r.id.clone(), msg);
        // The consumer's own bound (`max_held`) limits what this process holds.
        self.spawn_within(r, false);
    }

    /// Takes pending deliveries from the outbox that this process does not hold
    /// yet, oldest first, as far as their endpoints' windows have room: rows that
    /// other processes queued, rows left there while a window was full, and (at
    /// start) what a previous run left. A `full` poll reads every pending row; a
    /// refill (an endpoint has room again) stops once it has taken rows and every
    /// endpoint it met is full: the next full poll, within a second, finds the rest.
    fn resume(&self, full: bool) -> Result<usize, WebhookError> {
        let window = self.inner.cfg.window.max(1);
        // A delivery settled here whose outbox update was not committed before the
        // read below still reads as pending: skip what `settled_recently` holds, and
        // forget only entries whose update was committed before the read.
        let done_before = self.inner.outbox.done_count();
        // Room left per endpoint (several URLs may share one) as this scan takes
        // rows. One poll takes at most a window's worth; if it stops there, it
        // asks for another at once.
        let mut endpoints: HashMap<String, Arc<Endpoint>> = HashMap::new();
        let mut room: HashMap<*const Endpoint, usize> = HashMap::new();
        let (mut with_room, mut taken, mut more) = (0usize, 0usize, false);
        let rows = self.inner.outbox.scan_pending(|id, url| {
            if taken >= window {
                more = true;
                return Pick::Stop;
            }
            if lock(&self.inner.active).contains(id)
                || lock(&self.inner.settled_recently).contains_key(id)
            {
                return Pick::Skip;
            }
            let ep = match endpoints.get(url) {
                Some(ep) => ep.clone(),
                None => {
                    let ep = self.target(url).endpoint.clone();
                    endpoints.insert(url.to_string(), ep.clone());
                    ep
                }
            };
            let left = room.entry(Arc::as_ptr(&ep)).or_insert_with(|| {
                let left = window.saturating_sub(lock(&ep.queue).held);
                with_room += usize::from(left > 0);
                left
            });
            if *left == 0 {
                lock(&ep.queue).spilled = true;
                return if full || with_room > 0 || taken == 0 {
                    Pick::Skip
                } else {
                    Pick::Stop
                };
            }
            *left -= 1;
            with_room -= usize::from(*left == 0);
            taken += 1;
            Pick::Take
        })?;
        lock(&self.inner.settled_recently).retain(|_, (seq, _)| *seq > done_before);
        let mut n = 0;
        for r in rows {
            if self.spawn(r) {
                n += 1;
            }
        }
        if more {
            self.inner.refill.notify_one();
        }
        Ok(n)
    }

    /// Queues `event` for `route`: stores it in the outbox, then (in the owner) starts
    /// delivering. Returns the delivery id.
    pub async fn enqueue(&self, event: &Event, route: &Route) -> Result<String, WebhookError> {
        self.enqueue_inner(event, route, false).await
    }

    /// Like [`enqueue`](Self::enqueue), and remembers the outcome in memory for
    /// [`wait`](Self::wait) (which forgets it once it has reported it).
    pub async fn enqueue_watched(
        &self,
        event: &Event,
        route: &Route,
    ) -> Result<String, WebhookError> {
        self.enqueue_inner(event, route, true).await
    }

    async fn enqueue_inner(
        &self,
        event: &Event,
        route: &Route,
        watched: bool,
    ) -> Result<String, WebhookError> {
        let i = &self.inner;
        if i.signer.is_none() && !i.cfg.allow_unsigned {
            return Err(WebhookError::Unsigned);
        }
        let now = now_unix();
        let record = DeliveryRecord {
            // Time-ordered (UUID v7): new rows go to the end of the outbox's index.
            id: uuid::Uuid::now_v7().to_string(),
            event_id: event.event_id.clone(),
            event_type: event.event_type.clone(),
            route: route.name.clone(),
            url: route.url.clone(),
            body: super::payload::build_body(event, i.signer.as_ref()).into(),
            attempt: 0,
            next_at: now,
            created_at: now,
            state: DeliveryState::Pending,
            last_error: None,
        };
        if let Some((q, _)) = i.jetstream.get() {
            // Any node (this one too, if it takes) delivers it from the work queue; a
            // watched one is settled in memory if this process is the one.
            if watched && self.takes_from_queue() {
                lock(&i.watched).insert(record.id.clone(), None);
                i.watched_pending
                    .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            }
            q.publish(&record).await?;
            return Ok(record.id);
        }
        if event.redelivered {
            // Dispatched again after a crash: the delivery made before stands.
            if let Some(earlier) = i.outbox.insert_once(&record).await? {
                tracing::debug!(event_id = %event.event_id, route = %route.name, delivery = %earlier, "redelivered event: its webhook delivery exists already");
                return Ok(earlier);
            }
        } else {
            i.outbox.insert(&record).await?;
        }
        let id = record.id.clone();
        if watched && self.is_owner() {
            lock(&i.watched).insert(id.clone(), None);
            i.watched_pending
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        if self.is_owner() && !i.cancel.is_cancelled() {
            self.spawn(record);
        }
        Ok(id)
    }

    /// Moves dead letters (all, or those of one event) back to pending and delivers
    /// them again. Returns how many.
    pub async fn redeliver(&self, event_id: Option<&str>) -> Result<usize, WebhookError> {
        let revived = self.inner.outbox.revive(event_id, now_unix()).await?;
        {
            let mut recent = lock(&self.inner.settled_recently);
            for r in &revived {
                recent.remove(&r.id);
            }
        }
        let n = revived.len();
        if self.is_owner() {
            for r in revived {
                self.spawn(r);
            }
        }
        Ok(n)
    }

    /// Takes `r` into this process's care unless it is already, or its endpoint's
    /// window is full: then it waits in the outbox, and the poller takes it once
    /// room is made. `true` if taken.
    fn spawn(&self, r: DeliveryRecord) -> bool {
        self.spawn_within(r, true)
    }

    /// [`spawn`](Self::spawn), bounded by the window or not.
    fn spawn_within(&self, r: DeliveryRecord, bounded: bool) -> bool {
        let ep = self.target(&r.url).endpoint.clone();
        {
            let mut q = lock(&ep.queue);
            if bounded && q.held >= self.inner.cfg.window.max(1) {
                q.spilled = true;
                return false;
            }
            if !lock(&self.inner.active).insert(r.id.clone()) {
                return false;
            }
            q.held += 1;
        }
        self.schedule(r);
        true
    }

    /// Queues `r` at its endpoint when due; before that, a small sleeper task waits.
    fn schedule(&self, r: DeliveryRecord) {
        let wait = r.next_at - now_unix();
        if wait <= 0.0 {
            self.ready(r);
            return;
        }
        let me = self.clone();
        self.inner.tasks.spawn(async move {
            tokio::select! {
                _ = me.inner.cancel.cancelled() => me.release(&r, None),
                _ = tokio::time::sleep(Duration::from_secs_f64(wait)) => me.ready(r),
            }
        });
    }

    /// Puts a due delivery in its endpoint's queue, and starts a worker for the
    /// endpoint if fewer than `per_endpoint` run.
    fn ready(&self, r: DeliveryRecord) {
        let ep = self.target(&r.url).endpoint.clone();
        let start_worker = {
            let mut q = lock(&ep.queue);
            q.items.push_back(r);
            let start = q.workers < self.inner.cfg.per_endpoint.max(1);
            if start {
                q.workers += 1;
            }
            start
        };
        if start_worker {
            let me = self.clone();
            self.inner.tasks.spawn(async move { me.work(ep).await });
        }
    }

    /// A worker of one endpoint: attempts queued deliveries one after another
    /// until the queue is empty (or the engine stops).
    async fn work(&self, ep: Arc<Endpoint>) {
        loop {
            let next = {
                let mut q = lock(&ep.queue);
                let item = if self.inner.cancel.is_cancelled() {
                    None
                } else {
                    q.items.pop_front()
                };
                if item.is_none() {
                    q.workers -= 1;
                    // Stopping: what is still queued stays pending in the outbox.
                    let left: Vec<DeliveryRecord> = if self.inner.cancel.is_cancelled() {
                        q.items.drain(..).collect()
                    } else {
                        Vec::new()
                    };
                    drop(q);
                    for r in &left {
                        self.release(r, None);
                    }
                    return;
                }
                item
            };
            let Some(mut r) = next else { return };
            match self.attempt(&mut r).await {
                Attempted::Settled(delivered, seq) => self.release(&r, Some((delivered, seq))),
                Attempted::Retry => self.schedule(r),
                Attempted::HandedBack => self.release(&r, None),
            }
        }
    }

    /// The delivery leaves this process's care: settled (`Some((delivered, number
    /// of its outbox update))`), or left pending.
    fn release(&self, r: &DeliveryRecord, settled: Option<(bool, u64)>) {
        let id = r.id.as_str();
        let ep = self.target(&r.url).endpoint.clone();
        let refill = {
            let mut q = lock(&ep.queue);
            q.held = q.held.saturating_sub(1);
            // Deliveries wait in the outbox for this endpoint: take them once half
            // the window is free (not one poll per delivery).
            let refill = q.spilled && q.held <= self.inner.cfg.window.max(1) / 2;
            if refill {
                q.spilled = false;
            }
            refill
        };
        if refill {
            self.inner.refill.notify_one();
        }
        if let Some((delivered, seq)) = settled {
            lock(&self.inner.settled_recently).insert(id.to_string(), (seq, delivered));
        }
        let settled = settled.map(|(delivered, _)| delivered);
        lock(&self.inner.active).remove(id);
        let mut last_watched = false;
        if let Some(delivered) = settled
            && let Some(slot) = lock(&self.inner.watched).get_mut(id)
            && slot.replace(delivered).is_none()
        {
            last_watched = self
                .inner
                .watched_pending
                .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
                == 1;
        }
        // Waiters for many deliveries look on their own every 250 ms and want news
        // only when the last watched one settles; waiters for a few want every one.
        if last_watched
            || self
                .inner
                .eager_waiters
                .load(std::sync::atomic::Ordering::Acquire)
                > 0
        {
            self.inner.settled.notify_waiters();
        }
    }

    /// What `url` resolves to, remembered per URL.
    fn target(&self, url: &str) -> Arc<Target> {
        if let Some(t) = lock(&self.inner.targets).get(url) {
            return t.clone();
        }
        let parsed = reqwest::Url::parse(url).ok();
        let key = parsed
            .as_ref()
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_else(|| url.to_string());
        let endpoint = lock(&self.inner.endpoints).entry(key).or_default().clone();
        let t = Arc::new(Target {
            endpoint,
            url: parsed,
            redacted: redact_url(url),
        });
        let mut targets = lock(&self.inner.targets);
        if targets.len() < 10_000 {
            targets.insert(url.to_string(), t.clone());
        }
        t
    }

    /// Makes one attempt and records it (in the outbox, or in the JetStream work
    /// queue for a delivery taken from it).
    async fn attempt(&self, r: &mut DeliveryRecord) -> Attempted {
        let i = &*self.inner;
        r.attempt += 1;
        let started = Instant::now();
        let result = self.send(r).await;
        let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        let (status, error, retry_after) = match &result {
            Ok((s, ra)) => (Some(*s), None, *ra),
            Err(e) => (None, Some(e.clone()), None),
        };
        let outcome = match status {
            Some(s) if (200..300).contains(&s) => "delivered",
            Some(410) => "gone",
            Some(s) if s == 408 || s == 429 || s >= 500 => "retry",
            Some(_) => "failed",
            None => "retry",
        };
        let outcome = if outcome == "retry" && r.attempt > i.cfg.max_retries {
            "dead"
        } else {
            outcome
        };
        let reason = match (status, &error) {
            (Some(s), _) => format!("HTTP {s}"),
            (None, Some(e)) => e.clone(),
            (None, None) => "unknown".into(),
        };
        let next_at = (outcome == "retry").then(|| {
            let b = backoff(
                r.attempt,
                i.cfg.backoff_base,
                i.cfg.backoff_cap,
                fastrand::f64() * 2.0 - 1.0,
            );
            now_unix() + b.max(retry_after.unwrap_or(Duration::ZERO)).as_secs_f64()
        });
        self.log_attempt(r, status, error, duration_ms, outcome, next_at);
        metrics::counter!("pm_events_webhook_attempts_total", "outcome" => outcome).increment(1);
        metrics::histogram!("pm_events_webhook_attempt_duration_seconds")
            .record(duration_ms / 1000.0);
        let held = lock(&i.js_held).remove(&r.id);
        if let Some(msg) = held {
            return self
                .settle_in_queue(r, msg, outcome, next_at, &reason)
                .await;
        }
        let stored = match (outcome, next_at) {
            ("delivered", _) => i.outbox.remove(&r.id),
            ("retry", Some(t)) => i.outbox.reschedule(&r.id, r.attempt, t, &reason),
            _ => {
                let why = self.dead_reason(r, outcome, &reason);
                self.dead_letter(r, &why);
                i.outbox.mark_dead(&r.id, r.attempt, &why)
            }
        };
        let seq = stored.unwrap_or_else(|e| {
            tracing::error!(delivery_id = %r.id, error = %crate::error::chain(&e), "cannot update the webhook outbox");
            0
        });
        match next_at {
            Some(t) => {
                r.next_at = t;
                Attempted::Retry
            }
            None => Attempted::Settled(outcome == "delivered", seq),
        }
    }

    /// The end of an attempt at a delivery taken from the JetStream work queue:
    /// delivered → acknowledged; to be retried → handed back with the delay;
    /// failed for good → dead letter here (line and outbox row), then acknowledged.
    async fn settle_in_queue(
        &self,
        r: &DeliveryRecord,
        msg: async_nats::jetstream::Message,
        outcome: &str,
        next_at: Option<f64>,
        reason: &str,
    ) -> Attempted {
        use async_nats::jetstream::AckKind;
        let acked = match (outcome, next_at) {
            ("delivered", _) => msg.ack().await,
            ("retry", Some(t)) => {
                let delay = Duration::from_secs_f64((t - now_unix()).max(0.0));
                let handed = msg.ack_with(AckKind::Nak(Some(delay))).await;
                if let Err(e) = &handed {
                    tracing::error!(delivery_id = %r.id, error = %crate::error::chain(&**e), "cannot hand a delivery back to the webhook work queue; it returns after the consumer's ack_wait");
                }
                return Attempted::HandedBack;
            }
            _ => {
                let why = self.dead_reason(r, outcome, reason);
                self.dead_letter(r, &why);
                let mut dead = r.clone();
                dead.state = DeliveryState::Dead;
                dead.last_error = Some(why);
                if let Err(e) = self.inner.outbox.insert(&dead).await {
                    tracing::error!(delivery_id = %r.id, error = %crate::error::chain(&e), "cannot keep a dead delivery in the outbox");
                }
                msg.ack().await
            }
        };
        if let Err(e) = acked {
            tracing::error!(delivery_id = %r.id, error = %crate::error::chain(&*e), "cannot acknowledge a delivery in the webhook work queue; it may be delivered again");
        }
        Attempted::Settled(outcome == "delivered", 0)
    }

    /// Why a delivery is dead (for its dead letter), warning about a 410.
    fn dead_reason(&self, r: &DeliveryRecord, outcome: &str, reason: &str) -> String {
        if outcome == "gone" {
            tracing::warn!(url = %self.target(&r.url).redacted, route = %r.route, "webhook endpoint answered 410 Gone; remove it from the configuration");
        }
        match outcome {
            "gone" => "HTTP 410 Gone: the endpoint no longer exists".to_string(),
            "failed" => format!("{reason}: final (not retried)"),
            _ => format!("{reason}: retries exhausted after {} attempts", r.attempt),
        }
    }

    /// One attempt: `Ok((status, Retry-After))` or `Err(error text without the URL)`.
    async fn send(&self, r: &DeliveryRecord) -> Result<(u16, Option<Duration>), String> {
        let i = &*self.inner;
        let req = match &self.target(&r.url).url {
            Some(u) => i.client.post(u.clone()),
            None => i.client.post(&r.url),
        };
        let mut req = req.header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(s) = &i.signer {
            let ts = now_unix().floor() as i64;
            for (k, v) in s.headers(&r.event_id, ts, &r.body) {
                req = req.header(k, v);
            }
        }
        match req.body(r.body.clone()).send().await {
            Ok(mut resp) => {
                let ra = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, Utc::now()));
                // Read the answer's body (under the same timeout), so that the
                // connection goes back to the pool: dropped unread, it is
                // closed, and the next delivery opens a new one. A body past
                // DRAIN_LIMIT, or one that fails, only costs that connection.
                let mut read = 0;
                while read <= DRAIN_LIMIT {
                    match resp.chunk().await {
                        Ok(Some(c)) => read += c.len(),
                        _ => break,
                    }
                }
                Ok((resp.status().as_u16(), ra))
            }
            Err(e) => {
                let kind = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connection failed"
                } else {
                    "request failed"
                };
                let e = e.without_url();
                let mut msg = format!("{kind}: {e}");
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg.push_str(&format!(": {s}"));
                    src = s.source();
                }
                Err(msg)
            }
        }
    }

    fn log_attempt(
        &self,
        r: &DeliveryRecord,
        status: Option<u16>,
        error: Option<String>,
        duration_ms: f64,
        outcome: &'static str,
        next_at: Option<f64>,
    ) {
        let line = AttemptLine {
            timestamp: rfc3339(now_unix()),
            delivery_id: &r.id,
            event_id: &r.event_id,
            event_type: &r.event_type,
            route: &r.route,
            url: self.target(&r.url).redacted.clone(),
            attempt: r.attempt,
            status,
            error,
            duration_ms: (duration_ms * 1000.0).round() / 1000.0,
            outcome,
            next_retry_at: next_at.map(rfc3339),
            node: &self.inner.cfg.node,
        };
        if let Err(e) = self.inner.attempts.append(&line) {
            tracing::error!(error = %crate::error::chain(&e), "cannot write the webhook attempt log");
        }
        tracing::debug!(delivery_id = %r.id, attempt = r.attempt, outcome, "webhook attempt");
    }

    fn dead_letter(&self, r: &DeliveryRecord, reason: &str) {
        let line = DeadLine {
            timestamp: rfc3339(now_unix()),
            delivery_id: &r.id,
            event_id: &r.event_id,
            event_type: &r.event_type,
            route: &r.route,
            url: self.target(&r.url).redacted.clone(),
            attempts: r.attempt,
            reason,
            node: &self.inner.cfg.node,
        };
        if let Err(e) = self.inner.dead.append(&line) {
            tracing::error!(error = %crate::error::chain(&e), "cannot write the dead letter log");
        }
        tracing::warn!(delivery_id = %r.id, event_id = %r.event_id, reason, "webhook delivery failed for good");
    }

    /// Waits until none of `ids` is pending, or `timeout` passes; counts the
    /// outcomes. The outbox reflects every settlement counted when this returns.
    pub async fn wait(
        &self,
        ids: &[String],
        timeout: Duration,
    ) -> Result<WaitOutcome, WebhookError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let all_watched = {
            let w = lock(&self.inner.watched);
            ids.iter().all(|id| w.contains_key(id))
        };
        if all_watched {
            let o = self.wait_watched(ids, deadline).await;
            // The settlements it counted are in the outbox too when this returns.
            self.inner.outbox.flush().await?;
            return Ok(o);
        }
        let _eager = EagerWaiter::new(&self.inner.eager_waiters, ids.len() <= 16);
        loop {
            let notified = self.inner.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Settled here but perhaps not committed yet: counted from memory
            // (the outbox may still read them as pending); the rest from the outbox.
            let (rest, dead_here) = {
                let recent = lock(&self.inner.settled_recently);
                let mut dead_here = 0;
                let rest: Vec<String> = ids
                    .iter()
                    .filter(|id| match recent.get(id.as_str()) {
                        Some((_, delivered)) => {
                            dead_here += usize::from(!delivered);
                            false
                        }
                        None => true,
                    })
                    .cloned()
                    .collect();
                (rest, dead_here)
            };
            let (pending, dead) = self.inner.outbox.count_states(&rest)?;
            let dead = dead + dead_here;
            if pending == 0 || tokio::time::Instant::now() >= deadline {
                if rest.len() < ids.len() {
                    // What was counted from memory is in the outbox too when this returns.
                    self.inner.outbox.flush().await?;
                }
                return Ok(WaitOutcome {
                    delivered: ids.len() - pending - dead,
                    dead,
                    pending,
                });
            }
            // A few ids: look again as soon as one of this process's deliveries
            // settles. Many: every 50 ms. Rows settled by another process are
            // seen by the polling either way.
            let poll = tokio::time::sleep(Duration::from_millis(if ids.len() <= 16 {
                100
            } else {
                50
            }));
            tokio::select! {
                _ = notified, if ids.len() <= 16 => {}
                _ = poll => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// `wait` for deliveries whose outcome this process records in memory. The
    /// ids are counted when no watched delivery is pending any more, and besides
    /// at most every 250 ms (counting is linear in the number of ids).
    async fn wait_watched(&self, ids: &[String], deadline: tokio::time::Instant) -> WaitOutcome {
        use std::sync::atomic::Ordering;
        let mut last_count: Option<tokio::time::Instant> = None;
        let _eager = EagerWaiter::new(&self.inner.eager_waiters, ids.len() <= 16);
        loop {
            let notified = self.inner.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = tokio::time::Instant::now();
            let count_now = ids.len() <= 16
                || self.inner.watched_pending.load(Ordering::Acquire) == 0
                || last_count.is_none_or(|t| now - t >= Duration::from_millis(250))
                || now >= deadline
                || self.inner.cancel.is_cancelled();
            if count_now {
                last_count = Some(now);
                let mut o = WaitOutcome::default();
                {
                    let w = lock(&self.inner.watched);
                    for id in ids {
                        match w.get(id) {
                            Some(Some(true)) => o.delivered += 1,
                            Some(Some(false)) => o.dead += 1,
                            _ => o.pending += 1,
                        }
                    }
                }
                if o.pending == 0 || now >= deadline || self.inner.cancel.is_cancelled() {
                    let mut w = lock(&self.inner.watched);
                    for id in ids {
                        if let Some(None) = w.remove(id) {
                            self.inner.watched_pending.fetch_sub(1, Ordering::AcqRel);
                        }
                    }
                    return o;
                }
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Deliveries this process holds in memory (queued, in flight, or waiting
    /// for a retry): at most the window per endpoint.
    pub fn active(&self) -> usize {
        lock(&self.inner.active).len()
    }

    /// Stops: in-flight requests finish, sleeping retries stay pending in the outbox.
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        // Deliveries taken from the work queue and not attempted: back to it (after a
        // second, once this process no longer fetches).
        let held: Vec<_> = lock(&self.inner.js_held).drain().collect();
        for (_, msg) in held {
            let _ = msg
                .ack_with(async_nats::jetstream::AckKind::Nak(Some(
                    Duration::from_secs(1),
                )))
                .await;
        }
        if let Err(e) = self.inner.outbox.flush().await {
            tracing::error!(error = %crate::error::chain(&e), "cannot flush the webhook outbox");
        }
        let _ = self.inner.attempts.sync();
        let _ = self.inner.dead.sync();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_a_cap() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(300);
        assert_eq!(backoff(1, base, cap, 0.0), Duration::from_secs(1));
        assert_eq!(backoff(2, base, cap, 0.0), Duration::from_secs(2));
        assert_eq!(backoff(5, base, cap, 0.0), Duration::from_secs(16));
        assert_eq!(backoff(3, base, cap, 1.0), Duration::from_secs_f64(4.8));
        assert_eq!(backoff(3, base, cap, -1.0), Duration::from_secs_f64(3.2));
        assert_eq!(backoff(20, base, cap, 0.0), cap);
        assert_eq!(
            backoff(20, base, cap, 1.0),
            cap,
            "jitter never passes the cap"
        );
        assert!(backoff(20, base, cap, -1.0) >= Duration::from_secs(240));
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = DateTime::parse_from_rfc3339("2025-01-15T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 15 Jan 2025 10:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 15 Jan 2025 09:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("99999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn urls_are_redacted_for_logs() {
        assert_eq!(
            redact_url("https://user:pw@h.example/p?token=abc"),
            "https://h.example/p?…"
        );
        assert_eq!(redact_url("http://127.0.0.1:9/x"), "http://127.0.0.1:9/x");
    }
}
