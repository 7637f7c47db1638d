//! Pipelined publishing: a publisher hands over many events without waiting
//! for each one's write, and learns of each one's acceptance from its
//! [`PublishAck`] (the shape of JetStream's `PublishAckFuture` or Kafka's
//! `send` future).
//!
//! [`EventBus::publish_pipelined`] waits only for a unit of capacity, then
//! stages the event — a push onto one vector under a short lock, numbered in
//! staging order — for the bus's pipeline writer, one task per running bus.
//! The writer takes everything staged at once (up to [`MAX_BATCH`]), writes it
//! to the event log in one call, and only then hands it to the transport and
//! answers it: the write-ahead contract is the same as
//! [`EventBus::publish`]'s — an event is accepted once its line is written.
//! Batches grow by themselves with the load (no linger timer): while the
//! writer writes, the next batch gathers.
//!
//! Acknowledgements are numbers, not channels: an ack holds its event's
//! sequence number and the pipeline's [`Board`], where the writer moves the
//! mark below which every event is answered and notes the (rare) refused
//! ranges. Events of one publisher keep their order in the log and on the
//! queue (staging is first in, first out).

use super::{EventBus, Run};
use crate::error::{BusError, LogError};
use crate::event::{Event, EventId};
use crate::idempotency::Ticket;
use crate::transport::{Permit, TransportError};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::task::task_tracker::TaskTrackerToken;

/// Most staged events the writer takes into one log write.
pub const MAX_BATCH: usize = 1024;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The acceptance of one pipelined event: resolves to its id once its line is
/// in the event log and it is queued, or to the error that refused it.
/// Dropping it does not withdraw the event.
#[must_use = "an event's acceptance is known only by awaiting its PublishAck"]
pub struct PublishAck {
    event_id: EventId,
    answer: Answer,
}

/// Where a [`PublishAck`]'s answer comes from.
enum Answer {
    /// The writer answers the staged event numbered `seq` on `board`.
    Staged { seq: u64, board: Arc<Board> },
    /// Known when the ack was made: a repeat of an id accepted before, or an
    /// event accepted on the single-event path (`Err` once taken).
    Known(Option<Result<(), BusError>>),
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
        let this = &mut *self;
        let refusal = match &mut this.answer {
            Answer::Known(known) => known
                .take()
                .unwrap_or(Err(BusError::NotRunning("answered already"))),
            Answer::Staged { seq, board } => {
                if !board.answered(*seq) {
                    lock(&board.wakers).push(cx.waker().clone());
                    // Answered between the look and the registration: not lost.
                    if !board.answered(*seq) {
                        return Poll::Pending;
                    }
                }
                board.refusal(*seq).map_or(Ok(()), Err)
            }
        };
        Poll::Ready(refusal.map(|()| std::mem::take(&mut this.event_id)))
    }
}

/// Where the writer answers pipelined events; shared by the pipeline and its acks.
pub(super) struct Board {
    /// Every event numbered below this is answered (accepted or refused).
    /// Written by the writer only, after each batch.
    answered_below: AtomicU64,
    /// Whether `refused` holds anything (read without its lock).
    any_refused: AtomicBool,
    /// Refused ranges of sequence numbers with their error, in order
    /// (adjacent ones merged: a full disk refusing batch after batch is one
    /// range). Written by the writer, read by acks.
    refused: Mutex<Vec<(u64, u64, Refusal)>>,
    /// Acks waiting for an answer; the writer wakes and empties them after
    /// each batch (each pending ack registers again when polled).
    wakers: Mutex<Vec<Waker>>,
}

/// Why a range was refused (errors are not `Clone`; each ack gets its own copy).
#[derive(Clone)]
enum Refusal {
    Log(
        std::io::ErrorKind,
        Arc<str>,
        &'static str,
        std::path::PathBuf,
    ),
    Closed,
    Transport(Arc<str>),
    Stopped,
}

impl Board {
    fn new() -> Board {
        Board {
            answered_below: AtomicU64::new(0),
            any_refused: AtomicBool::new(false),
            refused: Mutex::new(Vec::new()),
            wakers: Mutex::new(Vec::new()),
        }
    }

    fn answered(&self, seq: u64) -> bool {
        seq < self.answered_below.load(Ordering::Acquire)
    }

