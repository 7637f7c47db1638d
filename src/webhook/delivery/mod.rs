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
//! - **Stores**: deliveries wait in a store (`delivery::store`) — the outbox, or with a [`JetStreamQueue`]
//!   attached ([`WebhookEngine::use_jetstream`]; the CLI does it when `PM_NATS_URL` is
//!   set) the JetStream work queue, from which any node's engine delivers (see
//!   [`super::jetstream`]). The engine puts, settles, holds and gives back through
//!   the store's trait and does not branch on which it has.
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

mod config;
mod health;
mod lines;
mod pace;
mod policy;
mod sender;
mod store;
mod wait;

pub use crate::redact::redact_url;
pub(crate) use crate::timespec::rfc3339;
pub use config::{DEFAULT_WINDOW, DeliveryConfig, MAX_RETRY_AFTER};
pub use health::{Breaker, HealthView};
pub use policy::Outcome;
pub use policy::{backoff, parse_retry_after};
use sender::Destination;
pub use sender::EXCERPT_LIMIT;
use store::{DeliveryStore, Kept, OutboxStore, QueueStore, Settle};
pub use wait::WaitOutcome;

use super::jetstream::JetStreamQueue;
use super::outbox::{DeliveryRecord, DeliveryState, Outbox, Pick};
use super::route::Route;
use super::sign::Signer;
use crate::endpoint::{Endpoints, Managed};
use crate::event::{Event, now_unix};
use crate::jsonl::JsonlWriter;
use crate::webhook::error::WebhookError;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The deliveries due at one endpoint (origin), and how many workers drain them.
/// At most `per_endpoint` workers run per endpoint, so a slow endpoint ties up
/// only its own workers, and a backlog is plain data, not parked tasks.
#[derive(Default)]
struct OriginQueue {
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
    /// The outbox: the local store of pending and dead deliveries (shared with the
    /// queue store, which keeps its dead rows there).
    outbox: Arc<Outbox>,
    /// The outbox as the store deliveries wait in, unless a queue is attached.
    local: OutboxStore,
    attempts: JsonlWriter,
    dead: JsonlWriter,
    /// One queue per endpoint origin, created on first use.
    origins: Mutex<HashMap<String, Arc<OriginQueue>>>,
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
    /// Ids a watched put returned for deliveries that existed already (a
    /// repeat sends nothing); taken by [`WebhookEngine::take_repeat`].
    repeats: Mutex<std::collections::HashSet<String>>,
    /// The JetStream work queue as the store, when deliveries are shared by the
    /// nodes of a NATS cluster (set once, before `start`).
    queue: std::sync::OnceLock<QueueStore>,
    /// The managed endpoints, once attached ([`WebhookEngine::attach_endpoints`]):
    /// their keys, settings and state are read at each attempt.
    endpoints: std::sync::OnceLock<(Endpoints, reqwest::Client)>,
    /// Called with an `endpoint_disabled` event when the engine disables an endpoint.
    on_disabled: std::sync::OnceLock<Box<dyn Fn(Event) + Send + Sync>>,
    /// Each route's figures and breaker; updated after every attempt.
    health: health::Health,
    /// The turns of rate-limited and paused routes (`rate_limit_per_s`, 429s).
    pacer: pace::Pacer,
    /// Every attempt's outcome, for whoever listens (the server's event stream);
    /// nothing is built when nobody does.
    notices: tokio::sync::broadcast::Sender<Arc<AttemptNotice>>,
}

/// The outcome of one attempt, as the server's event stream shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AttemptNotice {
    /// The delivery.
    pub delivery_id: String,
    /// Its event.
    pub event_id: String,
    /// The event's type.
    pub event_type: String,
    /// The endpoint id (or route variable).
    pub endpoint_id: String,
    /// 1 = the first try.
    pub attempt: u32,
    /// The HTTP status, if an answer came.
    pub status: Option<u16>,
    /// `delivered`, `retry`, `failed`, `gone` or `dead`.
    pub outcome: &'static str,
    /// The network error, if no answer came.
    pub error: Option<String>,
    /// When (RFC 3339).
    pub timestamp: String,
}

