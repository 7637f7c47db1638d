//! Accepting events: the publish calls, the write-ahead, the hand-off to the transport.

use super::dispatch::finish_one;
use super::shared::{EventBus, IN_HANDLER, Run, WeakEventBus};
use crate::error::BusError;
use crate::event::{Event, EventId};
use crate::idempotency::{Accepted, Claim, Claiming, Ticket};
use crate::transport::{Permit, Priority};
use serde_json::Value;
use std::sync::atomic::Ordering;

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

impl EventBus {
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
    /// bus.stop().await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish(
        &self,
        event: impl Into<EventOrType>,
        data: impl Into<Option<Value>>,
    ) -> Result<EventId, BusError> {
        self.publish_one(
            make_event(event.into(), data.into()),
            true,
            Claiming::Optimistic,
        )
        .await
        .map(|a| a.event_id)
    }

    /// Publishes `event` unless an event with its `event_id` was accepted in the
    /// last 24 hours (see [`crate::idempotency`]): then it returns that id with
    /// `duplicate: true` and does nothing. Waits while the queue is full.
    pub async fn publish_once(&self, event: Event) -> Result<Accepted, BusError> {
        self.publish_one(Built(event), true, Claiming::Waiting)
            .await
    }

    /// Like [`publish_once`](Self::publish_once), with
    /// [`BusError::QueueFull`] instead of waiting when the queue is full.
    pub async fn try_publish_once(&self, event: Event) -> Result<Accepted, BusError> {
        self.publish_one(Built(event), false, Claiming::Waiting)
            .await
    }

    /// The one way a single event is accepted: validated, its id claimed
    /// (a repeat is a duplicate), a unit of capacity taken (waiting for it
    /// when `wait`), written ahead, queued.
    pub(super) async fn publish_one(
        &self,
        event: Made,
        wait: bool,
        how: Claiming,
    ) -> Result<Accepted, BusError> {
        let event = event.validated()?;
        let (run, _token) = self.enter()?;
        let Some(ticket) = claim(&run, &event, how).await else {
            return Ok(Accepted {
                event_id: event.event().event_id.clone(),
                duplicate: true,
            });
        };
        let permit = if wait {
            capacity_unit(&run).await?
        } else {
            run.permits
                .clone()
                .try_acquire_owned()
                .map_err(|_| BusError::QueueFull {
                    capacity: self.inner.settings.capacity,
                })?
        };
        let event_id = self
            .accept(&run, event.into_event(), permit, ticket)
            .await?;
        Ok(Accepted {
            event_id,
            duplicate: false,
        })
    }

    /// Publishes a built event; a repeat of an id accepted in the last 24
    /// hours returns that id and does nothing (see
    /// [`publish_once`](Self::publish_once), which tells the two apart).
    pub async fn publish_event(&self, event: Event) -> Result<EventId, BusError> {
        self.publish_one(Built(event), true, Claiming::Optimistic)
            .await
            .map(|a| a.event_id)
    }

    /// Publishes without waiting for capacity: [`BusError::QueueFull`] when the queue is full.
    pub async fn try_publish(
        &self,
        event: impl Into<EventOrType>,
        data: impl Into<Option<Value>>,
    ) -> Result<EventId, BusError> {
        self.publish_one(
            make_event(event.into(), data.into()),
            false,
            Claiming::Optimistic,
        )
        .await
        .map(|a| a.event_id)
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
            let taken: Vec<Event> = rest.by_ref().take(chunk_len).collect();
            ids.extend(taken.iter().map(|e| e.event_id.clone()));
            // Repeats of ids accepted before (or earlier in this batch) are left out.
            let (mut chunk, tickets) = claim_batch(&run, taken).await;
            if chunk.is_empty() {
                continue;
            }
            // One `publish` span per event, when traces are on.
            let _spans: Vec<_> = if crate::telemetry::enabled() {
                chunk.iter_mut().map(publish_span).collect()
            } else {
                Vec::new()
            };
            let permit = run
                .permits
                .clone()
                .acquire_many_owned(chunk.len() as u32)
                .await
                .map_err(|_| BusError::NotRunning("stopping"))?;
            if let Some(log) = &run.log {
                log.append_batch(&chunk).await?;
                tickets.into_iter().for_each(Ticket::done);
                self.enqueue_batch(chunk, permit).await?;
            } else {
                self.enqueue_batch(chunk, permit).await?;
                tickets.into_iter().for_each(Ticket::done);
            }
        }
        Ok(ids)
    }

    /// Hands logged events to the transport in order, `permit` holding one
    /// unit of capacity per event.
    pub(super) async fn enqueue_batch(
        &self,
        chunk: Vec<Event>,
        mut permit: Permit,
    ) -> Result<(), BusError> {
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

    pub(super) fn priority_of(&self, e: &Event) -> Priority {
        self.inner
            .priority
            .as_ref()
            .map_or(Priority::Normal, |r| r(e))
    }

    /// Writes `event` ahead, settles its id's `ticket`, and queues it.
    pub(super) async fn accept(
        &self,
        run: &Run,
        mut event: Event,
        permit: Permit,
        ticket: Ticket,
    ) -> Result<EventId, BusError> {
        let mut span = publish_span(&mut event);
        match &run.log {
            Some(log) => {
                if let Err(e) = log.append(&event).await {
                    span.fail(|| e.to_string());
                    return Err(e.into());
                }
                // In the log: a repeat of its id is a duplicate from now on.
                ticket.done();
                self.enqueue(event, permit).await
            }
            None => {
                let id = self.enqueue(event, permit).await?;
                ticket.done();
                Ok(id)
            }
        }
    }

    /// Hands a logged event to the transport (its line is in the event log already).
    pub(super) async fn enqueue(&self, event: Event, permit: Permit) -> Result<EventId, BusError> {
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

/// The `publish` span of `event` (when traces are on), which becomes the event's trace.
pub(super) fn publish_span(event: &mut Event) -> crate::telemetry::Span {
    let span = crate::telemetry::start(
        "publish",
        crate::telemetry::Kind::Publish,
        event.trace.as_deref(),
        || {
            vec![
                opentelemetry::KeyValue::new("pm.event_type", event.event_type.clone()),
                opentelemetry::KeyValue::new("pm.event_id", event.event_id.clone()),
            ]
        },
    );
    if let Some(tp) = span.traceparent() {
        event.trace = Some(tp.to_string());
    }
    span
}

/// An event about to be published, and whether its id was just made by the bus.
pub(super) enum Made {
    /// Built here from a type: its id is new, no log can hold it yet.
    New(Event),
    /// Built by the caller: its id may have been accepted before.
    Built(Event),
}
use Made::Built;

impl Made {
    fn event(&self) -> &Event {
        match self {
            Made::New(e) | Made::Built(e) => e,
        }
    }
    fn into_event(self) -> Event {
        match self {
            Made::New(e) | Made::Built(e) => e,
        }
    }
    fn validated(self) -> Result<Made, BusError> {
        self.event().validate().map_err(BusError::InvalidEvent)?;
        Ok(self)
    }
}

pub(super) fn make_event(first: EventOrType, data: Option<Value>) -> Made {
    match first {
        EventOrType::Type(t) => Made::New(Event::new(
            t,
            data.unwrap_or_else(|| Value::Object(Default::default())),
        )),
        EventOrType::Event(mut e) => {
            if let Some(d) = data {
                e.data = d;
            }
            Built(e)
        }
    }
}

/// Claims the id of `event` (see [`crate::idempotency`]): its ticket, or
/// `None` for a duplicate. An id the bus has just made needs no look at the
/// log's ids.
async fn claim(run: &Run, event: &Made, how: Claiming) -> Option<Ticket> {
    if let Made::New(e) = event
        && let Claim::Fresh(t) = run.recent.claim_as(&e.event_id, how)
    {
        return Some(t);
    }
    run.recent.claim_waiting(&event.event().event_id, how).await
}

/// Claims the ids of a batch: the events to write (repeats left out, the
/// first of an id repeated within the batch kept) and their tickets.
pub(super) async fn claim_batch(run: &Run, events: Vec<Event>) -> (Vec<Event>, Vec<Ticket>) {
    run.recent.loaded().await;
    let mut keep = Vec::with_capacity(events.len());
    let mut tickets: Vec<Ticket> = Vec::with_capacity(events.len());
    for e in events {
        loop {
            match run.recent.claim_as(&e.event_id, Claiming::Optimistic) {
                Claim::Fresh(t) => {
                    tickets.push(t);
                    keep.push(e);
                }
                Claim::Duplicate => {}
                Claim::Pending(mut rx) => {
                    // A `publish_once` of this id is under way: its outcome decides.
                    // (A repeat within the batch is a duplicate: claimed optimistically.)
                    let _ = rx.changed().await;
                    continue;
                }
            }
            break;
        }
    }
    (keep, tickets)
}

/// One unit of capacity for a publish, waiting while the queue is full; a
/// publish from inside a handler takes the overflow capacity and never waits
/// (see the module docs of [`crate::bus`]).
pub(super) async fn capacity_unit(run: &Run) -> Result<Permit, BusError> {
    if IN_HANDLER.try_with(|_| ()).is_ok()
        && let Ok(p) = run.overflow.clone().try_acquire_owned()
    {
        return Ok(p);
    }
    run.permits
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| BusError::NotRunning("stopping"))
}
