//! Pipelined publishing: a publisher hands over many events without waiting
//! for each one's write, and learns of each one's acceptance from its
//! [`PublishAck`] (the shape of JetStream's `PublishAckFuture` or Kafka's
//! `send` future).
//!
//! [`EventBus::publish_pipelined`] waits only for a unit of capacity, then
//! stages the event for the bus's pipeline writer, one task per running bus.
//! The writer takes every staged event at once (up to [`MAX_BATCH`]), writes
//! them to the event log in one call, and only then hands them to the
//! transport and resolves their acknowledgements: the write-ahead contract is
//! the same as [`EventBus::publish`]'s — an event is accepted once its line is
//! written. Batches grow by themselves with the load (no linger timer): while
//! the writer writes, the next batch gathers.
//!
//! Events of one publisher keep their order in the log and on the queue
//! (staging is first in, first out).

use super::{EventBus, IN_HANDLER, Inner, Run};
use crate::error::{BusError, LogError};
use crate::event::{Event, EventId};
use crate::transport::{Permit, TransportError};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::task::task_tracker::TaskTrackerToken;

/// Most staged events the writer takes into one log write.
pub const MAX_BATCH: usize = 1024;

/// The acceptance of one pipelined event: resolves to its id once its line is
/// in the event log and it is queued, or to the error that refused it.
/// Dropping it does not withdraw the event.
#[must_use = "an event's acceptance is known only by awaiting its PublishAck"]
pub struct PublishAck {
    event_id: EventId,
    rx: oneshot::Receiver<Result<(), BusError>>,
}

impl PublishAck {
    /// The id of the event (known before it is accepted).
    pub fn event_id(&self) -> &str {
        &self.event_id
    }
}

impl Future for PublishAck {
    type Output = Result<EventId, BusError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(Ok(()))) => Poll::Ready(Ok(std::mem::take(&mut self.event_id))),
            Poll::Ready(Ok(Err(e))) => Poll::Ready(Err(e)),
            // The writer ended without an answer: only when the bus's runtime shut down.
            Poll::Ready(Err(_)) => Poll::Ready(Err(BusError::NotRunning("stopped"))),
        }
    }
}

/// One event waiting for the writer.
struct Staged {
    event: Event,
    /// Its unit of capacity, until its handlers are done.
    permit: Permit,
    ack: oneshot::Sender<Result<(), BusError>>,
    /// Keeps `stop` waiting until the event is written (publishes from
    /// outside handlers; `None` for a handler's follow-up).
    _token: Option<TaskTrackerToken>,
}

/// The pipeline of a running bus; part of [`Run`].
pub(super) struct Pipeline {
    /// Where publishers stage events. Unbounded because capacity is bounded
    /// before staging (each staged event holds a permit).
    tx: mpsc::UnboundedSender<Staged>,
    /// `stop` notifies it once every accepted event is handled; the writer
    /// then writes what is left and ends.
    close: Arc<Notify>,
    /// The writer task; owned here, taken and awaited by `stop`.
    writer: Mutex<Option<JoinHandle<()>>>,
    /// The writer's end of the channel until the writer starts.
    rx: Mutex<Option<mpsc::UnboundedReceiver<Staged>>>,
}

impl Pipeline {
    pub(super) fn new() -> Pipeline {
        let (tx, rx) = mpsc::unbounded_channel();
        Pipeline {
            tx,
            close: Arc::new(Notify::new()),
            writer: Mutex::new(None),
            rx: Mutex::new(Some(rx)),
        }
    }

    /// Spawns the writer; called once by `start` when `run` exists.
    pub(super) fn spawn_writer(bus: &EventBus, run: &Arc<Run>) {
        let rx = run
            .pipeline
            .rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(rx) = rx {
            let task = tokio::spawn(write_staged(
                bus.clone(),
                run.clone(),
                rx,
                run.pipeline.close.clone(),
            ));
            *run.pipeline
                .writer
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(task);
        }
    }

    /// Ends the writer once what is staged is written; called by `stop` after
    /// every accepted event is handled.
    pub(super) async fn close(&self) {
        self.close.notify_one();
        let task = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task
            && let Err(e) = task.await
        {
            tracing::error!(error = %e, "the pipeline writer ended abnormally");
        }
    }
}