/// The figures of one route from past attempts, oldest first: (Unix time, delivered,
/// why the endpoint failed if it did, milliseconds). The breaker is shown closed: it
/// lives in the process that delivers.
pub fn figures_from(
    attempts: impl IntoIterator<Item = (f64, bool, Option<String>, f64)>,
    now: f64,
) -> HealthView {
    let h = health::Health::new(Duration::MAX);
    for (t, ok, failed, ms) in attempts {
        h.record("r", ok, failed.as_deref(), ms, t, false);
    }
    h.view("r", now)
}

/// The HTTP client's settings: the attempt timeout, pooled connections per
/// endpoint, no redirects.
fn http_client(cfg: &DeliveryConfig) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .timeout(cfg.timeout)
        .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
        .pool_max_idle_per_host(cfg.per_endpoint.max(1))
        // A webhook goes to the URL configured, nowhere else: a 3xx answer is a
        // final failure (as with GitHub's and Stripe's webhooks).
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("pm-events/", env!("CARGO_PKG_VERSION")))
}

/// A new pending delivery of `event` to `route` at `url`, due now.
fn record_of(event: &Event, route: &str, url: &str, body: Vec<u8>) -> DeliveryRecord {
    let now = now_unix();
    DeliveryRecord {
        // Time-ordered (UUID v7): new rows go to the end of the outbox's index.
        id: uuid::Uuid::now_v7().to_string(),
        event_id: event.event_id.clone(),
        event_type: event.event_type.clone(),
        route: route.to_string(),
        url: url.to_string(),
        body: body.into(),
        attempt: 0,
        next_at: now,
        created_at: now,
        state: DeliveryState::Pending,
        last_error: None,
        traceparent: event.trace.clone(),
    }
}

/// Why a delivery cannot be sent again by hand.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    /// No dead delivery has this id (it may have been delivered).
    #[error("no dead or failed delivery {0} in the outbox (delivered deliveries leave it)")]
    NotDead(String),
    /// The delivery is pending: it is retried on its own.
    #[error("delivery {0} is still pending; it is retried on its own")]
    Pending(String),
    /// The outbox could not be read or written.
    #[error(transparent)]
    Outbox(WebhookError),
}

