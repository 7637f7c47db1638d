//! Where deliveries wait between attempts: one trait, two stores, so the engine
//! does not branch on which it has.
//!
//! - [`OutboxStore`]: the SQLite outbox of the log directory (the embedded default).
//!   The process that owns the outbox attempts what is put there, retries it itself
//!   at its next time, and records each step in the outbox.
//! - [`QueueStore`]: the JetStream work queue `PM_WEBHOOKS` (with `PM_NATS_URL`). What
//!   is put there is attempted by whichever node takes it; a retry is handed back to
//!   the queue with its delay; a delivery that fails for good becomes a dead row in
//!   the local outbox. Deliveries that live in the outbox (dead ones sent again, rows
//!   left from before) are settled there as with the outbox store.

use super::{WebhookEngine, lock};
use crate::event::now_unix;
use crate::webhook::error::WebhookError;
use crate::webhook::jetstream::JetStreamQueue;
use crate::webhook::outbox::{DeliveryRecord, DeliveryState, Outbox};
use async_nats::jetstream::{AckKind, Message};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How an attempt ended, as the store is to record it.
pub(super) enum Settle<'a> {
    /// Delivered.
    Delivered,
    /// To be tried again at `next_at` (Unix seconds); `reason` is why this one failed.
    Retry { next_at: f64, reason: &'a str },
    /// Failed for good, for `reason`.
    Dead { reason: &'a str },
}

/// What the store did with a settled attempt.
pub(super) enum Kept {
    /// Recorded as over (delivered or dead) by the outbox operation with this number
    /// (0: not an outbox operation).
    Over(u64),
    /// Recorded as to be retried; this process retries it at its time.
    RetryHere,
    /// Handed back to a shared queue, which gives it to a node at its time.
    HandedBack,
}

/// A place deliveries wait in.
#[async_trait]
pub(super) trait DeliveryStore: Send + Sync {
    /// Stores new deliveries; with `once`, each only if its event has none for its
    /// route yet. Per record: `None` when stored, else the earlier delivery's id.
    async fn put(
        &self,
        records: &[DeliveryRecord],
        once: bool,
    ) -> Result<Vec<Option<String>>, WebhookError>;
    /// Whether what `put` stores is attempted by this process's owner at once (the
    /// outbox), rather than by whichever node takes it from a queue.
    fn attempted_where_put(&self) -> bool;
    /// Whether this process takes deliveries from a shared queue (see [`Self::consume`]).
    fn takes(&self) -> bool;
    /// Whether deliveries go to a queue shared by the nodes of a cluster.
    fn is_shared(&self) -> bool;
    /// Feeds `engine` with the deliveries this store hands out, until it stops.
    async fn consume(&self, engine: WebhookEngine);
    /// Records the end of an attempt at `r`.
    async fn settle(&self, r: &DeliveryRecord, how: Settle<'_>) -> Kept;
    /// `r` is not attempted now (its endpoint is disabled); it stays pending.
    async fn hold(&self, r: &DeliveryRecord);
    /// Gives back what this process holds and has not attempted (at shutdown).
    async fn give_back(&self);
}

/// The SQLite outbox as a delivery store.
pub(super) struct OutboxStore(pub Arc<Outbox>);

fn logged(r: &DeliveryRecord, stored: Result<u64, WebhookError>) -> u64 {
    stored.unwrap_or_else(|e| {
        tracing::error!(delivery_id = %r.id, error = %crate::error::chain(&e), "cannot update the webhook outbox");
        0
    })
}

#[async_trait]
impl DeliveryStore for OutboxStore {
    async fn put(
        &self,
        records: &[DeliveryRecord],
        once: bool,
    ) -> Result<Vec<Option<String>>, WebhookError> {
        if once {
            return self.0.insert_all_once(records).await;
        }
        for r in records {
            self.0.insert(r).await?;
        }
        Ok(vec![None; records.len()])
    }

    fn attempted_where_put(&self) -> bool {
        true
    }

    fn takes(&self) -> bool {
        true
    }

    fn is_shared(&self) -> bool {
        false
    }

    async fn consume(&self, _engine: WebhookEngine) {}

    async fn settle(&self, r: &DeliveryRecord, how: Settle<'_>) -> Kept {
        match how {
            Settle::Delivered => Kept::Over(logged(r, self.0.remove(&r.id))),
            Settle::Retry { next_at, reason } => {
                logged(r, self.0.reschedule(&r.id, r.attempt, next_at, reason));
                Kept::RetryHere
            }
            Settle::Dead { reason } => {
                Kept::Over(logged(r, self.0.mark_dead(&r.id, r.attempt, reason)))
            }
        }
    }

    async fn hold(&self, _r: &DeliveryRecord) {}

    async fn give_back(&self) {}
}

/// The JetStream work queue as a delivery store, with the local outbox for dead
/// rows and for the deliveries that live there.
pub(super) struct QueueStore {
    queue: JetStreamQueue,
    /// Whether this process takes deliveries from the queue.
    take: bool,
    local: OutboxStore,
    /// The messages of the deliveries this process holds, by delivery id. Put by
    /// `consume`, taken by `settle`, `hold` or `give_back`, which acknowledge them
    /// or hand them back.
    held: Mutex<HashMap<String, Message>>,
}

impl QueueStore {
    /// The store over `queue`; with `take`, this process takes deliveries from it.
    pub(super) fn new(queue: JetStreamQueue, take: bool, outbox: Arc<Outbox>) -> Self {
        QueueStore {
            queue,
            take,
            local: OutboxStore(outbox),
            held: Mutex::new(HashMap::new()),
        }
    }

    fn taken(&self, id: &str) -> Option<Message> {
        lock(&self.held).remove(id)
    }
}

async fn hand_back(r_id: &str, msg: Message, delay: Duration) {
    if let Err(e) = msg.ack_with(AckKind::Nak(Some(delay))).await {
        tracing::error!(delivery_id = %r_id, error = %crate::error::chain(&*e), "cannot hand a delivery back to the webhook work queue; it returns after the consumer's ack_wait");
    }
}

#[async_trait]
impl DeliveryStore for QueueStore {
    async fn put(
        &self,
        records: &[DeliveryRecord],
        _once: bool,
    ) -> Result<Vec<Option<String>>, WebhookError> {
        // JetStream drops a repeated publish of a delivery id (`Nats-Msg-Id`).
        for r in records {
            self.queue.publish(r).await?;
        }
        Ok(vec![None; records.len()])
    }

    fn attempted_where_put(&self) -> bool {
        false
    }

    fn takes(&self) -> bool {
        self.take
    }

    fn is_shared(&self) -> bool {
        true
    }

    async fn consume(&self, engine: WebhookEngine) {
        if !self.take {
            return;
        }
        // The consumer holds at most this many deliveries (of every node) at once.
        let max_held = (engine.inner.cfg.per_endpoint.max(1) * 8).max(64);
        let q = self.queue.clone();
        let mut messages = crate::transport::nats::Messages::new(
            "webhook work queue",
            Box::new(move || {
                let q = q.clone();
                Box::pin(async move { q.messages(max_held).await })
            }),
        );
        while let Some(msg) = messages.next(&engine.inner.cancel).await {
            let r = match crate::webhook::jetstream::record_of(&msg) {
                Ok(r) => r,
                Err(e) => {
                    // Not a delivery of ours: acknowledge it so it is not redelivered forever.
                    tracing::warn!(subject = %msg.subject, error = %e, "undecodable message on the webhook work queue skipped");
                    let _ = msg.ack().await;
                    continue;
                }
            };
            // A message given again while this process still holds it (its ack_wait
            // ran out) keeps its one task here; the newest handle acknowledges it.
            lock(&self.held).insert(r.id.clone(), msg);
            // The consumer's own bound (`max_held`) limits what this process holds.
            engine.take_unbounded(r);
        }
    }

    async fn settle(&self, r: &DeliveryRecord, how: Settle<'_>) -> Kept {
        let Some(msg) = self.taken(&r.id) else {
            // A delivery of the outbox (a dead one sent again, a row from before).
            return self.local.settle(r, how).await;
        };
        let acked = match how {
            Settle::Delivered => msg.ack().await,
            Settle::Retry { next_at, .. } => {
                hand_back(
                    &r.id,
                    msg,
                    Duration::from_secs_f64((next_at - now_unix()).max(0.0)),
                )
                .await;
                return Kept::HandedBack;
            }
            Settle::Dead { reason } => {
                // Kept here, so that `deliveries retry` on this node sends it again.
                let mut dead = r.clone();
                dead.state = DeliveryState::Dead;
                dead.last_error = Some(reason.to_string());
                if let Err(e) = self.local.0.insert(&dead).await {
                    tracing::error!(delivery_id = %r.id, error = %crate::error::chain(&e), "cannot keep a dead delivery in the outbox");
                }
                msg.ack().await
            }
        };
        if let Err(e) = acked {
            tracing::error!(delivery_id = %r.id, error = %crate::error::chain(&*e), "cannot acknowledge a delivery in the webhook work queue; it may be delivered again");
        }
        Kept::Over(0)
    }

    async fn hold(&self, r: &DeliveryRecord) {
        if let Some(msg) = self.taken(&r.id) {
            hand_back(&r.id, msg, Duration::from_secs(5)).await;
        }
    }

    async fn give_back(&self) {
        // Back to the queue after a second, once this process no longer fetches.
        let held: Vec<_> = lock(&self.held).drain().collect();
        for (id, msg) in held {
            hand_back(&id, msg, Duration::from_secs(1)).await;
        }
    }
}
