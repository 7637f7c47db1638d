//! Pipelined publishing: a publisher hands over many events without waiting
//! for each one's write, and learns of each one's acceptance from its
//! [`PublishAck`] (the shape of JetStream's `PublishAckFuture` or Kafka's
//! `send` future).
//!
//! [`EventBus::publish_pipelined`](crate::EventBus::publish_pipelined) waits only for a unit of capacity, then
//! stages the event — a push onto one vector under a short lock, numbered in
//! staging order — for the bus's pipeline writer, one task per running bus.
//! The writer takes everything staged at once (up to [`MAX_BATCH`]), writes it
//! to the event log in one call, and only then hands it to the transport and
//! answers it: the write-ahead contract is the same as
//! [`EventBus::publish`](crate::EventBus::publish)'s — an event is accepted once its line is written.
//! Batches grow by themselves with the load (no linger timer): while the
//! writer writes, the next batch gathers.
//!
//! Acknowledgements are numbers, not channels: an ack holds its event's
//! sequence number and the pipeline's [`Board`], where the writer moves the
//! mark below which every event is answered and notes the (rare) refused
//! ranges. Events of one publisher keep their order in the log and on the
//! queue (staging is first in, first out).

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

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The acceptance of one pipelined event: resolves to its id once its line is
/// in the event log and it is queued, or to the error that refused it.
/// Dropping it does not withdraw the event.
#[must_use = "an event's acceptance is known only by awaiting its PublishAck"]
pub struct PublishAck {
    pub(super) event_id: EventId,
    pub(super) answer: Answer,
}

/// Where a [`PublishAck`]'s answer comes from.
pub(super) enum Answer {
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
    pub(super) answered_below: AtomicU64,
    /// Whether `refused` holds anything (read without its lock).
    pub(super) any_refused: AtomicBool,
    /// Refused ranges of sequence numbers with their error, in order
    /// (adjacent ones merged: a full disk refusing batch after batch is one
    /// range). Written by the writer, read by acks.
    pub(super) refused: Mutex<Vec<(u64, u64, Refusal)>>,
    /// Acks waiting for an answer; the writer wakes and empties them after
    /// each batch (each pending ack registers again when polled).
    pub(super) wakers: Mutex<Vec<Waker>>,
}

/// Why a range was refused (errors are not `Clone`; each ack gets its own copy).
#[derive(Clone)]
pub(super) enum Refusal {
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
    pub(super) fn new() -> Board {
        Board {
            answered_below: AtomicU64::new(0),
            any_refused: AtomicBool::new(false),
            refused: Mutex::new(Vec::new()),
            wakers: Mutex::new(Vec::new()),
        }
    }

    pub(super) fn answered(&self, seq: u64) -> bool {
        seq < self.answered_below.load(Ordering::Acquire)
    }

    /// The error of `seq`, if its range was refused.
    pub(super) fn refusal(&self, seq: u64) -> Option<BusError> {
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
    pub(super) fn answer(&self, start: u64, end: u64, why: Option<Refusal>) {
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

pub(super) fn same_kind(a: &Refusal, b: &Refusal) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

/// One event waiting for the writer.
pub(super) struct Staged {
    pub(super) event: Event,
    /// The claim of its id, settled once it is written.
    pub(super) ticket: Ticket,
    /// Its unit of capacity, until its handlers are done.
    pub(super) permit: Permit,
    /// Keeps `stop` waiting until the event is written (publishes from
    /// outside handlers; `None` for a handler's follow-up).
    pub(super) _token: Option<TaskTrackerToken>,
}

/// What publishers stage; behind [`Pipeline::staging`].
pub(super) struct Staging {
    pub(super) events: Vec<Staged>,
    /// The sequence number of the next event staged.
    pub(super) next_seq: u64,
    /// `false` once `stop` closed the pipeline.
    pub(super) open: bool,
}

/// The pipeline of a running bus; part of [`Run`].
pub(super) struct Pipeline {
    /// Staged events, pushed by publishers, taken whole by the writer.
    pub(super) staging: Mutex<Staging>,
    /// Wakes the writer when the first event of a batch is staged, and at close.
    pub(super) wake: Notify,
    /// Answers; shared with every ack.
    pub(super) board: Arc<Board>,
    /// The writer task; owned here, taken and awaited by `stop`.
    pub(super) writer: Mutex<Option<JoinHandle<()>>>,
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
    pub(super) fn known(event_id: EventId, outcome: Result<(), BusError>) -> PublishAck {
        PublishAck {
            event_id,
            answer: Answer::Known(Some(outcome)),
        }
    }
}