impl EventBus {
    /// Hands `event` over without waiting for its write: waits only while the
    /// queue is full (backpressure), then returns a [`PublishAck`] that
    /// resolves once the event is accepted. Many events can be in flight from
    /// one publisher; they are written in batches and keep their order.
    ///
    /// The id is not compared with earlier ones (see
    /// [`publish_once`](Self::publish_once) for ids that come from outside).
    ///
    /// ```
    /// # use pm_events::{Event, EventBus}; use serde_json::json;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let dir = tempfile::tempdir()?;
    /// let bus = EventBus::builder().log_dir(dir.path()).build();
    /// bus.start().await?;
    /// let mut acks = Vec::new();
    /// for i in 0..1000 {
    ///     acks.push(bus.publish_pipelined(Event::new("tick", json!({"i": i}))).await?);
    /// }
    /// for ack in acks {
    ///     ack.await?; // accepted: its line is in the event log
    /// }
    /// bus.stop().await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish_pipelined(&self, event: Event) -> Result<PublishAck, BusError> {
        event.validate().map_err(BusError::InvalidEvent)?;
        let (run, token) = self.enter()?;
        let in_handler = IN_HANDLER.try_with(|_| ()).is_ok();
        let permit = match in_handler.then(|| run.overflow.clone().try_acquire_owned().ok()) {
            Some(Some(p)) => p,
            _ => run
                .permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| BusError::NotRunning("stopping"))?,
        };
        let (ack, rx) = oneshot::channel();
        let event_id = event.event_id.clone();
        if self.inner.local {
            // Counted from staging, so `stop` waits for it like a handled event.
            self.inner.inflight.fetch_add(1, Ordering::SeqCst);
        }
        let staged = Staged {
            event,
            permit,
            ack,
            _token: token,
        };
        if let Err(mpsc::error::SendError(staged)) = run.pipeline.tx.send(staged) {
            self.forget(1);
            drop(staged);
            return Err(BusError::NotRunning("stopping"));
        }
        Ok(PublishAck { event_id, rx })
    }

    /// Takes back the `inflight` count of `n` staged events that were refused.
    fn forget(&self, n: usize) {
        if self.inner.local {
            forget(&self.inner, n);
        }
    }

    /// Writes one batch of staged events, hands them to the transport, and
    /// answers their acknowledgements.
    async fn write_batch(&self, run: &Run, batch: Vec<Staged>) {
        let n = batch.len();
        let mut events = Vec::with_capacity(n);
        let mut rest = Vec::with_capacity(n);
        for s in batch {
            events.push(s.event);
            rest.push((s.permit, s.ack, s._token));
        }
        if let Some(log) = &run.log
            && let Err(e) = log.append_batch(&events).await
        {
            self.forget(n);
            for (_, ack, _) in rest {
                let _ = ack.send(Err(BusError::Log(copy_log_error(&e))));
            }
            return;
        }
        let types: Option<Vec<String>> = self
            .inner
            .settings
            .metrics
            .then(|| events.iter().map(|e| e.event_type.clone()).collect());
        let mut acks = Vec::with_capacity(n);
        let items = events
            .into_iter()
            .zip(rest)
            .map(|(e, (permit, ack, token))| {
                acks.push((ack, token));
                let prio = self.priority_of(&e);
                (e, prio, permit)
            })
            .collect();
        match self.inner.transport.publish_batch(items).await {
            Ok(()) => {
                self.inner
                    .stats
                    .published
                    .fetch_add(n as u64, Ordering::Relaxed);
                for ty in types.into_iter().flatten() {
                    metrics::counter!("pm_events_published_total", "type" => ty).increment(1);
                }
                for (ack, _) in acks {
                    let _ = ack.send(Ok(()));
                }
            }
            Err(e) => {
                self.forget(n);
                tracing::error!(events = n, error = %crate::error::chain(&e), "events logged but the transport refused them");
                let text = crate::error::chain(&e);
                for (ack, _) in acks {
                    let _ = ack.send(Err(BusError::Transport(TransportError::Other(
                        text.clone(),
                    ))));
                }
            }
        }
    }
}

fn forget(inner: &Inner, n: usize) {
    if inner.inflight.fetch_sub(n, Ordering::SeqCst) == n {
        inner.idle.notify_waiters();
    }
}

/// The writer task: takes what is staged, writes it, until `close` is
/// notified and nothing is left.
async fn write_staged(
    bus: EventBus,
    run: Arc<Run>,
    mut rx: mpsc::UnboundedReceiver<Staged>,
    close: Arc<Notify>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let n = tokio::select! {
            biased;
            n = rx.recv_many(&mut batch, MAX_BATCH) => n,
            () = close.notified() => {
                rx.close();
                rx.recv_many(&mut batch, MAX_BATCH).await
            }
        };
        if n == 0 {
            break;
        }
        let taken = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
        bus.write_batch(&run, taken).await;
    }
}

/// The same log error for each event of a refused batch (I/O errors are not `Clone`).
fn copy_log_error(e: &LogError) -> LogError {
    match e {
        LogError::Io {
            action,
            path,
            source,
        } => LogError::Io {
            action,
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        _ => LogError::Closed,
    }
}