/// Whether a delivery can be attempted now.
enum Reach {
    /// Yes, signed and set up for this destination.
    Send(Destination),
    /// Not now: its endpoint is disabled (or unknown to this process); it waits.
    Hold,
    /// Never: its endpoint was removed.
    Removed,
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
    endpoint: Arc<OriginQueue>,
    /// The parsed URL (`None`: unparsable; the request then fails with the parser's error).
    url: Option<reqwest::Url>,
    /// The URL without credentials or query, for the logs.
    redacted: String,
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
        let outbox = Arc::new(Outbox::open(dir.join("outbox.sqlite3"), cfg.fsync)?);
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
        let lock_file = crate::private_files::open_options()
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
        let disable_after = cfg.disable_after;
        let client = http_client(&cfg)
            .build()
            .map_err(|e| WebhookError::config("HTTP client", e))?;
        Ok(WebhookEngine {
            inner: Arc::new(EngineInner {
                cfg,
                signer,
                client,
                local: OutboxStore(outbox.clone()),
                outbox,
                attempts,
                dead,
                origins: Mutex::new(HashMap::new()),
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
                repeats: Mutex::new(std::collections::HashSet::new()),
                queue: std::sync::OnceLock::new(),
                endpoints: std::sync::OnceLock::new(),
                notices: tokio::sync::broadcast::channel(1024).0,
                pacer: pace::Pacer::default(),
                health: health::Health::new(disable_after),
                on_disabled: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Delivers to the managed endpoints of `e` (their keys, headers, settings and
    /// state). Call before `start`; a second set is refused.
    /// Their deliveries go through an HTTP client of their own, whose resolver
    /// refuses the addresses the endpoints' guard refuses.
    pub fn attach_endpoints(&self, e: Endpoints) -> Result<(), WebhookError> {
        let resolver = crate::endpoint::guard::GuardedResolver(e.guard());
        let client = http_client(&self.inner.cfg)
            .dns_resolver(std::sync::Arc::new(resolver))
            .build()
            .map_err(|e| WebhookError::config("HTTP client", e))?;
        self.inner
            .endpoints
            .set((e, client))
            .map_err(|_| WebhookError::config_state("endpoints are attached already"))
    }

    /// The managed endpoints, if attached.
    pub fn endpoints(&self) -> Option<&Endpoints> {
        self.inner.endpoints.get().map(|(e, _)| e)
    }

    /// The HTTP client of managed endpoints (guarded) and their guard, if attached.
    fn guarded(
        &self,
    ) -> Option<(
        &reqwest::Client,
        std::sync::Arc<crate::endpoint::guard::NetGuard>,
    )> {
        self.inner.endpoints.get().map(|(e, c)| (c, e.guard()))
    }

    /// The outcome of every attempt from now on (a receiver that lags loses the oldest).
    pub fn notices(&self) -> tokio::sync::broadcast::Receiver<Arc<AttemptNotice>> {
        self.inner.notices.subscribe()
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
            .queue
            .set(QueueStore::new(q, take, self.inner.outbox.clone()))
            .map_err(|_| WebhookError::config_state("a JetStream queue is attached already"))
    }

    /// Where deliveries wait: the work queue if attached, else the outbox.
    fn store(&self) -> &dyn DeliveryStore {
        match self.inner.queue.get() {
            Some(q) => q,
            None => &self.inner.local,
        }
    }

    /// Whether deliveries go through a JetStream work queue.
    pub fn uses_jetstream(&self) -> bool {
        self.store().is_shared()
    }

    /// Whether this process takes deliveries from the JetStream work queue.
    pub fn takes_from_queue(&self) -> bool {
        self.is_owner() && self.store().is_shared() && self.store().takes()
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
                .spawn(async move { me.store().consume(me.clone()).await });
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
        let mut endpoints: HashMap<String, Arc<OriginQueue>> = HashMap::new();
        let mut room: HashMap<*const OriginQueue, usize> = HashMap::new();
        let (mut with_room, mut taken, mut more) = (0usize, 0usize, false);
        let rows = self.inner.outbox.scan_pending(|id, route, url| {
            if taken >= window {
                more = true;
                return Pick::Stop;
            }
            if lock(&self.inner.active).contains(id)
                || lock(&self.inner.settled_recently).contains_key(id)
                || self.held_back(route)
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

    /// Queues `event` for the managed endpoint `m`, once: a repeat of the same event
    /// for the same endpoint returns the first delivery's id and sends nothing.
    pub async fn enqueue_endpoint(
        &self,
        event: &Event,
        m: &Managed,
        watched: bool,
    ) -> Result<String, WebhookError> {
        let body = super::payload::build_body(event, m.signers().body_signer());
        self.enqueue_record(event, &m.endpoint.id, &m.endpoint.url, body, true, watched)
            .await
    }

    /// Queues `event` for each of the managed endpoints `ms`, once each, in one
    /// outbox transaction. Returns the delivery ids in the order of `ms`.
    pub async fn enqueue_endpoints(
        &self,
        event: &Event,
        ms: &[std::sync::Arc<Managed>],
        watched: bool,
    ) -> Result<Vec<String>, WebhookError> {
        let records: Vec<DeliveryRecord> = ms
            .iter()
            .map(|m| {
                let body = super::payload::build_body(event, m.signers().body_signer());
                record_of(event, &m.endpoint.id, &m.endpoint.url, body)
            })
            .collect();
        self.put_records(records, true, watched).await
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
        let body = super::payload::build_body(event, i.signer.as_ref());
        self.enqueue_record(
            event,
            &route.name,
            &route.url,
            body,
            event.redelivered,
            watched,
        )
        .await
    }

    /// Stores a delivery of `event` to `route` at `url` with `body`; with `once`,
    /// only if that event has none for that route yet (the earlier id is returned).
    async fn enqueue_record(
        &self,
        event: &Event,
        route: &str,
        url: &str,
        body: Vec<u8>,
        once: bool,
        watched: bool,
    ) -> Result<String, WebhookError> {
        let mut ids = self
            .put_records(vec![record_of(event, route, url, body)], once, watched)
            .await?;
        ids.pop()
            .ok_or_else(|| WebhookError::outbox_state("a delivery was not stored"))
    }

    /// Stores `records` (in the JetStream work queue, or in the outbox in one
    /// transaction) and, in the owner, starts delivering them. With `once`, a record
    /// whose event has a delivery for its route already is not stored: the earlier
    /// id stands in for it. Returns the ids in order.
    async fn put_records(
        &self,
        records: Vec<DeliveryRecord>,
        once: bool,
        watched: bool,
    ) -> Result<Vec<String>, WebhookError> {
        let i = &self.inner;
        let watch = |id: &str| {
            lock(&i.watched).insert(id.to_string(), None);
            i.watched_pending
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        };
        let here = self.store().attempted_where_put();
        // A delivery put in a queue may be taken and settled by this process before
        // `put` returns: its watch is set up first (and dropped if the put fails).
        let early = watched && !here && self.takes_from_queue();
        if early {
            records.iter().for_each(|r| watch(&r.id));
        }
        // Dispatched again after a crash, or a repeat: with `once`, the delivery made
        // before stands.
        let earlier = match self.store().put(&records, once).await {
            Ok(e) => e,
            Err(e) => {
                if early {
                    let mut w = lock(&i.watched);
                    for r in &records {
                        if let Some(None) = w.remove(&r.id) {
                            i.watched_pending
                                .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                        }
                    }
                }
                return Err(e);
            }
        };
        let mut ids = Vec::with_capacity(records.len());
        for (record, earlier) in records.into_iter().zip(earlier) {
            if let Some(e) = earlier {
                if early && let Some(None) = lock(&i.watched).remove(&record.id) {
                    i.watched_pending
                        .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                }
                if watched {
                    lock(&i.repeats).insert(e.clone());
                }
                tracing::debug!(event_id = %record.event_id, route = %record.route, delivery = %e, "the event has a delivery for this route already");
                ids.push(e);
                continue;
            }
            ids.push(record.id.clone());
            // A watched delivery of the outbox is settled in memory by its owner,
            // which starts it here, after its watch.
            if here && self.is_owner() {
                if watched {
                    watch(&record.id);
                }
                if !i.cancel.is_cancelled() {
                    self.spawn(record);
                }
            }
        }
        Ok(ids)
    }

    /// Whether a watched put just answered `id` for a delivery that existed
    /// already (nothing was sent); forgets it.
    pub fn take_repeat(&self, id: &str) -> bool {
        lock(&self.inner.repeats).remove(id)
    }

    /// Moves dead letters (all, or those of one event) back to pending and delivers
    /// them again. Returns how many.
    pub async fn redeliver(&self, event_id: Option<&str>) -> Result<usize, WebhookError> {
        let revived = self.inner.outbox.revive(event_id, now_unix()).await?;
        let n = revived.len();
        self.take_revived(revived);
        Ok(n)
    }

    /// Sends the dead delivery `id` again with a fresh retry budget. Errors name
    /// why not: no such delivery, or one that is not dead (pending ones are retried
    /// on their own; delivered ones have left the outbox).
    pub async fn retry(&self, id: &str) -> Result<DeliveryRecord, RetryError> {
        let row = self
            .inner
            .outbox
            .get(id)
            .map_err(RetryError::Outbox)?
            .ok_or(RetryError::NotDead(id.to_string()))?;
        if row.state != DeliveryState::Dead {
            return Err(RetryError::Pending(id.to_string()));
        }
        let revived = self
            .inner
            .outbox
            .revive_records(vec![row], now_unix())
            .await
            .map_err(RetryError::Outbox)?;
        let r = revived
            .into_iter()
            .next()
            .ok_or(RetryError::NotDead(id.to_string()))?;
        self.take_revived(vec![r.clone()]);
        Ok(r)
    }

    /// Sends the dead deliveries of `endpoint_id` created from `since` to `until`
    /// again. Returns how many.
    pub async fn recover(
        &self,
        endpoint_id: &str,
        since: f64,
        until: f64,
    ) -> Result<usize, WebhookError> {
        let dead = self
            .inner
            .outbox
            .list_route(endpoint_id, DeliveryState::Dead, since, until)?;
        let revived = self.inner.outbox.revive_records(dead, now_unix()).await?;
        let n = revived.len();
        self.take_revived(revived);
        Ok(n)
    }

    /// Dead-letters the pending deliveries of a removed endpoint (those in this
    /// process's care go when their turn comes). Returns how many.
    pub async fn endpoint_removed(&self, endpoint_id: &str) -> Result<usize, WebhookError> {
        let rows = self.inner.outbox.list_route(
            endpoint_id,
            DeliveryState::Pending,
            f64::MIN,
            f64::MAX,
        )?;
        let why = "its endpoint was removed";
        let mut n = 0;
        for r in rows {
            if lock(&self.inner.active).contains(&r.id) {
                continue;
            }
            self.dead_letter(&r, why);
            self.inner.outbox.mark_dead(&r.id, r.attempt, why)?;
            n += 1;
        }
        self.inner.outbox.flush().await?;
        Ok(n)
    }

    fn take_revived(&self, revived: Vec<DeliveryRecord>) {
        {
            let mut recent = lock(&self.inner.settled_recently);
            for r in &revived {
                recent.remove(&r.id);
            }
        }
        if self.is_owner() {
            for r in revived {
                self.spawn(r);
            }
        }
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
    async fn work(&self, ep: Arc<OriginQueue>) {
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
            let to = match self.destination(&r.route) {
                Reach::Send(to) => to,
                Reach::Hold => {
                    // Disabled (or its endpoints are not known here): it stays
                    // pending, and is taken again once the endpoint is enabled.
                    self.hold(&r).await;
                    self.release(&r, None);
                    continue;
                }
                Reach::Removed => {
                    let why = "its endpoint was removed";
                    self.dead_letter(&r, why);
                    let seq = match self.store().settle(&r, Settle::Dead { reason: why }).await {
                        Kept::Over(seq) => seq,
                        _ => 0,
                    };
                    self.notify(&r, None, Outcome::Dead, Some(why.to_string()));
                    self.release(&r, Some((false, seq)));
                    continue;
                }
            };
            if let Destination::Managed(m) = &to
                && let health::Gate::Wait(at) =
                    self.inner.health.gate(&r.route, &m.endpoint.updated_at)
            {
                // The breaker is open: wait for the probe, without an attempt.
                let wait = at.saturating_duration_since(tokio::time::Instant::now());
                r.next_at = now_unix() + wait.as_secs_f64();
                self.schedule(r);
                continue;
            }
            let rate = match &to {
                Destination::Managed(m) => m.endpoint.rate_limit_per_s,
                Destination::Env => None,
            };
            if let Some(at) = self.inner.pacer.take_turn(&r.route, rate) {
                tokio::select! {
                    _ = self.inner.cancel.cancelled() => {
                        self.release(&r, None);
                        continue;
                    }
                    _ = tokio::time::sleep_until(at) => {}
                }
            }
            match self.attempt(&mut r, &to).await {
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
        let endpoint = lock(&self.inner.origins).entry(key).or_default().clone();
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
    async fn attempt(&self, r: &mut DeliveryRecord, to: &Destination) -> Attempted {
        let i = &*self.inner;
        r.attempt += 1;
        let started = Instant::now();
        let result = self.send(r, to).await;
        let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        let (status, error, retry_after, excerpt) = match result {
            Ok(a) => (Some(a.status), None, a.retry_after, Some(a.excerpt)),
            Err(e) => (None, Some(e), None, None),
        };
        let max_retries = match to {
            Destination::Managed(m) => m.endpoint.max_retries.unwrap_or(i.cfg.max_retries),
            Destination::Env => i.cfg.max_retries,
        };
        let outcome = Outcome::of(status, r.attempt, max_retries);
        let reason = match (status, &error) {
            (Some(s), _) => format!("HTTP {s}"),
            (None, Some(e)) => e.clone(),
            (None, None) => "unknown".into(),
        };
        let failed = matches!(outcome, Outcome::Retry | Outcome::Dead | Outcome::Gone)
            .then_some(reason.as_str());
        let managed = match to {
            Destination::Managed(m) => Some(m),
            Destination::Env => None,
        };
        let change = i.health.record(
            &r.route,
            outcome == Outcome::Delivered,
            failed,
            duration_ms,
            now_unix(),
            managed.is_some(),
        );
        if let Some(m) = managed {
            match change {
                health::Change::DisableDue => {
                    let why = format!(
                        "failing without a success for {} (PM_ENDPOINT_DISABLE_AFTER)",
                        humantime::format_duration(i.cfg.disable_after)
                    );
                    self.disable(m, &why).await;
                }
                health::Change::Opened => {
                    tracing::warn!(endpoint = %r.route, "webhook endpoint keeps failing: its deliveries wait for a probe");
                }
                health::Change::Closed => {
                    tracing::info!(endpoint = %r.route, "webhook endpoint answers again");
                }
                health::Change::None => {}
            }
        }
        if status == Some(429) {
            // Too many requests: the whole endpoint waits, not only this delivery.
            let pause = retry_after
                .unwrap_or_else(|| backoff(r.attempt, i.cfg.backoff_base, i.cfg.backoff_cap, 0.0));
            i.pacer.pause(&r.route, tokio::time::Instant::now() + pause);
        }
        let next_at = (outcome == Outcome::Retry).then(|| {
            let b = backoff(
                r.attempt,
                i.cfg.backoff_base,
                i.cfg.backoff_cap,
                fastrand::f64() * 2.0 - 1.0,
            );
            now_unix() + b.max(retry_after.unwrap_or(Duration::ZERO)).as_secs_f64()
        });
        self.notify(r, status, outcome, error.clone());
        let tried = lines::Tried {
            status,
            error,
            response: excerpt,
            duration_ms,
        };
        self.log_attempt(r, tried, outcome, next_at);
        metrics::counter!("pm_events_webhook_attempts_total", "outcome" => outcome.as_str(), "endpoint" => r.route.clone())
            .increment(1);
        metrics::histogram!("pm_events_webhook_attempt_duration_seconds", "endpoint" => r.route.clone())
            .record(duration_ms / 1000.0);
        if outcome == Outcome::Gone
            && let Destination::Managed(m) = to
        {
            // The endpoint says it no longer exists: it is disabled, and this
            // delivery waits with the others until it is enabled again.
            self.disable(m, "answered 410 Gone").await;
            let now = now_unix();
            return match self
                .store()
                .settle(
                    r,
                    Settle::Retry {
                        next_at: now,
                        reason: "HTTP 410 Gone: endpoint disabled",
                    },
                )
                .await
            {
                Kept::RetryHere => {
                    r.next_at = now;
                    Attempted::Retry
                }
                Kept::HandedBack => Attempted::HandedBack,
                Kept::Over(seq) => Attempted::Settled(false, seq),
            };
        }
        let why;
        let how = match (outcome, next_at) {
            (Outcome::Delivered, _) => Settle::Delivered,
            (Outcome::Retry, Some(next_at)) => Settle::Retry {
                next_at,
                reason: &reason,
            },
            _ => {
                why = self.dead_reason(r, outcome, &reason);
                self.dead_letter(r, &why);
                Settle::Dead { reason: &why }
            }
        };
        match self.store().settle(r, how).await {
            Kept::Over(seq) => Attempted::Settled(outcome == Outcome::Delivered, seq),
            Kept::RetryHere => {
                if let Some(t) = next_at {
                    r.next_at = t;
                }
                Attempted::Retry
            }
            Kept::HandedBack => Attempted::HandedBack,
        }
    }

    /// Where `route` goes now.
    fn destination(&self, route: &str) -> Reach {
        if !route.starts_with(crate::endpoint::ID_PREFIX) {
            return Reach::Send(Destination::Env);
        }
        let Some(eps) = self.inner.endpoints.get() else {
            return Reach::Hold;
        };
        match eps.0.managed(route) {
            Some(m) if m.endpoint.enabled => Reach::Send(Destination::Managed(m)),
            Some(_) => Reach::Hold,
            None => Reach::Removed,
        }
    }

    /// Whether the poller should leave `route`'s pending deliveries where they are.
    fn held_back(&self, route: &str) -> bool {
        matches!(self.destination(route), Reach::Hold)
    }

    /// A delivery not attempted now (its endpoint is disabled) stays pending in its
    /// store (a queue gets it back for later; any node may take it once it is enabled).
    async fn hold(&self, r: &DeliveryRecord) {
        self.store().hold(r).await;
    }

    /// Takes `r`, handed out by the store, into this process's care whatever the
    /// window (the store bounds what it hands out).
    fn take_unbounded(&self, r: DeliveryRecord) {
        self.spawn_within(r, false);
    }

    /// Disables the managed endpoint `m` for `reason` and announces it (an
    /// `endpoint_disabled` event, through the hook of [`on_endpoint_disabled`](Self::on_endpoint_disabled)).
    async fn disable(&self, m: &Managed, reason: &str) {
        let Some(eps) = self.endpoints() else { return };
        if !eps
            .managed(&m.endpoint.id)
            .is_some_and(|m| m.endpoint.enabled)
        {
            return;
        }
        match eps.set_enabled(&m.endpoint.id, false, Some(reason)).await {
            Ok(ep) => {
                tracing::warn!(endpoint = %ep.id, url = %redact_url(&ep.url), reason, "webhook endpoint disabled; its deliveries wait until it is enabled");
                if let Some(hook) = self.inner.on_disabled.get() {
                    hook(Event::new(
                        "endpoint_disabled",
                        serde_json::json!({
                            "endpoint_id": ep.id,
                            "url": redact_url(&ep.url),
                            "reason": reason,
                        }),
                    ));
                }
            }
            Err(e) => {
                tracing::error!(endpoint = %m.endpoint.id, error = %crate::error::chain(&e), "cannot disable a webhook endpoint");
            }
        }
    }

    /// Calls `hook` with an `endpoint_disabled` event (`{"endpoint_id","url","reason"}`)
    /// each time the engine disables an endpoint; the server publishes it on the bus.
    /// Set once.
    pub fn on_endpoint_disabled(
        &self,
        hook: impl Fn(Event) + Send + Sync + 'static,
    ) -> Result<(), WebhookError> {
        self.inner
            .on_disabled
            .set(Box::new(hook))
            .map_err(|_| WebhookError::config_state("a hook is set already"))
    }

    /// The figures of `route` (an endpoint id or a route variable) in this process:
    /// the last hour's attempts, latency, last error, and the breaker.
    pub fn health(&self, route: &str) -> HealthView {
        self.inner.health.view(route, now_unix())
    }

    /// Tells the listeners of [`notices`](Self::notices) about an attempt.
    fn notify(
        &self,
        r: &DeliveryRecord,
        status: Option<u16>,
        outcome: Outcome,
        error: Option<String>,
    ) {
        if self.inner.notices.receiver_count() == 0 {
            return;
        }
        let _ = self.inner.notices.send(Arc::new(AttemptNotice {
            delivery_id: r.id.clone(),
            event_id: r.event_id.clone(),
            event_type: r.event_type.clone(),
            endpoint_id: r.route.clone(),
            attempt: r.attempt,
            status,
            outcome: outcome.as_str(),
            error,
            timestamp: rfc3339(now_unix()),
        }));
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
        // Deliveries taken from a queue and not attempted go back to it.
        self.store().give_back().await;
        if let Err(e) = self.inner.outbox.flush().await {
            tracing::error!(error = %crate::error::chain(&e), "cannot flush the webhook outbox");
        }
        let _ = self.inner.attempts.sync();
        let _ = self.inner.dead.sync();
    }
}