    /// The error of `seq`, if its range was refused.
    fn refusal(&self, seq: u64) -> Option<BusError> {
        if !self.any_refused.load(Ordering::Acquire) {
            return None;
        }
        let refused = lock(&self.refused);
        let i = refused.partition_point(|(_, end, _)| *end <= seq);
        let (_, _, why) = refused.get(i).filter(|(start, _, _)| *start <= seq)?;
        Some(match why.clone() {
            Refusal::Log(kind, msg, action, path) => BusError::Log(LogError::Io {
                action,
                path,
                source: std::io::Error::new(kind, msg.to_string()),
            }),
            Refusal::Closed => BusError::Log(LogError::Closed),
            Refusal::Transport(msg) => BusError::Transport(TransportError::Other(msg.to_string())),
            Refusal::Stopped => BusError::NotRunning("stopped"),
        })
    }

    /// Answers `start..end` (refused with `why`, if given) and wakes the waiting acks.
    fn answer(&self, start: u64, end: u64, why: Option<Refusal>) {
        if let Some(why) = why {
            let mut refused = lock(&self.refused);
            match refused.last_mut() {
                Some(last) if last.1 == start && same_kind(&last.2, &why) => last.1 = end,
                _ => refused.push((start, end, why)),
            }
            self.any_refused.store(true, Ordering::Release);
        }
        self.answered_below.store(end, Ordering::Release);
        let wakers = std::mem::take(&mut *lock(&self.wakers));
        for w in wakers {
            w.wake();
        }
    }
}

fn same_kind(a: &Refusal, b: &Refusal) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

/// One event waiting for the writer.
struct Staged {
    event: Event,
    /// The claim of its id, settled once it is written.
    ticket: Ticket,
    /// Its unit of capacity, until its handlers are done.
    permit: Permit,
    /// Keeps `stop` waiting until the event is written (publishes from
    /// outside handlers; `None` for a handler's follow-up).
    _token: Option<TaskTrackerToken>,
}

/// What publishers stage; behind [`Pipeline::staging`].
struct Staging {
    events: Vec<Staged>,
    /// The sequence number of the next event staged.
    next_seq: u64,
    /// `false` once `stop` closed the pipeline.
    open: bool,
}

/// The pipeline of a running bus; part of [`Run`].
pub(super) struct Pipeline {
    /// Staged events, pushed by publishers, taken whole by the writer.
    staging: Mutex<Staging>,
    /// Wakes the writer when the first event of a batch is staged, and at close.
    wake: Notify,
    /// Answers; shared with every ack.
    board: Arc<Board>,
    /// The writer task; owned here, taken and awaited by `stop`.
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Pipeline {
    pub(super) fn new() -> Pipeline {
        Pipeline {
            staging: Mutex::new(Staging {
                events: Vec::new(),
                next_seq: 0,
                open: true,
            }),
            wake: Notify::new(),
            board: Arc::new(Board::new()),
            writer: Mutex::new(None),
        }
    }

    /// Spawns the writer; called once by `start` when `run` exists.
    pub(super) fn spawn_writer(bus: &EventBus, run: &Arc<Run>) {
        let task = tokio::spawn(write_staged(bus.clone(), run.clone()));
        *lock(&run.pipeline.writer) = Some(task);
    }

    /// Ends the writer once what is staged is written; called by `stop` after
    /// every accepted event is handled.
    pub(super) async fn close(&self) {
        lock(&self.staging).open = false;
        self.wake.notify_one();
        let task = lock(&self.writer).take();
        if let Some(task) = task
            && let Err(e) = task.await
        {
            tracing::error!(error = %e, "the pipeline writer ended abnormally");
        }
    }
}

impl PublishAck {
    fn known(event_id: EventId, outcome: Result<(), BusError>) -> PublishAck {
        PublishAck {
            event_id,
            answer: Answer::Known(Some(outcome)),
        }
    }
}

impl EventBus {
    /// Hands `event` over without waiting for its write: waits only while the
    /// queue is full (backpressure), then returns a [`PublishAck`] that
    /// resolves once the event is accepted. Many events can be in flight from
    /// one publisher; they are written in batches and keep their order.
    ///
    /// An event whose id was accepted in the last 24 hours is not written
    /// again: its ack resolves to that id at once (see [`crate::idempotency`]).
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
    pub async fn publish_pipelined(&self, mut event: Event) -> Result<PublishAck, BusError> {
        event.validate().map_err(BusError::InvalidEvent)?;
        // The span marks the hand-over to the pipeline (its write is shared by a batch).
        let _span = super::publish::publish_span(&mut event);
        let (run, token) = self.enter()?;
        let ticket = match run.recent.claim_waiting_now(&event.event_id).await {
            Ok(Some(t)) => t,
            Ok(None) => return Ok(PublishAck::known(event.event_id, Ok(()))),
            Err(()) => {
                // Another publish holds the id: this one waits for it off the
                // pipeline (rare), and answers the same as `publish_once`.
                let id = event.event_id.clone();
                let outcome = self.publish_once(event).await.map(drop);
                return Ok(PublishAck::known(id, outcome));
            }
        };
        let permit = super::publish::capacity_unit(&run).await?;
        let event_id = event.event_id.clone();
        let pipeline = &run.pipeline;
        let (seq, first) = {
            let mut st = lock(&pipeline.staging);
            if !st.open {
                return Err(BusError::NotRunning("stopping"));
            }
            if self.inner.local {
                // Counted from staging, so `stop` waits for it like a handled event.
                self.inner.inflight.fetch_add(1, Ordering::SeqCst);
            }
            let seq = st.next_seq;
            st.next_seq += 1;
            st.events.push(Staged {
                event,
                ticket,
                permit,
                _token: token,
            });
            (seq, st.events.len() == 1)
        };
        if first {
            pipeline.wake.notify_one();
        }
        Ok(PublishAck {
            event_id,
            answer: Answer::Staged {
                seq,
                board: pipeline.board.clone(),
            },
        })
    }

