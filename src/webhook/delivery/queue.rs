//! The JetStream side of the engine: taking deliveries from the work queue and
//! settling them there.

use super::policy::Outcome;
use super::{Attempted, WebhookEngine, lock};
use crate::event::now_unix;
use crate::webhook::outbox::{DeliveryRecord, DeliveryState};
use std::time::Duration;

impl WebhookEngine {
    /// Takes deliveries from the JetStream work queue into the endpoint queues
    /// until the engine stops.
    pub(super) async fn consume_jetstream(&self) {
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
    pub(super) async fn take(&self, msg: async_nats::jetstream::Message) {
        let r = match crate::webhook::jetstream::record_of(&msg) {
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

    /// The end of an attempt at a delivery taken from the JetStream work queue:
    /// delivered → acknowledged; to be retried → handed back with the delay;
    /// failed for good → dead letter here (line and outbox row), then acknowledged.
    pub(super) async fn settle_in_queue(
        &self,
        r: &DeliveryRecord,
        msg: async_nats::jetstream::Message,
        outcome: Outcome,
        next_at: Option<f64>,
        reason: &str,
    ) -> Attempted {
        use async_nats::jetstream::AckKind;
        let acked = match (outcome, next_at) {
            (Outcome::Delivered, _) => msg.ack().await,
            (Outcome::Retry, Some(t)) => {
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
        Attempted::Settled(outcome == Outcome::Delivered, 0)
    }
}
