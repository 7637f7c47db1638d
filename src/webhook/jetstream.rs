//! Webhook deliveries as a NATS JetStream work queue (docs/scale-out.md), used
//! when `PM_NATS_URL` is set, so that any node can deliver and retries survive nodes.
//!
//! # Wire form
//!
//! - Stream `PM_WEBHOOKS` (created if missing): subjects `pm.webhooks.>`, retention
//!   *work queue* (a message is removed once acknowledged), file storage.
//! - One message per delivery, subject `pm.webhooks.<event type>`; the payload is
//!   the exact body to send (the same bytes the SQLite outbox keeps), and headers
//!   carry the rest: `Nats-Msg-Id` (the delivery id: JetStream drops a duplicate
//!   publish), `Pm-Delivery-Id`, `Pm-Event-Id`, `Pm-Event-Type`, `Pm-Route`,
//!   `Pm-Url`, `Pm-Created-At` (Unix seconds), `Pm-Traceparent` (the event's trace, if any). The URL travels to the NATS server
//!   as it is stored in the outbox otherwise: keep secrets out of webhook URLs.
//! - Every node consumes through one durable pull consumer, `pm-webhooks` (a work-queue
//!   stream admits one consumer over all its subjects, so every node of every consumer
//!   group shares it: any node may deliver any webhook).
//!
//! # Delivery
//!
//! A node that takes a message puts the delivery in its per-endpoint queue and
//! attempts it like any other (signing, timeouts, the attempt log); the attempt
//! number is JetStream's delivery count. Then: delivered → the message is
//! acknowledged (and leaves the queue); to be retried → it is handed back with a
//! delay (a *nak* with the backoff, or a longer `Retry-After`), and JetStream gives
//! it to whichever node asks next once the delay is over; failed for good → a line
//! in this node's `dead_letters.jsonl`, a dead row in its outbox (so `pm-events
//! webhooks redeliver` on this node sends it again), and the message is
//! acknowledged. A node that dies holding messages leaves them to the others after
//! the consumer's `ack_wait`; a node that stops hands back what it has not
//! attempted at once.

use super::outbox::{DeliveryRecord, DeliveryState};
use crate::webhook::error::WebhookError;
use async_nats::jetstream;
use std::time::Duration;

/// Name of the work-queue stream.
pub const STREAM: &str = "PM_WEBHOOKS";
/// Subject prefix of the deliveries.
pub const SUBJECT_PREFIX: &str = "pm.webhooks.";
/// Name of the durable consumer every node takes deliveries through.
pub const CONSUMER: &str = "pm-webhooks";

fn err(what: &str, e: impl std::fmt::Display) -> WebhookError {
    WebhookError::Queue {
        context: what.to_string(),
        source: Some(e.to_string().into()),
    }
}

/// The JetStream work queue of webhook deliveries.
#[derive(Clone)]
pub struct JetStreamQueue {
    js: jetstream::Context,
    ack_wait: Duration,
}

impl JetStreamQueue {
    /// Connects to `url` and makes sure the stream exists. `ack_wait` is how long
    /// a node may hold a delivery before JetStream gives it to another one: it
    /// should exceed the time a delivery may wait in a node's queue plus one attempt.
    pub async fn connect(url: &str, ack_wait: Duration) -> Result<Self, WebhookError> {
        let client = crate::transport::nats::connect_client(url)
            .await
            .map_err(|e| err(&format!("cannot connect to NATS at {url}"), e))?;
        let js = jetstream::new(client);
        js.get_or_create_stream(jetstream::stream::Config {
            name: STREAM.into(),
            subjects: vec![format!("{SUBJECT_PREFIX}>")],
            retention: jetstream::stream::RetentionPolicy::WorkQueue,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| err(&format!("JetStream stream {STREAM}"), e))?;
        Ok(JetStreamQueue { js, ack_wait })
    }

    /// Puts a delivery in the queue; returns once JetStream has stored it.
    pub(crate) async fn publish(&self, r: &DeliveryRecord) -> Result<(), WebhookError> {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Msg-Id", r.id.as_str());
        h.insert("Pm-Delivery-Id", r.id.as_str());
        h.insert("Pm-Event-Id", r.event_id.as_str());
        h.insert("Pm-Event-Type", r.event_type.as_str());
        h.insert("Pm-Route", r.route.as_str());
        h.insert("Pm-Url", r.url.as_str());
        h.insert("Pm-Created-At", r.created_at.to_string().as_str());
        if let Some(tp) = &r.traceparent {
            h.insert("Pm-Traceparent", tp.as_str());
        }
        let subject = format!("{SUBJECT_PREFIX}{}", r.event_type);
        let ack = self
            .js
            .publish_with_headers(subject, h, r.body.clone())
            .await
            .map_err(|e| err("JetStream publish", e))?;
        ack.await.map_err(|e| err("JetStream publish", e))?;
        Ok(())
    }

    /// The messages of the shared durable consumer.
    pub(crate) async fn messages(
        &self,
        max_ack_pending: usize,
    ) -> Result<jetstream::consumer::pull::Stream, String> {
        crate::transport::nats::durable_messages(
            &self.js,
            STREAM,
            CONSUMER,
            self.ack_wait,
            max_ack_pending as i64,
        )
        .await
    }
}

/// The delivery a message carries, with the attempts made before this one.
pub(crate) fn record_of(msg: &jetstream::Message) -> Result<DeliveryRecord, String> {
    let headers = msg.headers.as_ref().ok_or("no headers")?;
    let get = |k: &str| -> Result<String, String> {
        headers
            .get(k)
            .map(|v| v.as_str().to_string())
            .ok_or_else(|| format!("no {k} header"))
    };
    let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
    Ok(DeliveryRecord {
        id: get("Pm-Delivery-Id")?,
        event_id: get("Pm-Event-Id")?,
        event_type: get("Pm-Event-Type")?,
        route: get("Pm-Route")?,
        url: get("Pm-Url")?,
        body: msg.payload.clone(),
        attempt: u32::try_from(delivered.saturating_sub(1).max(0)).unwrap_or(u32::MAX),
        next_at: 0.0,
        created_at: get("Pm-Created-At")?
            .parse()
            .map_err(|e| format!("Pm-Created-At: {e}"))?,
        state: DeliveryState::Pending,
        last_error: None,
        traceparent: headers
            .get("Pm-Traceparent")
            .map(|v| v.as_str().to_string()),
    })
}