    /// Takes back the `inflight` count of `n` staged events that were refused.
    fn forget(&self, n: usize) {
        if self.inner.local {
            super::dispatch::finish(&self.inner, n);
        }
    }

    /// Writes one batch of staged events (numbered `start..`), hands them to
    /// the transport, and answers them on the board.
    async fn write_batch(&self, run: &Run, start: u64, batch: Vec<Staged>) {
        let n = batch.len();
        let end = start + n as u64;
        let board = &run.pipeline.board;
        let mut events = Vec::with_capacity(n);
        let mut rest = Vec::with_capacity(n);
        let mut tickets = Vec::with_capacity(n);
        for s in batch {
            events.push(s.event);
            tickets.push(s.ticket);
            rest.push((s.permit, s._token));
        }
        if let Some(log) = &run.log
            && let Err(e) = log.append_batch(&events).await
        {
            self.forget(n);
            let why = match e {
                LogError::Io {
                    action,
                    path,
                    source,
                } => Refusal::Log(source.kind(), source.to_string().into(), action, path),
                _ => Refusal::Closed,
            };
            board.answer(start, end, Some(why));
            return;
        }
        // In the log: repeats of these ids are duplicates from now on (without
        // a log, once the transport has them).
        let tickets = if run.log.is_some() {
            tickets.into_iter().for_each(Ticket::done);
            Vec::new()
        } else {
            tickets
        };
        let types: Option<Vec<String>> = self
            .inner
            .settings
            .metrics
            .then(|| events.iter().map(|e| e.event_type.clone()).collect());
        let mut tokens = Vec::with_capacity(n);
        let items = events
            .into_iter()
            .zip(rest)
            .map(|(e, (permit, token))| {
                tokens.push(token);
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
                tickets.into_iter().for_each(Ticket::done);
                board.answer(start, end, None);
            }
            Err(e) => {
                self.forget(n);
                let text = crate::error::chain(&e);
                tracing::error!(events = n, error = %text, "events logged but the transport refused them");
                board.answer(start, end, Some(Refusal::Transport(text.into())));
            }
        }
        drop(tokens);
    }
}

/// The writer task: takes what is staged, writes it, until the pipeline is
/// closed and nothing is left.
async fn write_staged(bus: EventBus, run: Arc<Run>) {
    let pipeline = &run.pipeline;
    loop {
        let taken = {
            let mut st = lock(&pipeline.staging);
            if st.events.is_empty() {
                if !st.open {
                    break;
                }
                None
            } else {
                let len = st.events.len().min(MAX_BATCH);
                let start = st.next_seq - st.events.len() as u64;
                let batch = if len == st.events.len() {
                    std::mem::take(&mut st.events)
                } else {
                    st.events.drain(..len).collect()
                };
                Some((start, batch))
            }
        };
        match taken {
            Some((start, batch)) => {
                bus.write_batch(&run, start, batch).await;
            }
            None => pipeline.wake.notified().await,
        }
    }
    // Closed: anything still unanswered (nothing, after a clean stop) is refused.
    let st = lock(&pipeline.staging);
    if pipeline.board.answered_below.load(Ordering::Acquire) < st.next_seq {
        let from = pipeline.board.answered_below.load(Ordering::Acquire);
        pipeline
            .board
            .answer(from, st.next_seq, Some(Refusal::Stopped));
    }
}
