//! Pipelined publishing: [`EventBus::publish_pipelined`](crate::EventBus::publish_pipelined) stages an event for
//! the run's pipeline writer ([`write_staged`]), which writes what is staged in
//! one call and answers the acks (`staging` holds the types).

use super::shared::{EventBus, Run};
use super::staging::{Answer, MAX_BATCH, PublishAck, Refusal, Staged, lock};
use crate::error::{BusError, LogError};
use crate::event::Event;
use crate::idempotency::{Claiming, Ticket};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Spawns the writer; called once by `start` when `run` exists.
pub(super) fn spawn_writer(bus: &EventBus, run: &Arc<Run>) {
    let task = tokio::spawn(write_staged(bus.clone(), run.clone()));
    *lock(&run.pipeline.writer) = Some(task);
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
        let ticket = match run
            .recent
            .claim_waiting_now(&event.event_id, Claiming::Optimistic)
            .await
        {
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
